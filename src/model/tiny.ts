/**
 * The tiny-model maker: writes a real Hugging Face model folder (config, generation config, safetensors
 * weights, byte-level BPE tokenizer with a chat template) with random weights drawn deterministically from a
 * seed. Tests and benchmarks use it instead of downloading checkpoints; transformers can load the result.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { f32ToBf16, f32ToF16 } from '../io/halfFloat.js';
import { writeFolderAtomic } from '../io/outputs.js';
import { writeSafetensors } from '../io/safetensors.js';
import { sortKeys } from '../util/json.js';
import { Rng } from '../util/random.js';
import { checkpointName } from './layout.js';
import {
  type Family,
  isGemma,
  type LayerType,
  type ModelSpec,
  type RopeScaling,
  weightNames,
  weightShape,
} from './spec.js';
import {
  buildTinyTokenizer,
  type FolderTokenizer,
  readTokenizerFolder,
  type TinyTokenizer,
  type TokenizerFamily,
} from './tinyTokenizer.js';

export type TinyDtype = 'F32' | 'BF16' | 'F16';

/**
 * A tiny model's family: a spec family, or `gemma3_text` for a Gemma3ForCausalLM (`gemma3` writes the
 * released checkpoints' layout, a Gemma3ForConditionalGeneration with a minimal vision config and no vision
 * weights).
 */
export type TinyFamily = Family | 'gemma3_text';

export const TINY_FAMILIES: readonly TinyFamily[] = [
  'qwen2',
  'llama',
  'mistral',
  'qwen3',
  'gemma2',
  'gemma3',
  'gemma3_text',
];

/** Shape and flavour of a tiny model; every field but `family` has a small default. */
export interface TinyModelOptions {
  readonly family: TinyFamily;
  /** Seed of every random weight (default 0). */
  readonly seed?: number;
  /** default 2 */
  readonly numLayers?: number;
  /** default 64 */
  readonly dModel?: number;
  /** default 4 */
  readonly numHeads?: number;
  /** default 2 */
  readonly numKvHeads?: number;
  /** default dModel / numHeads; set it to differ from that, as some Mistral models do */
  readonly headDim?: number;
  /** default 128 */
  readonly intermediateSize?: number;
  /**
   * default 512 (the built tokenizer's size with `tokenizer`); must cover the tokenizer's vocabulary (~330
   * tokens, or the folder's tokenizer with its added tokens)
   */
  readonly vocabSize?: number;
  /**
   * A real Hugging Face tokenizer folder to use instead of the built one: its tokenizer.json,
   * tokenizer_config.json (chat template included), chat_template.jinja and special_tokens_map.json are
   * copied, and config.json / generation_config.json take their vocab size, bos, eos and pad ids from it.
   */
  readonly tokenizer?: string;
  /** default false (transformers' default) for Llama/Qwen/Mistral, true for Gemma */
  readonly tieWordEmbeddings?: boolean;
  /** `attention_bias` (biases on q, k, v and o). Qwen2 always has q/k/v bias and no o bias. */
  readonly qkvBias?: boolean;
  /** Llama `mlp_bias` (default false; ignored for other families, whose MLPs have no bias). */
  readonly mlpBias?: boolean;
  /** default 10000: small enough that every RoPE band rotates visibly over a short prompt */
  readonly ropeTheta?: number;
  /**
   * 'llama3' picks Llama-3.1's factors with the original context at maxPositionEmbeddings / 8; 'linear' a
   * factor of 8 (Gemma 3 puts it on its global layers only).
   */
  readonly ropeScaling?: 'llama3' | 'linear' | RopeScaling | null;
  /** Gemma 3's `rope_local_base_freq` (default 10000; the global base `ropeTheta` defaults to 100000 there). */
  readonly ropeLocalTheta?: number;
  /**
   * Keys a sliding layer sees. Default: 16 for Gemma (whose layers alternate), none (full attention) for the
   * others; set it on Mistral (every layer slides) or Qwen2/Qwen3 (`use_sliding_window`, layers from
   * `maxWindowLayers` on).
   */
  readonly slidingWindow?: number | null;
  /** Qwen2/Qwen3 `max_window_layers` (default 0: every layer slides when a window is set). */
  readonly maxWindowLayers?: number;
  /** Gemma 3's `sliding_window_pattern` (default 2 in tiny models: sliding, full, sliding, ...; real ones use 6). */
  readonly slidingWindowPattern?: number;
  /** Gemma 2 softcaps (defaults: transformers', 50 and 30); null turns one off. */
  readonly attnSoftcap?: number | null;
  readonly finalSoftcap?: number | null;
  /** default 2048 */
  readonly maxPositionEmbeddings?: number;
  /** default 1e-6 */
  readonly rmsNormEps?: number;
  /** dtype of the safetensors weights (default F32); config.json's torch_dtype follows it. */
  readonly dtype?: TinyDtype;
}

