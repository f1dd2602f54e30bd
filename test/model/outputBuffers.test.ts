/**
 * Output buffers: a forward pass that writes its logits and cache into given buffers returns what it would
 * return without them, continues from such a cache, and refuses buffers that are too small or that alias the
 * cache it reads; a decode loop's buffers alternate and grow.
 */
import { describe, expect, it } from 'vitest';
import { decodeLoop } from '../../src/generate/decodeLoop.js';
import { loadModel } from '../../src/model/model.js';
import { DecodeBuffers } from '../../src/model/outputBuffers.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { at, ids, maxAbsDiff } from '../helpers/numeric.js';

const tiny = useTinyModel('emlens-outbuf-', {
  family: 'llama',
  seed: 9,
  name: 'm',
  load: { maxPositions: 160 },
});

const kvElements = (batch: number, positions: number) =>
  batch * tiny.model.spec.numKvHeads * positions * tiny.model.spec.headDim;

describe('forward into output buffers', () => {
  it('returns the same logits and cache as fresh outputs, as views of the buffers, and continues from them', async () => {
    const prompts = [ids(6, 1), ids(4, 2)] as const;
    const plain = await tiny.model.forward(prompts, { returnCache: true });
    const buffers = new DecodeBuffers(tiny.model.spec, false, 2, undefined, tiny.model.maxPositions);
    const into = buffers.next(6);
    const written = await tiny.model.forward(prompts, { returnCache: true, into });
    expect(written.logits.data.buffer).toBe(into.logits!.buffer);
    expect(written.logits.dims).toEqual(plain.logits.dims);
    expect(maxAbsDiff(written.logits.data, plain.logits.data)).toBe(0);
    written.cache!.tensors.forEach((t, i) => {
      expect(t.dims).toEqual(at(plain.cache!.tensors, i).dims);
      expect((t.data as Float32Array).buffer).toBe(at(into.cache!, i).buffer);
      expect(maxAbsDiff(t.data as Float32Array, at(plain.cache!.tensors, i).data as Float32Array)).toBe(0);
    });

    const next = await tiny.model.forward([[7], [8]], {
      cache: written.cache!,
      returnCache: true,
      into: buffers.next(7),
    });
    const full = await tiny.model.forward([
      [...prompts[0], 7],
      [...prompts[1], 8],
    ]);
    expect(maxAbsDiff(next.logits.data, full.logits.data)).toBeLessThanOrEqual(1e-4);
  });

  it('refuses buffers too small, of the wrong type, sharing memory with the cache read, or for all-position logits', async () => {
    const big = (n: number) =>
      Array.from({ length: 2 * tiny.model.spec.numLayers }, () => new Float32Array(n));
    await expect(tiny.model.forward([ids(3, 3)], { into: { logits: new Float32Array(10) } })).rejects.toThrow(
      /into\.logits holds 10 floats .* pass a larger buffer/,
    );
    await expect(
      tiny.model.forward([ids(3, 3)], { returnCache: true, into: { cache: big(kvElements(1, 3) - 1) } }),
    ).rejects.toThrow(/into\.cache must be \d+ Float32Arrays of at least/);
    await expect(
      tiny.model.forward([ids(3, 3)], { returnCache: true, into: { cache: big(kvElements(1, 3)).slice(1) } }),
    ).rejects.toThrow(/into\.cache must be/);
    const fp16Like = Array.from(
      { length: 2 * tiny.model.spec.numLayers },
      () => new Uint16Array(kvElements(1, 3)),
    );
    await expect(
      tiny.model.forward([ids(3, 3)], { returnCache: true, into: { cache: fp16Like } }),
    ).rejects.toThrow(/Float32Arrays/);
    const set = new DecodeBuffers(tiny.model.spec, false, 1, undefined, tiny.model.maxPositions).next(3);
    const written = await tiny.model.forward([ids(3, 3)], { returnCache: true, into: set });
    await expect(
      tiny.model.forward([[5]], { cache: written.cache!, returnCache: true, into: set }),
    ).rejects.toThrow(/shares memory with the cache being continued/);
    await expect(
      tiny.model.forward([ids(3, 3)], { logits: 'all', into: { logits: new Float32Array(1e6) } }),
    ).rejects.toThrow(/last-position logits only/);
  });
});

describe('DecodeBuffers', () => {
  it('alternates two cache sets and keeps one logits buffer', () => {
    const b = new DecodeBuffers(tiny.model.spec, false, 1, 50, tiny.model.maxPositions);
    const [x, y, z] = [b.next(10), b.next(11), b.next(12)];
    expect(x.logits).toBe(y.logits);
    expect(x.cache![0]).not.toBe(y.cache![0]);
    expect(z.cache![0]).toBe(x.cache![0]);
    expect(x.cache).toHaveLength(2 * tiny.model.spec.numLayers);
  });

  it('grows a set geometrically, never beyond a known capacity or maxPositions', () => {
    const known = new DecodeBuffers(tiny.model.spec, false, 2, 50, tiny.model.maxPositions);
    expect(at(known.next(10).cache!, 0).length).toBe(kvElements(2, 42)); // 32 positions of room
    known.next(11);
    expect(at(known.next(43).cache!, 0).length).toBe(kvElements(2, 50)); // not 84: the loop needs 50 at most
    const open = new DecodeBuffers(tiny.model.spec, true, 1, undefined, 100);
    const first = open.next(10).cache!;
    expect(first[0]).toBeInstanceOf(Uint16Array); // fp16 bits
    open.next(11);
    expect(open.next(42).cache![0]).toBe(first[0]); // still fits: no reallocation
    open.next(43);
    expect(at(open.next(43).cache!, 0).length).toBe(kvElements(1, 84)); // doubled
    open.next(44);
    expect(at(open.next(85).cache!, 0).length).toBe(kvElements(1, 100)); // capped at maxPositions
    expect(() => open.next(101)).toThrow(/needs 101 positions but the graph was built for 100/);
  });

  it('lets a decode loop run past its first allocation and still match full recomputation', async () => {
    const prompt = ids(5, 4);
    const fed = Array.from({ length: 80 }, (_, i) => (i * 13 + 7) % tiny.model.spec.vocabSize);
    let step = 0;
    let last = new Float32Array(0);
    await decodeLoop(tiny.model, [prompt], [], 'all', async (logits) => {
      last = logits.slice();
      step++;
      return { next: [fed[step - 1] ?? null], done: step > fed.length }; // past the end, done: next is unused
    });
    const full = await tiny.model.forward([[...prompt, ...fed]]);
    expect(maxAbsDiff(last, full.logits.data)).toBeLessThanOrEqual(1e-4);
  });

  it('holds an fp16 cache in 16-bit buffers', async () => {
    const half = await loadModel(tiny.at('m'), {
      cacheDir: tiny.at('cache'),
      threads: 1,
      profile: 'fp16',
    });
    try {
      const prompt = ids(4, 6);
      const fed = Array.from({ length: 40 }, (_, i) => (i * 29 + 3) % half.spec.vocabSize);
      let step = 0;
      let last = new Float32Array(0);
      await decodeLoop(
        half,
        [prompt],
        [],
        'all',
        async (logits) => {
          last = logits.slice();
          step++;
          return { next: [fed[step - 1] ?? null], done: step > fed.length }; // past the end, done: next is unused
        },
        { maxNewTokens: fed.length + 1 },
      );
      const full = await half.forward([[...prompt, ...fed]]);
      expect(maxAbsDiff(last, full.logits.data)).toBeLessThanOrEqual(2e-2);
    } finally {
      await half.dispose();
    }
  });
});
