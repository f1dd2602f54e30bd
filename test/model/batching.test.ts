/**
 * Left-padded batches equal each row run alone; KV-cached decoding equals recomputing the whole prefix.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Profile } from '../../src/model/graph/transformer.js';
import type { HookSelector } from '../../src/model/hooks.js';
import { type KVCache, loadModel, type Model } from '../../src/model/model.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { makeTinyModel, type TinyModelOptions } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { at, ids, maxAbsDiff } from '../helpers/numeric.js';

const ALL_HOOKS: HookSelector[] = ['blocks.*.*'];

/** Row `r` of a `[batch, ...]` tensor. */
function row(data: Float32Array, r: number, size: number): Float32Array {
  return data.subarray(r * size, (r + 1) * size);
}

/** Positions `from..to-1` of row `r` of a `[batch, seq, d]` tensor. */
function span(data: Float32Array, r: number, seq: number, d: number, from: number, to: number): Float32Array {
  return data.subarray((r * seq + from) * d, (r * seq + to) * d);
}

const FAMILIES: readonly { name: string; options: TinyModelOptions }[] = [
  { name: 'qwen2 gqa 2', options: { family: 'qwen2', seed: 11 } },
  {
    name: 'llama gqa 7, llama3 rope, bias, 3 layers',
    options: {
      family: 'llama',
      seed: 12,
      dModel: 56,
      numHeads: 7,
      numKvHeads: 1,
      qkvBias: true,
      ropeScaling: 'llama3',
      numLayers: 3,
    },
  },
];

const tmp = useTempDir('emlens-batching-');