/** Qwen2.5-0.5B's architecture (random weights, F32 ≈ 2 GB), for benchmarks. */
export const QWEN25_05B_SHAPE: TinyModelOptions = {
  family: 'qwen2',
  numLayers: 24,
  dModel: 896,
  numHeads: 14,
  numKvHeads: 2,
  intermediateSize: 4864,
  vocabSize: 151936,
  tieWordEmbeddings: true,
  ropeTheta: 1000000,
  rmsNormEps: 1e-6,
  maxPositionEmbeddings: 32768,
};

const ARCHITECTURE: Record<TinyFamily, string> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3: 'Gemma3ForConditionalGeneration',
  gemma3_text: 'Gemma3ForCausalLM',
};

/** The tokenizer each family borrows (Qwen3 Qwen2's; Gemma the Llama-3 one, until Gemma's own exists). */
const TOKENIZER: Record<TinyFamily, TokenizerFamily> = {
  llama: 'llama',
  qwen2: 'qwen2',
  mistral: 'mistral',
  qwen3: 'qwen2',
  gemma2: 'llama',
  gemma3: 'llama',
  gemma3_text: 'llama',
};

const TORCH_DTYPE: Record<TinyDtype, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

/**
 * Writes a tiny HF model folder to `outDir` and returns its spec, which equals `readConfig(outDir)`. Same
 * options and seed give byte-identical files. An existing non-empty `outDir` is refused unless `overwrite`,
 * which replaces it whole; either way the folder appears complete or not at all.
 */
export async function makeTinyModel(
  outDir: string,
  options: TinyModelOptions & { readonly overwrite?: boolean },
): Promise<ModelSpec> {
  tinySpec({ ...options, tokenizer: undefined }); // checks the family and shape before any file is read
  const folder: FolderTokenizer | null =
    options.tokenizer !== undefined ? await readTokenizerFolder(options.tokenizer) : null;
  const tokenizer = folder ?? buildTinyTokenizer(TOKENIZER[options.family]);
  const spec = specFor(options, tokenizer);
  const dtype = options.dtype ?? 'F32';
  await writeFolderAtomic(outDir, { overwrite: options.overwrite }, async (dir) => {
    await writeJson(join(dir, 'config.json'), configJson(spec, options));
    await writeJson(join(dir, 'generation_config.json'), generationConfigJson(spec));
    if (folder !== null) {
      for (const [name, bytes] of folder.files) await writeFile(join(dir, name), bytes);
    } else {
      await writeJson(join(dir, 'tokenizer.json'), tokenizer.json);
      await writeJson(join(dir, 'tokenizer_config.json'), tokenizer.config);
    }
    await writeWeights(join(dir, 'model.safetensors'), spec, options.seed ?? 0, dtype);
  });
  return spec;
}

/**
 * The spec a tiny model with these options has (validates the options; writes nothing). With `tokenizer`
 * (a folder, read asynchronously) use {@link makeTinyModel}.
 */
