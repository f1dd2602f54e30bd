/**
 * The numeric quantisers of the int8 and int4 profiles. They take HF Linear weights as the checkpoint stores
 * them (`[out, in]` row-major, possibly several side by side as q/k/v or gate/up, see `packTransposed`) and
 * write the quantised layout directly, so no packed float32 copy of the matrix is ever made.
 *
 * Both schemes are symmetric (zero maps to zero exactly), which keeps a zero-initialised LoRA delta or a pruned
 * row exact and lets the kernels skip zero-point arithmetic.
 */
import type { LinearPart } from './weights.js';

/** Per-output-column int8: `w[i, o] ≈ q[i, o] * scales[o]`, `q` in [-127, 127]. */
export interface Int8Columns {
  /** `[in, out]` row-major, the `B` of DynamicQuantizeMatMul / MatMulInteger. */
  readonly q: Int8Array;
  /** `[out]`. */
  readonly scales: Float32Array;
  readonly inDim: number;
  readonly outDim: number;
}

function outTotal(parts: readonly LinearPart[], inDim: number): number {
  for (const { data, out } of parts) {
    if (data.length < out * inDim) {
      throw new Error(`quantize: a part of ${data.length} values, expected [${out}, ${inDim}]`);
    }
  }
  return parts.reduce((a, p) => a + p.out, 0);
}

/**
 * Quantises each output column (a row of the HF matrix) with its own scale absmax/127, written transposed to
 * `[in, out]`. 127 rather than 128 keeps the range symmetric, so negating a weight negates its code.
 */
export function quantizeInt8Columns(parts: readonly LinearPart[], inDim: number): Int8Columns {
  const total = outTotal(parts, inDim);
  const q = new Int8Array(inDim * total); // [in, total_out]
  const scales = new Float32Array(total);
  let col = 0;
  for (const { data, out } of parts) {
    for (let o = 0; o < out; o++) {
      const row = o * inDim;
      let amax = 0;
      for (let i = 0; i < inDim; i++) amax = Math.max(amax, Math.abs(data[row + i]!));
      const scale = amax / 127;
      scales[col + o] = scale;
      if (scale === 0) continue; // an all-zero column: codes stay 0
      const inv = 1 / scale;
      for (let i = 0; i < inDim; i++) {
        q[i * total + col + o] = Math.max(-127, Math.min(127, Math.round(data[row + i]! * inv)));
      }
    }
    col += out;
  }
  return { q, scales, inDim, outDim: total };
}

/** `q * scale` back to float32, `[in, out]`: the reference the int8 kernels are tested against. */
export function dequantizeInt8Columns(w: Int8Columns): Float32Array {
  const out = new Float32Array(w.q.length);
  for (let i = 0; i < w.inDim; i++) {
    for (let o = 0; o < w.outDim; o++) out[i * w.outDim + o] = w.q[i * w.outDim + o]! * w.scales[o]!;
  }
  return out;
}

/**
 * Blockwise quantised weights in onnxruntime's MatMulNBits layout: for each output column `n` and each block of
 * `blockSize` consecutive input rows, one float scale and `blockSize` unsigned codes of `bits` bits with the
 * implicit zero point 2^(bits-1) (MatMulNBits' default when no zero_points input is given):
 * `w[k, n] ≈ (code - 2^(bits-1)) * scale[n, block]`. 4-bit codes are packed two per byte, the lower-indexed
 * element in the low nibble. A last partial block is padded with zero-point codes.
 */
export interface BlockQuantized {
  readonly bits: 4 | 8;
  readonly blockSize: number;
  /** Input features (the `K` attribute). */
  readonly k: number;
  /** Output features (the `N` attribute). */
  readonly n: number;
  /** `[n, blocks, blockSize * bits / 8]`, the `B` input. */
  readonly data: Uint8Array;
  /** `[n * blocks]`, the `scales` input. */
  readonly scales: Float32Array;
}

export function blockCount(k: number, blockSize: number): number {
  return Math.ceil(k / blockSize);
}

/**
 * Quantises each block with the scale that maps its largest-magnitude value `m` to the most negative code,
 * `scale = m / -2^(bits-1)`, so that value is exact and the other side loses at most one code at its very
 * end (onnxruntime's own symmetric quantiser does the same). That uses all 2^bits codes, which matters at 4 bits.
 */
export function quantizeBlockwise(
  parts: readonly LinearPart[],
  inDim: number,
  bits: 4 | 8,
  blockSize: number,
): BlockQuantized {
  if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) {
    throw new Error(`quantizeBlockwise: block size ${blockSize} is not a power of two >= 16`);
  }
  const n = outTotal(parts, inDim);
  const blocks = blockCount(inDim, blockSize);
  const blob = (blockSize * bits) / 8;
  const zp = 1 << (bits - 1);
  const maxCode = (1 << bits) - 1;
  const data = new Uint8Array(n * blocks * blob);
  if (bits === 4) data.fill(zp | (zp << 4));
  else data.fill(zp);
  const scales = new Float32Array(n * blocks);
  let col = 0;
  for (const { data: w, out } of parts) {
    for (let o = 0; o < out; o++) {
      const row = o * inDim;
      const c = col + o;
      for (let b = 0; b < blocks; b++) {
        const from = b * blockSize;
        const to = Math.min(inDim, from + blockSize);
        let m = 0;
        for (let i = from; i < to; i++) if (Math.abs(w[row + i]!) > Math.abs(m)) m = w[row + i]!;
        const scale = m / -zp;
        scales[c * blocks + b] = scale;
        if (scale === 0) continue; // all zero: zero-point codes already there
        const inv = 1 / scale;
        const at = (c * blocks + b) * blob;
        for (let i = from; i < to; i++) {
          const code = Math.max(0, Math.min(maxCode, Math.round(w[row + i]! * inv) + zp));
          const j = i - from;
          if (bits === 8) data[at + j] = code;
          else {
            const byte = at + (j >> 1);
            data[byte] = j & 1 ? (data[byte]! & 0x0f) | (code << 4) : (data[byte]! & 0xf0) | code;
          }
        }
      }
    }
    col += out;
  }
  return { bits, blockSize, k: inDim, n, data, scales };
}

/** The unsigned code of weight `[k, n]`. */
export function blockCode(w: BlockQuantized, k: number, n: number): number {
  const blocks = blockCount(w.k, w.blockSize);
  const blob = (w.blockSize * w.bits) / 8;
  const b = Math.floor(k / w.blockSize);
  const j = k - b * w.blockSize;
  const at = (n * blocks + b) * blob;
  if (w.bits === 8) return w.data[at + j]!;
  const byte = w.data[at + (j >> 1)]!;
  return j & 1 ? byte >> 4 : byte & 0x0f;
}

/** `(code - zero point) * scale` back to float32, `[k, n]` (MatMul's B orientation). */
export function dequantizeBlockwise(w: BlockQuantized): Float32Array {
  const blocks = blockCount(w.k, w.blockSize);
  const zp = 1 << (w.bits - 1);
  const out = new Float32Array(w.k * w.n); // [k, n]
  for (let n = 0; n < w.n; n++) {
    for (let k = 0; k < w.k; k++) {
      out[k * w.n + n] = (blockCode(w, k, n) - zp) * w.scales[n * blocks + Math.floor(k / w.blockSize)]!;
    }
  }
  return out;
}
