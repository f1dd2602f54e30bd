/**
 * Reads a Hugging Face `config.json` (+ `generation_config.json`) into a {@link ModelSpec}, applying the same
 * defaults transformers' LlamaConfig / Qwen2Config / MistralConfig apply, and rejecting what emlens cannot run.
 */
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { readInputText } from '../io/inputFiles.js';
import {
  type Family,
  isGemma,
  type LayerType,
  type ModelSpec,
  type RopeScaling,
  type RopeSpec,
  SUPPORTED_ARCHITECTURES,
} from './spec.js';

type Json = Record<string, unknown>;

const SUPPORTED_LIST = Object.keys(SUPPORTED_ARCHITECTURES).join(', ');

/**
 * Class defaults of the configs emlens applies to absent keys (transformers 5.18 `Qwen3Config`,
 * `Gemma2Config`, `Gemma3TextConfig`). Llama/Qwen2/Mistral configs keep emlens' stricter reading (their
 * required keys are always written by save_pretrained).
 */
const CLASS_DEFAULTS: Partial<Record<Family, Json>> = {
  qwen3: {
    vocab_size: 151936,
    hidden_size: 4096,
    intermediate_size: 22016,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    head_dim: 128,
    hidden_act: 'silu',
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    attention_bias: false,
    use_sliding_window: false,
    sliding_window: 4096,
    max_window_layers: 28,
  },
  gemma2: {
    vocab_size: 256000,
    hidden_size: 2304,
    intermediate_size: 9216,
    num_hidden_layers: 26,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-6,
    pad_token_id: 0,
    eos_token_id: 1,
    bos_token_id: 2,
    tie_word_embeddings: true,
    attention_bias: false,
    query_pre_attn_scalar: 256,
    sliding_window: 4096,
    final_logit_softcapping: 30.0,
    attn_logit_softcapping: 50.0,
  },
  gemma3: {
    vocab_size: 262208,
    hidden_size: 2304,
    intermediate_size: 9216,
    num_hidden_layers: 26,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-6,
    pad_token_id: 0,
    eos_token_id: 1,
    bos_token_id: 2,
    tie_word_embeddings: true,
    attention_bias: false,
    query_pre_attn_scalar: 256,
    sliding_window: 4096,
    final_logit_softcapping: null,
    attn_logit_softcapping: null,
    use_bidirectional_attention: false,
  },
};

/** Keys that shape the text model: a multimodal wrapper and its text_config must not disagree on them. */
const SHAPE_KEYS = [
  'vocab_size',
  'hidden_size',
  'intermediate_size',
  'num_hidden_layers',
  'num_attention_heads',
  'num_key_value_heads',
  'head_dim',
  'tie_word_embeddings',
  'max_position_embeddings',
  'sliding_window',
];

/**
 * The text model's config of a Gemma3ForConditionalGeneration (`model_type: gemma3`): its `text_config`
 * over Gemma3TextConfig's defaults; token ids and dtype from the wrapper when it sets them.
 */
function gemma3TextConfig(json: Json, source: string): Json {
  const raw = json.text_config ?? {};
  if (!isObject(raw)) {
    throw new EmlensError(
      `${source} has a text_config that is not an object; fix or re-download config.json.`,
    );
  }
  if (raw.model_type !== undefined && raw.model_type !== 'gemma3_text') {
    throw new EmlensError(
      `${source} is a Gemma3ForConditionalGeneration whose text_config has model_type ${JSON.stringify(raw.model_type)}, not "gemma3_text"; use the config.json that came with the model.`,
    );
  }
  for (const key of SHAPE_KEYS) {
    if (optional(json, key) && optional(raw, key) && JSON.stringify(json[key]) !== JSON.stringify(raw[key])) {
      throw new EmlensError(
        `${source} sets ${key} ${JSON.stringify(json[key])} but its text_config sets ${JSON.stringify(raw[key])}; the wrapper and text_config disagree, so fix config.json to one value.`,
      );
    }
  }
  const cfg: Json = { ...CLASS_DEFAULTS.gemma3, ...raw };
  for (const key of [
    'bos_token_id',
    'eos_token_id',
    'pad_token_id',
    'torch_dtype',
    'dtype',
    'tie_word_embeddings',
    'vocab_size',
  ]) {
    if (json[key] !== undefined) cfg[key] = json[key];
  }
  if (json.torch_dtype === undefined && json.dtype === undefined)
    cfg.torch_dtype = raw.torch_dtype ?? raw.dtype;
  return cfg;
}

