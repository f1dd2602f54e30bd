/**
 * Chat rendering as transformers' `apply_chat_template` does it: the tokenizer's own Jinja chat template,
 * rendered with the variables transformers passes, then tokenized without adding special tokens (the template
 * already writes BOS where the model expects it).
 */
import { Template } from '@huggingface/jinja';
import { EmlensError } from '../errors.js';
import type { TextTokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface RenderChatOptions {
  /** Append the header that opens the assistant's turn (transformers' `add_generation_prompt`). */
  addGenerationPrompt: boolean;
  /**
   * Extra template variables, as transformers' `**kwargs` (e.g. Qwen3's `enable_thinking: false`, Llama 3.1's
   * `date_string`); they override the defaults below.
   */
  templateVars?: Readonly<Record<string, unknown>>;
}

const ROLES: ReadonlySet<string> = new Set(['system', 'user', 'assistant']);

/** Parsed templates by source text: parsing Qwen3's template per record would cost more than rendering it. */
const parsed = new Map<string, Template>();

function templateFor(source: string): Template {
  let t = parsed.get(source);
  if (t === undefined) {
    try {
      t = new Template(source);
    } catch (e) {
      throw new EmlensError(
        `The tokenizer's chat template does not parse (${(e as Error).message}); fix chat_template in tokenizer_config.json.`,
      );
    }
    if (parsed.size >= 16) parsed.clear();
    parsed.set(source, t);
  }
  return t;
}

function checkMessages(messages: readonly ChatMessage[]): void {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new EmlensError('The conversation has no messages; pass at least one {role, content} message.');
  }
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null || !ROLES.has(m.role)) {
      throw new EmlensError(
        `Message ${i} has role ${JSON.stringify((m as { role?: unknown })?.role)}; use 'system', 'user' or 'assistant'.`,
      );
    }
    if (typeof m.content !== 'string') {
      throw new EmlensError(
        `Message ${i} (${m.role}) has no string content; give every message text content.`,
      );
    }
  });
}

/**
 * The conversation as the model's chat template renders it. The variables are those transformers passes:
 * `messages`, `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`
 * as strings, absent where the config names none, and `additional_special_tokens`), `tools` and `documents`
 * as None (transformers passes None, not undefined: templates test `tools is not none`), plus `raise_exception`
 * and `strftime_now` from @huggingface/jinja.
 */
export function renderChat(
  tokenizer: TextTokenizer,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions,
): string {
  const source = tokenizer.chatTemplate;
  if (source === null) {
    throw new EmlensError(
      'The tokenizer has no chat_template (neither in tokenizer_config.json nor in chat_template.jinja); use a chat/instruct model or add its chat template.',
    );
  }
  checkMessages(messages);
  const special = tokenizer.specialTokens;
  const vars: Record<string, unknown> = {
    messages: messages.map((m) => ({ role: m.role, content: m.content })),
    add_generation_prompt: opts.addGenerationPrompt,
    tools: null,
    documents: null,
    additional_special_tokens: [...special.additional],
  };
  if (special.bos !== null) vars.bos_token = special.bos;
  if (special.eos !== null) vars.eos_token = special.eos;
  if (special.pad !== null) vars.pad_token = special.pad;
  if (special.unk !== null) vars.unk_token = special.unk;
  Object.assign(vars, opts.templateVars);
  const template = templateFor(source);
  try {
    return template.render(vars);
  } catch (e) {
    throw new EmlensError(
      `The chat template rejected the conversation (${(e as Error).message}); change the messages' roles or order to what the model's template supports.`,
    );
  }
}

/**
 * Token ids of the rendered conversation, encoded without adding special tokens as `apply_chat_template`
 * does, so a BOS the template writes (Llama 3) appears exactly once.
 */
export function encodeChat(
  tokenizer: TextTokenizer,
  messages: readonly ChatMessage[],
  opts: RenderChatOptions,
): number[] {
  return tokenizer.encode(renderChat(tokenizer, messages, opts), { addSpecialTokens: false });
}