export function tinySpec(options: TinyModelOptions): ModelSpec {
  if (!Object.hasOwn(ARCHITECTURE, options.family)) {
    throw new EmlensError(
      `Unknown tiny-model family '${options.family}'; use one of ${TINY_FAMILIES.join(', ')}.`,
    );
  }
  if (options.tokenizer !== undefined) {
    throw new EmlensError('tinySpec cannot read a tokenizer folder; call makeTinyModel with it instead.');
  }
  return specFor(options, buildTinyTokenizer(TOKENIZER[options.family]));
}

function specFor(options: TinyModelOptions, tokenizer: TinyTokenizer): ModelSpec {
  const family: Family = options.family === 'gemma3_text' ? 'gemma3' : options.family;
  const gemma = isGemma(family);
  const dModel = posInt('dModel', options.dModel ?? 64);
  const numHeads = posInt('numHeads', options.numHeads ?? 4);
  const numKvHeads = posInt('numKvHeads', options.numKvHeads ?? 2);
  if (numHeads % numKvHeads !== 0) {
    throw new EmlensError(
      `Tiny model numHeads ${numHeads} is not a multiple of numKvHeads ${numKvHeads}; change one.`,
    );
  }
  const headDim = posInt('headDim', options.headDim ?? dModel / numHeads);
  if (headDim % 2 !== 0) {
    throw new EmlensError(`Tiny model headDim ${headDim} is odd; RoPE needs an even headDim, so change it.`);
  }
  const vocabSize = posInt(
    'vocabSize',
    options.vocabSize ?? (options.tokenizer !== undefined ? tokenizer.size : 512),
  );
  if (vocabSize < tokenizer.size) {
    throw new EmlensError(
      `Tiny model vocabSize ${vocabSize} is smaller than its tokenizer (${tokenizer.size} tokens); use at least ${tokenizer.size}.`,
    );
  }
  const maxPositionEmbeddings = posInt('maxPositionEmbeddings', options.maxPositionEmbeddings ?? 2048);
  const bias = options.qkvBias ?? false;
  const numLayers = posInt('numLayers', options.numLayers ?? 2);
  const window =
    options.slidingWindow === undefined
      ? gemma
        ? 16
        : null
      : options.slidingWindow && posInt('slidingWindow', options.slidingWindow);
  if (family === 'llama' && window !== null) {
    throw new EmlensError(
      'Llama has no sliding-window attention; drop slidingWindow or pick another family.',
    );
  }
  const pattern = posInt('slidingWindowPattern', options.slidingWindowPattern ?? 2);
  const maxWindowLayers = options.maxWindowLayers ?? 0;
  const layerTypes: LayerType[] = Array.from({ length: numLayers }, (_, i) => {
    if (window === null) return 'full';
    if (family === 'gemma2') return (i + 1) % 2 !== 0 ? 'sliding' : 'full';
    if (family === 'gemma3') return (i + 1) % pattern !== 0 ? 'sliding' : 'full';
    if (family === 'mistral') return 'sliding';
    return i >= maxWindowLayers ? 'sliding' : 'full';
  });
  const slides = layerTypes.includes('sliding');
  const ropeScaling = ropeScalingFor(options.ropeScaling ?? null, maxPositionEmbeddings);
  return {
    family,
    architecture: ARCHITECTURE[options.family],
    numLayers,
    dModel,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: posInt('intermediateSize', options.intermediateSize ?? 128),
    vocabSize,
    rmsNormEps: options.rmsNormEps ?? 1e-6,
    ropeTheta: options.ropeTheta ?? (family === 'gemma3' ? 100000 : 10000),
    ropeScaling,
    maxPositionEmbeddings,
    qkvBias: family === 'qwen2' ? true : bias,
    oBias: family === 'qwen2' ? false : bias,
    mlpBias: family === 'llama' ? (options.mlpBias ?? false) : false,
    tieWordEmbeddings: options.tieWordEmbeddings ?? gemma,
    bosTokenId: tokenizer.bosId,
    eosTokenIds: tokenizer.generationEosIds,
    padTokenId: tokenizer.padId,
    torchDtype: TORCH_DTYPE[options.dtype ?? 'F32'],
    activation: gemma ? 'gelu_tanh' : 'silu',
    qkNorm: family === 'qwen3' || family === 'gemma3',
    gemmaBlock: gemma,
    embedScale: gemma ? Math.fround(Math.sqrt(dModel)) : null,
    // Gemma's query_pre_attn_scalar is written as head_dim, its usual value
    attnScale: headDim ** -0.5,
    attnSoftcap: family === 'gemma2' ? (options.attnSoftcap === undefined ? 50 : options.attnSoftcap) : null,
    finalSoftcap:
      family === 'gemma2' || options.family === 'gemma3_text'
        ? options.finalSoftcap === undefined
          ? family === 'gemma2'
            ? 30
            : null
          : options.finalSoftcap
        : null,
    layerTypes,
    slidingWindow: slides ? window : null,
    localRope: family === 'gemma3' ? { theta: options.ropeLocalTheta ?? 10000, scaling: null } : null,
  };
}

function posInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v <= 0)
    throw new EmlensError(`Tiny model ${name} is ${v}; use a positive integer.`);
  return v;
}

function ropeScalingFor(
  r: 'llama3' | 'linear' | RopeScaling | null,
  maxPositionEmbeddings: number,
): RopeScaling | null {
  if (r === null || typeof r === 'object') return r;
  if (r === 'linear') return { type: 'linear', factor: 8 };
  // Llama-3.1's factors; the original context is scaled down with the tiny context so that, for the default
  // head sizes, some RoPE bands fall in each of the three regimes (kept, interpolated, divided).
  return {
    type: 'llama3',
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: Math.max(1, Math.floor(maxPositionEmbeddings / 8)),
  };
}

// ---------------------------------------------------------------------------------------------------------
// config.json / generation_config.json

/** config.json as transformers' `save_pretrained` writes it for the family (keys sorted, like `sort_keys`). */
function configJson(spec: ModelSpec, options: TinyModelOptions): Record<string, unknown> {
  if (isGemma(spec.family)) return gemmaConfigJson(spec, options);
  const c: Record<string, unknown> = {
    architectures: [spec.architecture],
    attention_dropout: 0.0,
    bos_token_id: spec.bosTokenId,
    eos_token_id: configEos(spec),
    hidden_act: 'silu',
    hidden_size: spec.dModel,
    initializer_range: 0.02,
    intermediate_size: spec.intermediateSize,
    max_position_embeddings: spec.maxPositionEmbeddings,
    model_type: spec.family,
    num_attention_heads: spec.numHeads,
    num_hidden_layers: spec.numLayers,
    num_key_value_heads: spec.numKvHeads,
    rms_norm_eps: spec.rmsNormEps,
    rope_scaling: ropeScalingJson(spec.ropeScaling),
    rope_theta: spec.ropeTheta,
    tie_word_embeddings: spec.tieWordEmbeddings,
    torch_dtype: spec.torchDtype,
    transformers_version: '4.46.3',
    use_cache: true,
    vocab_size: spec.vocabSize,
  };
  // Llama/Mistral configs carry head_dim; Qwen2Config (4.46) has none, so Qwen2 only gets one when non-default.
  if (spec.headDim !== spec.dModel / spec.numHeads || spec.family !== 'qwen2') c.head_dim = spec.headDim;
  if (spec.family === 'llama') {
    c.attention_bias = spec.qkvBias;
    c.mlp_bias = spec.mlpBias;
    c.pretraining_tp = 1;
  } else if (spec.family === 'mistral') {
    // MistralConfig has no attention_bias field, but its modeling code honours one; write it only when set.
    if (options.qkvBias) c.attention_bias = true;
    c.sliding_window = spec.slidingWindow;
  } else {
    // Qwen2/Qwen3: the window only applies with use_sliding_window, from layer max_window_layers on
    if (spec.family === 'qwen3') c.attention_bias = spec.qkvBias;
    c.max_window_layers = spec.slidingWindow === null ? spec.numLayers : (options.maxWindowLayers ?? 0);
    c.sliding_window = spec.slidingWindow ?? spec.maxPositionEmbeddings;
    c.use_sliding_window = spec.slidingWindow !== null;
  }
  return sortKeys(c);
}