const GELU_TANH = new Set(['gelu_pytorch_tanh']);

/**
 * Turns a parsed config.json into a spec.
 * @param json the parsed file
 * @param source the file's path, used in error messages
 */
export function parseConfig(json: unknown, source: string): ModelSpec {
  if (!isObject(json)) {
    throw new EmlensError(
      `${source} is not a JSON object; point emlens at a Hugging Face model's config.json.`,
    );
  }
  const { architecture, family } = resolveArchitecture(json, source);
  const gemma = isGemma(family);
  const where = architecture === 'Gemma3ForConditionalGeneration' ? `${source} (text_config)` : source;
  const cfg: Json =
    architecture === 'Gemma3ForConditionalGeneration'
      ? gemma3TextConfig(json, source)
      : { ...CLASS_DEFAULTS[family], ...json };

  let activation: ModelSpec['activation'] = 'silu';
  if (gemma) {
    const act = cfg.hidden_activation ?? cfg.hidden_act;
    if (typeof act !== 'string' || !GELU_TANH.has(act)) {
      throw new EmlensError(
        `${where} sets hidden_activation to ${JSON.stringify(act)}, but emlens only implements 'gelu_pytorch_tanh' for ${architecture}; use the config.json that came with the model.`,
      );
    }
    activation = 'gelu_tanh';
  } else {
    const hiddenAct = cfg.hidden_act;
    if (hiddenAct !== undefined && hiddenAct !== 'silu') {
      throw new EmlensError(
        `${where} sets hidden_act to ${JSON.stringify(hiddenAct)}, but emlens only implements 'silu' for ${architecture}; use a model with a SiLU MLP.`,
      );
    }
  }
  if (cfg.use_bidirectional_attention === true) {
    throw new EmlensError(
      `${where} sets use_bidirectional_attention, which makes an encoder (EmbeddingGemma), not a causal LM; emlens runs causal decoders only.`,
    );
  }

  const dModel = positiveInt(cfg, 'hidden_size', where);
  const numLayers = positiveInt(cfg, 'num_hidden_layers', where);
  const numHeads = positiveInt(cfg, 'num_attention_heads', where);
  const numKvHeads = optional(cfg, 'num_key_value_heads')
    ? positiveInt(cfg, 'num_key_value_heads', where)
    : numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new EmlensError(
      `${where} has num_attention_heads ${numHeads}, which is not a multiple of num_key_value_heads ${numKvHeads}; fix num_key_value_heads so it divides num_attention_heads.`,
    );
  }
  let headDim: number;
  if (optional(cfg, 'head_dim')) {
    headDim = positiveInt(cfg, 'head_dim', where);
  } else {
    if (dModel % numHeads !== 0) {
      throw new EmlensError(
        `${where} has hidden_size ${dModel}, which is not a multiple of num_attention_heads ${numHeads}, and no head_dim; add head_dim to the config.`,
      );
    }
    headDim = dModel / numHeads;
  }
  if (headDim % 2 !== 0) {
    throw new EmlensError(
      `${where} has an odd head dimension ${headDim}; RoPE needs an even head_dim, so fix the config.`,
    );
  }

  const maxPositionEmbeddings = positiveInt(cfg, 'max_position_embeddings', where);
  const rope =
    family === 'gemma3' ? gemma3Rope(cfg, where) : { full: flatRope(cfg, where, family), local: null };

  const { layerTypes, slidingWindow } = attentionLayout(cfg, where, family, numLayers);

  const attentionBias = optionalBool(cfg, 'attention_bias', where) ?? false;
  const mlpBias = optionalBool(cfg, 'mlp_bias', where) ?? false;
  // Qwen2 hard-codes bias=True on q/k/v and bias=False on o_proj, whatever the config says.
  const qkvBias = family === 'qwen2' ? true : attentionBias;
  const oBias = family === 'qwen2' ? false : attentionBias;

  const torchDtype = cfg.torch_dtype ?? cfg.dtype ?? 'float32';
  if (typeof torchDtype !== 'string') {
    throw new EmlensError(
      `${where} has a non-string torch_dtype; set it to a name like "bfloat16" or remove it.`,
    );
  }

  const softcap = (key: string) => (optional(cfg, key) ? positiveNumber(cfg, key, where) : null);
  const queryPreAttnScalar = gemma ? positiveNumber(cfg, 'query_pre_attn_scalar', where) : null;

  return {
    family,
    architecture,
    numLayers,
    dModel,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: positiveInt(cfg, 'intermediate_size', where),
    vocabSize: positiveInt(cfg, 'vocab_size', where),
    rmsNormEps: positiveNumber(cfg, 'rms_norm_eps', where),
    ropeTheta: rope.full.theta,
    ropeScaling: rope.full.scaling,
    maxPositionEmbeddings,
    qkvBias,
    oBias,
    mlpBias: family === 'llama' ? mlpBias : false,
    // LlamaConfig, Qwen2Config, MistralConfig and Qwen3Config default tie_word_embeddings to False, Gemma's to True.
    tieWordEmbeddings: optionalBool(cfg, 'tie_word_embeddings', where) ?? false,
    bosTokenId: tokenId(cfg, 'bos_token_id', where),
    eosTokenIds: tokenIds(cfg, 'eos_token_id', where),
    padTokenId: tokenId(cfg, 'pad_token_id', where),
    torchDtype,
    activation,
    qkNorm: family === 'qwen3' || family === 'gemma3',
    gemmaBlock: gemma,
    // transformers keeps sqrt(hidden_size) as a float32 buffer (cast to the weights' dtype, float32 here).
    embedScale: gemma ? Math.fround(Math.sqrt(dModel)) : null,
    attnScale: queryPreAttnScalar === null ? headDim ** -0.5 : queryPreAttnScalar ** -0.5,
    // Gemma 3's attention passes no softcap to the attention function, whatever the config says.
    attnSoftcap: family === 'gemma2' ? softcap('attn_logit_softcapping') : null,
    // Gemma3ForConditionalGeneration's forward applies no final softcap (5.18); Gemma3ForCausalLM does.
    finalSoftcap:
      gemma && architecture !== 'Gemma3ForConditionalGeneration' ? softcap('final_logit_softcapping') : null,
    layerTypes,
    slidingWindow,
    localRope: rope.local,
  };
}

