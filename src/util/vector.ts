/**
 * Vector math on plain arrays (Float32Array, Float64Array, number[]): dot products, norms, cosines and unit
 * vectors. Every sum is accumulated in float64 (JavaScript numbers) whatever the element type, so a float32
 * activation of d_model 4096 loses no precision to the running sum; results are float64 numbers, and the
 * unit vectors are rounded to float32 (or kept in float64 by {@link unitVector64}) once, at the end.
 */
import { EmlensError } from '../errors.js';

function sameLength(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  if (a.length !== b.length) {
    throw new EmlensError(
      `Cannot take the ${what} of vectors of length ${a.length} and ${b.length}; they must come from the same model.`,
    );
  }
}

/** `a . b`, float64. The vectors must have the same length. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  sameLength(a, b, 'dot product');
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!; // i < a.length = b.length (checked above)
  return s;
}

/**
 * The dot product of `b` with the `b.length` entries of `a` from `offset` on (a row of a row-major matrix:
 * `dotAt(x, t * d, e)` is row t of `[n, d]` dotted with e), float64, without a subarray per row.
 */
export function dotAt(a: ArrayLike<number>, offset: number, b: ArrayLike<number>): number {
  let s = 0;
  // i < b.length; offset + b.length <= a.length is the caller's contract (a row of the matrix)
  for (let i = 0; i < b.length; i++) s += a[offset + i]! * b[i]!;
  return s;
}

/** `|v|^2`, float64. */
export function squaredNorm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!; // i < v.length
  return s;
}

/** L2 norm, accumulated in float64. */
export function norm(v: ArrayLike<number>): number {
  return Math.sqrt(squaredNorm(v));
}

/** Cosine similarity in float64; NaN when either vector is zero. The vectors must have the same length. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  sameLength(a, b, 'cosine');
  let d = 0;
  let na = 0;
  let nb = 0;
  // i < a.length = b.length (checked above)
  for (let i = 0; i < a.length; i++) {
    d += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 || nb === 0 ? Number.NaN : d / Math.sqrt(na * nb);
}

/** The unit vector along `v` (norm computed in float64), as float32; a zero vector throws. */
export function normalize(v: ArrayLike<number>): Float32Array {
  const n = norm(v);
  if (n === 0) throw new EmlensError('Cannot normalise a zero vector; the direction carries no information.');
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i]! / n; // i < v.length
  return out;
}

function checkedNorm(v: ArrayLike<number>, what: string): number {
  const n = norm(v);
  if (!(n > 0) || !Number.isFinite(n)) {
    throw new EmlensError(
      `${what.charAt(0).toUpperCase()}${what.slice(1)} is a zero vector (or not finite); use a direction with a non-zero norm.`,
    );
  }
  return n;
}

/**
 * The unit vector along `v` as float32 (norm in float64); a zero or non-finite vector is an error naming
 * `what` ("the direction at blocks.3.hook_resid_post").
 */
export function unitVector(v: ArrayLike<number>, what = 'the direction'): Float32Array {
  const n = checkedNorm(v, what);
  return Float32Array.from(v, (x) => x / n);
}

/** {@link unitVector} kept in float64 (for projections applied to many rows, e.g. weight orthogonalisation). */
export function unitVector64(v: ArrayLike<number>, what = 'the direction'): Float64Array {
  const n = checkedNorm(v, what);
  return Float64Array.from(v, (x) => x / n);
}
