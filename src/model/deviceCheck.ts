/**
 * What a GPU device path runs where: the WebGPU adapter this machine offers (named from its Vulkan ICDs, since
 * onnxruntime-node exposes no adapter info), and which graph nodes each execution provider was given, read from
 * onnxruntime's profiler (every kernel run is an event naming its provider).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Profile } from './graph/transformer.js';
import type { Steer } from './interventions.js';
import { type LoadModelOptions, loadModel, releaseCache } from './model.js';
import type { Device } from './session.js';

/** Where Debian's chromium package puts SwiftShader's Vulkan ICD (a software adapter). */
export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

/** The Vulkan driver manifests the loader reads, in the loader's own order of places. */
const ICD_DIRS = ['/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d', '/usr/share/vulkan/icd.d'];

const LIBVULKAN = [
  '/usr/lib/x86_64-linux-gnu/libvulkan.so.1',
  '/usr/lib/aarch64-linux-gnu/libvulkan.so.1',
  '/usr/lib64/libvulkan.so.1',
  '/usr/lib/libvulkan.so.1',
];

export interface VulkanDriver {
  /** The ICD manifest. */
  readonly manifest: string;
  /** Its `library_path`, resolved against the manifest's folder. */
  readonly library: string;
  /** Whether that library exists. */
  readonly present: boolean;
  /** SwiftShader (software, on the CPU) or the driver's library name. */
  readonly kind: string;
}

export interface WebGpuAdapterInfo {
  /** Linux only: Dawn reaches the GPU through Vulkan there (Metal on macOS, D3D12 on Windows). */
  readonly platform: NodeJS.Platform;
  readonly libvulkan: string | null;
  /** `VK_ICD_FILENAMES` when set: the loader then reads only these manifests. */
  readonly icdEnv: string | null;
  readonly drivers: readonly VulkanDriver[];
  /** One line naming the adapter Dawn will find, or why there is none. */
  readonly summary: string;
}

function driverOf(manifest: string): VulkanDriver {
  let library = '';
  try {
    const json = JSON.parse(readFileSync(manifest, 'utf8')) as { ICD?: { library_path?: string } };
    library = json.ICD?.library_path ?? '';
  } catch {
    // an unreadable manifest names no library
  }
  const path = library.includes('/') ? resolve(dirname(manifest), library) : library;
  const kind = /swiftshader/i.test(`${manifest} ${library}`)
    ? 'SwiftShader (software Vulkan on the CPU)'
    : library === ''
      ? 'unreadable manifest'
      : basename(library);
  // a bare file name is found by the dynamic loader's search path; it cannot be checked here
  return {
    manifest,
    library: path,
    present: library !== '' && (!library.includes('/') || existsSync(path)),
    kind,
  };
}

/** The Vulkan drivers Dawn can use here, and which of them it will pick up. */
export function webgpuAdapterInfo(): WebGpuAdapterInfo {
  const platform = process.platform;
  const icdEnv = process.env.VK_ICD_FILENAMES ?? null;
  if (platform !== 'linux') {
    const api = platform === 'darwin' ? 'Metal' : platform === 'win32' ? 'D3D12' : 'the native GPU API';
    return {
      platform,
      libvulkan: null,
      icdEnv,
      drivers: [],
      summary: `Dawn uses ${api} on ${platform}; its adapter is the system's GPU`,
    };
  }
  const libvulkan = LIBVULKAN.find((p) => existsSync(p)) ?? null;
  const manifests = icdEnv
    ? icdEnv.split(':').filter((p) => p.length > 0)
    : ICD_DIRS.flatMap((d) =>
        existsSync(d)
          ? readdirSync(d)
              .filter((f) => f.endsWith('.json'))
              .map((f) => join(d, f))
          : [],
      );
  const drivers = manifests.map((m) =>
    existsSync(m) ? driverOf(m) : { manifest: m, library: '', present: false, kind: 'missing manifest' },
  );
  const usable = drivers.filter((d) => d.present);
  let summary: string;
  if (!libvulkan) summary = 'no Vulkan loader (install libvulkan1)';
  else if (usable.length === 0)
    summary = icdEnv
      ? `VK_ICD_FILENAMES names no usable driver (${icdEnv})`
      : 'no Vulkan driver installed (a GPU driver, or chromium for SwiftShader with VK_ICD_FILENAMES)';
  else summary = usable.map((d) => `${d.kind} via ${d.manifest}`).join('; ');
  return { platform, libvulkan, icdEnv, drivers, summary };
}

