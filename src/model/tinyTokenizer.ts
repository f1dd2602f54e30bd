/**
 * The tiny models' tokenizer: a byte-level BPE `tokenizer.json` (GPT-2's byte symbols and a few hundred
 * common English merges) with each family's special tokens, pre-tokenizer regex and post-processor, and a
 * `tokenizer_config.json` carrying the family's real chat template (Qwen2.5, Llama-3, Mistral-Instruct).
 * transformers and `@huggingface/tokenizers` load both files.
 */
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { readInputText } from '../io/inputFiles.js';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.js';
import { sortKeys } from '../util/json.js';
/** The tokenizer flavours the tiny maker writes (other families borrow one: see tiny.ts). */
export type TokenizerFamily = 'llama' | 'qwen2' | 'mistral';
type Family = TokenizerFamily;

/** A built tokenizer: the two JSON files plus the ids the model config needs. */
export interface TinyTokenizer {
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

/**
 * The tokenizer of a tiny model of `family`: the 256 byte symbols, the merges, the family's special tokens,
 * its pre-tokenizer, post-processor and decoder, and tokenizer_config.json with its chat template.
 */
export function buildTinyTokenizer(family: Family): TinyTokenizer {
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
// A real tokenizer folder (`tiny-model --tokenizer DIR`)

/** Files copied from a tokenizer folder into the tiny model, byte for byte, when present. */
export const TOKENIZER_FOLDER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'chat_template.jinja',
  'special_tokens_map.json',
] as const;

/**
 * End-of-turn and end-of-text tokens of the common chat families; those the folder's tokenizer has as special
 * added tokens join its
 * `eos_token` in generation_config.json (as the real checkpoints list them), unless the folder has its own
 * generation_config.json.
 */
const KNOWN_END_TOKENS = [
  '<|im_end|>',
  '<|endoftext|>',
  '<end_of_turn>',
  '<eos>',
  '<|eot_id|>',
  '<|eom_id|>',
  '<|end_of_text|>',
  '</s>',
] as const;

/** A real tokenizer folder's files and the ids a tiny model's config takes from them. */
export interface FolderTokenizer extends TinyTokenizer {
  /** The files to copy into the model folder, by name (the bytes read, unchanged). */
  readonly files: ReadonlyMap<string, Buffer>;
}

function folderTokenId(dir: string, tok: TextTokenizer, token: string | null, role: string): number | null {
  if (token === null) return null;
  const id = tok.tokenToId(token);
  if (id === undefined) {
    throw new EmlensError(
      `${dir}/tokenizer_config.json names ${role} '${token}', which ${dir}/tokenizer.json does not have; fix the tokenizer folder.`,
    );
  }
  return id;
}

/** Largest token id + 1 over the model vocabulary and the added tokens of a tokenizer.json. */
function tokenizerSize(json: Record<string, unknown>, path: string): number {
  let max = -1;
  const model = json.model as { vocab?: unknown } | undefined;
  const vocab = model?.vocab;
  if (Array.isArray(vocab))
    max = vocab.length - 1; // Unigram: [piece, score] in id order
  else if (typeof vocab === 'object' && vocab !== null) {
    for (const id of Object.values(vocab)) if (typeof id === 'number' && id > max) max = id;
  }
  const added = json.added_tokens;
  if (Array.isArray(added)) {
    for (const t of added) {
      const id = (t as { id?: unknown })?.id;
      if (typeof id === 'number' && id > max) max = id;
    }
  }
  if (max < 0) {
    throw new EmlensError(`${path} has no vocabulary; pass a folder with a Hugging Face tokenizer.json.`);
  }
  return max + 1;
}

/** The folder's generation_config.json eos ids (a number or a list), when it has one. */
function folderGenerationEos(dir: string, text: string | null, size: number): number[] | null {
  if (text === null) return null;
  let g: unknown;
  try {
    g = JSON.parse(text);
  } catch (e) {
    throw new EmlensError(
      `${dir}/generation_config.json is not valid JSON (${(e as Error).message}); fix or delete it.`,
    );
  }
  const eos = (g as { eos_token_id?: unknown } | null)?.eos_token_id;
  if (eos === undefined || eos === null) return null;
  const ids = Array.isArray(eos) ? eos : [eos];
  if (ids.length === 0) return null;
  for (const id of ids) {
    if (!Number.isInteger(id) || (id as number) < 0 || (id as number) >= size) {
      throw new EmlensError(
        `${dir}/generation_config.json has eos_token_id ${JSON.stringify(eos)}, outside the tokenizer's ${size} tokens; fix it.`,
      );
    }
  }
  return ids as number[];
}

/**
 * Reads a Hugging Face tokenizer folder (tokenizer.json, and tokenizer_config.json with its chat template
 * or a chat_template.jinja) for a tiny model: the files to copy, its size (largest id + 1, added tokens
 * included) and the bos, eos and pad ids its config names. The generation eos ids are the folder's
 * generation_config.json's when it has one, else `eos_token` and the known end tokens the tokenizer has.
 */
export async function readTokenizerFolder(dir: string): Promise<FolderTokenizer> {
  const files = new Map<string, Buffer>();
  for (const name of TOKENIZER_FOLDER_FILES) {
    const text = await readInputText(join(dir, name));
    if (text !== null) files.set(name, Buffer.from(text, 'utf8'));
  }
  if (!files.has('tokenizer.json')) {
    throw new EmlensError(
      `No tokenizer.json in ${dir}; pass --tokenizer a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json).`,
    );
  }
  // loads the folder as every command will (a file it cannot use is refused here, not at first use)
  const tok = await loadTokenizer(dir);
  const json = JSON.parse((files.get('tokenizer.json') as Buffer).toString('utf8')) as Record<
    string,
    unknown
  >;
  const size = tokenizerSize(json, join(dir, 'tokenizer.json'));
  const special = tok.specialTokens;
  const bosId = folderTokenId(dir, tok, special.bos, 'bos_token');
  const eosId = folderTokenId(dir, tok, special.eos, 'eos_token');
  const padId = folderTokenId(dir, tok, special.pad, 'pad_token');
  // only as special added tokens: Qwen's and Gemma's vocabularies hold '</s>' as plain text pieces
  const specials = new Map<string, number>();
  for (const t of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    const { content, id, special: isSpecial } = t as { content?: unknown; id?: unknown; special?: unknown };
    if (isSpecial === true && typeof content === 'string' && typeof id === 'number')
      specials.set(content, id);
  }
  const ends = KNOWN_END_TOKENS.map((t) => specials.get(t)).filter((id): id is number => id !== undefined);
  const generationEosIds = folderGenerationEos(
    dir,
    await readInputText(join(dir, 'generation_config.json')),
    size,
  ) ?? [...new Set([...(eosId !== null ? [eosId] : []), ...ends])];
  if (generationEosIds.length === 0) {
    throw new EmlensError(
      `${dir} names no eos_token and has none of the usual end tokens, so generation would never stop; set eos_token in its tokenizer_config.json.`,
    );
  }
  return {
    json,
    config: tok.config as Record<string, unknown>,
    size,
    bosId,
    generationEosIds,
    padId,
    files,
  };
}