describe.each(FAMILIES)('$name', ({ name, options }) => {
  let spec: ModelSpec;
  const models = new Map<Profile, Model>();

  beforeAll(async () => {
    const dir = tmp.join(name.replace(/[^a-z0-9]+/gi, '-'));
    spec = await makeTinyModel(dir, options);
    const cacheDir = tmp.join('cache');
    for (const profile of ['fp32', 'fp16'] as const) {
      models.set(profile, await loadModel(dir, { cacheDir, profile, threads: 1 }));
    }
  });
  afterAll(async () => {
    for (const m of models.values()) await m.dispose();
  });

  it('a left-padded batch (lengths 3, 7, 5) equals each row alone', async () => {
    const m = models.get('fp32')!;
    const d = spec.dModel;
    const rows = [ids(3, 1), ids(7, 2), ids(5, 3)];
    const batched = await m.forward(rows, { hooks: ALL_HOOKS });
    expect(batched.padding).toEqual([4, 0, 2]);
    expect(batched.logits.dims).toEqual([3, spec.vocabSize]);
    for (const [r, rowIds] of rows.entries()) {
      const alone = await m.forward([rowIds], { hooks: ALL_HOOKS });
      expect(alone.padding).toEqual([0]);
      const err = maxAbsDiff(row(batched.logits.data, r, spec.vocabSize), alone.logits.data);
      expect(err, `row ${r} logits`).toBeLessThanOrEqual(1e-5);
      const pad = at(batched.padding, r, 'padding');
      for (const [hook, t] of batched.hooks) {
        expect(t.dims).toEqual([3, 7, d]);
        const got = span(t.data, r, 7, d, pad, 7);
        const want = alone.hooks.get(hook)!;
        expect(want.dims).toEqual([1, rowIds.length, d]);
        expect(maxAbsDiff(got, want.data), `row ${r} ${hook}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it("a left-padded batch with logits: 'all' equals each row alone at the real positions", async () => {
    const m = models.get('fp32')!;
    const v = spec.vocabSize;
    const rows = [ids(3, 4), ids(7, 5), ids(5, 6)];
    const batched = await m.forward(rows, { logits: 'all' });
    expect(batched.logits.dims).toEqual([3, 7, v]);
    for (const [r, rowIds] of rows.entries()) {
      const alone = await m.forward([rowIds], { logits: 'all' });
      const got = span(batched.logits.data, r, 7, v, at(batched.padding, r, 'padding'), 7);
      expect(maxAbsDiff(got, alone.logits.data), `row ${r}`).toBeLessThanOrEqual(1e-5);
    }
  });

  it('a long left-padded batch (lengths 300, 200) equals each row alone', async () => {
    const m = models.get('fp32')!;
    const d = spec.dModel;
    const rows = [ids(300, 51), ids(200, 52)];
    const batched = await m.forward(rows, { hooks: ['blocks.*.hook_resid_post'] });
    for (const [r, rowIds] of rows.entries()) {
      const alone = await m.forward([rowIds], { hooks: ['blocks.*.hook_resid_post'] });
      expect(maxAbsDiff(row(batched.logits.data, r, spec.vocabSize), alone.logits.data)).toBeLessThanOrEqual(
        1e-5,
      );
      for (const [hook, t] of batched.hooks) {
        const got = span(t.data, r, 300, d, at(batched.padding, r, 'padding'), 300);
        expect(maxAbsDiff(got, alone.hooks.get(hook)!.data), `row ${r} ${hook}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it.each([
    ['fp32', 1e-4],
    ['fp16', 2e-2],
  ] as const)('%s: 270 new tokens at once after a cache equal full recomputation', async (profile, tol) => {
    const m = models.get(profile)!;
    const d = spec.dModel;
    const prefix = ids(5, 61);
    const more = ids(270, 62);
    const first = await m.forward([prefix], { returnCache: true });
    const cont = await m.forward([more], {
      cache: first.cache!,
      logits: 'all',
      hooks: ['blocks.*.hook_resid_post'],
    });
    const full = await m.forward([[...prefix, ...more]], {
      logits: 'all',
      hooks: ['blocks.*.hook_resid_post'],
    });
    const v = spec.vocabSize;
    expect(maxAbsDiff(cont.logits.data, span(full.logits.data, 0, 275, v, 5, 275))).toBeLessThanOrEqual(tol);
    for (const [hook, t] of cont.hooks) {
      expect(
        maxAbsDiff(t.data, span(full.hooks.get(hook)!.data, 0, 275, d, 5, 275)),
        hook,
      ).toBeLessThanOrEqual(tol);
    }
  });

  /**
   * Prefills `prompts` (left-padded), then feeds `steps` tokens one per row per call through the cache, and
   * checks each step's logits and hooks against a full recomputation of each row's whole prefix alone.
   */
  async function checkCached(profile: Profile, prompts: number[][], steps: number, tol: number) {
    const m = models.get(profile)!;
    const d = spec.dModel;
    const seqs = prompts.map((p) => [...p]);
    const longest = Math.max(...prompts.map((p) => p.length));
    const first = await m.forward(prompts, { returnCache: true, hooks: ALL_HOOKS });
    let cache: KVCache = first.cache!;
    expect(cache.batch).toBe(prompts.length);
    expect(cache.length).toBe(longest);
    expect(cache.nextPosition).toEqual(prompts.map((p) => p.length));
    expect(cache.tensors).toHaveLength(2 * spec.numLayers);
    for (const [r, seq] of seqs.entries()) {
      const full = await m.forward([seq]);
      const err = maxAbsDiff(row(first.logits.data, r, spec.vocabSize), full.logits.data);
      expect(err, `prefill row ${r}`).toBeLessThanOrEqual(tol);
    }
    for (let step = 0; step < steps; step++) {
      const next = prompts.map((_, r) => at(ids(1, 100 * step + r + 7), 0));
      next.forEach((t, r) => {
        at(seqs, r).push(t);
      });
      const res = await m.forward(
        next.map((t) => [t]),
        { cache, returnCache: true, hooks: ALL_HOOKS },
      );
      expect(res.padding).toEqual(prompts.map(() => 0));
      expect(res.logits.dims).toEqual([prompts.length, spec.vocabSize]);
      cache = res.cache!;
      expect(cache.length).toBe(longest + step + 1);
      expect(cache.nextPosition).toEqual(seqs.map((s) => s.length));
      for (const [r, seq] of seqs.entries()) {
        const full = await m.forward([seq], { hooks: ALL_HOOKS });
        const err = maxAbsDiff(row(res.logits.data, r, spec.vocabSize), full.logits.data);
        expect(err, `step ${step} row ${r} logits`).toBeLessThanOrEqual(tol);
        const n = seq.length;
        for (const [hook, t] of res.hooks) {
          expect(t.dims).toEqual([prompts.length, 1, d]);
          const want = span(full.hooks.get(hook)!.data, 0, n, d, n - 1, n);
          expect(maxAbsDiff(row(t.data, r, d), want), `step ${step} row ${r} ${hook}`).toBeLessThanOrEqual(
            tol,
          );
        }
      }
    }
  }

  it('KV-cached decoding (prefill 4, then 5 single tokens) equals full recomputation', async () => {
    await checkCached('fp32', [ids(4, 21)], 5, 1e-4);
  });

  it('batched KV-cached decoding with left padding equals each row recomputed alone', async () => {
    await checkCached('fp32', [ids(2, 31), ids(6, 32), ids(4, 33)], 5, 1e-4);
  });

  it('fp16: KV-cached decoding equals fp16 full recomputation', async () => {
    await checkCached('fp16', [ids(4, 41)], 5, 2e-2);
    await checkCached('fp16', [ids(3, 42), ids(5, 43)], 3, 2e-2);
  });
});