/** RoPE read from `rope_theta`/`rope_scaling` (4.x) or a flat `rope_parameters` (5.x). */
function flatRope(cfg: Json, where: string, family: Family): RopeSpec {
  // transformers v5 moves rope_theta / rope_type into `rope_parameters`; read either layout.
  const ropeParams = isObject(cfg.rope_parameters) ? cfg.rope_parameters : undefined;
  if (ropeParams && (isObject(ropeParams.full_attention) || isObject(ropeParams.sliding_attention))) {
    throw new EmlensError(
      `${where} gives rope_parameters per layer type, which a ${family} config does not have; use the config.json that came with the model.`,
    );
  }
  const theta = optional(cfg, 'rope_theta')
    ? positiveNumber(cfg, 'rope_theta', where)
    : ropeParams && optional(ropeParams, 'rope_theta')
      ? positiveNumber(ropeParams, 'rope_theta', `${where} (rope_parameters)`)
      : 10000;
  return { theta, scaling: parseRopeScaling(cfg.rope_scaling ?? ropeParams ?? null, where) };
}

/**
 * Gemma 3's two RoPEs: full layers use `rope_theta` (default 1e6) and `rope_scaling`, sliding layers
 * `rope_local_base_freq` (default 1e4) unscaled (4.x layout); or `rope_parameters.full_attention` /
 * `.sliding_attention` (5.x layout).
 */
