/**
 * The decoder forward written in tape ops, so its backward can be emitted too: the same Hugging Face semantics
 * per family as the inference graph (src/model/graph/transformer.ts) and the float64 reference
 * (test/reference/forward64.ts), but attention spelt out in primitive ops (the fused Attention/RotaryEmbedding
 * kernels have no VJP here): RMSNorm (Gemma's 1 + w), rotate-half RoPE from host-computed cos/sin of each row's
 * positions, an additive causal + padding (+ sliding window) mask, grouped KV heads expanded to the query
 * heads, softcapping, SiLU/tanh-GELU MLPs, scaled embeddings, the LM head.
 *
 * Shapes are static: one graph per (batch, seq). Frozen weights are graph inputs (see weights.ts).
 */
import type { LayerType, ModelSpec } from '../model/spec.js';
import { weightNames, weightShape } from '../model/spec.js';
import {
  type LoraModuleName,
  type LoraParamSpec,
  moduleDims,
  moduleWeight,
  PARAM,
  type ParamSpec,
  residualSite,
  steerShape,
} from './params.js';
import type { Tape, Val } from './tape.js';
import { frozenName, LM_HEAD_T } from './weights.js';

/** Graph input names of the batch (everything but weights and parameters). */
export const GRAD_IO = {
  inputIds: 'input_ids',
  /** `[batch, 1, seq, seq]` additive mask: 0 where query i sees key j, a large negative elsewhere. */
  bias: 'attn_bias',
  /** The same for sliding layers (key j also within the window of i). */
  slidingBias: 'attn_bias_sliding',
  /** `[batch, 1, seq, head_dim]` cos/sin of each row's positions, cat(freqs, freqs) as HF lays them out. */
  cos: (type: LayerType) => (type === 'sliding' ? 'rope_cos_local' : 'rope_cos'),
  sin: (type: LayerType) => (type === 'sliding' ? 'rope_sin_local' : 'rope_sin'),
} as const;

/** Whether a spec's sliding layers need their own mask, and their own RoPE tables. */
export function layerKinds(spec: ModelSpec): { sliding: boolean; localRope: boolean } {
  const sliding = spec.slidingWindow !== null && spec.layerTypes.includes('sliding');
  return { sliding, localRope: sliding && spec.localRope !== null };
}

export interface DecoderOutputs {
  /** `[batch, seq, vocab]` */
  readonly logits: Val;
  /** The parameters, in `paramOrder` order. */
  readonly params: readonly { readonly name: string; readonly val: Val }[];
}

