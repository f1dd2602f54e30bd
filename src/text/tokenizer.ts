import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { EmlensError } from '../errors.js';
import { readInputText } from '../io/inputFiles.js';

/** The special tokens `tokenizer_config.json` names (null where it names none, as Qwen's `bos_token`). */
export interface SpecialTokens {
  readonly bos: string | null;
  readonly eos: string | null;
  readonly pad: string | null;
  readonly unk: string | null;
  /** `additional_special_tokens` (Qwen's `<|im_start|>`, `<|im_end|>`, ...) */
  readonly additional: readonly string[];
}

/** A model folder's tokenizer (`tokenizer.json` + `tokenizer_config.json`). */
export interface TextTokenizer {
  /** Token ids of `text`; `addSpecialTokens` adds BOS etc. as the tokenizer's post-processor says. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /**
   * Text of `ids`. `cleanUpTokenizationSpaces` (default: the config's `clean_up_tokenization_spaces`, as in
   * transformers) drops the space before `.`, `,`, `?`, `!` and some contractions; pass false to round-trip.
   */
  decode(
    ids: readonly number[],
    opts?: { skipSpecialTokens?: boolean; cleanUpTokenizationSpaces?: boolean },
  ): string;
  /** Id of one vocabulary or added token (`'<|im_end|>'` -> 151645), undefined when there is none. */
  tokenToId(token: string): number | undefined;
  /** The token an id stands for, undefined outside the vocabulary. */
  idToToken(id: number): string | undefined;
  /** Special tokens by role, from `tokenizer_config.json` (strings or `{content}` objects there). */
  readonly specialTokens: SpecialTokens;
  /**
   * The chat template: `chat_template.jinja` beside the tokenizer when present (recent transformers save it
   * there), else `tokenizer_config.json`'s `chat_template` (a string, or the `default` of the named list);
   * null when there is none (base models).
   */
  readonly chatTemplate: string | null;
  /** The raw `tokenizer_config.json` (chat template, special tokens). */
  readonly config: Readonly<Record<string, unknown>>;
}

async function readJson(
  path: string,
  what: string,
  optional: boolean,
): Promise<Record<string, unknown> | null> {
  const text = await readInputText(path);
  if (text === null) {
    if (optional) return null;
    throw new EmlensError(
      `No ${what} at ${path}; the model folder needs the tokenizer files to take --text (or pass --ids).`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new EmlensError(
      `${path} is not valid JSON (${(e as Error).message}); re-download the tokenizer files.`,
    );
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new EmlensError(`${path} is not a JSON object; re-download the tokenizer files.`);
  }
  return value as Record<string, unknown>;
}

/** A special token as the config holds it: a string, or an AddedToken object `{content, ...}`. */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return null;
}

export function specialTokensOf(config: Readonly<Record<string, unknown>>): SpecialTokens {
  const extra = config.additional_special_tokens;
  return {
    bos: tokenString(config.bos_token),
    eos: tokenString(config.eos_token),
    pad: tokenString(config.pad_token),
    unk: tokenString(config.unk_token),
    additional: Array.isArray(extra) ? extra.map(tokenString).filter((t): t is string => t !== null) : [],
  };
}

/**
 * `tokenizer_config.json`'s chat template: a string, or a list of `{name, template}` of which transformers
 * uses `default` (null when there is no such entry or no template at all).
 */
export function configChatTemplate(config: Readonly<Record<string, unknown>>): string | null {
  const t = config.chat_template;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const entry = t.find(
      (e): e is { name: string; template: string } =>
        typeof e === 'object' && e !== null && e.name === 'default' && typeof e.template === 'string',
    );
    return entry?.template ?? null;
  }
  return null;
}

/**
 * The library throws plain Errors (`Tokenizer must contain a "model" property`) or TypeErrors from deep inside
 * for a tokenizer.json it cannot use; that is a bad file, not a bug.
 */
function buildTokenizer(
  json: Record<string, unknown>,
  config: Record<string, unknown>,
  path: string,
): Tokenizer {
  if (typeof json.model !== 'object' || json.model === null || Array.isArray(json.model)) {
    throw new EmlensError(
      `${path} has no "model" object, so it is not a Hugging Face tokenizer.json; re-download the tokenizer files.`,
    );
  }
  try {
    return new Tokenizer(json, config);
  } catch (e) {
    throw new EmlensError(
      `${path} cannot be loaded as a tokenizer (${String((e as Error).message).replace(/\s+/g, ' ')}); re-download the tokenizer files.`,
    );
  }
}

export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const json = (await readJson(join(dir, 'tokenizer.json'), 'tokenizer.json', false)) ?? {};
  // tokenizer_config.json is optional: it only adds the chat template and special-token names
  const config = (await readJson(join(dir, 'tokenizer_config.json'), 'tokenizer_config.json', true)) ?? {};
  const jinja = await readInputText(join(dir, 'chat_template.jinja'));
  const tok = buildTokenizer(json, config, join(dir, 'tokenizer.json'));
  return {
    config,
    specialTokens: specialTokensOf(config),
    chatTemplate: jinja ?? configChatTemplate(config),
    encode: (text, opts) => tok.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? true }).ids,
    // @huggingface/tokenizers throws on an empty id list; nothing decodes to the empty string.
    decode: (ids, opts) =>
      ids.length === 0
        ? ''
        : tok.decode([...ids], {
            skip_special_tokens: opts?.skipSpecialTokens ?? false,
            ...(opts?.cleanUpTokenizationSpaces !== undefined
              ? { clean_up_tokenization_spaces: opts.cleanUpTokenizationSpaces }
              : {}),
          }),
    tokenToId: (token) => tok.token_to_id(token),
    idToToken: (id) => tok.id_to_token(id),
  };
}