function gemma3Rope(cfg: Json, where: string): { full: RopeSpec; local: RopeSpec } {
  const params = cfg.rope_parameters;
  if (params !== undefined && params !== null) {
    if (!isObject(params) || !(isObject(params.full_attention) || isObject(params.sliding_attention))) {
      throw new EmlensError(
        `${where} has a rope_parameters that is not keyed by layer type (full_attention, sliding_attention) as Gemma 3 needs; use the config.json that came with the model.`,
      );
    }
    const one = (key: string, defaultTheta: number): RopeSpec => {
      const p = params[key] ?? {};
      if (!isObject(p))
        throw new EmlensError(`${where} has a rope_parameters.${key} that is not an object; fix it.`);
      const at = `${where} (rope_parameters.${key})`;
      const theta = optional(p, 'rope_theta') ? positiveNumber(p, 'rope_theta', at) : defaultTheta;
      return { theta, scaling: parseRopeScaling(p, at) };
    };
    const fullDefault = optional(cfg, 'rope_theta') ? positiveNumber(cfg, 'rope_theta', where) : 1_000_000;
    const localDefault = optional(cfg, 'rope_local_base_freq')
      ? positiveNumber(cfg, 'rope_local_base_freq', where)
      : 10_000;
    return { full: one('full_attention', fullDefault), local: one('sliding_attention', localDefault) };
  }
  const theta = optional(cfg, 'rope_theta') ? positiveNumber(cfg, 'rope_theta', where) : 1_000_000;
  const localTheta = optional(cfg, 'rope_local_base_freq')
    ? positiveNumber(cfg, 'rope_local_base_freq', where)
    : 10_000;
  return {
    full: { theta, scaling: parseRopeScaling(cfg.rope_scaling ?? null, where) },
    local: { theta: localTheta, scaling: null },
  };
}

/**
 * Which layers slide and over how many keys, as the 5.18 config classes decide: Mistral slides every layer
 * when `sliding_window` is set; Qwen2/Qwen3 only with `use_sliding_window`, from layer `max_window_layers` on;
 * Gemma 2 alternates (even layers slide); Gemma 3 slides all but every `sliding_window_pattern`-th (6) layer.
 * An explicit `layer_types` wins.
 */
