/** Anything that yields HF weights by name as float32 (a WeightSource, or one with a LoRA adapter merged in). */
export interface WeightReader {
  readFloat32(name: string): Promise<Float32Array>;
}

/** One HF Linear weight (`[out, in]` row-major) among those packed side by side. */
export interface LinearPart {
  readonly data: Float32Array;
  readonly out: number;
}

/**
 * Writes the transposes of HF Linear weights (`[out, in]`) side by side into one `[in, sum(out)]` matrix, so
 * q/k/v (and gate/up) become a single wide MatMul: fewer, larger GEMMs run closer to the MatMul ceiling.
 */
export function packTransposed(parts: readonly LinearPart[], inDim: number): Float32Array {
  const total = parts.reduce((a, p) => a + p.out, 0);
  const packed = new Float32Array(inDim * total); // [in, total_out]
  let col = 0;
  for (const { data, out } of parts) {
    if (data.length < out * inDim) {
      throw new Error(`packTransposed: a part of ${data.length} values, expected [${out}, ${inDim}]`);
    }
    for (let o = 0; o < out; o++) {
      const row = o * inDim;
      // row + i < out * inDim <= data.length (checked above)
      for (let i = 0; i < inDim; i++) packed[i * total + col + o] = data[row + i]!;
    }
    col += out;
  }
  return packed;
}

/** Concatenates bias vectors in the same order as `packTransposed`. */
export function concatVectors(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
