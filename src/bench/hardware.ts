import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../onnx/builder.js';

/** Median of timings in ms. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Times `fn` `reps` times after `warmup` calls; returns each run's milliseconds. */
export async function timeRuns(fn: () => Promise<unknown>, reps: number, warmup = 1): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return times;
}

export interface MatMulShape {
  readonly k: number;
  readonly n: number;
}

export interface CeilingResult {
  readonly gflops: number;
  readonly tokens: number;
  readonly shapes: readonly MatMulShape[];
  readonly medianMs: number;
}

/**
 * The MatMul ceiling: onnxruntime running only the given GEMMs (`[tokens, k] x [k, n]`, constant weights, as
 * in the model), one after another, with the same thread settings. Dividing a model's achieved GFLOP/s by this
 * says how close it runs to what the MatMul kernels themselves reach on this machine, in this process.
 */
export async function measureMatMulCeiling(
  shapes: readonly MatMulShape[],
  tokens: number,
  opts: { threads?: number; reps?: number } = {},
): Promise<CeilingResult> {
  const g = new GraphBuilder('ceiling', null);
  const outputs: string[] = [];
  shapes.forEach((s, i) => {
    const x = g.input(`x${i}`, 'float32', [tokens, s.k]);
    const w = new Float32Array(s.k * s.n).map((_, j) => ((j * 2654435761) % 1000) / 1e5 - 0.005);
    const y = g.op('MatMul', [x, g.initializer(`w${i}`, 'float32', [s.k, s.n], w)]);
    // Reduce to a scalar so the output copy to JS does not count.
    outputs.push(g.output(g.op('ReduceSum', [y], { keepdims: { int: 0 } }), `y${i}`, 'float32', []));
  });
  const session = await ort.InferenceSession.create(g.encode([{ domain: '', version: 21 }], {}, '0'), {
    graphOptimizationLevel: 'all',
    ...(opts.threads ? { intraOpNumThreads: opts.threads, interOpNumThreads: 1 } : {}),
  });
  const feeds: Record<string, ort.Tensor> = {};
  shapes.forEach((s, i) => {
    feeds[`x${i}`] = new ort.Tensor('float32', new Float32Array(tokens * s.k).fill(0.01), [tokens, s.k]);
  });
  const times = await timeRuns(() => session.run(feeds), opts.reps ?? 5);
  await session.release();
  const flops = shapes.reduce((a, s) => a + 2 * tokens * s.k * s.n, 0);
  const ms = median(times);
  return { gflops: flops / (ms * 1e6), tokens, shapes, medianMs: ms };
}

/** Peak resident memory of this process so far, in MiB. */
export function peakRssMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}