function attentionLayout(
  cfg: Json,
  where: string,
  family: Family,
  numLayers: number,
): { layerTypes: LayerType[]; slidingWindow: number | null } {
  let window: number | null = optional(cfg, 'sliding_window')
    ? positiveInt(cfg, 'sliding_window', where)
    : null;
  if (family === 'qwen2' || family === 'qwen3') {
    if (!(optionalBool(cfg, 'use_sliding_window', where) ?? false)) window = null;
  } else if (family === 'llama') {
    window = null;
  }
  let types: LayerType[];
  const raw = cfg.layer_types;
  if (raw !== undefined && raw !== null && family !== 'mistral') {
    if (!Array.isArray(raw) || raw.length !== numLayers) {
      throw new EmlensError(
        `${where} has a layer_types that is not a list of ${numLayers} entries (one per layer); fix or remove it.`,
      );
    }
    types = raw.map((t, i) => {
      if (t === 'full_attention') return 'full';
      if (t === 'sliding_attention') return 'sliding';
      throw new EmlensError(
        `${where} has layer_types[${i}] ${JSON.stringify(t)}, but emlens only runs full_attention and sliding_attention layers; use a model without other attention types.`,
      );
    });
  } else if (family === 'gemma2') {
    types = Array.from({ length: numLayers }, (_, i) => ((i + 1) % 2 !== 0 ? 'sliding' : 'full'));
  } else if (family === 'gemma3') {
    const pattern = optional(cfg, 'sliding_window_pattern')
      ? positiveInt(cfg, 'sliding_window_pattern', where)
      : 6;
    types = Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern !== 0 ? 'sliding' : 'full'));
  } else if (family === 'mistral') {
    types = Array.from({ length: numLayers }, () => (window === null ? 'full' : 'sliding'));
  } else {
    const maxWindowLayers = optional(cfg, 'max_window_layers')
      ? positiveIntOrZero(cfg, 'max_window_layers', where)
      : numLayers;
    types = Array.from({ length: numLayers }, (_, i) =>
      window !== null && i >= maxWindowLayers ? 'sliding' : 'full',
    );
  }
  // A sliding layer without a window attends to everything (transformers passes sliding_window=None).
  if (window === null) types = types.map(() => 'full');
  if (!types.includes('sliding')) window = null;
  return { layerTypes: types, slidingWindow: window };
}

/**
 * Reads DIR/config.json and, when present, DIR/generation_config.json, whose bos/eos/pad ids win because that
 * is what `generate()` stops on (e.g. Llama-3 Instruct's `<|eot_id|>`).
 */
export async function readConfig(dir: string): Promise<ModelSpec> {
  const configPath = join(dir, 'config.json');
  const json = await readJson(configPath, `No config.json in ${dir}; pass a Hugging Face model folder.`);
  const spec = parseConfig(json, configPath);

  const genPath = join(dir, 'generation_config.json');
  const gen = await readJson(genPath, null);
  if (gen === undefined) return spec;
  if (!isObject(gen)) {
    throw new EmlensError(`${genPath} is not a JSON object; fix or delete it.`);
  }
  const eos = tokenIds(gen, 'eos_token_id', genPath);
  return {
    ...spec,
    bosTokenId: tokenId(gen, 'bos_token_id', genPath) ?? spec.bosTokenId,
    eosTokenIds: eos.length > 0 ? eos : spec.eosTokenIds,
    padTokenId: tokenId(gen, 'pad_token_id', genPath) ?? spec.padTokenId,
  };
}

/** `undefined` when the file is missing and `missingMessage` is null. */
async function readJson(path: string, missingMessage: string | null): Promise<unknown> {
  const text = await readInputText(path);
  if (text === null) {
    if (missingMessage === null) return undefined;
    throw new EmlensError(missingMessage);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new EmlensError(
      `${path} is not valid JSON (${(err as Error).message}); re-download or fix the file.`,
    );
  }
}

function resolveArchitecture(json: Json, source: string): { architecture: string; family: Family } {
  const archs = json.architectures;
  if (Array.isArray(archs) && archs.length > 0) {
    const architecture = archs[0];
    const family = typeof architecture === 'string' ? SUPPORTED_ARCHITECTURES[architecture] : undefined;
    if (!family || !Object.hasOwn(SUPPORTED_ARCHITECTURES, architecture)) {
      throw new EmlensError(
        `${source} declares architecture ${JSON.stringify(architecture)}, which emlens does not support; use a model whose architectures[0] is one of ${SUPPORTED_LIST}.`,
      );
    }
    return { architecture, family };
  }
  // Some hand-written or converted configs omit `architectures`; model_type still identifies the family.
  const modelType = json.model_type;
  const byType: Record<string, string> = {
    llama: 'LlamaForCausalLM',
    qwen2: 'Qwen2ForCausalLM',
    mistral: 'MistralForCausalLM',
    qwen3: 'Qwen3ForCausalLM',
    gemma2: 'Gemma2ForCausalLM',
    gemma3_text: 'Gemma3ForCausalLM',
    gemma3: 'Gemma3ForConditionalGeneration',
  };
  const arch = typeof modelType === 'string' ? byType[modelType] : undefined;
  const family = arch === undefined ? undefined : SUPPORTED_ARCHITECTURES[arch];
  const match = arch === undefined || family === undefined ? undefined : ([arch, family] as const);
  if (!match) {
    throw new EmlensError(
      `${source} has no architectures list and model_type ${JSON.stringify(modelType)} is not one emlens supports; use a model whose architectures[0] is one of ${SUPPORTED_LIST}.`,
    );
  }
  return { architecture: match[0], family: match[1] };
}