/** The nodes one execution provider ran, by op type. */
export interface ProviderNodes {
  readonly provider: string;
  /** op type -> kernel runs */
  readonly ops: Readonly<Record<string, number>>;
}

export interface NodeAssignment {
  readonly device: Device;
  readonly profile: Profile;
  /** Every provider that ran nodes, over the prefill and decode runs of the plain and intervention graphs. */
  readonly providers: readonly ProviderNodes[];
  /** Nodes that ran on the CPU provider although another was asked for: `OpType (node name)`, once each. */
  readonly fallback: readonly string[];
}

interface ProfileEvent {
  readonly cat?: string;
  readonly name?: string;
  readonly args?: { readonly provider?: string; readonly op_name?: string };
}

/** Reads onnxruntime profiler files into per-provider op counts and the CPU-provider node names. */
export async function readAssignment(
  files: readonly string[],
): Promise<{ providers: ProviderNodes[]; cpuNodes: string[] }> {
  const counts = new Map<string, Map<string, number>>();
  const cpu = new Set<string>();
  for (const f of files) {
    const events = JSON.parse(await readFile(f, 'utf8')) as ProfileEvent[];
    for (const e of events) {
      const provider = e.args?.provider;
      const op = e.args?.op_name;
      if (e.cat !== 'Node' || !provider || !op) continue;
      const m = counts.get(provider) ?? new Map<string, number>();
      m.set(op, (m.get(op) ?? 0) + 1);
      counts.set(provider, m);
      if (provider === 'CPUExecutionProvider')
        cpu.add(`${op} (${(e.name ?? '').replace(/_kernel_time$/, '')})`);
    }
  }
  return {
    providers: [...counts].map(([provider, m]) => ({ provider, ops: Object.fromEntries(m) })),
    cpuNodes: [...cpu].sort(),
  };
}

/**
 * Loads a model on `device` with onnxruntime's profiler on, runs a left-padded prefill and a cached decode step
 * through the plain graph and through the intervention graph (a steering vector), and reports which provider
 * ran each node. On the CPU device every node is the CPU provider's, so `fallback` is empty by definition.
 */
export async function nodeAssignment(
  dir: string,
  opts: Pick<LoadModelOptions, 'device' | 'profile' | 'cacheDir' | 'threads' | 'onProgress'> = {},
): Promise<NodeAssignment> {
  const device = opts.device ?? 'cpu';
  const tmp = await mkdtemp(join(tmpdir(), 'emlens-assign-'));
  try {
    const model = await loadModel(dir, {
      ...opts,
      sessionOptions: { enableProfiling: true, profileFilePrefix: join(tmp, 'profile') },
    });
    try {
      const steer: Steer[] = [
        {
          kind: 'steer',
          hooks: ['blocks.0.hook_resid_post'],
          vector: new Float32Array(model.spec.dModel).fill(0.01),
        },
      ];
      for (const interventions of [undefined, steer]) {
        const prefill = await model.forward([[1, 2, 3], [4]], { returnCache: true, interventions });
        const step = await model.forward([[5], [6]], {
          cache: prefill.cache,
          returnCache: true,
          interventions,
        });
        releaseCache(prefill.cache!);
        releaseCache(step.cache!);
      }
    } finally {
      await model.dispose(); // writes the profiles
    }
    const files = (await readdir(tmp)).filter((f) => f.endsWith('.json')).map((f) => join(tmp, f));
    const { providers, cpuNodes } = await readAssignment(files);
    return { device, profile: model.profile, providers, fallback: device === 'cpu' ? [] : cpuNodes };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
