/**
 * A plain float64 forward pass of a Llama/Qwen2/Mistral decoder, written straight from the Hugging Face
 * modeling code and independent of every ONNX path, so the graphs can be checked against it.
 */
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { ModelSpec } from '../../src/model/spec.js';

export interface ReferenceOutput {
  /** [pos][vocab] */
  logits: Float64Array[];
  /** residual stream entering each layer: [layer][pos][dModel] */
  residPre: Float64Array[][];
  /** after the attention block's residual add: [layer][pos][dModel] */
  residMid: Float64Array[][];
  /** after the MLP block's residual add: [layer][pos][dModel] */
  residPost: Float64Array[][];
}

/** Reads every tensor of DIR/model.safetensors as float64 (from whatever dtype is stored). */
export async function loadWeights64(dir: string): Promise<Map<string, Float64Array>> {
  const file = await SafetensorsFile.open(`${dir}/model.safetensors`);
  try {
    const out = new Map<string, Float64Array>();
    for (const name of file.tensors.keys()) out.set(name, Float64Array.from(await file.readFloat32(name)));
    return out;
  } finally {
    await file.close();
  }
}

/**
 * RoPE inverse frequencies `1 / theta^(2i/d)`, i < d/2, with transformers' `_compute_llama3_parameters` applied
 * when the spec has llama3 scaling. [headDim / 2]
 */
export function referenceInvFreq(spec: ModelSpec): Float64Array {
  const d = spec.headDim;
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / spec.ropeTheta ** ((2 * i) / d);
  const s = spec.ropeScaling;
  if (s === null) return inv;
  const oldCtx = s.originalMaxPositionEmbeddings;
  const lowFreqWavelen = oldCtx / s.lowFreqFactor;
  const highFreqWavelen = oldCtx / s.highFreqFactor;
  for (let i = 0; i < inv.length; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen > lowFreqWavelen) {
      inv[i] = inv[i] / s.factor;
    } else if (wavelen >= highFreqWavelen) {
      const smooth = (oldCtx / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = ((1 - smooth) * inv[i]) / s.factor + smooth * inv[i];
    }
  }
  return inv;
}

/**
 * Runs `ids` through the model. `positions` (default 0..n-1) only feed RoPE; the causal mask follows sequence
 * order.
 */
