import type { LayerType, ModelSpec, RopeSpec } from './spec.js';

const f = Math.fround;

/** The RoPE a layer type uses: sliding layers have their own when the spec gives `localRope` (Gemma 3). */
export function ropeFor(spec: ModelSpec, type: LayerType = 'full'): RopeSpec {
  if (type === 'sliding' && spec.localRope) return spec.localRope;
  return { theta: spec.ropeTheta, scaling: spec.ropeScaling };
}

/**
 * RoPE inverse frequencies as transformers computes them: in float32, `1 / theta^(2i/d)` for i < d/2, then the
 * Llama-3 wavelength-dependent rescaling or the linear division by `factor` when the config asks for it.
 * `Math.fround` after every step mirrors torch's float32 arithmetic, so our cos/sin tables match HF to the last
 * bit in most entries. `type` picks the layer type's RoPE (default: full attention).
 */
export function ropeInvFreq(spec: ModelSpec, type: LayerType = 'full'): Float32Array {
  const rope = ropeFor(spec, type);
  const d = spec.headDim;
  const half = d / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    inv[i] = f(1 / f(f(rope.theta) ** f((2 * i) / d)));
  }
  const s = rope.scaling;
  if (s === null) return inv;
  if (s.type === 'linear') {
    // _compute_linear_scaling_rope_parameters: `inv_freq /= factor` in float32.
    for (let i = 0; i < half; i++) inv[i] = f(inv[i]! / f(s.factor)); // i < half = inv.length
    return inv;
  }
  // transformers' _compute_llama3_parameters: low-frequency bands are slowed by `factor`, high ones kept,
  // the band between is interpolated.
  const lowFreqWavelen = f(s.originalMaxPositionEmbeddings / s.lowFreqFactor);
  const highFreqWavelen = f(s.originalMaxPositionEmbeddings / s.highFreqFactor);
  // i < half = inv.length
  for (let i = 0; i < half; i++) {
    const wavelen = f(f(2 * Math.PI) / inv[i]!);
    if (wavelen > lowFreqWavelen) {
      inv[i] = f(inv[i]! / s.factor);
    } else if (wavelen >= highFreqWavelen) {
      const smooth = f(
        f(f(f(s.originalMaxPositionEmbeddings) / wavelen) - s.lowFreqFactor) /
          f(s.highFreqFactor - s.lowFreqFactor),
      );
      // Same association as the Python expression `(1 - smooth) * inv / factor + smooth * inv`.
      inv[i] = f(f(f(f(1 - smooth) * inv[i]!) / s.factor) + f(smooth * inv[i]!));
    }
  }
  return inv;
}

/**
 * cos/sin tables for positions [0, maxPositions): `[maxPositions, headDim / 2]` each, float32, angles computed
 * as float32 products like HF's `inv_freq @ position_ids`.
 */
export function ropeTables(
  spec: ModelSpec,
  maxPositions: number,
  type: LayerType = 'full',
): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInvFreq(spec, type);
  const half = inv.length;
  const cos = new Float32Array(maxPositions * half); // [pos, head_dim / 2]
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = f(p * inv[i]!); // i < half = inv.length
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
