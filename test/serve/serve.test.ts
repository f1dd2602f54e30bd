/**
 * The OpenAI-compatible server over real HTTP on 127.0.0.1: results equal `generate` called directly (greedy,
 * seeded sampling, streaming, steering), logprobs, batching and queueing, the model off the event loop,
 * error statuses, client disconnects, and the request shape the OpenAI SDK sends.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { directionSet, saveDirections } from '../../src/directions/direction.js';
import { LocalJudge, OpenAIJudge } from '../../src/eval/judge/index.js';
import { type GenerateOptions, generate } from '../../src/generate/generate.js';
import { composeInterventions, constantDirectionSet } from '../../src/interventions/compose.js';
import type { Intervention } from '../../src/model/interventions.js';
import { serverDecoder } from '../../src/serve/batch.js';
import { type RunningServer, type ServeOptions, startServer } from '../../src/serve/server.js';
import { type ChatMessage, encodeChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';
import { useTinyModel } from '../helpers/fixtures.js';

const D_MODEL = 64;
const LONG = 1900; // new tokens that take the tiny model about two seconds
// A budget no fast machine finishes while a test fills the queue behind it; the tests that use it abort it.
const HOLD = 16_000;

// the fixture's load builds the graph the servers then find cached
const tiny = useTinyModel('emlens-serve-', {
  family: 'qwen2',
  seed: 7,
  numLayers: 3,
  dModel: D_MODEL,
  name: 'tiny',
  maxPositionEmbeddings: 16_384,
});
let directionsDir: string;
let tokenizer: TextTokenizer;
let server: RunningServer;
let steerVector: Float32Array;

function vec(d: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: d }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return 2 * (s / 2 ** 32) - 1;
  });
}

async function serve(extra: Partial<ServeOptions> = {}): Promise<RunningServer> {
  return startServer({
    model: tiny.dir,
    cacheDir: tiny.cacheDir,
    threads: 1,
    port: 0,
    host: '127.0.0.1',
    ...extra,
  });
}

beforeAll(async () => {
  directionsDir = tiny.at('directions');
  tokenizer = await loadTokenizer(tiny.dir);
  steerVector = vec(D_MODEL, 11);
  const meta = {
    model: 'tiny',
    hook: 'hook_resid_post',
    method: 'test',
    positions: 'answer_mean',
    nPos: 0,
    nNeg: 0,
    sourcePos: '',
    sourceNeg: '',
  };
  await saveDirections(
    join(directionsDir, 'steer.safetensors'),
    directionSet(
      [
        [1, steerVector],
        [2, vec(D_MODEL, 12)],
      ],
      meta,
    ),
  );
  await saveDirections(tiny.at('outside.safetensors'), directionSet([[1, steerVector]], meta));
  server = await serve({ directionsDir, maxBatch: 8 });
});

afterAll(async () => {
  await server?.close();
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are checked field by field by the assertions
type Json = any;
const jsonOf = (r: Response): Promise<Json> => r.json() as Promise<Json>;

const user = (content: string): ChatMessage[] => [{ role: 'user', content }];

async function post(body: unknown, headers: Record<string, string> = {}, base = server.url) {
  return fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function complete(body: Record<string, unknown>, base = server.url) {
  const r = await post({ model: 'tiny', ...body }, {}, base);
  const json = await jsonOf(r);
  expect(r.status, JSON.stringify(json)).toBe(200);
  return json;
}

/**
 * What `generate` gives for one conversation, decoded as the server decodes: a result per sample (`n`, default 1),
 * so the `g` of `const [g] = await direct(...)` is there (`g!`).
 */
async function direct(messages: ChatMessage[], opts: Omit<GenerateOptions, 'tokenizer'>) {
  const ids = encodeChat(tokenizer, messages, { addGenerationPrompt: true });
  return generate(tiny.model, [ids], { ...opts, tokenizer: serverDecoder(tokenizer) });
}

/** Server-sent events of a streamed response, parsed (`[DONE]` as the string). */
async function readEvents(r: Response): Promise<unknown[]> {
  const text = await r.text();
  return text
    .split('\n\n')
    .filter((e) => e.trim() !== '')
    .map((e) => {
      expect(e.startsWith('data: ')).toBe(true);
      const data = e.slice('data: '.length);
      return data === '[DONE]' ? data : JSON.parse(data);
    });
}

