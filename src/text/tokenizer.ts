import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { EmlensError } from '../errors.js';
import { readInputText } from '../io/inputFiles.js';
import { type ChatMessage, encodeChat, renderChat } from './chat.js';

/** The special tokens `tokenizer_config.json` names (null where it names none, as Qwen's `bos_token`). */
export interface SpecialTokens {
  readonly bos: string | null;
  readonly eos: string | null;
  readonly pad: string | null;
  readonly unk: string | null;
  /** `additional_special_tokens` (Qwen's `<|im_start|>`, `<|im_end|>`, ...) */
  readonly additional: readonly string[];
}

/** Options of {@link TextTokenizer.encodeChat} and {@link TextTokenizer.renderChat}. */
export interface ChatTemplateOptions {
  /**
   * Append the header that opens the assistant's turn (transformers' `add_generation_prompt`). Default: true
   * when the last message is not the assistant's (a prompt to generate from), false when it is (a whole
   * conversation to score).
   */
  readonly addGenerationPrompt?: boolean;
  /** Extra template variables (Qwen3's `enable_thinking`, Llama 3.1's `date_string`). */
  readonly templateVars?: Readonly<Record<string, unknown>>;
}

/** Options of {@link TextTokenizer.encode}. */
export interface EncodeOptions {
  /**
   * Whether the tokenizer's post-processor adds its special tokens (BOS for Llama 3, none for Qwen). Unset
   * (the default): added, unless the text already starts with the BOS token (text rendered by a chat
   * template), which then is not doubled. `true`: always added, as transformers' `encode` does (the raw
   * path). `false`: never added.
   */
  readonly addSpecialTokens?: boolean;
}

/**
 * A model folder's tokenizer (`tokenizer.json` + `tokenizer_config.json`).
 *
 * For chat models the road is {@link TextTokenizer.encodeChat}: messages in, the ids the model was trained on
 * out, BOS exactly once. {@link TextTokenizer.encode} is for plain text (pretraining-style prompts, neutral
 * text); it adds BOS as the tokenizer's post-processor says, and does not double one the text already starts
 * with.
 *
 * @example
 * const tok = await loadTokenizer('models/Llama-3.1-8B-Instruct');
 * const ids = tok.encodeChat([{ role: 'user', content: 'Hello' }]); // <|begin_of_text|> once, then the header
 */
export interface TextTokenizer {
  /**
   * Token ids of a conversation rendered with the model's chat template, encoded without adding special tokens
   * (the template writes BOS where the model expects it), as transformers' `apply_chat_template(tokenize=True)`.
   */
  encodeChat(messages: readonly ChatMessage[], opts?: ChatTemplateOptions): number[];
  /** The conversation as the model's chat template renders it (a string; see {@link renderChat}). */
  renderChat(messages: readonly ChatMessage[], opts?: ChatTemplateOptions): string;
  /** Token ids of plain `text` (see {@link EncodeOptions} for when BOS is added). */
  encode(text: string, opts?: EncodeOptions): number[];
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
  const specialTokens = specialTokensOf(config);
  const bos = specialTokens.bos;
  let warned = false;
  const tokenizer: TextTokenizer = {
    config,
    specialTokens,
    chatTemplate: jinja ?? configChatTemplate(config),
    // `this`: a copy of the tokenizer with another chat template (`{ ...tok, chatTemplate }`) renders with its own.
    encodeChat(messages, opts) {
      return encodeChat(this ?? tokenizer, messages, chatOptions(messages, opts));
    },
    renderChat(messages, opts) {
      return renderChat(this ?? tokenizer, messages, chatOptions(messages, opts));
    },
    encode: (text, opts) => {
      let add = opts?.addSpecialTokens;
      if (add === undefined) {
        add = !(bos !== null && text.startsWith(bos));
        if (!add && !warned) {
          warned = true;
          process.emitWarning(
            `The text starts with the BOS token ${bos} (text rendered by a chat template?), so encode() did not add another; use tokenizer.encodeChat(messages) for chats, or pass { addSpecialTokens } to choose.`,
            { code: 'EMLENS_BOS_IN_TEXT' },
          );
        }
      }
      return tok.encode(text, { add_special_tokens: add }).ids;
    },
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
  return tokenizer;
}

/** The chat options with `addGenerationPrompt` defaulted from the last message's role. */
function chatOptions(
  messages: readonly ChatMessage[],
  opts: ChatTemplateOptions | undefined,
): { addGenerationPrompt: boolean; templateVars?: Readonly<Record<string, unknown>> } {
  const last = Array.isArray(messages) ? messages[messages.length - 1] : undefined;
  return {
    addGenerationPrompt: opts?.addGenerationPrompt ?? last?.role !== 'assistant',
    ...(opts?.templateVars !== undefined ? { templateVars: opts.templateVars } : {}),
  };
}
