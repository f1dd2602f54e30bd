/** A dense float32 tensor returned to callers: row-major `data` with its `dims`. */
export interface Float32Tensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** Row `index` of the leading axis, as a view (no copy). */
export function row(t: Float32Tensor, index: number): Float32Tensor {
  const size = t.dims.slice(1).reduce((a, b) => a * b, 1);
  return { data: t.data.subarray(index * size, (index + 1) * size), dims: t.dims.slice(1) };
}