/** Emits the decoder over a `[batch, seq]` batch; the parameters of `p` become graph inputs with gradients. */
export function emitDecoder(
  t: Tape,
  spec: ModelSpec,
  batch: number,
  seq: number,
  p: ParamSpec,
): DecoderOutputs {
  const d = spec.dModel;
  const H = spec.numHeads;
  const KV = spec.numKvHeads;
  const hd = spec.headDim;
  const B = batch;
  const S = seq;
  const kinds = layerKinds(spec);

  // ---- frozen weights and batch inputs
  const w = new Map<string, Val>();
  for (const name of weightNames(spec)) {
    const shape = weightShape(spec, name);
    const graphShape = name.endsWith('_proj.weight') ? [shape[1]!, shape[0]!] : shape;
    w.set(name, t.input(frozenName(name), graphShape));
  }
  const head = t.input(LM_HEAD_T, [d, spec.vocabSize]);
  const W = (name: string): Val => {
    const v = w.get(name);
    if (!v) throw new Error(`grad forward: no weight ${name}`);
    return v;
  };
  const ids = t.intInput(GRAD_IO.inputIds, [B, S]);
  const fullBias = t.input(GRAD_IO.bias, [B, 1, S, S]);
  const slidingBias = kinds.sliding ? t.input(GRAD_IO.slidingBias, [B, 1, S, S]) : fullBias;
  const rope = (type: LayerType) => ({
    cos: t.input(GRAD_IO.cos(type), [B, 1, S, hd]),
    sin: t.input(GRAD_IO.sin(type), [B, 1, S, hd]),
  });
  const fullRope = rope('full');
  const localRope = kinds.localRope ? rope('sliding') : fullRope;

  // ---- parameters
  const params: { name: string; val: Val }[] = [];
  const steerSpec = p.steer;
  const steer = steerSpec ? t.param(PARAM.steer, steerShape(spec, steerSpec, B, S)) : null;
  if (steer) params.push({ name: PARAM.steer, val: steer });
  /** site number -> index into the steering parameter's first axis */
  const steerAt = new Map<number, number>();
  steerSpec?.sites.forEach((s, k) => {
    steerAt.set(residualSite(spec, s), steerSpec.shared ? 0 : k);
  });
  const lora = new Map<string, { spec: LoraParamSpec; a: Val; b: Val }>();
  for (const l of p.lora ?? []) {
    const { inDim, outDim } = moduleDims(spec, l.module);
    const a = t.param(PARAM.loraA(l), [l.rank, inDim]);
    const b = t.param(PARAM.loraB(l), [outDim, l.rank]);
    params.push({ name: PARAM.loraA(l), val: a }, { name: PARAM.loraB(l), val: b });
    lora.set(`${l.layer}.${l.module}`, { spec: l, a, b });
  }

  /** The residual stream after write `site`, with the steering vector added when it steers there. */
  const steered = (x: Val, site: number): Val => {
    const k = steerAt.get(site);
    if (k === undefined || !steer || !steerSpec) return x;
    if (steerSpec.perToken) return t.add(x, t.reshape(t.slice(steer, 0, k, k + 1), [B, S, d]));
    if (steerSpec.shared) return t.add(x, steer); // [d] broadcast over [B, S, d]
    return t.add(x, t.slice(steer, 0, k, k + 1)); // [1, d]
  };

  const rmsNorm = (x: Val, weight: Val): Val => {
    const last = x.shape.length - 1;
    const ms = t.reduceMean(t.mul(x, x), [last], true);
    return t.mul(t.div(x, t.sqrt(t.add(ms, t.scalar(spec.rmsNormEps)))), weight);
  };
  /** `[B, S, heads*hd]` normed per head over hd (q_norm / k_norm) */
  const headNorm = (x: Val, heads: number, weight: Val): Val =>
    t.reshape(rmsNorm(t.reshape(x, [B, S, heads, hd]), weight), [B, S, heads * hd]);
  const softcap = (x: Val, c: number): Val => t.mul(t.tanh(t.div(x, t.scalar(c))), t.scalar(c));

  /** x W (+ b) (+ scale · x Aᵀ Bᵀ) for module `module` of layer `layer`; x `[B, S, in]` */
  const linear = (x: Val, layer: number, module: LoraModuleName, hasBias: boolean): Val => {
    const prefix = moduleWeight(layer, module);
    let y = t.matmul(x, W(`${prefix}.weight`));
    if (hasBias) y = t.add(y, W(`${prefix}.bias`));
    const f = lora.get(`${layer}.${module}`);
    if (f) {
      const low = t.matmul(x, t.transpose(f.a, [1, 0])); // [B, S, r]
      const up = t.matmul(low, t.transpose(f.b, [1, 0])); // [B, S, out]
      y = t.add(y, t.mul(up, t.scalar(f.spec.scale)));
    }
    return y;
  };

  /** HF apply_rotary_pos_emb: x cos + rotate_half(x) sin, x `[B, heads, S, hd]` */
  const applyRope = (x: Val, r: { cos: Val; sin: Val }): Val => {
    const x1 = t.slice(x, 3, 0, hd / 2);
    const x2 = t.slice(x, 3, hd / 2, hd);
    const rotated = t.concat([t.neg(x2), x1], 3);
    return t.add(t.mul(x, r.cos), t.mul(rotated, r.sin));
  };
  /** `[B, S, heads*hd]` -> `[B, heads, S, hd]` */
  const toHeads = (x: Val, heads: number) => t.transpose(t.reshape(x, [B, S, heads, hd]), [0, 2, 1, 3]);
  /** KV heads repeated for their query group: `[B, KV, S, hd]` -> `[B, H, S, hd]` (repeat_kv) */
  const repeatKv = (x: Val): Val => {
    if (KV === H) return x;
    const group = H / KV;
    return t.reshape(t.expand(t.reshape(x, [B, KV, 1, S, hd]), [B, KV, group, S, hd]), [B, H, S, hd]);
  };

  const act = (gate: Val): Val => {
    if (spec.activation === 'silu') return t.mul(gate, t.sigmoid(gate));
    // gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))
    const cube = t.mul(t.mul(gate, gate), gate);
    const inner = t.mul(t.add(gate, t.mul(cube, t.scalar(0.044715))), t.scalar(Math.sqrt(2 / Math.PI)));
    return t.mul(t.mul(gate, t.scalar(0.5)), t.add(t.tanh(inner), t.scalar(1)));
  };

  // ---- embeddings
  let x = t.gather(W('model.embed_tokens.weight'), ids); // [B, S, d]
  if (spec.embedScale !== null) x = t.mul(x, t.scalar(spec.embedScale));
  x = steered(x, 0);

  for (let i = 0; i < spec.numLayers; i++) {
    const pre = `model.layers.${i}`;
    const type: LayerType = spec.layerTypes[i] === 'sliding' && kinds.sliding ? 'sliding' : 'full';
    const r = type === 'sliding' ? localRope : fullRope;
    const mask = type === 'sliding' ? slidingBias : fullBias;

    // attention
    const h = rmsNorm(x, W(`${pre}.input_layernorm.weight`));
    let q = linear(h, i, 'q_proj', spec.qkvBias);
    let k = linear(h, i, 'k_proj', spec.qkvBias);
    const v = linear(h, i, 'v_proj', spec.qkvBias);
    if (spec.qkNorm) {
      q = headNorm(q, H, W(`${pre}.self_attn.q_norm.weight`));
      k = headNorm(k, KV, W(`${pre}.self_attn.k_norm.weight`));
    }
    const qh = applyRope(toHeads(q, H), r); // [B, H, S, hd]
    const kh = repeatKv(applyRope(toHeads(k, KV), r)); // [B, H, S, hd]
    const vh = repeatKv(toHeads(v, KV)); // [B, H, S, hd]
    let scores = t.mul(t.matmul(qh, t.transpose(kh, [0, 1, 3, 2])), t.scalar(spec.attnScale)); // [B, H, S, S]
    if (spec.attnSoftcap !== null) scores = softcap(scores, spec.attnSoftcap);
    const probs = t.softmax(t.add(scores, mask));
    const ctx = t.reshape(t.transpose(t.matmul(probs, vh), [0, 2, 1, 3]), [B, S, H * hd]);
    let attnOut = linear(ctx, i, 'o_proj', spec.oBias);
    if (spec.gemmaBlock) attnOut = rmsNorm(attnOut, W(`${pre}.post_attention_layernorm.weight`));
    x = steered(t.add(x, attnOut), 2 * i + 1);

    // MLP: down(act(gate(h)) * up(h))
    const h2 = rmsNorm(
      x,
      W(
        spec.gemmaBlock
          ? `${pre}.pre_feedforward_layernorm.weight`
          : `${pre}.post_attention_layernorm.weight`,
      ),
    );
    const gated = t.mul(
      act(linear(h2, i, 'gate_proj', spec.mlpBias)),
      linear(h2, i, 'up_proj', spec.mlpBias),
    );
    let mlpOut = linear(gated, i, 'down_proj', spec.mlpBias);
    if (spec.gemmaBlock) mlpOut = rmsNorm(mlpOut, W(`${pre}.post_feedforward_layernorm.weight`));
    x = steered(t.add(x, mlpOut), 2 * i + 2);
  }

  let logits = t.matmul(rmsNorm(x, W('model.norm.weight')), head); // [B, S, vocab]
  if (spec.finalSoftcap !== null) logits = softcap(logits, spec.finalSoftcap);
  return { logits, params };
}
