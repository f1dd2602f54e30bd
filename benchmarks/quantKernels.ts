/**
 * Which GEMM kernel the int8/int4 profiles should use: the four block GEMMs of a Qwen2.5-0.5B-shaped block
 * (d 896, 14/2 heads of 64, ff 4864) through fp32 MatMul, per-column int8 DynamicQuantizeMatMul and MatMulNBits
 * (bits 4/8, accuracy_level 4, blocks of 32/128), at 1, 128 and 512 rows, each session opened once and the
 * kernels timed in interleaved rounds so drift on a shared box hits them all alike.
 *
 *   npx tsx benchmarks/quantKernels.ts [--rounds N] [--layers L] [--rows 1,128,512] [--out file.json]
 */
import { writeFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import { emitLinear, type LinearScheme, linearWeight } from '../src/model/graph/linear.js';
import { defaultThreads } from '../src/model/session.js';
import { GraphBuilder } from '../src/onnx/builder.js';
import { median } from './lib/hardware.js';

export const KERNELS: Readonly<Record<string, LinearScheme>> = {
  fp32: { kind: 'float', type: 'float32' },
  'dq-int8': { kind: 'int8-columns' },
  'nbits8-b32': { kind: 'nbits', bits: 8, blockSize: 32, accuracyLevel: 4 },
  'nbits8-b128': { kind: 'nbits', bits: 8, blockSize: 128, accuracyLevel: 4 },
  'nbits4-b32': { kind: 'nbits', bits: 4, blockSize: 32, accuracyLevel: 4 },
  'nbits4-b128': { kind: 'nbits', bits: 4, blockSize: 128, accuracyLevel: 4 },
};

const SHAPES = [
  { name: 'qkv', k: 896, n: (14 + 2 * 2) * 64 },
  { name: 'o', k: 896, n: 896 },
  { name: 'gate_up', k: 896, n: 2 * 4864 },
  { name: 'down', k: 4864, n: 896 },
];

function randomWeights(n: number, k: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const w = new Float32Array(n * k);
  for (let i = 0; i < w.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    w[i] = ((s >>> 0) / 4294967296 - 0.5) * 0.06;
  }
  return w;
}

/**
 * `layers` blocks of distinct weights, so the weights a pass streams exceed the last-level cache as a real
 * model's do (one 0.5B block in int8 is 14.5 MB and would sit in a Zen 4 CCX's 32 MB L3).
 */
async function openKernel(
  scheme: LinearScheme,
  threads: number,
  layers: number,
): Promise<ort.InferenceSession> {
  const g = new GraphBuilder('kernels', null);
  const xs = SHAPES.map((s, i) => g.input(`x${i}`, 'float32', ['rows', s.k]));
  for (let l = 0; l < layers; l++) {
    for (const [i, s] of SHAPES.entries()) {
      const w = await linearWeight(g, `w${l}_${i}`, scheme, s.k, s.n, async () => [
        { data: randomWeights(s.n, s.k, 17 + 4 * l + i), out: s.n },
      ]);
      // reduced to a scalar so copying the output to JS does not count
      const y = g.op('ReduceSum', [emitLinear(g, xs[i]!, w, null)], { keepdims: { int: 0 } });
      g.output(y, `y${l}_${i}`, 'float32', []);
    }
  }
  const bytes = g.encode(
    [
      { domain: '', version: 21 },
      { domain: 'com.microsoft', version: 1 },
    ],
    {},
    '0',
  );
  return ort.InferenceSession.create(bytes, {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
}

export interface KernelTiming {
  readonly kernel: string;
  readonly rows: number;
  readonly medianMs: number;
  readonly gflops: number;
  readonly vsFp32: number;
}

export async function measureKernels(
  opts: {
    rows?: readonly number[];
    rounds?: number;
    threads?: number;
    kernels?: readonly string[];
    layers?: number;
  } = {},
): Promise<KernelTiming[]> {
  const rowsList = opts.rows ?? [1, 128, 512];
  const rounds = opts.rounds ?? 7;
  const threads = opts.threads ?? defaultThreads();
  const names = opts.kernels ?? Object.keys(KERNELS);
  const sessions = new Map<string, ort.InferenceSession>();
  for (const name of names) sessions.set(name, await openKernel(KERNELS[name]!, threads, opts.layers ?? 4));
  const results: KernelTiming[] = [];
  try {
    for (const rows of rowsList) {
      const feeds: Record<string, ort.Tensor> = {};
      SHAPES.forEach((s, i) => {
        feeds[`x${i}`] = new ort.Tensor('float32', randomWeights(rows, s.k, 99 + i), [rows, s.k]);
      });
      const passes = rows === 1 ? 5 : 1;
      const times = new Map<string, number[]>(names.map((n) => [n, []]));
      for (const s of sessions.values()) await s.run(feeds); // warm-up (prepacking, arena)
      for (let r = 0; r < rounds; r++) {
        for (const [name, s] of sessions) {
          const t = performance.now();
          for (let p = 0; p < passes; p++) await s.run(feeds);
          times.get(name)!.push((performance.now() - t) / passes);
        }
      }
      const flops = (opts.layers ?? 4) * SHAPES.reduce((a, s) => a + 2 * rows * s.k * s.n, 0);
      const fp32Ms = times.has('fp32') ? median(times.get('fp32')!) : Number.NaN;
      for (const name of names) {
        const ms = median(times.get(name)!);
        results.push({ kernel: name, rows, medianMs: ms, gflops: flops / (ms * 1e6), vsFp32: fp32Ms / ms });
      }
    }
  } finally {
    for (const s of sessions.values()) await s.release();
  }
  return results;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : undefined;
  };
  const results = await measureKernels({
    rounds: Number(arg('--rounds') ?? 7),
    layers: Number(arg('--layers') ?? 4),
    rows: arg('--rows')?.split(',').map(Number),
  });
  for (const r of results) {
    console.log(
      `${String(r.rows).padStart(4)} rows  ${r.kernel.padEnd(12)} ${r.medianMs.toFixed(3).padStart(8)} ms  ${r.gflops.toFixed(0).padStart(5)} GFLOP/s  ${r.vsFp32.toFixed(2)}x fp32`,
    );
  }
  const out = arg('--out');
  if (out)
    await writeFile(
      out,
      `${JSON.stringify({ threads: defaultThreads(), layers: Number(arg('--layers') ?? 4), results }, null, 2)}\n`,
    );
}
