/**
 * The architecture of a decoder-only model, read from a Hugging Face `config.json`.
 * Everything downstream (graph builder, reference forward, tiny-model maker) reads this, never the raw config.
 */

export type Family = 'llama' | 'qwen2' | 'mistral';

export const SUPPORTED_ARCHITECTURES: Readonly<Record<string, Family>> = {
  LlamaForCausalLM: 'llama',
  Qwen2ForCausalLM: 'qwen2',
  MistralForCausalLM: 'mistral',
};

/** Llama-3 style frequency-dependent RoPE rescaling (`rope_scaling.rope_type == "llama3"`). */
export interface Llama3RopeScaling {
  readonly type: 'llama3';
  readonly factor: number;
  readonly lowFreqFactor: number;
  readonly highFreqFactor: number;
  readonly originalMaxPositionEmbeddings: number;
}

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
  readonly ropeTheta: number;
  readonly ropeScaling: Llama3RopeScaling | null;
  readonly maxPositionEmbeddings: number;
  /** q/k/v projections carry a bias (always for Qwen2; Llama/Mistral with `attention_bias`). */
  readonly qkvBias: boolean;
  /** o_proj carries a bias (Llama/Mistral with `attention_bias`; never Qwen2). */
  readonly oBias: boolean;
  /** gate/up/down carry biases (Llama `mlp_bias`). */
  readonly mlpBias: boolean;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number | null;
  /** `torch_dtype` of config.json (informational: weights are read in whatever dtype the files hold). */
  readonly torchDtype: string;
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
    names.push(`${p}.self_attn.o_proj.weight`);
    if (spec.oBias) names.push(`${p}.self_attn.o_proj.bias`);
    names.push(`${p}.post_attention_layernorm.weight`);
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
