/**
 * The steering playground (`GET /`) and what it stands on, over real HTTP on 127.0.0.1 with a tiny model:
 * - `emlens.monitor`: each generated token's projection equals the one computed from a forward pass's hooks over
 *   the prompt and the same tokens, streamed and whole alike; bad monitors are 400s naming the field;
 * - `GET /v1/emlens/directions` lists the allowed files only, behind the key; the page itself needs no key;
 * - the page in headless Chromium (playwright-core): an API error shows, the key connects, a direction is
 *   picked, Enter sends, baseline and intervened answers are equal at scale 0 and differ at a large scale, the
 *   slider moves by keyboard, the sweep runs and plots, the screenshot is not blank, and no request leaves the
 *   server.
 */
import { readdir, readFile, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { directionSet, saveDirections } from '../../src/directions/direction.js';
import { generate } from '../../src/generate/generate.js';
import { composeInterventions } from '../../src/interventions/compose.js';
import { runBatch, serverDecoder, tokenBytesOf } from '../../src/serve/batch.js';
import type { FinishEvent, JobSpec, TokenEvent } from '../../src/serve/messages.js';
import { type RunningServer, startServer } from '../../src/serve/server.js';
import { encodeChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';
import { dotAt, norm } from '../../src/util/vector.js';
import { CHROMIUM_FLAGS, chromiumForTests, pngInk } from '../helpers/chromium.js';
import { useTinyModel } from '../helpers/fixtures.js';

const D_MODEL = 32;
const KEY = 'playground-secret';

// the fixture's load builds the graph the server then finds cached
const tiny = useTinyModel('emlens-playground-', {
  family: 'qwen2',
  seed: 5,
  numLayers: 3,
  dModel: D_MODEL,
  name: 'tiny',
});
let server: RunningServer;
let tokenizer: TextTokenizer;
let big: Float32Array;

function vec(d: number, seed: number, size = 1): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: d }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return size * (2 * (s / 2 ** 32) - 1);
  });
}

const META = {
  model: 'tiny',
  hook: 'hook_resid_post',
  method: 'test',
  positions: 'answer_mean',
  nPos: 0,
  nNeg: 0,
  sourcePos: '',
  sourceNeg: '',
};

beforeAll(async () => {
  const dir = tiny.at('directions');
  tokenizer = await loadTokenizer(tiny.dir);
  // Large norm, so that steering at a moderate scale changes what the tiny model writes.
  big = vec(D_MODEL, 3, 4);
  await saveDirections(
    join(dir, 'big.safetensors'),
    directionSet(
      [
        [0, vec(D_MODEL, 4, 4)],
        [1, big],
        [2, big],
      ],
      META,
    ),
  );
  await saveDirections(join(dir, 'sub', 'layer2.safetensors'), directionSet([[2, vec(D_MODEL, 8)]], META));
  await saveDirections(tiny.at('outside', 'secret.safetensors'), directionSet([[1, big]], META));
  await symlink(tiny.at('outside', 'secret.safetensors'), join(dir, 'leak.safetensors'));
  server = await startServer({
    model: tiny.dir,
    cacheDir: tiny.cacheDir,
    threads: 1,
    port: 0,
    host: '127.0.0.1',
    apiKey: KEY,
    directionsDir: dir,
  });
});

afterAll(async () => {
  await server?.close();
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are checked field by field by the assertions
type Json = any;
const auth = { Authorization: `Bearer ${KEY}` };

async function post(body: Record<string, unknown>) {
  return fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...auth },
    body: JSON.stringify({ model: 'tiny', ...body }),
  });
}

async function complete(body: Record<string, unknown>): Promise<Json> {
  const r = await post(body);
  const json = await r.json();
  expect(r.status, JSON.stringify(json)).toBe(200);
  return json;
}

async function badMonitor(monitor: unknown): Promise<{ status: number; error: Json }> {
  const r = await post({ messages: [{ role: 'user', content: 'Hi.' }], max_tokens: 2, emlens: { monitor } });
  return { status: r.status, error: ((await r.json()) as Json).error };
}

