/**
 * The architecture of a decoder-only model, read from a Hugging Face `config.json`.
 * Everything downstream (graph builder, reference forward, tiny-model maker) reads this, never the raw config.
 */

export type Family = 'llama' | 'qwen2' | 'mistral' | 'qwen3' | 'gemma2' | 'gemma3';

export const SUPPORTED_ARCHITECTURES: Readonly<Record<string, Family>> = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  MistralForCausalLM: 'mistral',
  Qwen3ForCausalLM: 'qwen3',
  Gemma2ForCausalLM: 'gemma2',
  Gemma3ForCausalLM: 'gemma3',
  Gemma3ForConditionalGeneration: 'gemma3',
};

/** Families with Gemma's block: x·(1+w) RMSNorms, a post-norm on each sublayer output, scaled embeddings. */
export function isGemma(family: Family): boolean {
  return family === 'gemma2' || family === 'gemma3';
}

/** Llama-3 style frequency-dependent RoPE rescaling (`rope_scaling.rope_type == "llama3"`). */
export interface Llama3RopeScaling {
  readonly type: 'llama3';
  readonly factor: number;
  readonly lowFreqFactor: number;
  readonly highFreqFactor: number;
  readonly originalMaxPositionEmbeddings: number;
}

/** Linear position interpolation (`rope_type == "linear"`): every inverse frequency divided by `factor`. */
export interface LinearRopeScaling {
  readonly type: 'linear';
  readonly factor: number;
}

export type RopeScaling = Llama3RopeScaling | LinearRopeScaling;

/** RoPE of one layer type: base and scaling. */
export interface RopeSpec {
  readonly theta: number;
  readonly scaling: RopeScaling | null;
}

/** transformers' `layer_types` entries: `full_attention` or `sliding_attention`. */
export type LayerType = 'full' | 'sliding';

export interface ModelSpec {
  readonly family: Family;
  /** `architectures[0]` of config.json, e.g. `Qwen2ForCausalLM`. */
  readonly architecture: string;
  readonly numLayers: number;
  readonly dModel: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  readonly vocabSize: number;
  readonly rmsNormEps: number;
  /** RoPE base of full-attention layers (and of every layer unless `localRope` is set). */
  readonly ropeTheta: number;
  /** RoPE scaling of full-attention layers (and of every layer unless `localRope` is set). */
  readonly ropeScaling: RopeScaling | null;
  readonly maxPositionEmbeddings: number;
  /** q/k/v projections carry a bias (always for Qwen2; others with `attention_bias`). */
  readonly qkvBias: boolean;
  /** o_proj carries a bias (`attention_bias`; never Qwen2). */
  readonly oBias: boolean;
  /** gate/up/down carry biases (Llama `mlp_bias`). */
  readonly mlpBias: boolean;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** `torch_dtype` of config.json (informational: weights are read in whatever dtype the files hold). */
  readonly torchDtype: string;
  /** MLP activation: SiLU (SwiGLU) or tanh-approximated GELU (GeGLU, Gemma's `gelu_pytorch_tanh`). */
  readonly activation: 'silu' | 'gelu_tanh';
  /** Per-head RMSNorm of queries and keys over head_dim before RoPE (`q_norm`/`k_norm`: Qwen3, Gemma 3). */
  readonly qkNorm: boolean;
  /**
   * Gemma's block: RMSNorm as x·(1+w) in float32, four norms per block (input, post_attention,
   * pre_feedforward, post_feedforward) with the post-norms applied to the sublayer outputs before the
   * residual add.
   */
  readonly gemmaBlock: boolean;
  /** Embeddings are multiplied by this (Gemma: float32(sqrt(hidden_size))); null for none. */
  readonly embedScale: number | null;
  /** Attention logit scale (head_dim^-0.5; Gemma query_pre_attn_scalar^-0.5). */
  readonly attnScale: number;
  /** Attention logits become c·tanh(x/c) before the mask (Gemma 2 `attn_logit_softcapping`); null for none. */
  readonly attnSoftcap: number | null;
  /** Logits become c·tanh(x/c) (`final_logit_softcapping`); null for none. */
  readonly finalSoftcap: number | null;
  /** Attention type of each layer (`layer_types`). */
  readonly layerTypes: readonly LayerType[];
  /**
   * Keys a sliding layer sees: query i sees key j iff i - slidingWindow < j <= i (transformers'
   * `sliding_window_overlay`); null when no layer slides.
   */
  readonly slidingWindow: number | null;
  /** RoPE of sliding layers when it differs from full layers' (Gemma 3 `rope_local_base_freq`); else null. */
  readonly localRope: RopeSpec | null;
}

