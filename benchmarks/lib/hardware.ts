import * as ort from 'onnxruntime-node';
import { defaultThreads } from '../../src/model/session.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { GraphBuilder } from '../../src/onnx/builder.js';

/** Median of timings in ms. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  // In range for a non-empty list: m < s.length, and m >= 1 when the length is even. (An empty list gives NaN.)
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
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

/**
 * The GEMMs of one block as the graph emits them: q/k/v fused, the output projection, gate/up fused, and the
 * down projection, each `[k] -> [n]`.
 */
export function blockGemmShapes(spec: ModelSpec): MatMulShape[] {
  const { dModel: d, numHeads: h, numKvHeads: kv, headDim: hd, intermediateSize: ff } = spec;
  return [
    { k: d, n: (h + 2 * kv) * hd },
    { k: h * hd, n: d },
    { k: d, n: 2 * ff },
    { k: ff, n: d },
  ];
}

export interface CeilingResult {
  readonly gflops: number;
  readonly tokens: number;
  readonly shapes: readonly MatMulShape[];
  readonly medianMs: number;
}

/** A MatMul-ceiling graph kept open, so its runs can be interleaved with the runs it is compared with. */
export interface MatMulCeiling {
  /** Floating-point operations of one pass at the `tokens` it was opened with. */
  readonly flops: number;
  /**
   * `passes` passes (default 1) over every GEMM, back to back, with `tokens` rows (default: those it was opened
   * with; the same weights serve any count); returns the milliseconds per pass.
   */
  run(passes?: number, tokens?: number): Promise<number>;
  release(): Promise<void>;
}

/**
 * The MatMul ceiling: onnxruntime running only the given GEMMs (`[tokens, k] x [k, n]`, constant weights, as
 * in the model), one after another, with the same thread settings. Dividing a model's achieved GFLOP/s by this
 * says how close it runs to what the MatMul kernels themselves reach on this machine, in this process.
 */
export async function openMatMulCeiling(
  shapes: readonly MatMulShape[],
  tokens: number,
  opts: { threads?: number } = {},
): Promise<MatMulCeiling> {
  const g = new GraphBuilder('ceiling', null);
  shapes.forEach((s, i) => {
    const x = g.input(`x${i}`, 'float32', ['tokens', s.k]);
    // Distinct values per matrix: onnxruntime merges identical initializers, which would let repeated shapes
    // share one matrix (and its cache lines) and overstate what the model's own, distinct weights reach.
    const w = new Float32Array(s.k * s.n).map(
      (_, j) => ((Math.imul(j ^ (i * 0x9e3779b9), 2654435761) >>> 0) % 1000) / 1e5 - 0.005,
    );
    const y = g.op('MatMul', [x, g.initializer(`w${i}`, 'float32', [s.k, s.n], w)]);
    // Reduce to a scalar so the output copy to JS does not count.
    g.output(g.op('ReduceSum', [y], { keepdims: { int: 0 } }), `y${i}`, 'float32', []);
  });
  const session = await ort.InferenceSession.create(g.encode([{ domain: '', version: 21 }], {}, '0'), {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: opts.threads ?? defaultThreads(),
    interOpNumThreads: 1,
  });
  const feedsByTokens = new Map<number, Record<string, ort.Tensor>>();
  const feedsFor = (rows: number) => {
    let feeds = feedsByTokens.get(rows);
    if (!feeds) {
      const made: Record<string, ort.Tensor> = {};
      shapes.forEach((s, i) => {
        made[`x${i}`] = new ort.Tensor('float32', new Float32Array(rows * s.k).fill(0.01), [rows, s.k]);
      });
      feedsByTokens.set(rows, made);
      feeds = made;
    }
    return feeds;
  };
  await session.run(feedsFor(tokens)); // prepacks the weights
  return {
    flops: shapes.reduce((a, s) => a + 2 * tokens * s.k * s.n, 0),
    run: async (passes = 1, rows = tokens) => {
      const feeds = feedsFor(rows);
      const t = performance.now();
      for (let p = 0; p < passes; p++) await session.run(feeds);
      return (performance.now() - t) / passes;
    },
    release: () => session.release(),
  };
}

