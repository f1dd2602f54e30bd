import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EmlensError } from '../errors.js';

export type Device = 'cpu' | 'cuda';

export interface SessionOptions {
  readonly device: Device;
  /** Intra-op threads; default {@link defaultThreads}. */
  readonly threads?: number;
  /** Further onnxruntime session options (profiling, for one), applied over emlens' own. */
  readonly extra?: ort.InferenceSession.SessionOptions;
}

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
    executionProviders: opts.device === 'cuda' ? ['cuda', 'cpu'] : ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: opts.threads ?? defaultThreads(),
    interOpNumThreads: 1,
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
