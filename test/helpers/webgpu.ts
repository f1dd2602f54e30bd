/**
 * Finds a WebGPU adapter for the tests: Dawn over Vulkan, with SwiftShader (Debian's chromium package) as the
 * software adapter of a GPU-less machine. Sets VK_ICD_FILENAMES to SwiftShader's ICD when unset and it is
 * installed (so the tests run on SwiftShader even beside a GPU: set VK_ICD_FILENAMES to a GPU driver's
 * manifest to test that instead), and XDG_RUNTIME_DIR to a private folder when unset (Dawn wants one). Without a
 * loader or driver the WebGPU tests skip, saying why; under CI=true they fail, saying what to install.
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SWIFTSHADER_ICD, webgpuAdapterInfo } from '../../src/model/deviceCheck.js';

export const WEBGPU_INSTALL =
  'apt-get update && apt-get install -y --no-install-recommends chromium libvulkan1 (then VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json)';

export interface WebGpuTestEnv {
  readonly ok: boolean;
  /** The adapter found, or why there is none. */
  readonly summary: string;
  /** Whether the adapter is SwiftShader (no shader-f16). */
  readonly swiftshader: boolean;
}

export function webgpuTestEnv(): WebGpuTestEnv {
  if (process.env.VK_ICD_FILENAMES === undefined && existsSync(SWIFTSHADER_ICD)) {
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
  if (process.env.XDG_RUNTIME_DIR === undefined) {
    process.env.XDG_RUNTIME_DIR = mkdtempSync(join(tmpdir(), 'emlens-xdg-')); // mode 0700
  }
  const info = webgpuAdapterInfo();
  const ok = info.libvulkan !== null && info.drivers.some((d) => d.present);
  const swiftshader = info.drivers.some((d) => d.present && d.kind.startsWith('SwiftShader'));
  if (!ok) {
    const why = `no WebGPU adapter for the webgpu tests: ${info.summary}`;
    if (process.env.CI === 'true') throw new Error(`${why}; install it: ${WEBGPU_INSTALL}`);
    console.warn(`emlens tests: skipping the webgpu tests (${why}; to run them: ${WEBGPU_INSTALL})`);
  }
  return { ok, summary: info.summary, swiftshader };
}