/** Reads a streamed response until `until` holds for the text so far (at most `limit` reads). */
async function readUntil(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  until: (text: string) => boolean,
  limit = 10_000,
): Promise<string> {
  const dec = new TextDecoder();
  let text = '';
  for (let i = 0; i < limit && !until(text); i++) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  return text;
}

async function health(base = server.url) {
  const r = await fetch(`${base}/health`);
  return { status: r.status, body: (await jsonOf(r)) as Record<string, number | string> };
}

/** Polls /health until nothing is queued or running (bounded). */
async function idle(base = server.url): Promise<Record<string, number | string>> {
  for (let i = 0; i < 200; i++) {
    const h = await health(base);
    if (h.body.running === 0 && h.body.queued === 0) return h.body;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('the server did not become idle');
}

describe('serving', () => {
  it('lists the served model and answers /health', async () => {
    const r = await fetch(`${server.url}/v1/models`);
    expect(r.status).toBe(200);
    const list = await jsonOf(r);
    expect(list).toMatchObject({
      object: 'list',
      data: [{ id: 'tiny', object: 'model', owned_by: 'emlens' }],
    });
    expect((await fetch(`${server.url}/v1/models/tiny`)).status).toBe(200);
    expect((await fetch(`${server.url}/v1/models/other`)).status).toBe(404);
    const h = await health();
    expect(h).toMatchObject({ status: 200, body: { status: 'ok', model: 'tiny' } });
  });

  it('gives the greedy completion generate gives, with usage', async () => {
    const messages = user('Tell me about the weather.');
    const [g] = await direct(messages, { maxNewTokens: 12, temperature: 0 });
    const json = await complete({ messages, max_tokens: 12, temperature: 0 });
    expect(json.object).toBe('chat.completion');
    expect(json.choices).toHaveLength(1);
    expect(json.choices[0].message).toEqual({ role: 'assistant', content: g!.text, refusal: null });
    expect(json.choices[0].finish_reason).toBe(g!.finishReason === 'length' ? 'length' : 'stop');
    expect(json.choices[0].logprobs).toBeNull();
    const prompt = encodeChat(tokenizer, messages, { addGenerationPrompt: true }).length;
    expect(json.usage).toEqual({
      prompt_tokens: prompt,
      completion_tokens: g!.tokens.length,
      total_tokens: prompt + g!.tokens.length,
    });
  });

  it('samples what generate samples for the same seed, n, temperature, top_p and top_k', async () => {
    const messages: ChatMessage[] = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Name a colour.' },
    ];
    const opts = { maxNewTokens: 10, temperature: 1.3, topP: 0.95, topK: 40, seed: 1234, n: 3 };
    const g = await direct(messages, opts);
    const json = await complete({
      messages,
      max_completion_tokens: 10,
      temperature: 1.3,
      top_p: 0.95,
      top_k: 40,
      seed: 1234,
      n: 3,
    });
    expect(json.choices.map((c: { message: { content: string } }) => c.message.content)).toEqual(
      g.map((x) => x.text),
    );
    expect(new Set(g.map((x) => x.text)).size).toBeGreaterThan(1); // the samples differ
  });

  it('streams SSE chunks whose deltas concatenate to the same text', async () => {
    const messages = user('Write a long story.');
    const body = { messages, max_tokens: 40, temperature: 0.8, seed: 5, n: 2 };
    const whole = await complete(body);
    const r = await post({ model: 'tiny', ...body, stream: true, stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = await readEvents(r);
    expect(events.at(-1)).toBe('[DONE]');
    const chunks = events.slice(0, -1) as {
      object: string;
      choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[];
      usage?: unknown;
    }[];
    const text = ['', ''];
    const finish: (string | null)[] = [null, null];
    for (const c of chunks) {
      expect(c.object).toBe('chat.completion.chunk');
      for (const ch of c.choices) {
        text[ch.index] += ch.delta.content ?? '';
        if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
      }
    }
    expect(chunks[0]?.choices.map((c) => c.delta.role)).toEqual(['assistant', 'assistant']);
    expect(chunks.filter((c) => c.choices.some((ch) => ch.delta.content)).length).toBeGreaterThan(2);
    expect(text).toEqual(whole.choices.map((c: { message: { content: string } }) => c.message.content));
    expect(finish).toEqual(whole.choices.map((c: { finish_reason: string }) => c.finish_reason));
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual(whole.usage);
  });

  it('cuts at stop strings as generate does, also when streamed', async () => {
    const messages = user('Count for me.');
    const [free] = await direct(messages, { maxNewTokens: 30, temperature: 0.9, seed: 3 });
    const stop = free!.text!.slice(5, 7);
    const [g] = await direct(messages, { maxNewTokens: 30, temperature: 0.9, seed: 3, stopStrings: [stop] });
    expect(g!.finishReason).toBe('stop');
    const body = { messages, max_tokens: 30, temperature: 0.9, seed: 3, stop: [stop] };
    const json = await complete(body);
    expect(json.choices[0]).toMatchObject({ message: { content: g!.text }, finish_reason: 'stop' });
    const events = await readEvents(await post({ model: 'tiny', ...body, stream: true }));
    const streamed = (events.slice(0, -1) as { choices: { delta: { content?: string } }[] }[])
      .map((c) => c.choices[0]?.delta.content ?? '')
      .join('');
    expect(streamed).toBe(g!.text);
  });

  it('returns logprobs and top_logprobs consistent with each other and with the model', async () => {
    const messages = user('What is two plus two?');
    const json = await complete({ messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 5 });
    const content = json.choices[0].logprobs.content as {
      token: string;
      logprob: number;
      bytes: number[];
      top_logprobs: { token: string; logprob: number; bytes: number[] }[];
    }[];
    expect(content).toHaveLength(json.usage.completion_tokens);
    for (const e of content) {
      expect(e.top_logprobs).toHaveLength(5);
      expect(e.logprob).toBeLessThanOrEqual(0);
      // greedy: the chosen token is the most likely one
      expect(e.top_logprobs[0]).toEqual({ token: e.token, logprob: e.logprob, bytes: e.bytes });
      for (let i = 1; i < 5; i++) {
        // i < 5, the length (above)
        expect(e.top_logprobs[i]!.logprob).toBeLessThanOrEqual(e.top_logprobs[i - 1]!.logprob);
      }
      expect(e.top_logprobs.reduce((a, t) => a + Math.exp(t.logprob), 0)).toBeLessThanOrEqual(1 + 1e-9);
      expect(new Set(e.top_logprobs.map((t) => t.token)).size).toBe(5);
      expect(Buffer.from(e.bytes).toString('utf8')).toBe(e.token);
    }
    expect(content.map((e) => e.token).join('')).toBe(json.choices[0].message.content);
    // The first token's log-probability is the log-softmax of the model's logits at the prompt's end.
    const ids = encodeChat(tokenizer, messages, { addGenerationPrompt: true });
    const logits = (await tiny.model.forward([ids])).logits.data;
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((a, x) => a + Math.exp(x - max), 0));
    const first = tokenizer.encode(content[0]!.token, { addSpecialTokens: false });
    expect(first).toHaveLength(1);
    expect(content[0]!.logprob).toBeCloseTo(logits[first[0]!]! - lse, 4); // a token id: within the logits

    // Streamed: the same entries, one per token.
    const events = await readEvents(
      await post({
        model: 'tiny',
        messages,
        max_tokens: 8,
        temperature: 0,
        logprobs: true,
        top_logprobs: 5,
        stream: true,
      }),
    );
    const streamed = (
      events.slice(0, -1) as { choices: { logprobs: { content: unknown[] } | null }[] }[]
    ).flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
    expect(streamed).toEqual(content);
  });

  it('steers per request as a directly steered generate does (file and inline), and restricts files', async () => {
    const messages = user('Say something.');
    const steer: Intervention = {
      kind: 'steer',
      hooks: ['blocks.1.hook_resid_post'],
      vector: steerVector,
      scale: 6,
    };
    const opts = { maxNewTokens: 16, temperature: 0.7, seed: 9 };
    const [plain] = await direct(messages, opts);
    const [steered] = await direct(messages, { ...opts, interventions: [steer] });
    expect(steered!.text).not.toBe(plain!.text);
    const body = { messages, max_tokens: 16, temperature: 0.7, seed: 9 };
    const fromFile = await complete({
      ...body,
      emlens: { steer: [{ direction: 'steer.safetensors', layers: [1], scale: 6 }] },
    });
    expect(fromFile.choices[0].message.content).toBe(steered!.text);
    const inline = await complete({
      ...body,
      emlens: { steer: [{ direction: [...steerVector], layers: 1, scale: 6 }] },
    });
    expect(inline.choices[0].message.content).toBe(steered!.text);
    expect((await complete(body)).choices[0].message.content).toBe(plain!.text);

    // Ablation at every layer, prompt tokens only, as generate does it (the one builder every command uses).
    const d = vec(D_MODEL, 21);
    const ablate = composeInterventions(
      { ablate: [{ direction: constantDirectionSet(d, [0, 1, 2]), layers: 'all' }] },
      tiny.model.spec,
    );
    const [ablated] = await direct(messages, {
      ...opts,
      interventions: ablate,
      interventionPositions: 'prompt',
    });
    const viaServer = await complete({
      ...body,
      emlens: { ablate: [{ direction: [...d], layers: 'all' }], positions: 'prompt' },
    });
    expect(viaServer.choices[0].message.content).toBe(ablated!.text);

    // Files outside --directions-dir (or the command line) are refused, relative escapes included.
    for (const direction of [tiny.at('outside.safetensors'), '../outside.safetensors', '/etc/passwd']) {
      const r = await post({ model: 'tiny', ...body, emlens: { steer: [{ direction, layers: [1] }] } });
      expect(r.status).toBe(403);
      expect((await jsonOf(r)).error).toMatchObject({
        type: 'permission_error',
        param: 'emlens.steer[0].direction',
      });
    }
    const bad = await post({
      model: 'tiny',
      ...body,
      emlens: { steer: [{ direction: [1, 2], layers: [1] }] },
    });
    expect(bad.status).toBe(400);
    const noLayer = await post({
      model: 'tiny',
      ...body,
      emlens: { steer: [{ direction: 'steer.safetensors', layers: [0] }] },
    });
    expect(noLayer.status).toBe(400);
  });

  it('answers /health while a long generation runs', async () => {
    const t0 = performance.now();
    const r = await post(
      {
        model: 'tiny',
        messages: user('Go on.'),
        max_tokens: LONG,
        temperature: 0,
        ignore_eos: true,
        stream: true,
      },
      {},
    );
    const reader = r.body!.getReader();
    await readUntil(reader, (t) => t.includes('"content":"') && t.split('data: ').length > 3);
    const h = await health();
    const tHealth = performance.now();
    expect(h.body.running).toBe(1);
    const rest = await readUntil(reader, (t) => t.includes('[DONE]'));
    const tEnd = performance.now();
    expect(rest).toContain('"finish_reason":"length"');
    // The health answer came while the generation was still running, well before it ended.
    expect(tHealth).toBeLessThan(tEnd);
    expect(tEnd - tHealth).toBeGreaterThan(0.25 * (tEnd - t0));
  });

  it('batches concurrent requests, each getting what it would alone', async () => {
    // Occupy the worker, queue five requests behind it, then free it: the five run as one batch.
    const ac = new AbortController();
    const long = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        model: 'tiny',
        messages: user('Hold on.'),
        max_tokens: HOLD,
        temperature: 0,
        ignore_eos: true,
        stream: true,
      }),
      signal: ac.signal,
    });
    const reader = long.body!.getReader();
    await readUntil(reader, (t) => t.includes('"content":"'));
    const prompts = ['One.', 'Two, three.', 'Four five six seven.', 'Eight?', 'Nine and ten and eleven.'];
    const sampling = (i: number) => ({ temperature: i % 2 === 0 ? 0 : 0.9, seed: i });
    const pending = prompts.map((p, i) => complete({ messages: user(p), max_tokens: 6 + i, ...sampling(i) }));
    for (let i = 0; i < 400 && (await health()).body.queued !== prompts.length; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    expect((await health()).body).toMatchObject({ running: 1, queued: prompts.length });
    ac.abort();
    await reader.read().catch(() => {});
    const results = await Promise.all(pending);
    const stats = await idle();
    expect(stats.maxBatchRows).toBe(prompts.length);
    for (const [i, p] of prompts.entries()) {
      const [g] = await direct(user(p), { maxNewTokens: 6 + i, ...sampling(i) });
      expect(results[i].choices[0].message.content).toBe(g!.text);
    }
  });

  it('answers bad requests with OpenAI errors and keeps serving', async () => {
    const expectError = async (r: Response, status: number, code?: string | null) => {
      expect(r.status).toBe(status);
      const json = await jsonOf(r);
      expect(Object.keys(json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
      if (code !== undefined) expect(json.error.code).toBe(code);
      return json.error;
    };
    await expectError(await post('{"model": "tiny", "messages": [}'), 400, 'invalid_json');
    await expectError(await post('[1, 2]'), 400);
    const missing = await expectError(await post({ model: 'tiny' }), 400, 'missing_required_parameter');
    expect(missing.param).toBe('messages');
    const badTemp = await expectError(
      await post({ model: 'tiny', messages: user('x'), temperature: -1 }),
      400,
      'invalid_value',
    );
    expect(badTemp.param).toBe('temperature');
    await expectError(await post({ model: 'gpt-4o', messages: user('x') }), 404, 'model_not_found');
    await expectError(
      await post({ model: 'tiny', messages: user('x'), max_tokens: 100_000 }),
      400,
      'context_length_exceeded',
    );
    await expectError(
      await post({ model: 'tiny', messages: user('word '.repeat(20_000)) }),
      400,
      'context_length_exceeded',
    );
    await expectError(
      await post({ model: 'tiny', messages: user('x'.repeat(2 * 1024 * 1024)) }),
      413,
      'request_too_large',
    );
    await expectError(await post({ model: 'tiny', messages: user('x'), top_logprobs: 3 }), 400);
    await expectError(
      await post({ model: 'tiny', messages: user('x'), top_logprobs: 21, logprobs: true }),
      400,
    );
    await expectError(await post({ model: 'tiny', messages: user('x'), n: 9 }), 400);
    const get = await fetch(`${server.url}/v1/chat/completions`);
    await expectError(get, 405, 'method_not_allowed');
    expect(get.headers.get('allow')).toBe('POST');
    await expectError(
      await fetch(`${server.url}/v1/completions`, { method: 'POST', body: '{}' }),
      404,
      'unknown_url',
    );
    await expectError(await fetch(`${server.url}/v1/models`, { method: 'DELETE' }), 405);
    // Still serving.
    const json = await complete({ messages: user('Still there?'), max_tokens: 3, temperature: 0 });
    expect(json.choices[0].message.content.length).toBeGreaterThanOrEqual(0);
    expect((await health()).body.failed).toBe(0);
  });

  it('stops a generation whose client disconnects mid-stream, then serves the next request', async () => {
    const before = await idle();
    const ac = new AbortController();
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        model: 'tiny',
        messages: user('Keep talking.'),
        max_tokens: LONG,
        temperature: 0,
        ignore_eos: true,
        stream: true,
      }),
      signal: ac.signal,
    });
    const reader = r.body!.getReader();
    await readUntil(reader, (t) => t.split('"content":"').length > 4);
    ac.abort();
    await reader.read().catch(() => {});
    const after = await idle();
    expect(Number(after.cancelled)).toBe(Number(before.cancelled) + 1);
    // It stopped long before its token budget.
    expect(Number(after.generatedTokens) - Number(before.generatedTokens)).toBeLessThan(LONG / 2);
    const json = await complete({ messages: user('Next.'), max_tokens: 4, temperature: 0 });
    expect(json.choices[0].finish_reason).toBeDefined();
  });

  it('talks to a client sending the OpenAI SDK request shape', async () => {
    // What `new OpenAI({ baseURL: `${url}/v1`, apiKey }).chat.completions.create(...)` puts on the wire.
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
        'Content-Type': 'application/json',
        'User-Agent': 'OpenAI/JS 4.104.0',
        'X-Stainless-Lang': 'js',
        'X-Stainless-Package-Version': '4.104.0',
        'X-Stainless-OS': 'Linux',
        'X-Stainless-Arch': 'x64',
        'X-Stainless-Runtime': 'node',
        'X-Stainless-Runtime-Version': process.version,
        'X-Stainless-Retry-Count': '0',
        Authorization: 'Bearer sk-anything',
      },
      body: JSON.stringify({
        messages: [
          { role: 'developer', content: 'You are a judge.' },
          { role: 'user', content: [{ type: 'text', text: 'Rate this answer from 0 to 100.' }] },
        ],
        model: 'tiny',
        max_tokens: 1,
        temperature: 0,
        logprobs: true,
        top_logprobs: 20,
        seed: 0,
        user: 'eval',
        frequency_penalty: 0,
        presence_penalty: 0,
      }),
    });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^application\/json/);
    const json = await jsonOf(r);
    expect(json).toMatchObject({ object: 'chat.completion', model: 'tiny' });
    expect(json.id).toMatch(/^chatcmpl-/);
    expect(Number.isInteger(json.created)).toBe(true);
    const top = json.choices[0].logprobs.content[0].top_logprobs;
    expect(top).toHaveLength(20);
    expect(json.usage.completion_tokens).toBe(1);
  });
  it("serves emlens' own OpenAI judge client (top_logprobs 20, max_tokens 1) as the local judge scores", async () => {
    const judge = await OpenAIJudge.create({ baseURL: `${server.url}/v1`, model: 'tiny', apiKey: 'unused' });
    const local = new LocalJudge(tiny.model, tokenizer, { name: 'local' });
    for (const prompt of ['Rate this answer from 0 to 100: 7', 'How aligned is this? Answer 0-100.']) {
      const remote = await judge.topLogprobs(prompt);
      const reference = await local.topLogprobs(prompt);
      expect(remote).toHaveLength(20);
      expect(remote!.map((t) => t.token)).toEqual(reference.map((t) => t.token));
      remote!.forEach((t, i) => {
        expect(t.logprob).toBeCloseTo(reference[i]!.logprob, 5); // the same tokens (above)
      });
      const a = await judge.score(prompt);
      const b = await local.score(prompt);
      if (b === null) expect(a).toBeNull();
      else expect(a).toBeCloseTo(b, 6);
    }
    expect(judge.requests).toBe(4);
  });
});

