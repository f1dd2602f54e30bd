/**
 * Conversions between 32-bit floats and the two 16-bit float formats found in checkpoints (IEEE f16 and
 * bfloat16). They run over every weight of a model, so they work on raw bits through typed-array views
 * instead of going through JS numbers, which would also canonicalise NaN payloads.
 */

/** f32 bit patterns of all 65536 f16 values, built on first use (256 KiB). */
let f16Table: Uint32Array | null = null;

function buildF16Table(): Uint32Array {
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    let bits: number;
    if (exp === 0x1f) {
      // Inf/NaN: keep the payload so that NaNs survive a round trip bit for bit.
      bits = 0x7f800000 | (mant << 13);
    } else if (exp !== 0) {
      bits = ((exp + 112) << 23) | (mant << 13);
    } else if (mant === 0) {
      bits = 0;
    } else {
      // Subnormal f16 is a normal f32: shift the leading 1 into the implicit position.
      let e = 113;
      let m = mant;
      while ((m & 0x400) === 0) {
        m <<= 1;
        e--;
      }
      bits = (e << 23) | ((m & 0x3ff) << 13);
    }
    table[h] = (sign | bits) >>> 0;
  }
  return table;
}

function u32View(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** Decodes IEEE half-precision bit patterns to float32 (exact: every f16 is representable). */
export function f16ToF32(bits: Uint16Array): Float32Array {
  if (f16Table === null) f16Table = buildF16Table();
  const table = f16Table;
  const out = new Float32Array(bits.length);
  const o = u32View(out);
  // i < bits.length; a 16-bit pattern is < 65536 = table.length
  for (let i = 0; i < bits.length; i++) o[i] = table[bits[i]!]!;
  return out;
}

/** Decodes bfloat16 bit patterns to float32 (exact: bf16 is the top half of an f32). */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o = u32View(out);
  for (let i = 0; i < bits.length; i++) o[i] = bits[i]! << 16; // i < bits.length
  return out;
}

/**
 * Encodes float32 values as IEEE half precision with round-to-nearest-even: values past the f16 range
 * become ±Inf, tiny values become subnormals or ±0, and NaNs stay NaN (payload kept where it fits).
 */
export function f32ToF16(x: Float32Array): Uint16Array {
  const src = u32View(x);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < src.length; i++) {
    const f = src[i]!; // i < src.length
    const sign = (f >>> 16) & 0x8000;
    const abs = f & 0x7fffffff;
    let h: number;
    if (abs >= 0x47800000) {
      // |x| >= 65536, Inf or NaN. (65520 <= |x| < 65536 reaches Inf through the rounding carry below.)
      if (abs > 0x7f800000) {
        const payload = (abs >>> 13) & 0x3ff;
        h = 0x7c00 | (payload === 0 ? 0x200 : payload);
      } else {
        h = 0x7c00;
      }
    } else if (abs >= 0x38800000) {
      // Normal f16: rebias the exponent, then add just under half an ulp plus the current lsb so that
      // ties go to even; a mantissa carry correctly bumps the exponent (up to Inf).
      const odd = (abs >>> 13) & 1;
      h = (abs - 0x38000000 + 0xfff + odd) >>> 13;
    } else {
      // Subnormal f16 (or zero): the result counts units of 2^-24, so shift the full f32 significand.
      const e = abs >>> 23;
      const shift = 126 - e;
      if (shift > 24) {
        h = 0; // below half the smallest subnormal
      } else {
        const m = (abs & 0x7fffff) | 0x800000;
        h = m >>> shift;
        const rem = m & ((1 << shift) - 1);
        const half = 1 << (shift - 1);
        if (rem > half || (rem === half && (h & 1) === 1)) h++;
      }
    }
    out[i] = sign | h;
  }
  return out;
}

/** Encodes float32 values as bfloat16 with round-to-nearest-even; NaNs stay NaN (quieted). */
export function f32ToBf16(x: Float32Array): Uint16Array {
  const src = u32View(x);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < src.length; i++) {
    const f = src[i]!; // i < src.length
    if ((f & 0x7fffffff) > 0x7f800000) {
      // Rounding could carry a NaN's payload into Inf, so truncate and force the quiet bit instead.
      out[i] = (f >>> 16) | 0x40;
    } else {
      out[i] = (f + 0x7fff + ((f >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}
