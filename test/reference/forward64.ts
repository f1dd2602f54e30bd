/**
 * A plain float64 forward pass of a Llama/Qwen2/Mistral/Qwen3/Gemma 2/Gemma 3 decoder, written straight from
 * the Hugging Face modeling code (transformers 5.18) and independent of every ONNX path, so the graphs can be
 * checked against it. It reads only the spec's fields, never emlens' graph or rope code.
 */
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { LayerType, ModelSpec } from '../../src/model/spec.js';

export interface ReferenceOutput {
  /** [pos][vocab] */
  logits: Float64Array[];
  /** residual stream entering each layer: [layer][pos][dModel] */
  residPre: Float64Array[][];
  /** after the attention block's residual add: [layer][pos][dModel] */
  residMid: Float64Array[][];
  /** after the MLP block's residual add: [layer][pos][dModel] */
  residPost: Float64Array[][];
  /** what the attention block adds to the residual (Gemma: after its post-norm): [layer][pos][dModel] */
  attnOut: Float64Array[][];
  /** what the MLP block adds to the residual: [layer][pos][dModel] */
  mlpOut: Float64Array[][];
}

/**
 * Reads every tensor of DIR/model.safetensors as float64 (from whatever dtype is stored). A multimodal
 * checkpoint's text-model tensors (`language_model.model.*`, `model.language_model.*`,
 * `language_model.lm_head.weight`) are named as a causal LM's; its vision tensors are skipped.
 */
export async function loadWeights64(dir: string): Promise<Map<string, Float64Array>> {
  const file = await SafetensorsFile.open(`${dir}/model.safetensors`);
  try {
    const out = new Map<string, Float64Array>();
    for (const stored of file.tensors.keys()) {
      if (/^(model\.)?(vision_tower|multi_modal_projector)\./.test(stored)) continue;
      const name = stored
        .replace(/^model\.language_model\./, 'model.')
        .replace(/^language_model\.model\./, 'model.')
        .replace(/^language_model\.lm_head\./, 'lm_head.');
      out.set(name, Float64Array.from(await file.readFloat32(stored)));
    }
    return out;
  } finally {
    await file.close();
  }
}

/**
 * RoPE inverse frequencies `1 / theta^(2i/d)`, i < d/2, with transformers' `_compute_llama3_parameters` applied
 * when the spec has llama3 scaling. [headDim / 2]
 */
