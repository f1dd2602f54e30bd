/**
 * Reads a Hugging Face `config.json` (+ `generation_config.json`) into a {@link ModelSpec}, applying the same
 * defaults transformers' LlamaConfig / Qwen2Config / MistralConfig apply, and rejecting what emlens cannot run.
 */
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { readInputText } from '../io/inputFiles.js';
import { type Family, type Llama3RopeScaling, type ModelSpec, SUPPORTED_ARCHITECTURES } from './spec.js';

type Json = Record<string, unknown>;

const SUPPORTED_LIST = Object.keys(SUPPORTED_ARCHITECTURES).join(', ');

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

  const hiddenAct = json.hidden_act;
  if (hiddenAct !== undefined && hiddenAct !== 'silu') {
    throw new EmlensError(
      `${source} sets hidden_act to ${JSON.stringify(hiddenAct)}, but emlens only implements 'silu'; use a model with a SiLU MLP.`,
    );
  }

  const dModel = positiveInt(json, 'hidden_size', source);
  const numLayers = positiveInt(json, 'num_hidden_layers', source);
  const numHeads = positiveInt(json, 'num_attention_heads', source);
  const numKvHeads = optional(json, 'num_key_value_heads')
    ? positiveInt(json, 'num_key_value_heads', source)
    : numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new EmlensError(
      `${source} has num_attention_heads ${numHeads}, which is not a multiple of num_key_value_heads ${numKvHeads}; fix num_key_value_heads so it divides num_attention_heads.`,
    );
  }
  let headDim: number;
  if (optional(json, 'head_dim')) {
    headDim = positiveInt(json, 'head_dim', source);
  } else {
    if (dModel % numHeads !== 0) {
      throw new EmlensError(
        `${source} has hidden_size ${dModel}, which is not a multiple of num_attention_heads ${numHeads}, and no head_dim; add head_dim to the config.`,
      );
    }
    headDim = dModel / numHeads;
  }
  if (headDim % 2 !== 0) {
    throw new EmlensError(
      `${source} has an odd head dimension ${headDim}; RoPE needs an even head_dim, so fix the config.`,
    );
  }

  const maxPositionEmbeddings = positiveInt(json, 'max_position_embeddings', source);
  // transformers v5 moves rope_theta / rope_type into `rope_parameters`; read either layout.
  const ropeParams = isObject(json.rope_parameters) ? json.rope_parameters : undefined;
  const ropeTheta = optional(json, 'rope_theta')
    ? positiveNumber(json, 'rope_theta', source)
    : ropeParams && optional(ropeParams, 'rope_theta')
      ? positiveNumber(ropeParams, 'rope_theta', `${source} (rope_parameters)`)
      : 10000;
  const ropeScaling = parseRopeScaling(json.rope_scaling ?? ropeParams ?? null, source);

  // Sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window) only differs from full attention on
  // sequences longer than the window; emlens runs prompts far shorter than any real window, so full causal
  // attention is exact there and nothing needs recording.

  const attentionBias = optionalBool(json, 'attention_bias', source) ?? false;
  const mlpBias = optionalBool(json, 'mlp_bias', source) ?? false;
  // Qwen2 hard-codes bias=True on q/k/v and bias=False on o_proj, whatever the config says.
  const qkvBias = family === 'qwen2' ? true : attentionBias;
  const oBias = family === 'qwen2' ? false : attentionBias;

  const torchDtype = json.torch_dtype ?? json.dtype ?? 'float32';
  if (typeof torchDtype !== 'string') {
    throw new EmlensError(
      `${source} has a non-string torch_dtype; set it to a name like "bfloat16" or remove it.`,
    );
  }

  return {
    family,
    architecture,
    numLayers,
    dModel,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: positiveInt(json, 'intermediate_size', source),
    vocabSize: positiveInt(json, 'vocab_size', source),
    rmsNormEps: positiveNumber(json, 'rms_norm_eps', source),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings,
    qkvBias,
    oBias,
    mlpBias: family === 'llama' ? mlpBias : false,
    // LlamaConfig, Qwen2Config and MistralConfig all default tie_word_embeddings to False.
    tieWordEmbeddings: optionalBool(json, 'tie_word_embeddings', source) ?? false,
    bosTokenId: tokenId(json, 'bos_token_id', source),
    eosTokenIds: tokenIds(json, 'eos_token_id', source),
    padTokenId: tokenId(json, 'pad_token_id', source),
    torchDtype,
  };
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
  const match = Object.entries(SUPPORTED_ARCHITECTURES).find(([, fam]) => fam === modelType);
  if (!match) {
    throw new EmlensError(
      `${source} has no architectures list and model_type ${JSON.stringify(modelType)} is not llama, qwen2 or mistral; use a model whose architectures[0] is one of ${SUPPORTED_LIST}.`,
    );
  }
  return { architecture: match[0], family: match[1] };
}

function parseRopeScaling(raw: unknown, source: string): Llama3RopeScaling | null {
  if (raw === null || raw === undefined) return null;
  if (!isObject(raw)) {
    throw new EmlensError(`${source} has a rope_scaling that is not an object or null; fix or remove it.`);
  }
  const type = raw.rope_type ?? raw.type;
  // rope_type "default" is transformers' name for plain, unscaled RoPE.
  if (type === 'default' || (type === undefined && raw.factor === undefined)) return null;
  if (type !== 'llama3') {
    throw new EmlensError(
      `${source} uses rope_scaling type ${JSON.stringify(type)}, but emlens only supports 'llama3' RoPE scaling; use a model with llama3 or no rope_scaling.`,
    );
  }
  const where = `${source} (rope_scaling)`;
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
