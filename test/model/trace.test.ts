/**
 * `model.trace`: the model's own tokenizer and chat template, inputs of every kind and batches of them, the
 * activation cache's ndarray views (over the forward pass's buffers, no copy) and store views likewise.
 */
import { cp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { ActivationStore } from '../../src/activations/store.js';
import { EmlensError } from '../../src/errors.js';
import type { HookSelector } from '../../src/model/hooks.js';
import { loadModel } from '../../src/model/model.js';
import { type ChatMessage, encodeChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { at, ids, maxAbsDiff } from '../helpers/numeric.js';

const HOOKS: readonly HookSelector[] = [
  'blocks.*.hook_resid_post',
  'blocks.1.hook_resid_pre',
  'blocks.0.hook_mlp_out',
];
const CHAT: ChatMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'What is 2 + 2?' },
];

const tiny = useTinyModel('emlens-trace-', { family: 'llama', seed: 8, numLayers: 2 });
let tok: TextTokenizer;

beforeAll(async () => {
  tok = await loadTokenizer(tiny.dir);
});

describe('trace inputs', () => {
  it('traces chat messages exactly as forward on the ids encodeChat gives, with one BOS', async () => {
    for (const addGenerationPrompt of [false, true]) {
      const want = encodeChat(tok, CHAT, { addGenerationPrompt });
      const t = await tiny.model.trace(CHAT, { hooks: HOOKS, addGenerationPrompt, logits: 'all' });
      expect(t.tokens).toEqual([want]);
      expect(at(t.tokens, 0)[0]).toBe(tiny.spec.bosTokenId);
      expect(at(t.tokens, 0).filter((x) => x === tiny.spec.bosTokenId)).toHaveLength(1);
      const r = await tiny.model.forward([want], { hooks: HOOKS, logits: 'all' });
      expect(t.logits.shape).toEqual([1, want.length, tiny.spec.vocabSize]);
      expect(maxAbsDiff(t.logits.data, r.logits.data)).toBe(0);
      for (const [name, h] of r.hooks) expect(maxAbsDiff(t.cache.get(name).data, h.data), name).toBe(0);
    }
    const open = await tiny.model.toTokens(CHAT, { addGenerationPrompt: true });
    const closed = await tiny.model.toTokens(CHAT);
    expect(at(open, 0).length).toBeGreaterThan(at(closed, 0).length);
  });

  it('encodes a plain string with the tokenizer default (BOS added once) and takes token ids as given', async () => {
    const text = 'The cat sat on the mat.';
    const t = await tiny.model.trace(text, { hooks: HOOKS });
    expect(t.tokens).toEqual([tok.encode(text)]);
    expect(at(t.tokens, 0)[0]).toBe(tiny.spec.bosTokenId);
    const raw = await tiny.model.toTokens(text, { addSpecialTokens: false });
    expect(raw).toEqual([tok.encode(text, { addSpecialTokens: false })]);
    const row = ids(7, 3);
    const byIds = await tiny.model.trace(row, { hooks: HOOKS });
    expect(byIds.tokens).toEqual([row]);
    const r = await tiny.model.forward([row], { hooks: HOOKS });
    expect(maxAbsDiff(byIds.logits.data, r.logits.data)).toBe(0);
  });

  it('a batch mixing messages, text and ids equals each row alone (left padding included)', async () => {
    const batch = [CHAT, 'hello there', ids(4, 9)] as const;
    const t = await tiny.model.trace(batch, { hooks: HOOKS });
    expect(t.tokens).toHaveLength(3);
    const seq = Math.max(...t.tokens.map((r) => r.length));
    expect(t.padding).toEqual(t.tokens.map((r) => seq - r.length));
    expect(t.logits.shape).toEqual([3, tiny.spec.vocabSize]);
    const h = 'blocks.1.hook_resid_post';
    for (const [b, input] of batch.entries()) {
      const alone = await tiny.model.trace(input, { hooks: HOOKS });
      const tokens = at(t.tokens, b);
      expect(alone.tokens[0]).toEqual(tokens);
      expect(
        maxAbsDiff(
          t.logits.pick(b, null).data.subarray(b * tiny.spec.vocabSize, (b + 1) * tiny.spec.vocabSize),
          alone.logits.data,
        ),
      ).toBeLessThanOrEqual(1e-5);
      for (let p = 0; p < tokens.length; p++) {
        const got = t.cache.get(h).pick(b, at(t.padding, b) + p, null);
        const want = alone.cache.get(h).pick(0, p, null);
        let worst = 0;
        for (let i = 0; i < tiny.spec.dModel; i++)
          worst = Math.max(worst, Math.abs(got.get(i) - want.get(i)));
        expect(worst, `row ${b} pos ${p}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it('refuses empty input and malformed batch rows with one line', async () => {
    await expect(tiny.model.trace([])).rejects.toThrow(EmlensError);
    await expect(tiny.model.trace([ids(3, 1), [] as number[]])).rejects.toThrow(/Row 1 of the batch/);
  });
});

describe('activation cache views', () => {
  it('are [batch, pos, d_model] views over the forward buffers: picking a token copies nothing', async () => {
    const rows = [ids(6, 1), ids(6, 2)];
    const t = await tiny.model.trace(rows, { hooks: HOOKS });
    const d = tiny.spec.dModel;
    expect(t.cache.keys()).toEqual([
      'blocks.0.hook_resid_post',
      'blocks.0.hook_mlp_out',
      'blocks.1.hook_resid_pre',
      'blocks.1.hook_resid_post',
    ]);
    for (const name of t.cache.keys()) {
      const v = t.cache.get(name);
      const buffer = t.result.hooks.get(name)!.data;
      expect(v.data).toBe(buffer);
      expect(t.cache.tensor(name).data).toBe(buffer);
      expect(v.shape).toEqual([2, 6, d]);
      expect(v.stride).toEqual([6 * d, d, 1]);
      expect(v.offset).toBe(0);
      const tok3 = v.pick(0, 3);
      expect(tok3.data).toBe(buffer);
      expect(tok3.shape).toEqual([d]);
      expect(tok3.offset).toBe(3 * d);
      const tok = v.pick(1, 4);
      expect(tok.offset).toBe((6 + 4) * d);
      for (const i of [0, 7, d - 1]) expect(tok.get(i)).toBe(buffer[(6 + 4) * d + i]);
      // a position across the batch, and a slice of positions: still the same buffer
      const pos2 = v.pick(null, 2);
      expect(pos2.shape).toEqual([2, d]);
      expect(pos2.data).toBe(buffer);
      expect(pos2.get(1, 5)).toBe(buffer[(6 + 2) * d + 5]);
      expect(v.lo(0, 2).hi(2, 3).data).toBe(buffer);
    }
    // resid_pre of block 1 is resid_post of block 0 (the same tensor)
    expect(
      maxAbsDiff(t.cache.get('blocks.1.hook_resid_pre').data, t.cache.get('blocks.0.hook_resid_post').data),
    ).toBe(0);
    expect([...t.cache].map(([k]) => k)).toEqual(t.cache.keys());
    expect(t.logits.data).toBe(t.result.logits.data);
    expect(t.logits.shape).toEqual([2, tiny.spec.vocabSize]);
  });

  it('names the cached hooks when asked for another', async () => {
    const t = await tiny.model.trace(ids(3, 1), { hooks: ['blocks.0.hook_resid_post'] });
    expect(() => t.cache.get('blocks.1.hook_resid_post')).toThrow(/holds blocks\.0\.hook_resid_post/);
    const none = await tiny.model.trace(ids(3, 1));
    expect(() => none.cache.get('blocks.0.hook_resid_post')).toThrow(/cached no hooks/);
  });
});

describe('a folder without tokenizer.json', () => {
  it('loads and traces token ids, and trace(text) fails with one clear line', async () => {
    const bare = tiny.at('bare');
    await cp(tiny.dir, bare, { recursive: true });
    await rm(join(bare, 'tokenizer.json'));
    const m = await loadModel(bare, { cacheDir: tiny.at('cache'), threads: 1 });
    try {
      const row = ids(5, 4);
      const t = await m.trace(row, { hooks: ['blocks.0.hook_resid_post'] });
      const want = await tiny.model.forward([row], { hooks: ['blocks.0.hook_resid_post'] });
      expect(maxAbsDiff(t.logits.data, want.logits.data)).toBe(0);
      for (const input of ['some text', CHAT, [row, 'mixed']] as const) {
        const err = await m.trace(input).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(EmlensError);
        const message = (err as Error).message;
        expect(message).toMatch(/has no tokenizer\.json, so it takes token ids only/);
        expect(message).not.toContain('\n');
      }
      // a tokenizer given at load time serves instead
      const withTok = await loadModel(bare, { cacheDir: tiny.at('cache'), threads: 1, tokenizer: tok });
      try {
        expect((await withTok.trace('hi')).tokens).toEqual([tok.encode('hi')]);
      } finally {
        await withTok.dispose();
      }
    } finally {
      await m.dispose();
    }
  });
});

describe('activation store views', () => {
  it('shard and hook views share the read buffers and slice records without copying', async () => {
    const d = tiny.spec.dModel;
    const records = Array.from({ length: 7 }, (_, i) => ({ id: `r${i}`, ids: ids(4 + (i % 3), 20 + i) }));
    const out = tiny.at('store');
    await collectToStore(tiny.model, records, out, {
      hooks: ['blocks.*.hook_resid_post'],
      batchSize: 2,
      shardSize: 4,
    });
    const store = await ActivationStore.open(out);
    const hook = 'blocks.1.hook_resid_post';
    const all = await store.readHook(hook);
    const view = await store.hookView(hook);
    expect(view.shape).toEqual([7, d]);
    expect(view.stride).toEqual([d, 1]);
    const rec5 = view.pick(5, null);
    expect(rec5.data).toBe(view.data);
    expect(rec5.offset).toBe(5 * d);
    expect(Array.from({ length: d }, (_, i) => rec5.get(i))).toEqual(Array.from(all.subarray(5 * d, 6 * d)));
    expect(store.manifest.shards.map((s) => s.rows)).toEqual([4, 3]);
    let at = 0;
    for (let s = 0; s < 2; s++) {
      const sv = await store.shardView(s, hook);
      const rows = store.manifest.shards[s]!.rows; // two shards, checked above
      expect(sv.shape).toEqual([rows, d]);
      expect(sv.stride).toEqual([d, 1]);
      expect(sv.data.length).toBe(rows * d);
      const last = sv.pick(rows - 1, null);
      expect(last.data).toBe(sv.data);
      expect(last.offset).toBe((rows - 1) * d);
      expect(Array.from(sv.data)).toEqual(Array.from(all.subarray(at * d, (at + rows) * d)));
      at += rows;
    }
    await expect(store.shardView(2, hook)).rejects.toThrow(/shards 0\.\.1, not 2/);
    await expect(store.shardView(0, 'blocks.0.hook_mlp_out')).rejects.toThrow(/has no hook/);
  });
});
