import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { EmlensError } from '../errors.js';

/** A model folder's tokenizer (`tokenizer.json` + `tokenizer_config.json`). */
export interface TextTokenizer {
  /** Token ids of `text`; `addSpecialTokens` adds BOS etc. as the tokenizer's post-processor says. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** The raw `tokenizer_config.json` (chat template, special tokens). */
  readonly config: Readonly<Record<string, unknown>>;
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new EmlensError(`No ${what} at ${path}; the model folder needs the tokenizer files to take --text (or pass --ids).`);
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new EmlensError(`${path} is not valid JSON (${(e as Error).message}); re-download the tokenizer files.`);
  }
}

export async function loadTokenizer(dir: string): Promise<TextTokenizer> {
  const json = await readJson(join(dir, 'tokenizer.json'), 'tokenizer.json');
  let config: Record<string, unknown> = {};
  try {
    config = await readJson(join(dir, 'tokenizer_config.json'), 'tokenizer_config.json');
  } catch {
    // tokenizer_config.json is optional: it only adds the chat template and special-token names
  }
  const tok = new Tokenizer(json, config);
  return {
    config,
    encode: (text, opts) => tok.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? true }).ids,
    decode: (ids, opts) => tok.decode([...ids], { skip_special_tokens: opts?.skipSpecialTokens ?? false }),
  };
}
