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
import { Rng } from '../util/random.js';
import { type Family, type Llama3RopeScaling, type ModelSpec, weightNames, weightShape } from './spec.js';

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
  const tokenizer = buildTokenizer(options.family);
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
  return specFor(options, buildTokenizer(options.family));
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

/** config.json's eos: Qwen2.5-Instruct names only `<|im_end|>`; Llama-3.1 lists all three end tokens. */
function configEos(spec: ModelSpec): number | number[] {
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

function sortKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, `${JSON.stringify(value, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------------------
// Tokenizer

/** A built tokenizer: the two JSON files plus the ids the model config needs. */
interface TinyTokenizer {
  readonly json: Record<string, unknown>;
  readonly config: Record<string, unknown>;
  /** vocabulary size including special tokens */
  readonly size: number;
  readonly bosId: number | null;
  /** eos ids `generate()` stops on (generation_config.json) */
  readonly generationEosIds: number[];
  readonly padId: number | null;
}

/**
 * Common English pairs, GPT-2 style (`Ġ` is the byte-level symbol for a space, `Ċ` for a newline), one
 * "left right" pair per `|`. Merged in this order, each part is a byte or the result of an earlier merge.
 */
const MERGES: readonly (readonly [string, string])[] = `
Ġ t | Ġ a | h e | i n | r e | o n | Ġt he | e r | Ġ s | a t | Ġ w | Ġ o | e n | Ġ c | i t | i s
a n | o r | e s | Ġ b | e d | Ġ f | in g | Ġ p | o u | Ġa n | a l | a r | Ġt o | Ġ m | Ġo f | Ġ i
Ġ d | Ġ h | Ġan d | i c | a s | l e | Ġt h | i on | o m | l l | en t | Ġ n | Ġ l | s t | Ġ re | v e
Ġ e | r o | l y | Ġb e | Ġ g | Ġ T | c t | Ġ S | i d | o t | Ġ I | u t | e t | Ġ A | Ġ is | Ġ on
i m | a m | o w | a y | a d | s e | Ġth at | Ġ y | Ġy ou | Ġw h | Ġc an | Ġh e | Ġs t | Ġw it | Ġwit h
Ġf or | Ġ H | Ġ W | Ġ in | Ċ Ċ | ĊĊ Ċ | i l | u r | Ġ 1 | Ġ 2 | Ġ ( | ' s
`
  .trim()
  .split(/\s*[|\n]\s*/)
  .map((pair) => pair.split(' ') as [string, string]);

/** Special tokens per family, in id order after the byte and merge tokens. */
const SPECIALS: Record<Family, readonly string[]> = {
  qwen2: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  llama: [
    '<|begin_of_text|>',
    '<|end_of_text|>',
    '<|start_header_id|>',
    '<|end_header_id|>',
    '<|eom_id|>',
    '<|eot_id|>',
  ],
  mistral: ['<unk>', '<s>', '</s>', '[INST]', '[/INST]'],
};

// The real families' chat templates (Qwen2.5 and Llama-3 without the tool-calling branches; Mistral-Instruct).
const QWEN2_TEMPLATE =
  "{%- if messages[0]['role'] == 'system' %}\n" +
  "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n" +
  '{%- else %}\n' +
  "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n" +
  '{%- endif %}\n' +
  '{%- for message in messages %}\n' +
  "    {%- if not (message.role == 'system' and loop.first) %}\n" +
  "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n" +
  '    {%- endif %}\n' +
  '{%- endfor %}\n' +
  '{%- if add_generation_prompt %}\n' +
  "    {{- '<|im_start|>assistant\\n' }}\n" +
  '{%- endif %}\n';

const LLAMA_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + " +
  "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}" +
  '{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}' +
  "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

const MISTRAL_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}" +
  "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

// Qwen2's pre-tokenizer regex; Llama-3 (and Mistral's tekken) group digits in threes instead of singly.
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** GPT-2's reversible byte -> printable character map, in GPT-2's vocabulary order (printable bytes first). */
function byteSymbols(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const chars = printable.map((b) => String.fromCharCode(b));
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable.includes(b)) {
      chars.push(String.fromCharCode(256 + n++));
    }
  }
  return chars; // [256]: chars[i] is the symbol of token id i
}

function buildTokenizer(family: Family): TinyTokenizer {
  const vocab: Record<string, number> = {};
  let nextId = 0;
  for (const s of byteSymbols()) vocab[s] = nextId++;
  for (const [a, b] of MERGES) {
    if (!(a in vocab) || !(b in vocab) || a + b in vocab) {
      throw new Error(`Bad tiny-tokenizer merge '${a} ${b}'.`); // a bug in MERGES, not user input
    }
    vocab[a + b] = nextId++;
  }
  const specials = SPECIALS[family];
  const specialId = (t: string): number => vocab[t] ?? nextId + specials.indexOf(t);
  const addedTokens = specials.map((content) => ({
    id: specialId(content),
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const size = nextId + specials.length;

  const byteLevel = (prefix: boolean) => ({
    type: 'ByteLevel',
    add_prefix_space: prefix,
    trim_offsets: prefix,
    use_regex: prefix,
  });
  const splitThenBytes = (regex: string) => ({
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: family === 'llama', use_regex: false },
    ],
  });
  const bosTemplate = (bos: string) => ({
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: bos, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: bos, type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { [bos]: { id: bos, ids: [specialId(bos)], tokens: [bos] } },
  });

  let postProcessor: unknown;
  let bos: string | null;
  let eos: string;
  let pad: string | null;
  let generationEos: string[];
  let chatTemplate: string;
  const extraConfig: Record<string, unknown> = {};
  if (family === 'qwen2') {
    postProcessor = byteLevel(false);
    bos = null; // Qwen2's tokenizer adds no BOS; config.json's bos_token_id is still <|endoftext|>.
    eos = '<|im_end|>';
    pad = '<|endoftext|>';
    generationEos = ['<|im_end|>', '<|endoftext|>'];
    chatTemplate = QWEN2_TEMPLATE;
    Object.assign(extraConfig, {
      additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
      errors: 'replace',
      split_special_tokens: false,
      tokenizer_class: 'Qwen2Tokenizer',
      unk_token: null,
    });
  } else if (family === 'llama') {
    postProcessor = { type: 'Sequence', processors: [byteLevel(true), bosTemplate('<|begin_of_text|>')] };
    bos = '<|begin_of_text|>';
    eos = '<|eot_id|>';
    pad = null;
    generationEos = ['<|end_of_text|>', '<|eom_id|>', '<|eot_id|>'];
    chatTemplate = LLAMA_TEMPLATE;
    Object.assign(extraConfig, {
      model_input_names: ['input_ids', 'attention_mask'],
      tokenizer_class: 'PreTrainedTokenizerFast',
    });
  } else {
    postProcessor = bosTemplate('<s>');
    bos = '<s>';
    eos = '</s>';
    pad = null;
    generationEos = ['</s>'];
    chatTemplate = MISTRAL_TEMPLATE;
    Object.assign(extraConfig, {
      add_bos_token: true,
      add_eos_token: false,
      additional_special_tokens: ['[INST]', '[/INST]'],
      tokenizer_class: 'PreTrainedTokenizerFast',
      unk_token: '<unk>',
    });
  }

  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: family === 'qwen2' ? { type: 'NFC' } : null,
    pre_tokenizer: splitThenBytes(family === 'qwen2' ? QWEN2_SPLIT : LLAMA3_SPLIT),
    post_processor: postProcessor,
    decoder: byteLevel(family !== 'qwen2'),
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      // Llama-3 ships ignore_merges=true (whole words found in the vocab skip BPE); the result is the same.
      ignore_merges: family === 'llama',
      vocab,
      merges: MERGES.map(([a, b]) => [a, b]),
    },
  };
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const { id, content } of addedTokens) {
    addedTokensDecoder[String(id)] = {
      content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
  }
  const config = sortKeys({
    added_tokens_decoder: addedTokensDecoder,
    bos_token: bos,
    chat_template: chatTemplate,
    // Real Llama-3 sets true, which makes decode() drop spaces before punctuation; false keeps round-trips exact.
    clean_up_tokenization_spaces: false,
    eos_token: eos,
    model_max_length: 131072,
    pad_token: pad,
    ...extraConfig,
  });
  return {
    json,
    config,
    size,
    bosId: specialId(family === 'qwen2' ? '<|endoftext|>' : (bos as string)),
    generationEosIds: generationEos.map(specialId),
    padId: pad === null ? null : specialId(pad),
  };
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