/** Hugging Face tensor names of the weights a spec needs, in a stable order. */
export function weightNames(spec: ModelSpec): string[] {
  const names = ['model.embed_tokens.weight'];
  for (let i = 0; i < spec.numLayers; i++) {
    const p = `model.layers.${i}`;
    names.push(`${p}.input_layernorm.weight`);
    for (const proj of ['q_proj', 'k_proj', 'v_proj']) {
      names.push(`${p}.self_attn.${proj}.weight`);
      if (spec.qkvBias) names.push(`${p}.self_attn.${proj}.bias`);
    }
    if (spec.qkNorm) names.push(`${p}.self_attn.q_norm.weight`, `${p}.self_attn.k_norm.weight`);
    names.push(`${p}.self_attn.o_proj.weight`);
    if (spec.oBias) names.push(`${p}.self_attn.o_proj.bias`);
    names.push(`${p}.post_attention_layernorm.weight`);
    if (spec.gemmaBlock) {
      names.push(`${p}.pre_feedforward_layernorm.weight`, `${p}.post_feedforward_layernorm.weight`);
    }
    for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
      names.push(`${p}.mlp.${proj}.weight`);
      if (spec.mlpBias) names.push(`${p}.mlp.${proj}.bias`);
    }
  }
  names.push('model.norm.weight');
  if (!spec.tieWordEmbeddings) names.push('lm_head.weight');
  return names;
}

/**
 * The shape a spec gives one HF weight (Linear weights are `[out, in]`) and, per dimension, the config.json
 * fields that set it (`num_key_value_heads 2 x head_dim 16`), for messages that say why a shape is expected.
 * The single source of expected shapes: the weight check, the tiny-model maker and the graph emitter's size
 * check all read it.
 */
export function weightDims(spec: ModelSpec, name: string): { shape: number[]; dims: string[] } {
  const { dModel: d, numHeads: h, numKvHeads: kv, headDim: hd, intermediateSize: ff, vocabSize: v } = spec;
  const D = [d, `hidden_size ${d}`] as const;
  const Q = [h * hd, `num_attention_heads ${h} x head_dim ${hd}`] as const;
  const KV = [kv * hd, `num_key_value_heads ${kv} x head_dim ${hd}`] as const;
  const FF = [ff, `intermediate_size ${ff}`] as const;
  const of = (...parts: (readonly [number, string])[]) => ({
    shape: parts.map((p) => p[0]),
    dims: parts.map((p) => p[1]),
  });
  if (name === 'model.embed_tokens.weight' || name === 'lm_head.weight') return of([v, `vocab_size ${v}`], D);
  if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') return of(D);
  if (name.endsWith('.q_norm.weight') || name.endsWith('.k_norm.weight')) return of([hd, `head_dim ${hd}`]);
  const proj = /\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.(weight|bias)$/.exec(name);
  if (!proj) throw new Error(`Unknown weight name '${name}'.`);
  type Dim = readonly [number, string];
  const byProj: Record<string, readonly [Dim, Dim]> = {
    q_proj: [Q, D],
    k_proj: [KV, D],
    v_proj: [KV, D],
    o_proj: [D, Q],
    gate_proj: [FF, D],
    up_proj: [FF, D],
    down_proj: [D, FF],
  };
  const dimsOf = byProj[proj[1] ?? ''];
  if (!dimsOf) throw new Error(`No shape for projection '${proj[1]}'.`); // the regex matches only byProj's keys
  const [out, inp] = dimsOf;
  return proj[2] === 'bias' ? of(out) : of(out, inp);
}

/** Shape of each HF weight (Linear weights are `[out, in]`). */
export function weightShape(spec: ModelSpec, name: string): number[] {
  return weightDims(spec, name).shape;
}

/** Number of parameters (tied embeddings counted once). */
export function parameterCount(spec: ModelSpec): number {
  let n = 0;
  for (const name of weightNames(spec)) n += weightShape(spec, name).reduce((a, b) => a * b, 1);
  return n;
}