export function referenceForward(
  spec: ModelSpec,
  weights: Map<string, Float64Array>,
  ids: readonly number[],
  positions: readonly number[] = ids.map((_, i) => i),
): ReferenceOutput {
  if (positions.length !== ids.length) throw new Error('reference: positions and ids differ in length');
  const {
    dModel: d,
    numHeads: nh,
    numKvHeads: nkv,
    headDim: hd,
    intermediateSize: ff,
    vocabSize: vocab,
  } = spec;
  const w = (name: string): Float64Array => {
    const t = weights.get(name);
    if (!t) throw new Error(`reference: missing weight ${name}`);
    return t;
  };
  const maybe = (name: string): Float64Array | null => weights.get(name) ?? null;
  const invFreq = referenceInvFreq(spec);

  const embed = w('model.embed_tokens.weight'); // [vocab, d]
  let x: Float64Array[] = ids.map((id) => embed.slice(id * d, (id + 1) * d)); // [pos][d]

  const residPre: Float64Array[][] = [];
  const residMid: Float64Array[][] = [];
  const residPost: Float64Array[][] = [];
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}`;
    residPre.push(x);
    const h = x.map((v) => rmsNorm(v, w(`${p}.input_layernorm.weight`), spec.rmsNormEps));
    const lin = (v: Float64Array, proj: string, out: number, inp: number) =>
      linear(v, w(`${p}.${proj}.weight`), maybe(`${p}.${proj}.bias`), out, inp);
    // [pos][nh*hd], [pos][nkv*hd], [pos][nkv*hd]
    const q = h.map((v, i) => ropeAt(lin(v, 'self_attn.q_proj', nh * hd, d), nh, hd, invFreq, positions[i]));
    const k = h.map((v, i) =>
      ropeAt(lin(v, 'self_attn.k_proj', nkv * hd, d), nkv, hd, invFreq, positions[i]),
    );
    const vv = h.map((v) => lin(v, 'self_attn.v_proj', nkv * hd, d));
    const attn = attention(q, k, vv, nh, nkv, hd); // [pos][nh*hd]
    const mid = x.map((v, i) => add(v, lin(attn[i], 'self_attn.o_proj', d, nh * hd)));
    residMid.push(mid);
    const post = mid.map((v) => {
      const h2 = rmsNorm(v, w(`${p}.post_attention_layernorm.weight`), spec.rmsNormEps);
      const gate = lin(h2, 'mlp.gate_proj', ff, d);
      const up = lin(h2, 'mlp.up_proj', ff, d);
      const act = gate.map((g, j) => silu(g) * up[j]);
      return add(v, lin(act, 'mlp.down_proj', d, ff));
    });
    residPost.push(post);
    x = post;
  }
  const lmHead = spec.tieWordEmbeddings ? embed : w('lm_head.weight'); // [vocab, d]
  const logits = x.map((v) =>
    linear(rmsNorm(v, w('model.norm.weight'), spec.rmsNormEps), lmHead, null, vocab, d),
  );
  return { logits, residPre, residMid, residPost };
}

/** HF LlamaRMSNorm: x / sqrt(mean(x²) + eps), then times the weight. */
function rmsNorm(x: Float64Array, weight: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * weight[i]);
}

/** y = W x + b with W stored [out, in]. */
function linear(x: Float64Array, weight: Float64Array, bias: Float64Array | null, out: number, inp: number) {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = bias ? bias[o] : 0;
    const row = o * inp;
    for (let i = 0; i < inp; i++) s += weight[row + i] * x[i];
    y[o] = s;
  }
  return y;
}

/**
 * HF apply_rotary_pos_emb for one token: per head, out = x*cos + rotate_half(x)*sin with
 * rotate_half(x) = cat(-x2, x1) and cos/sin over cat(freqs, freqs).
 */
export function ropeAt(
  x: Float64Array,
  heads: number,
  hd: number,
  invFreq: Float64Array,
  pos: number,
): Float64Array {
  const half = hd / 2;
  const out = new Float64Array(x.length);
  for (let h = 0; h < heads; h++) {
    const o = h * hd;
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos * invFreq[i]);
      const s = Math.sin(pos * invFreq[i]);
      const x1 = x[o + i];
      const x2 = x[o + half + i];
      out[o + i] = x1 * c - x2 * s;
      out[o + half + i] = x2 * c + x1 * s;
    }
  }
  return out;
}

/** Causal softmax attention with GQA: query head h reads kv head floor(h / (heads / kvHeads)). */
function attention(
  q: Float64Array[], // [pos][nh*hd]
  k: Float64Array[], // [pos][nkv*hd]
  v: Float64Array[], // [pos][nkv*hd]
  nh: number,
  nkv: number,
  hd: number,
): Float64Array[] {
  const group = nh / nkv;
  const scale = 1 / Math.sqrt(hd);
  return q.map((qi, i) => {
    const out = new Float64Array(nh * hd);
    for (let h = 0; h < nh; h++) {
      const kvo = Math.floor(h / group) * hd;
      const scores = new Float64Array(i + 1); // keys 0..i only
      for (let j = 0; j <= i; j++) {
        let s = 0;
        for (let t = 0; t < hd; t++) s += qi[h * hd + t] * k[j][kvo + t];
        scores[j] = s * scale;
      }
      const m = Math.max(...scores);
      let z = 0;
      for (let j = 0; j <= i; j++) {
        scores[j] = Math.exp(scores[j] - m);
        z += scores[j];
      }
      for (let j = 0; j <= i; j++) {
        const p = scores[j] / z;
        for (let t = 0; t < hd; t++) out[h * hd + t] += p * v[j][kvo + t];
      }
    }
    return out;
  });
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]);
}
