/** Deterministic test inputs and the error measure the numeric tests share. */
import { expect } from 'vitest';

/** A seeded linear congruential stream of numbers in [0, 1). */
export function lcg(seed: number): () => number {
  let s = (seed * 2654435761) >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** `n` deterministic token ids below `vocab`. */
export function ids(n: number, seed: number, vocab = 512): number[] {
  const r = lcg(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** A deterministic vector with entries in [-scale, scale]. */
export function vec(d: number, seed: number, scale = 1): Float32Array {
  const r = lcg(seed);
  return Float32Array.from({ length: d }, () => (2 * r() - 1) * scale);
}

/** The largest absolute difference (NaN anywhere gives NaN, so it fails every `<=`); lengths must match. */
export function maxAbsDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  expect(got.length).toBe(want.length);
  let m = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i]! - want[i]!); // in range: i < got.length === want.length (checked above)
    if (!(d <= m)) m = d;
  }
  return m;
}

/** `xs[i]`, throwing (with `what` in the message) when the index is out of range: a clear failure instead of `undefined`. */
export function at<T>(xs: ArrayLike<T>, i: number, what = 'value'): T {
  if (!Number.isInteger(i) || i < 0 || i >= xs.length) {
    throw new Error(`${what}: index ${i} out of range (length ${xs.length})`);
  }
  return xs[i] as T;
}
