import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EmlensError } from '../errors.js';

/**
 * Where a model runs. `webgpu`: onnxruntime-node's bundled WebGPU provider (Dawn over Vulkan, Metal or D3D12),
 * nothing to install; its graph uses the com.microsoft attention ops and its KV cache stays on the device.
 */
export type Device = 'cpu' | 'cuda' | 'webgpu';

/** The devices, for option parsers. */
export const DEVICES: readonly Device[] = ['cpu', 'cuda', 'webgpu'];

export interface SessionOptions {
  readonly device: Device;
  /** Intra-op threads; default {@link defaultThreads}. */
  readonly threads?: number;
  /** Further onnxruntime session options (profiling, for one), applied over emlens' own. */
  readonly extra?: ort.InferenceSession.SessionOptions;
  /** Outputs kept in device memory (`gpu-buffer`) rather than copied to the host (webgpu only). */
  readonly deviceOutputs?: readonly string[];
}

/** The execution providers a device's session lists (onnxruntime falls back to its CPU provider by itself). */
function providers(device: Device): ort.InferenceSession.SessionOptions['executionProviders'] {
  if (device === 'cuda') return ['cuda', 'cpu'];
  if (device === 'webgpu') return ['webgpu'];
  return ['cpu'];
}

/** What to tell a user whose machine gave onnxruntime no WebGPU adapter. */
export const WEBGPU_ADAPTER_HELP =
  "on Linux, Dawn needs a Vulkan driver (libvulkan1 and a GPU driver, or for a software adapter Debian's chromium package with VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json and XDG_RUNTIME_DIR set), or use --device cpu";

export const CUDA_INSTALL_COMMAND =
  'ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js';

/**
 * Intra-op threads when none are asked for: one per CPU this process may run on. onnxruntime's own default (its
 * count of physical cores) comes out as 1 on a 2-vCPU VM, where it left one core idle and halved every GEMM
 * (measured with `process.cpuUsage`: 1.02 cores busy during a prefill, 1.97 with 2 threads).
 */
export function defaultThreads(): number {
  return availableParallelism();
}

/** Opens an onnxruntime session on a model file (its external data is found beside it). */
export async function createSession(modelPath: string, opts: SessionOptions): Promise<ort.InferenceSession> {
  const options: ort.InferenceSession.SessionOptions = {
    executionProviders: providers(opts.device),
    graphOptimizationLevel: 'all',
    intraOpNumThreads: opts.threads ?? defaultThreads(),
    interOpNumThreads: 1,
    ...(opts.device === 'webgpu' && opts.deviceOutputs && opts.deviceOutputs.length > 0
      ? {
          preferredOutputLocation: Object.fromEntries(
            opts.deviceOutputs.map((name) => [name, 'gpu-buffer' as const]),
          ),
        }
      : {}),
    ...opts.extra,
  };
  if (opts.device === 'cuda' && !cudaAvailable()) {
    throw new EmlensError(
      `The CUDA execution provider is not installed; run \`${CUDA_INSTALL_COMMAND}\` (needs CUDA 12 and cuDNN 9), or use --device cpu.`,
    );
  }
  try {
    return await ort.InferenceSession.create(modelPath, options);
  } catch (e) {
    const msg = String((e as Error).message ?? e);
    if (opts.device === 'cuda' && /cuda|provider/i.test(msg)) {
      throw new EmlensError(
        `onnxruntime could not start the CUDA execution provider (${msg.split('\n')[0]}); check the CUDA 12 install or run \`${CUDA_INSTALL_COMMAND}\`.`,
      );
    }
    if (opts.device === 'webgpu' && /adapter|webgpu/i.test(msg)) {
      const vk = process.env.VK_ICD_FILENAMES;
      throw new EmlensError(
        `onnxruntime found no WebGPU adapter (${firstLine(msg)}; VK_ICD_FILENAMES is ${vk === undefined ? 'unset' : `'${vk}'`}): ${WEBGPU_ADAPTER_HELP}.`,
      );
    }
    throw e;
  }
}

/**
 * Whether the CUDA provider library is present: onnxruntime-node lists `cuda` as a backend either way
 * (`bundled: false`), and the library itself only arrives with the cuda12 install.
 */
export function cudaAvailable(): boolean {
  const pkgDir = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  const binDir = join(pkgDir, 'bin', 'napi-v6', process.platform, process.arch);
  return ['libonnxruntime_providers_cuda.so', 'onnxruntime_providers_cuda.dll'].some((f) =>
    existsSync(join(binDir, f)),
  );
}

/** The message of an onnxruntime error without its source location prefix. */
function firstLine(msg: string): string {
  const line = msg.split('\n')[0] ?? msg;
  const at = line.lastIndexOf(' was false. ');
  return (at >= 0 ? line.slice(at + ' was false. '.length) : line).trim();
}
