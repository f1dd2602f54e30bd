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
import { type Family, type Llama3RopeScaling, type ModelSpec, weightNames, weightShape } from './spec.js';
import { buildTinyTokenizer, type TinyTokenizer } from './tinyTokenizer.js';

export type TinyDtype = 'F32' | 'BF16' | 'F16';

/** Shape and flavour of a tiny model; every field but `family` has a small default. */
export interface TinyModelOptions {
  readonly family: Family;
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
  /** default 512; must cover the tokenizer's vocabulary (~330 tokens) */
  readonly vocabSize?: number;
  /** default false (transformers' default for all three families) */
  readonly tieWordEmbeddings?: boolean;
  /** Llama/Mistral `attention_bias` (biases on q, k, v and o). Qwen2 always has q/k/v bias and no o bias. */
  readonly qkvBias?: boolean;
  /** Llama `mlp_bias` (default false; ignored for other families, whose MLPs have no bias). */
  readonly mlpBias?: boolean;
  /** default 10000: small enough that every RoPE band rotates visibly over a short prompt */
  readonly ropeTheta?: number;
  /** 'llama3' picks Llama-3.1's factors with the original context at maxPositionEmbeddings / 8. */
  readonly ropeScaling?: 'llama3' | Llama3RopeScaling | null;
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

const ARCHITECTURE: Record<Family, string> = {
  llama: 'LlamaForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  mistral: 'MistralForCausalLM',
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
  const tokenizer = buildTinyTokenizer(options.family);
  const spec = specFor(options, tokenizer);
  const dtype = options.dtype ?? 'F32';
  await writeFolderAtomic(outDir, { overwrite: options.overwrite }, async (dir) => {
    await writeJson(join(dir, 'config.json'), configJson(spec, options));
    await writeJson(join(dir, 'generation_config.json'), generationConfigJson(spec));
    await writeJson(join(dir, 'tokenizer.json'), tokenizer.json);
    await writeJson(join(dir, 'tokenizer_config.json'), tokenizer.config);
    await writeWeights(join(dir, 'model.safetensors'), spec, options.seed ?? 0, dtype);
  });
  return spec;
}

/** The spec a tiny model with these options has (validates the options; writes nothing). */
export function tinySpec(options: TinyModelOptions): ModelSpec {
  return specFor(options, buildTinyTokenizer(options.family));
}

function specFor(options: TinyModelOptions, tokenizer: TinyTokenizer): ModelSpec {
  const { family } = options;
  if (!Object.hasOwn(ARCHITECTURE, family)) {
    throw new EmlensError(`Unknown tiny-model family '${family}'; use llama, qwen2 or mistral.`);
  }
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
  const vocabSize = posInt('vocabSize', options.vocabSize ?? 512);
  if (vocabSize < tokenizer.size) {
    throw new EmlensError(
      `Tiny model vocabSize ${vocabSize} is smaller than its tokenizer (${tokenizer.size} tokens); use at least ${tokenizer.size}.`,
    );
  }
  const maxPositionEmbeddings = posInt('maxPositionEmbeddings', options.maxPositionEmbeddings ?? 2048);
  const bias = options.qkvBias ?? false;
  return {
    family,
    architecture: ARCHITECTURE[family],
    numLayers: posInt('numLayers', options.numLayers ?? 2),
    dModel,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: posInt('intermediateSize', options.intermediateSize ?? 128),
    vocabSize,
    rmsNormEps: options.rmsNormEps ?? 1e-6,
    ropeTheta: options.ropeTheta ?? 10000,
    ropeScaling: ropeScalingFor(options.ropeScaling ?? null, maxPositionEmbeddings),
    maxPositionEmbeddings,
    qkvBias: family === 'qwen2' ? true : bias,
    oBias: family === 'qwen2' ? false : bias,
    mlpBias: family === 'llama' ? (options.mlpBias ?? false) : false,
    tieWordEmbeddings: options.tieWordEmbeddings ?? false,
    bosTokenId: tokenizer.bosId,
    eosTokenIds: tokenizer.generationEosIds,
    padTokenId: tokenizer.padId,
    torchDtype: TORCH_DTYPE[options.dtype ?? 'F32'],
  };
}

function posInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v <= 0)
    throw new EmlensError(`Tiny model ${name} is ${v}; use a positive integer.`);
  return v;
}

function ropeScalingFor(
  r: 'llama3' | Llama3RopeScaling | null,
  maxPositionEmbeddings: number,
): Llama3RopeScaling | null {
  if (r === null || typeof r === 'object') return r;
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
    rope_scaling: spec.ropeScaling && {
      factor: spec.ropeScaling.factor,
      high_freq_factor: spec.ropeScaling.highFreqFactor,
      low_freq_factor: spec.ropeScaling.lowFreqFactor,
      original_max_position_embeddings: spec.ropeScaling.originalMaxPositionEmbeddings,
      rope_type: 'llama3',
    },
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
    c.sliding_window = null;
  } else {
    c.max_window_layers = spec.numLayers;
    c.sliding_window = spec.maxPositionEmbeddings;
    c.use_sliding_window = false;
  }
  return sortKeys(c);
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
  if (name.endsWith('norm.weight')) return rng.normalArray(n, 0.1, 1);
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
      name,
      { dtype, shape: weightShape(spec, name), data: () => encode(tinyWeight(spec, name, seed), dtype) },
    ]),
  );
  await writeSafetensors(path, tensors, METADATA);
}
