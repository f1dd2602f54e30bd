/**
 * The prefill and decode timings the benchmarks share (bench:quantized, benchmarks/gpu.sh): best-of prefill
 * tokens/s after an arena-growing warm-up, and decode tokens/s between the first and last sampled token of row 0
 * (the prefill excluded), with the bytes each decode step copied to host memory.
 */
import { type DecodeStats, generate } from '../../src/generate/generate.js';
import type { Model } from '../../src/model/model.js';

/** Deterministic token ids spread over the vocabulary. */
export const benchIds = (n: number, seed: number, vocab: number): number[] =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 11) % vocab);

/** Prefill tokens/s of one `n`-token row: the best of `reps` runs after one warm-up. */
export async function prefillRate(m: Model, n: number, reps = 2): Promise<number> {
  const x = [benchIds(n, 1, m.spec.vocabSize)];
  await m.forward(x); // arena growth
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    await m.forward(x);
    best = Math.min(best, performance.now() - t);
  }
  return n / (best / 1000);
}

export interface DecodeRate {
  /** Generated tokens/s over all rows, prefill excluded. */
  readonly tokensPerS: number;
  readonly stats: DecodeStats;
}

/** Greedy decode of `batch` rows of `prompt` tokens for `tokens` new tokens each. */
export async function decodeRate(
  m: Model,
  batch: number,
  prompt: number,
  tokens: number,
): Promise<DecodeRate> {
  const stepAt: number[] = [];
  let stats: DecodeStats | undefined;
  await generate(
    m,
    Array.from({ length: batch }, (_, i) => benchIds(prompt, i + 2, m.spec.vocabSize)),
    {
      maxNewTokens: tokens,
      temperature: 0,
      eosTokenIds: [],
      batchSize: batch,
      onToken: (row) => {
        if (row === 0) stepAt.push(performance.now());
      },
      onStats: (s) => {
        stats = s;
      },
    },
  );
  // one batch: onStats ran once
  return {
    tokensPerS: (batch * (tokens - 1)) / ((stepAt[stepAt.length - 1]! - stepAt[0]!) / 1000),
    stats: stats!,
  };
}