function ropeScalingJson(r: RopeScaling | null): Record<string, unknown> | null {
  if (r === null) return null;
  if (r.type === 'linear') return { factor: r.factor, rope_type: 'linear' };
  return {
    factor: r.factor,
    high_freq_factor: r.highFreqFactor,
    low_freq_factor: r.lowFreqFactor,
    original_max_position_embeddings: r.originalMaxPositionEmbeddings,
    rope_type: 'llama3',
  };
}

/**
 * Gemma configs: Gemma 2 and `gemma3` in the layout of the released checkpoints (transformers 4.x:
 * `rope_theta`, `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`; `gemma3` nests the text
 * model in `text_config` beside a minimal vision config), `gemma3_text` as transformers 5.18 writes it
 * (`rope_parameters` per layer type, `layer_types`).
 */
function gemmaConfigJson(spec: ModelSpec, options: TinyModelOptions): Record<string, unknown> {
  const text: Record<string, unknown> = {
    attention_bias: spec.qkvBias,
    attention_dropout: 0.0,
    bos_token_id: spec.bosTokenId,
    eos_token_id: configEos(spec),
    head_dim: spec.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    hidden_size: spec.dModel,
    initializer_range: 0.02,
    intermediate_size: spec.intermediateSize,
    max_position_embeddings: spec.maxPositionEmbeddings,
    model_type: spec.family === 'gemma2' ? 'gemma2' : 'gemma3_text',
    num_attention_heads: spec.numHeads,
    num_hidden_layers: spec.numLayers,
    num_key_value_heads: spec.numKvHeads,
    pad_token_id: spec.padTokenId,
    query_pre_attn_scalar: spec.headDim,
    rms_norm_eps: spec.rmsNormEps,
    sliding_window: spec.slidingWindow ?? options.slidingWindow ?? 16,
    tie_word_embeddings: spec.tieWordEmbeddings,
    use_cache: true,
    vocab_size: spec.vocabSize,
  };
  const layerTypes = spec.layerTypes.map((t) => (t === 'sliding' ? 'sliding_attention' : 'full_attention'));
  if (spec.family === 'gemma2') {
    Object.assign(text, {
      architectures: [spec.architecture],
      attn_logit_softcapping: spec.attnSoftcap,
      cache_implementation: 'hybrid',
      final_logit_softcapping: spec.finalSoftcap,
      hidden_act: 'gelu_pytorch_tanh',
      rope_theta: spec.ropeTheta,
      torch_dtype: spec.torchDtype,
      transformers_version: '4.46.3',
    });
    return sortKeys(text);
  }
  const local = spec.localRope ?? { theta: 10000, scaling: null };
  if (spec.architecture === 'Gemma3ForCausalLM') {
    Object.assign(text, {
      architectures: [spec.architecture],
      attn_logit_softcapping: null,
      dtype: spec.torchDtype,
      final_logit_softcapping: spec.finalSoftcap,
      layer_types: layerTypes,
      rope_parameters: {
        full_attention: {
          rope_theta: spec.ropeTheta,
          rope_type: 'default',
          ...ropeScalingJson(spec.ropeScaling),
        },
        sliding_attention: { rope_theta: local.theta, rope_type: 'default' },
      },
      transformers_version: '5.18.0',
      use_bidirectional_attention: false,
    });
    return sortKeys(text);
  }
  // Gemma3ForConditionalGeneration, 4.x layout: sparse text_config over Gemma3TextConfig's defaults
  Object.assign(text, {
    rope_local_base_freq: local.theta,
    rope_scaling: ropeScalingJson(spec.ropeScaling),
    rope_theta: spec.ropeTheta,
    sliding_window_pattern: options.slidingWindowPattern ?? 2,
  });
  return sortKeys({
    architectures: [spec.architecture],
    boi_token_index: spec.vocabSize - 3,
    eoi_token_index: spec.vocabSize - 2,
    eos_token_id: configEos(spec),
    image_token_index: spec.vocabSize - 1,
    initializer_range: 0.02,
    mm_tokens_per_image: 4,
    model_type: 'gemma3',
    text_config: sortKeys(text),
    torch_dtype: spec.torchDtype,
    transformers_version: '4.50.0',
    vision_config: {
      hidden_size: 16,
      image_size: 28,
      intermediate_size: 32,
      model_type: 'siglip_vision_model',
      num_attention_heads: 2,
      num_hidden_layers: 1,
      patch_size: 14,
      vision_use_head: false,
    },
  });
}