function parseRopeScaling(raw: unknown, source: string): RopeScaling | null {
  if (raw === null || raw === undefined) return null;
  if (!isObject(raw)) {
    throw new EmlensError(`${source} has a rope_scaling that is not an object or null; fix or remove it.`);
  }
  const type = raw.rope_type ?? raw.type;
  // rope_type "default" is transformers' name for plain, unscaled RoPE.
  if (type === 'default' || (type === undefined && raw.factor === undefined)) return null;
  const where = `${source} (rope_scaling)`;
  if (type === 'linear') return { type: 'linear', factor: positiveNumber(raw, 'factor', where) };
  if (type !== 'llama3') {
    throw new EmlensError(
      `${source} uses rope_scaling type ${JSON.stringify(type)}, but emlens only supports 'llama3' and 'linear' RoPE scaling; use a model with one of those or no rope_scaling.`,
    );
  }
  return {
    type: 'llama3',
    factor: positiveNumber(raw, 'factor', where),
    lowFreqFactor: positiveNumber(raw, 'low_freq_factor', where),
    highFreqFactor: positiveNumber(raw, 'high_freq_factor', where),
    originalMaxPositionEmbeddings: positiveInt(raw, 'original_max_position_embeddings', where),
  };
}

function isObject(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Present and not null (HF writes `null` for "use the default", e.g. `head_dim: null`). */
function optional(json: Json, key: string): boolean {
  return json[key] !== undefined && json[key] !== null;
}

function positiveInt(json: Json, key: string, source: string): number {
  const v = json[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new EmlensError(
      `${source} ${v === undefined ? 'is missing' : `has an invalid (${JSON.stringify(v)})`} ${key}; set it to a positive integer.`,
    );
  }
  return v;
}

function positiveIntOrZero(json: Json, key: string, source: string): number {
  const v = json[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new EmlensError(
      `${source} has an invalid (${JSON.stringify(v)}) ${key}; set it to a non-negative integer.`,
    );
  }
  return v;
}

function positiveNumber(json: Json, key: string, source: string): number {
  const v = json[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new EmlensError(
      `${source} ${v === undefined ? 'is missing' : `has an invalid (${JSON.stringify(v)})`} ${key}; set it to a positive number.`,
    );
  }
  return v;
}

function optionalBool(json: Json, key: string, source: string): boolean | undefined {
  const v = json[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') {
    throw new EmlensError(
      `${source} has a non-boolean ${key} (${JSON.stringify(v)}); set it to true or false.`,
    );
  }
  return v;
}

function isTokenId(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

function tokenId(json: Json, key: string, source: string): number | null {
  const v = json[key];
  if (v === undefined || v === null) return null;
  if (!isTokenId(v)) {
    throw new EmlensError(
      `${source} has an invalid ${key} (${JSON.stringify(v)}); set it to a token id or null.`,
    );
  }
  return v;
}

/** A single id or a list of ids (Llama-3.1 Instruct lists three end-of-turn tokens). */
function tokenIds(json: Json, key: string, source: string): number[] {
  const v = json[key];
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every(isTokenId)) {
    throw new EmlensError(
      `${source} has an invalid ${key} (${JSON.stringify(v)}); set it to a token id or a list of token ids.`,
    );
  }
  return list;
}