export function referenceInvFreq(spec: ModelSpec, type: LayerType = 'full'): Float64Array {
  const local = type === 'sliding' && spec.localRope !== null;
  const theta = local ? spec.localRope!.theta : spec.ropeTheta;
  const s = local ? spec.localRope!.scaling : spec.ropeScaling;
  const d = spec.headDim;
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / theta ** ((2 * i) / d);
  if (s === null) return inv;
  if (s.type === 'linear') return inv.map((v) => v / s.factor);
  const oldCtx = s.originalMaxPositionEmbeddings;
  const lowFreqWavelen = oldCtx / s.lowFreqFactor;
  const highFreqWavelen = oldCtx / s.highFreqFactor;
  // In range: i < inv.length.
  for (let i = 0; i < inv.length; i++) {
    const wavelen = (2 * Math.PI) / inv[i]!;
    if (wavelen > lowFreqWavelen) {
      inv[i] = inv[i]! / s.factor;
    } else if (wavelen >= highFreqWavelen) {
      const smooth = (oldCtx / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = ((1 - smooth) * inv[i]!) / s.factor + smooth * inv[i]!;
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
  const gemma = spec.gemmaBlock;
  const eps = spec.rmsNormEps;
  /** LlamaRMSNorm x·w, or Gemma's x·(1 + w) */
  const norm = (v: Float64Array, name: string) => rmsNorm(v, w(name), eps, gemma);
  /** q_norm / k_norm: the same RMSNorm over each head's hd values */
  const headNorm = (v: Float64Array, heads: number, name: string) => {
    const out = new Float64Array(v.length);
    for (let h = 0; h < heads; h++) out.set(norm(v.subarray(h * hd, (h + 1) * hd), name), h * hd);
    return out;
  };
  const act = spec.activation === 'gelu_tanh' ? geluTanh : silu;

  const embed = w('model.embed_tokens.weight'); // [vocab, d]
  const scale = spec.embedScale ?? 1;
  let x: Float64Array[] = ids.map((id) => embed.slice(id * d, (id + 1) * d).map((e) => e * scale)); // [pos][d]

  const residPre: Float64Array[][] = [];
  const residMid: Float64Array[][] = [];
  const residPost: Float64Array[][] = [];
  const attnOut: Float64Array[][] = [];
  const mlpOut: Float64Array[][] = [];
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}`;
    const type = spec.layerTypes[l];
    const invFreq = referenceInvFreq(spec, type);
    const window = type === 'sliding' ? spec.slidingWindow : null;
    residPre.push(x);
    const h = x.map((v) => norm(v, `${p}.input_layernorm.weight`));
    const lin = (v: Float64Array, proj: string, out: number, inp: number) =>
      linear(v, w(`${p}.${proj}.weight`), maybe(`${p}.${proj}.bias`), out, inp);
    const qk = (v: Float64Array, proj: 'q' | 'k', heads: number) => {
      const y = lin(v, `self_attn.${proj}_proj`, heads * hd, d);
      return spec.qkNorm ? headNorm(y, heads, `${p}.self_attn.${proj}_norm.weight`) : y;
    };
    // [pos][nh*hd], [pos][nkv*hd], [pos][nkv*hd]; positions[i] is in range: h has one row per id and
    // positions.length === ids.length (checked on entry).
    const q = h.map((v, i) => ropeAt(qk(v, 'q', nh), nh, hd, invFreq, positions[i]!));
    const k = h.map((v, i) => ropeAt(qk(v, 'k', nkv), nkv, hd, invFreq, positions[i]!));
    const vv = h.map((v) => lin(v, 'self_attn.v_proj', nkv * hd, d));
    const attn = attention(q, k, vv, nh, nkv, hd, spec.attnScale, spec.attnSoftcap, window); // [pos][nh*hd]
    const aOut = attn.map((a) => {
      const o = lin(a, 'self_attn.o_proj', d, nh * hd);
      return gemma ? norm(o, `${p}.post_attention_layernorm.weight`) : o;
    });
    attnOut.push(aOut);
    // aOut[i] is in range: aOut, attn, q and x all have one row per position.
    const mid = x.map((v, i) => add(v, aOut[i]!));
    residMid.push(mid);
    const mOut = mid.map((v) => {
      const h2 = norm(
        v,
        gemma ? `${p}.pre_feedforward_layernorm.weight` : `${p}.post_attention_layernorm.weight`,
      );
      const gate = lin(h2, 'mlp.gate_proj', ff, d);
      const up = lin(h2, 'mlp.up_proj', ff, d);
      const down = lin(
        gate.map((g, j) => act(g) * up[j]!), // in range: gate and up both have ff entries
        'mlp.down_proj',
        d,
        ff,
      );
      return gemma ? norm(down, `${p}.post_feedforward_layernorm.weight`) : down;
    });
    mlpOut.push(mOut);
    // mOut[i] is in range: mOut maps mid, one row per position.
    const post = mid.map((v, i) => add(v, mOut[i]!));
    residPost.push(post);
    x = post;
  }
  const lmHead = spec.tieWordEmbeddings ? embed : w('lm_head.weight'); // [vocab, d]
  const cap = spec.finalSoftcap;
  const logits = x.map((v) => {
    const z = linear(norm(v, 'model.norm.weight'), lmHead, null, vocab, d);
    return cap === null ? z : z.map((t) => cap * Math.tanh(t / cap));
  });
  return { logits, residPre, residMid, residPost, attnOut, mlpOut };
}

/** HF LlamaRMSNorm: x / sqrt(mean(x²) + eps), then times the weight (Gemma: times 1 + weight). */
function rmsNorm(x: Float64Array, weight: Float64Array, eps: number, plusOne = false): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  // weight[i] is in range: a norm weight has one entry per element of x.
  return x.map((v, i) => v * r * (plusOne ? 1 + weight[i]! : weight[i]!));
}

/** gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))). */
function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** y = W x + b with W stored [out, in]. */
function linear(x: Float64Array, weight: Float64Array, bias: Float64Array | null, out: number, inp: number) {
  const y = new Float64Array(out);
  // In range: weight holds out * inp entries, bias (when present) out, and x inp.
  for (let o = 0; o < out; o++) {
    let s = bias ? bias[o]! : 0;
    const row = o * inp;
    for (let i = 0; i < inp; i++) s += weight[row + i]! * x[i]!;
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
  // In range: invFreq holds hd / 2 entries and x holds heads * hd (one head per hd-sized slice).
  for (let h = 0; h < heads; h++) {
    const o = h * hd;
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos * invFreq[i]!);
      const s = Math.sin(pos * invFreq[i]!);
      const x1 = x[o + i]!;
      const x2 = x[o + half + i]!;
      out[o + i] = x1 * c - x2 * s;
      out[o + half + i] = x2 * c + x1 * s;
    }
  }
  return out;
}

/**
 * Causal softmax attention with GQA: query head h reads kv head floor(h / (heads / kvHeads)). Logits are
 * `scale`d, then softcapped (c·tanh(x/c)); with a `window`, query i sees keys i - window < j <= i only
 * (transformers' sliding_window_overlay).
 */
function attention(
  q: Float64Array[], // [pos][nh*hd]
  k: Float64Array[], // [pos][nkv*hd]
  v: Float64Array[], // [pos][nkv*hd]
  nh: number,
  nkv: number,
  hd: number,
  scale: number,
  softcap: number | null,
  window: number | null,
): Float64Array[] {
  const group = nh / nkv;
  // In range: qi holds nh * hd entries; k and v have one row per position (j <= i < q.length) of nkv * hd
  // entries, and kvo + t < nkv * hd since floor(h / group) < nkv; scores holds i + 1 entries and j <= i.
  return q.map((qi, i) => {
    const out = new Float64Array(nh * hd);
    const first = window === null ? 0 : Math.max(0, i - window + 1);
    for (let h = 0; h < nh; h++) {
      const kvo = Math.floor(h / group) * hd;
      const scores = new Float64Array(i + 1).fill(Number.NEGATIVE_INFINITY); // keys first..i only
      for (let j = first; j <= i; j++) {
        let s = 0;
        for (let t = 0; t < hd; t++) s += qi[h * hd + t]! * k[j]![kvo + t]!;
        s *= scale;
        scores[j] = softcap === null ? s : softcap * Math.tanh(s / softcap);
      }
      const m = Math.max(...scores);
      let z = 0;
      for (let j = first; j <= i; j++) {
        scores[j] = Math.exp(scores[j]! - m);
        z += scores[j]!;
      }
      for (let j = first; j <= i; j++) {
        const p = scores[j]! / z;
        for (let t = 0; t < hd; t++) out[h * hd + t]! += p * v[j]![kvo + t]!;
      }
    }
    return out;
  });
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]!); // in range: both are d-wide residual rows
}