/**
 * config.json's eos: Qwen2.5-Instruct names only `<|im_end|>`; Llama-3.1 lists all three end tokens.
 * Undefined (the key left out) when the spec has none.
 */
function configEos(spec: ModelSpec): number | number[] | undefined {
  if (spec.family === 'llama') return [...spec.eosTokenIds];
  return spec.eosTokenIds[0];
}

function generationConfigJson(spec: ModelSpec): Record<string, unknown> {
  const g: Record<string, unknown> = {
    bos_token_id: spec.bosTokenId,
    eos_token_id: spec.eosTokenIds.length === 1 ? spec.eosTokenIds[0] : [...spec.eosTokenIds],
    transformers_version: '4.46.3',
  };
  if (spec.padTokenId !== null) g.pad_token_id = spec.padTokenId;
  return sortKeys(g);
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------------------
// Weights

/**
 * One weight tensor, drawn from its own stream (seed, name), so a tensor's values do not depend on which other
 * tensors exist (a tied and an untied model share embeddings). Scales keep activations O(1):
 * - linear layers ~ N(0, 1/fan_in), so each projection roughly preserves the RMS of its (normalised) input;
 * - o_proj and down_proj are further divided by sqrt(2 * numLayers) (GPT-2's residual scaling), so the
 *   residual stream does not grow with depth;
 * - embeddings ~ N(0, std = dModel^-1/4), which keeps both tied logits (RMS ≈ dModel^1/4) and the
 *   embedding's share of the residual stream O(1);
 * - norm weights 1 + N(0, 0.1) and biases N(0, 0.1): far enough from trivial that a missing norm weight or
 *   bias changes the outputs measurably.
 */
export function tinyWeight(spec: ModelSpec, name: string, seed: number): Float32Array {
  const shape = weightShape(spec, name);
  const n = shape.reduce((a, b) => a * b, 1);
  const rng = Rng.derive(seed, name);
  // Gemma's norms multiply by 1 + w, so their weights sit around 0
  if (name.endsWith('norm.weight')) return rng.normalArray(n, 0.1, spec.gemmaBlock ? 0 : 1);
  if (name.endsWith('.bias')) return rng.normalArray(n, 0.1);
  if (name === 'model.embed_tokens.weight') return rng.normalArray(n, spec.dModel ** -0.25);
  const fanIn = shape[1];
  if (fanIn === undefined) throw new Error(`tiny weights: ${name} is not a matrix`); // every name left is [out, in]
  const residualOut = name.endsWith('o_proj.weight') || name.endsWith('down_proj.weight');
  const std = 1 / Math.sqrt(fanIn) / (residualOut ? Math.sqrt(2 * spec.numLayers) : 1);
  return rng.normalArray(n, std);
}

function encode(x: Float32Array, dtype: TinyDtype): Float32Array | Uint16Array {
  if (dtype === 'BF16') return f32ToBf16(x);
  if (dtype === 'F16') return f32ToF16(x);
  return x;
}

const METADATA = { format: 'pt' };

/** The weights, each tensor generated only when it is written (so one is in memory at a time). */
async function writeWeights(path: string, spec: ModelSpec, seed: number, dtype: TinyDtype): Promise<void> {
  const tensors = new Map(
    weightNames(spec).map((name) => [
      checkpointName(spec, name),
      { dtype, shape: weightShape(spec, name), data: () => encode(tinyWeight(spec, name, seed), dtype) },
    ]),
  );
  await writeSafetensors(path, tensors, METADATA);
}