describe('emlens.monitor', () => {
  it("gives each generated token's residual projection, as a forward pass over the same tokens computes it", async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a secret.' }];
    const scale = 1.5;
    const body = {
      messages,
      max_tokens: 10,
      temperature: 0.8,
      seed: 4,
      emlens: {
        steer: [{ direction: 'big.safetensors', layers: [1], scale }],
        monitor: { direction: 'big.safetensors', layers: [2, 1] },
      },
    };
    const whole = await complete(body);
    const monitor = whole.choices[0].emlens.monitor;
    expect(monitor.layers).toEqual([1, 2]);

    // The same generation through the library, then one forward pass over prompt + tokens with the hooks.
    const prompt = encodeChat(tokenizer, messages, { addGenerationPrompt: true });
    const interventions = composeInterventions(
      { steer: [{ direction: directionSet([[1, big]], META), layers: [1], scale }] },
      tiny.model.spec,
    );
    const [g] = await generate(tiny.model, [prompt], {
      maxNewTokens: 10,
      temperature: 0.8,
      seed: 4,
      interventions,
      tokenizer: serverDecoder(tokenizer),
    });
    expect(whole.choices[0].message.content).toBe(g!.text);
    expect(monitor.content).toHaveLength(g!.tokens.length);
    const r = await tiny.model.forward([[...prompt, ...g!.tokens]], {
      hooks: ['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post'],
      interventions,
    });
    const seq = prompt.length + g!.tokens.length;
    g!.tokens.forEach((token, i) => {
      const entry = monitor.content[i];
      expect(entry.token).toBe(tokenizer.decode([token], { cleanUpTokenizationSpaces: false }));
      [1, 2].forEach((layer, j) => {
        const h = r.hooks.get(`blocks.${layer}.hook_resid_post`)!; // asked for above: [1, seq, d_model]
        expect(h.dims).toEqual([1, seq, D_MODEL]);
        const want = dotAt(h.data, (prompt.length + i) * D_MODEL, big) / norm(big);
        expect(entry.projections[j]).toBeCloseTo(want, 3);
      });
    });
    // Steering generated tokens at layer 1 moves the first token's layer-1 projection by exactly scale * |v|
    // (that token is sampled from the plain prompt): the monitor sees the intervened residual.
    const plain = await complete({ ...body, emlens: { monitor: body.emlens.monitor } });
    const late = await complete({ ...body, emlens: { ...body.emlens, positions: 'generated' } });
    const first = (j: Json) => j.choices[0].emlens.monitor.content[0];
    expect(first(late).token).toBe(first(plain).token);
    expect(first(late).projections[0] - first(plain).projections[0]).toBeCloseTo(scale * norm(big), 3);

    // Streamed: the same entries, one per token chunk.
    const res = await post({ ...body, stream: true });
    const text = await res.text();
    const streamed = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .flatMap((e) => (JSON.parse(e.slice(6)) as Json).choices)
      .flatMap((c: Json) => c.emlens?.monitor?.content ?? []);
    expect(streamed).toEqual(monitor.content);
  });

  it('monitors up to the last position the graph holds', async () => {
    // The last token of a monitored row is fed once more for its residual: at prompt + max_tokens = the graph's
    // maxPositions that one position must still fit.
    const messages = [{ role: 'user' as const, content: 'Go on.' }];
    const promptLength = encodeChat(tokenizer, messages, { addGenerationPrompt: true }).length;
    const maxTokens = 6;
    const small = await startServer({
      model: tiny.dir,
      cacheDir: tiny.cacheDir,
      threads: 1,
      port: 0,
      host: '127.0.0.1',
      directionsDir: tiny.at('directions'),
      maxPositions: promptLength + maxTokens,
    });
    try {
      const ask = (monitor: boolean) =>
        fetch(`${small.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({
            model: 'tiny',
            messages,
            max_tokens: maxTokens,
            ignore_eos: true,
            temperature: 0,
            ...(monitor ? { emlens: { monitor: { direction: 'big.safetensors', layers: 'all' } } } : {}),
          }),
        }).then(async (r) => ({ status: r.status, body: (await r.json()) as Json }));
      const [a, b, c] = await Promise.all([ask(true), ask(false), ask(true)]);
      for (const r of [a, b, c]) expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(a.body.choices[0].emlens.monitor.layers).toEqual([0, 1, 2]);
      expect(a.body.choices[0].emlens.monitor.content).toHaveLength(maxTokens);
      expect(c.body.choices[0].emlens).toEqual(a.body.choices[0].emlens);
      expect(b.body.choices[0].emlens).toBeUndefined();
      expect(b.body.choices[0].message.content).toBe(a.body.choices[0].message.content);
    } finally {
      await small.close();
    }
  });

  it('leaves the other rows of a batch as they are: a monitored row ends one call later, with the same tokens', async () => {
    const prompt = encodeChat(tokenizer, [{ role: 'user', content: 'Hello.' }], {
      addGenerationPrompt: true,
    });
    const job = (id: number, monitored: boolean, maxTokens: number): JobSpec => ({
      id,
      prompt,
      n: 1,
      maxTokens,
      temperature: 0.9,
      topP: 1,
      topK: 0,
      seed: 3,
      stop: [],
      ignoreEos: true,
      topLogprobs: null,
      monitor: monitored ? { layers: [1], vectors: [big], norms: [norm(big)] } : null,
    });
    const events: TokenEvent[] = [];
    const finished: FinishEvent[] = [];
    const decoder = serverDecoder(tokenizer);
    const bytesOf = await tokenBytesOf(tiny.dir, tokenizer);
    // Rows of 3 and 5 tokens, monitored and not, in one batch.
    const jobs = [job(1, true, 3), job(2, false, 3), job(3, true, 5), job(4, false, 5)];
    await runBatch(tiny.model, decoder, bytesOf, jobs, [], 'all', {
      cancelled: () => false,
      onStep: (t, f) => {
        events.push(...t);
        finished.push(...f);
      },
      yieldNow: async () => {},
    });
    const text = (id: number) => finished.find((f) => f.job === id)?.text;
    expect(finished).toHaveLength(4);
    expect(text(1)).toBe(text(2));
    expect(text(3)).toBe(text(4));
    expect(text(3)!.startsWith(text(1)!)).toBe(true);
    const monitored = (id: number) => events.filter((e) => e.job === id && e.monitor !== undefined);
    expect(monitored(1)).toHaveLength(3);
    expect(monitored(3)).toHaveLength(5);
    expect(
      monitored(3)
        .slice(0, 3)
        .map((e) => e.monitor),
    ).toEqual(monitored(1).map((e) => e.monitor));
    expect(events.filter((e) => e.job === 2 || e.job === 4).every((e) => e.monitor === undefined)).toBe(true);
    // Each text is the concatenation of its deltas and the finish's rest, monitored or not.
    for (const id of [1, 2, 3, 4]) {
      const sent = events
        .filter((e) => e.job === id)
        .map((e) => e.delta)
        .join('');
      expect(sent + finished.find((f) => f.job === id)!.delta).toBe(text(id));
    }
  });

  it('refuses a bad monitor with a 400 that names the field', async () => {
    const outOfRange = await badMonitor({ direction: 'big.safetensors', layers: [7] });
    expect(outOfRange.status).toBe(400);
    expect(outOfRange.error.param).toBe('emlens.monitor.layers');
    expect(outOfRange.error.message).toMatch(/Layer 7 is out of range/);
    const notInFile = await badMonitor({ direction: 'sub/layer2.safetensors', layers: [0] });
    expect(notInFile.status).toBe(400);
    expect(notInFile.error.param).toBe('emlens.monitor.layers');
    expect(notInFile.error.message).toMatch(/no vector for layer 0 \(it has layers 2\)/);
    const missing = await badMonitor({ direction: 'nope.safetensors', layers: 1 });
    expect(missing.status).toBe(400);
    expect(missing.error.param).toBe('emlens.monitor.direction');
    const zero = await badMonitor({ direction: new Array(D_MODEL).fill(0), layers: 1 });
    expect(zero.status).toBe(400);
    expect(zero.error.message).toMatch(/zero vector/);
    const extra = await badMonitor({ direction: 'big.safetensors', layers: 1, scale: 2 });
    expect(extra.status).toBe(400);
    expect(extra.error.param).toBe('emlens.monitor');
    const outside = await badMonitor({ direction: 'leak.safetensors', layers: 1 });
    expect(outside.status).toBe(403);
  });
});

describe('the playground routes', () => {
  it('serves the page without the key, and lists the allowed direction files only with it', async () => {
    const page = await fetch(`${server.url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'none'.*connect-src 'self'/);
    const html = await page.text();
    expect(html).toContain('<script src="/playground.js"');
    expect(html).not.toContain('tiny'); // nothing about the served model without the key
    expect((await fetch(`${server.url}/playground.js`)).status).toBe(200);

    expect((await fetch(`${server.url}/v1/emlens/directions`)).status).toBe(401);
    const list = (await (
      await fetch(`${server.url}/v1/emlens/directions`, { headers: auth })
    ).json()) as Json;
    expect(list.data.map((d: Json) => d.id)).toEqual(['big.safetensors', 'sub/layer2.safetensors']);
    expect(list.data[0].layers).toEqual([0, 1, 2]);
    expect(list.data[0].norms[1]).toBeCloseTo(norm(big), 4);
  });
});

describe('the playground in the package', () => {
  it('is one folder of static files that the build copies into dist beside the server', async () => {
    const folder = new URL('../../src/serve/playground/', import.meta.url);
    expect((await readdir(folder)).sort()).toEqual(['index.html', 'playground.css', 'playground.js']);
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8'));
    expect(pkg.scripts.build).toContain("cpSync('src/serve/playground', 'dist/serve/playground'");
    expect(pkg.files).toContain('dist');
    // No URL in the page's files points anywhere but this server (the SVG namespace is a name, not a request).
    for (const f of await readdir(folder)) {
      const text = await readFile(new URL(f, folder), 'utf8');
      const urls = (text.match(/(https?:)?\/\/[\w.-]+\.\w+/g) ?? []).filter((u) => u !== 'http://www.w3.org');
      expect(urls, f).toEqual([]);
    }
  });
});

describe('the playground in a browser', () => {
  let browser: Browser;
  beforeAll(async () => {
    browser = await chromium.launch({ executablePath: await chromiumForTests(), args: CHROMIUM_FLAGS });
  });
  afterAll(async () => {
    await browser?.close();
  });

  it('steers side by side, sweeps, colours tokens and shows API errors', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const foreign: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(`${server.url}/`)) foreign.push(r.url());
    });
    await page.goto(`${server.url}/`);
    // Without the key the page's first API call fails, and the server's sentence is shown.
    await expect.poll(() => page.locator('#errors').textContent()).toMatch(/API key is missing or wrong/);

    await page.locator('#key').fill(KEY);
    await page.locator('#key').press('Enter');
    await expect.poll(() => page.locator('#status').textContent()).toMatch(/Connected to tiny: 2 direction/);
    expect(await page.locator('#errors').isHidden()).toBe(true);
    await page.locator('#direction').selectOption('big.safetensors');
    await page.locator('#layer-mode').selectOption('one');
    await page.locator('#layer-from').fill('1');
    await page.locator('#monitor-layer').selectOption('1');
    await page.locator('#temperature').fill('0.8');
    await page.locator('#max-tokens').fill('12');

    // Scale 0 by keyboard (from 4, in steps of 0.5): the intervened answer is the baseline's.
    await page.locator('#scale').focus();
    for (let i = 0; i < 8; i++) await page.keyboard.press('ArrowLeft');
    expect(await page.locator('#scale-value').textContent()).toBe('0');
    const answers = async () => {
      await page.locator('#prompt').press('Enter');
      await expect.poll(() => page.locator('#status').textContent()).toMatch(/^Done/);
      return [await page.locator('#baseline').textContent(), await page.locator('#intervened').textContent()];
    };
    await page.locator('#prompt').fill('Tell me about yourself.');
    const [base0, steered0] = await answers();
    expect(base0!.length).toBeGreaterThan(0);
    expect(steered0).toBe(base0);

    // The largest scale: a different answer, its tokens coloured by projection.
    await page.locator('#scale').focus();
    await page.keyboard.press('End');
    expect(await page.locator('#scale-value').textContent()).toBe('20');
    const [base20, steered20] = await answers();
    expect(base20).toBe(base0);
    expect(steered20).not.toBe(base20);
    const coloured = await page.locator('#intervened span[data-projection]').count();
    expect(coloured).toBeGreaterThan(0);
    expect(await page.locator('#intervened-score').textContent()).toMatch(/mean projection/);

    // The sweep: one answer per scale, and a plot whose score grows with the scale (steering adds scale * |v|
    // to the monitored layer's residual).
    await page.locator('#sweep-scales').fill('-10, 0, 10');
    await page.locator('#sweep').click();
    await expect.poll(() => page.locator('#status').textContent()).toMatch(/^Sweep done: 3 scales/);
    expect(await page.locator('.sweep-card').count()).toBe(3);
    expect(await page.locator('.sweep-card').nth(1).locator('.answer').textContent()).toBe(base0);
    const scores = await page
      .locator('#sweep-plot circle')
      .evaluateAll((cs) => cs.map((c) => Number(c.getAttribute('data-score'))));
    expect(scores).toHaveLength(3);
    expect(scores[0]!).toBeLessThan(scores[1]!);
    expect(scores[1]!).toBeLessThan(scores[2]!);

    const png = await page.screenshot({ fullPage: true });
    const ink = pngInk(png);
    expect(ink.width).toBe(1280);
    expect(ink.colours).toBeGreaterThan(20);
    expect(ink.ink).toBeGreaterThan(10_000);
    if (process.env.EMLENS_PLAYGROUND_SCREENSHOT) {
      const { writeFile } = await import('node:fs/promises');
      await writeFile(process.env.EMLENS_PLAYGROUND_SCREENSHOT, png);
    }

    // Ablation at all of the direction's layers: an answer, no error.
    await page.locator('input[name="mode"][value="ablate"]').check();
    await page.locator('#layer-mode').selectOption('all');
    await page.locator('#prompt').press('Enter');
    await expect.poll(() => page.locator('#status').textContent()).toMatch(/^Done/);
    expect(await page.locator('#intervened-title').textContent()).toBe('Ablated');
    expect(await page.locator('#errors').isHidden()).toBe(true);
    expect((await page.locator('#intervened').textContent())!.length).toBeGreaterThan(0);

    // A request the server refuses shows its message: a wrong key.
    await page.locator('#key').fill('wrong');
    await page.locator('#prompt').press('Enter');
    await expect.poll(() => page.locator('#errors').textContent()).toMatch(/API key is missing or wrong/);
    expect(foreign).toEqual([]);
    await page.close();
  });
});
