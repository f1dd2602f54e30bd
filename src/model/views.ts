/**
 * Strided views (the `ndarray` package) over emlens' float32 buffers: hook outputs, logits and store shards.
 * A view shares its buffer, so `view.pick(b, p)` (one token's `[d_model]`) or `view.lo(...).hi(...)` copies
 * nothing; read values with `view.get(...)`, or `view.data` from `view.offset` along `view.stride`.
 */
import ndarray, { type NdArray } from 'ndarray';
import type { Float32Tensor } from './tensor.js';

/** A float32 strided view. */
export type View = NdArray<Float32Array>;

/** A row-major view of `data` with `shape` (no copy); `data` must hold at least the shape's elements. */
export function viewOf(data: Float32Array, shape: readonly number[]): View {
  const size = shape.reduce((a, b) => a * b, 1);
  if (data.length < size)
    throw new Error(`viewOf: ${data.length} floats cannot hold shape [${shape.join(', ')}]`);
  return ndarray(data, [...shape]);
}

/** A tensor's row-major view (no copy). */
export function tensorView(t: Float32Tensor): View {
  return viewOf(t.data, t.dims);
}