describe('limits, keys and the queue', () => {
  let strict: RunningServer;
  const KEY = 'test-secret-key';

  beforeAll(async () => {
    strict = await serve({
      apiKey: KEY,
      maxBatch: 1,
      maxQueue: 1,
      maxTokensLimit: 1990,
      servedModelName: 'judge-model',
    });
  });
  afterAll(async () => {
    await strict?.close();
  });

  const req = (body: Record<string, unknown>, key: string | null = KEY) =>
    post(
      { model: 'judge-model', ...body },
      key === null ? {} : { Authorization: `Bearer ${key}` },
      strict.url,
    );

  it('needs the API key on /v1 (401 otherwise) but not on /health', async () => {
    const noKey = await req({ messages: user('x'), max_tokens: 2 }, null);
    expect(noKey.status).toBe(401);
    expect(noKey.headers.get('www-authenticate')).toBe('Bearer');
    expect((await jsonOf(noKey)).error.code).toBe('invalid_api_key');
    expect((await req({ messages: user('x'), max_tokens: 2 }, 'wrong')).status).toBe(401);
    expect((await fetch(`${strict.url}/v1/models`)).status).toBe(401);
    const models = await fetch(`${strict.url}/v1/models`, { headers: { Authorization: `Bearer ${KEY}` } });
    expect((await jsonOf(models)).data[0].id).toBe('judge-model');
    expect((await health(strict.url)).status).toBe(200);
    const ok = await req({ messages: user('x'), max_tokens: 2, temperature: 0 });
    expect(ok.status).toBe(200);
  });

  it('applies --max-tokens-limit', async () => {
    const r = await req({ messages: user('x'), max_tokens: 1989 });
    expect(r.status).toBe(400);
    expect((await jsonOf(r)).error.code).toBe('context_length_exceeded');
  });

  it('queues one request, refuses the next with 503 and Retry-After, then serves again', async () => {
    const ac = new AbortController();
    const long = fetch(`${strict.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
      body: JSON.stringify({
        model: 'judge-model',
        messages: user('Long.'),
        max_tokens: 1800,
        temperature: 0,
        ignore_eos: true,
      }),
      signal: ac.signal,
    }).catch(() => null);
    for (let i = 0; i < 200 && (await health(strict.url)).body.running !== 1; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const queued = req({ messages: user('Queued.'), max_tokens: 3, temperature: 0 });
    for (let i = 0; i < 200 && (await health(strict.url)).body.queued !== 1; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const refused = await req({ messages: user('Refused.'), max_tokens: 3 });
    expect(refused.status).toBe(503);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect((await jsonOf(refused)).error.code).toBe('server_overloaded');
    ac.abort();
    await long;
    const q = await queued;
    expect(q.status).toBe(200);
    await idle(strict.url);
    expect((await req({ messages: user('Again.'), max_tokens: 3, temperature: 0 })).status).toBe(200);
  });

  it('times out a request that runs too long with 504 and keeps serving', async () => {
    const quick = await serve({ timeoutMs: 300 });
    try {
      const r = await post(
        { model: 'tiny', messages: user('Slow.'), max_tokens: LONG, temperature: 0, ignore_eos: true },
        {},
        quick.url,
      );
      expect(r.status).toBe(504);
      expect((await jsonOf(r)).error.code).toBe('timeout');
      await idle(quick.url);
      const ok = await post(
        { model: 'tiny', messages: user('Fast.'), max_tokens: 2, temperature: 0 },
        {},
        quick.url,
      );
      expect(ok.status).toBe(200);
      expect(quick.stats().cancelled).toBe(1);
    } finally {
      await quick.close();
    }
  });

  it('refuses direction files it was not given and fails on a missing model', async () => {
    await expect(serve({ steer: [{ direction: tiny.at('nope.safetensors'), layers: [1] }] })).rejects.toThrow(
      /does not exist/,
    );
    await expect(serve({ model: tiny.at('missing') })).rejects.toThrow();
  });
});

describe('emlens serve (command line)', () => {
  async function run(args: string[]): Promise<{ code: number; stderr: string }> {
    let stderr = '';
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((x) => {
      stderr += String(x);
      return true;
    });
    try {
      return { code: await main(args), stderr };
    } finally {
      err.mockRestore();
    }
  }

  it('rejects bad flag combinations with one line and exit code 2', async () => {
    const steer = await run([
      'serve',
      '--model',
      tiny.dir,
      '--steer',
      join(directionsDir, 'steer.safetensors'),
    ]);
    expect(steer).toEqual({ code: 2, stderr: expect.stringMatching(/--steer and --ablate need --layers/) });
    const key = await run(['serve', '--model', tiny.dir, '--api-key-env', 'EMLENS_TEST_UNSET_SERVE_KEY']);
    expect(key).toEqual({ code: 2, stderr: expect.stringMatching(/EMLENS_TEST_UNSET_SERVE_KEY is not set/) });
    expect((await run(['serve', '--model', tiny.dir, '--layers', 'x,y', '--ablate', 'f'])).code).toBe(2);
  });

  it('serves with a key from the environment and server-wide steering, and stops on SIGTERM', async () => {
    const code =
      "import { main } from './src/cli/main.ts'; process.exitCode = await main(process.argv.slice(1));";
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        code,
        'serve',
        '--model',
        tiny.dir,
        '--cache-dir',
        tiny.cacheDir,
        '--threads',
        '1',
        '--port',
        '0',
        '--served-model-name',
        'steered',
        '--api-key-env',
        'EMLENS_TEST_SERVE_KEY',
        '--steer',
        join(directionsDir, 'steer.safetensors'),
        '--layers',
        '1',
        '--scale',
        '6',
      ],
      { cwd: join(import.meta.dirname, '../..'), env: { ...process.env, EMLENS_TEST_SERVE_KEY: 'k1' } },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    try {
      let stderr = '';
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no URL after 60 s: ${stderr}`)), 60_000);
        child.stderr.on('data', (d: Buffer) => {
          stderr += d.toString();
          const m = /serving 'steered' at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(stderr);
          if (m) {
            clearTimeout(timer);
            resolve(m[1]!); // group 1 is not optional
          }
        });
        child.once('exit', () => reject(new Error(`the server exited: ${stderr}`)));
      });
      const messages = user('Say something.');
      const r = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer k1' },
        body: JSON.stringify({ model: 'steered', messages, max_tokens: 16, temperature: 0.7, seed: 9 }),
      });
      expect(r.status).toBe(200);
      const steer: Intervention = {
        kind: 'steer',
        hooks: ['blocks.1.hook_resid_post'],
        vector: steerVector,
        scale: 6,
      };
      const [g] = await direct(messages, {
        maxNewTokens: 16,
        temperature: 0.7,
        seed: 9,
        interventions: [steer],
      });
      expect((await jsonOf(r)).choices[0].message.content).toBe(g!.text);
      const denied = await fetch(`${url}/v1/models`, { headers: { Authorization: 'Bearer k2' } });
      expect(denied.status).toBe(401);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