/** {@link openMatMulCeiling}, timed `reps` times on its own: the median. */
export async function measureMatMulCeiling(
  shapes: readonly MatMulShape[],
  tokens: number,
  opts: { threads?: number; reps?: number } = {},
): Promise<CeilingResult> {
  const ceiling = await openMatMulCeiling(shapes, tokens, opts);
  const times: number[] = [];
  try {
    for (let r = 0; r < (opts.reps ?? 5); r++) times.push(await ceiling.run());
  } finally {
    await ceiling.release();
  }
  const ms = median(times);
  return { gflops: ceiling.flops / (ms * 1e6), tokens, shapes, medianMs: ms };
}

/** Peak resident memory of this process so far, in MiB. */
export function peakRssMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export interface CopyBandwidthResult {
  /** Best bandwidth over the runs, counting bytes read plus bytes written (STREAM "copy"), in GB/s (1e9). */
  readonly gbPerS: number;
  /** Bytes copied per run. */
  readonly bytes: number;
  /** Threads that copied (each its own slice). */
  readonly threads: number;
  readonly bestMs: number;
  readonly runsMs: readonly number[];
}

/**
 * Memory copy bandwidth: `threads` threads (this one alone for 1, worker threads otherwise) each copy a slice
 * of one `bytes`-long buffer into another with `TypedArray.set` (memcpy), started together; best of `reps`
 * runs after one that faults the pages in. Reported as STREAM does for copy: 2 x bytes / time. Divided into a
 * model's bytes read per token, it bounds memory-bound decoding.
 */
export async function measureCopyBandwidth(
  opts: { bytes?: number; threads?: number; reps?: number } = {},
): Promise<CopyBandwidthResult> {
  const bytes = opts.bytes ?? 256 * 1024 * 1024;
  const threads = Math.max(1, opts.threads ?? 1);
  const reps = opts.reps ?? 7;
  const src = new SharedArrayBuffer(bytes);
  const dst = new SharedArrayBuffer(bytes);
  new Uint8Array(src).fill(1);
  const runsMs: number[] = [];
  if (threads === 1) {
    const s = new Uint8Array(src);
    const d = new Uint8Array(dst);
    for (let r = 0; r <= reps; r++) {
      const t = performance.now();
      d.set(s);
      if (r > 0) runsMs.push(performance.now() - t);
    }
  } else {
    const { Worker } = await import('node:worker_threads');
    // ctrl[0]: run number (workers wait on it); ctrl[1]: workers finished in this run.
    const ctrl = new Int32Array(new SharedArrayBuffer(8));
    const code = `
      const { workerData } = require('node:worker_threads');
      const { src, dst, ctrl, from, to } = workerData;
      const s = new Uint8Array(src, from, to - from);
      const d = new Uint8Array(dst, from, to - from);
      let seen = 0;
      for (;;) {
        Atomics.wait(ctrl, 0, seen);
        seen = Atomics.load(ctrl, 0);
        if (seen < 0) break;
        d.set(s);
        Atomics.add(ctrl, 1, 1);
        Atomics.notify(ctrl, 1);
      }`;
    const chunk = Math.ceil(bytes / threads / 4096) * 4096;
    const workers = Array.from(
      { length: threads },
      (_, i) =>
        new Worker(code, {
          eval: true,
          workerData: {
            src,
            dst,
            ctrl,
            from: Math.min(i * chunk, bytes),
            to: Math.min((i + 1) * chunk, bytes),
          },
        }),
    );
    await Promise.all(workers.map((w) => new Promise((resolve) => w.once('online', resolve))));
    try {
      for (let r = 0; r <= reps; r++) {
        Atomics.store(ctrl, 1, 0);
        const t = performance.now();
        Atomics.store(ctrl, 0, r + 1);
        Atomics.notify(ctrl, 0);
        for (let done = 0; done < threads; done = Atomics.load(ctrl, 1)) Atomics.wait(ctrl, 1, done, 1000);
        if (r > 0) runsMs.push(performance.now() - t);
      }
    } finally {
      Atomics.store(ctrl, 0, -1);
      Atomics.notify(ctrl, 0);
      await Promise.all(workers.map((w) => new Promise((resolve) => w.once('exit', resolve))));
    }
  }
  const bestMs = Math.min(...runsMs);
  return { gbPerS: (2 * bytes) / (bestMs * 1e6), bytes, threads, bestMs, runsMs };
}
