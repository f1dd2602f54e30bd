/**
 * Activation collection and the on-disk store: reductions equal the forward pass, resume after an interrupted
 * run is byte-identical, slices merge into the unsliced store, and bad inputs get clear errors.
 */

import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { storeLayerMeans } from '../../src/activations/aggregate.js';
import { type CollectOptions, collectToStore, sliceRange } from '../../src/activations/collect.js';
import { ActivationStore, mergeStores } from '../../src/activations/store.js';
import type { TokenizedRecord } from '../../src/data/record.js';
import type { Intervention } from '../../src/model/interventions.js';
import { Rng } from '../../src/util/random.js';
import { makeTinyFixture, useTinyModel } from '../helpers/fixtures.js';

const tiny = useTinyModel('emlens-store-', { family: 'qwen2', seed: 3, numLayers: 2, dModel: 32, name: 'm' });
const records: TokenizedRecord[] = [];

beforeAll(async () => {
  const rng = new Rng(11);
  for (let i = 0; i < 23; i++) {
    const len = 4 + rng.int(9);
    const ids = Array.from({ length: len }, () => rng.int(500));
    const answer = 1 + rng.int(len - 1);
    const mask = new Uint8Array(len).fill(0, 0, len - answer).fill(1, len - answer);
    records.push({ id: `r${i}`, ids, mask, meta: { label: i % 2 ? 'misaligned' : 'aligned' } });
  }
});

const opts: CollectOptions = { hooks: ['blocks.*.hook_resid_post'], batchSize: 4, shardSize: 8 };

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const f of (await readdir(dir)).sort()) {
    if (f.endsWith('.safetensors') || f === 'records.jsonl') out.set(f, await readFile(join(dir, f)));
  }
  return out;
}

describe('collectToStore', () => {
  it('stores the answer-token mean of each record, equal to running it alone', async () => {
    const dir = tiny.at('full');
    const m = await collectToStore(tiny.model, records, dir, opts);
    expect(m.complete).toBe(true);
    expect(m.records).toBe(23);
    expect(m.shards.map((s) => s.records)).toEqual([8, 8, 7]);
    const store = await ActivationStore.open(dir);
    const rows = await store.readHook('blocks.1.hook_resid_post');
    const counts = await store.tokenCounts();
    for (const i of [0, 5, 22]) {
      const rec = records[i]!; // i is one of 0, 5, 22 of the 23 records
      const alone = await tiny.model.forward([rec.ids], { hooks: ['blocks.1.hook_resid_post'] });
      const h = alone.hooks.get('blocks.1.hook_resid_post')!.data;
      const d = 32;
      const answer = rec.mask!.reduce((a, x) => a + x, 0);
      expect(counts[i]).toBe(answer);
      for (let k = 0; k < d; k++) {
        let s = 0;
        for (let p = rec.ids.length - answer; p < rec.ids.length; p++) s += h[p * d + k]!; // p is a position of rec
        // an undefined row is NaN here, and NaN < 1e-5 fails
        expect(Math.abs(rows[i * d + k]! - s / answer)).toBeLessThan(1e-5);
      }
    }
    const meta = await store.records();
    expect(meta[3]).toMatchObject({ index: 3, id: 'r3', label: 'misaligned', answer_tokens: counts[3] });
  });

  it('token-weighted and record-weighted layer means follow their definitions', async () => {
    const store = await ActivationStore.open(tiny.at('full'));
    const rows = await store.readHook('blocks.0.hook_resid_post');
    const counts = await store.tokenCounts();
    const tok = await storeLayerMeans(store, 'hook_resid_post', 'token');
    const rec = await storeLayerMeans(store, 'hook_resid_post', 'record');
    const total = counts.reduce((a, b) => a + b, 0);
    for (const k of [0, 7, 31]) {
      let wt = 0;
      let mr = 0;
      counts.forEach((c, r) => {
        // r is a record and k < 32, so the row is in range
        wt += (c * rows[r * 32 + k]!) / total;
        mr += rows[r * 32 + k]! / counts.length;
      });
      expect(tok.means.get(0)![k]).toBeCloseTo(wt, 6);
      expect(rec.means.get(0)![k]).toBeCloseTo(mr, 6);
    }
    expect(tok.count).toBe(23);
    expect([...tok.means.keys()]).toEqual([0, 1]);
  });

  it('resuming an interrupted run gives byte-identical shards and records', async () => {
    const dir = tiny.at('interrupted');
    let batches = 0;
    await expect(
      collectToStore(tiny.model, records, dir, {
        ...opts,
        onProgress: () => {
          if (++batches === 4) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    const partial = await ActivationStore.open(dir);
    expect(partial.manifest.complete).toBe(false);
    expect(partial.manifest.shards).toHaveLength(1);
    const m = await collectToStore(tiny.model, records, dir, { ...opts, resume: true });
    expect(m.complete).toBe(true);
    expect(await filesOf(dir)).toEqual(await filesOf(tiny.at('full')));
  });

  it('a crash between the records append and the manifest update is trimmed on resume', async () => {
    const dir = tiny.at('torn');
    let batches = 0;
    await expect(
      collectToStore(tiny.model, records, dir, {
        ...opts,
        onProgress: () => {
          if (++batches === 5) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    // simulate record lines written for a shard the manifest never listed
    const { appendFile } = await import('node:fs/promises');
    await appendFile(join(dir, 'records.jsonl'), '{"index":8,"id":"r8"}\n{"index":9,"id":"r9"}\n');
    await collectToStore(tiny.model, records, dir, { ...opts, resume: true });
    expect(await filesOf(dir)).toEqual(await filesOf(tiny.at('full')));
  });

  it('a record line torn mid-write (no newline) is trimmed on resume', async () => {
    const dir = tiny.at('torn-line');
    let batches = 0;
    await expect(
      collectToStore(tiny.model, records, dir, {
        ...opts,
        onProgress: () => {
          if (++batches === 5) throw new Error('killed');
        },
      }),
    ).rejects.toThrow('killed');
    const { appendFile } = await import('node:fs/promises');
    await appendFile(join(dir, 'records.jsonl'), '{"index":8,"id":"r');
    await collectToStore(tiny.model, records, dir, { ...opts, resume: true });
    expect(await filesOf(dir)).toEqual(await filesOf(tiny.at('full')));
  });

  it('three slices merge into the unsliced store', async () => {
    const slices = [tiny.at('slice-0'), tiny.at('slice-1'), tiny.at('slice-2')] as const;
    for (const [i, dir] of slices.entries()) {
      await collectToStore(tiny.model, records, dir, { ...opts, slice: { index: i, count: 3 } });
    }
    const merged = tiny.at('merged');
    const m = await mergeStores([slices[2], slices[0], slices[1]], merged);
    expect(m.records).toBe(23);
    expect(await filesOf(merged)).toEqual(await filesOf(tiny.at('full')));
  });

  it('slices are runs of whole shards that cover every record once', () => {
    const cases: [total: number, shard: number, count: number][] = [
      [23, 8, 3],
      [100, 16, 7],
      [5, 8, 3],
    ];
    for (const [total, shard, count] of cases) {
      const ranges = Array.from({ length: count }, (_, i) => sliceRange(total, shard, i, count));
      expect(ranges[0]?.[0]).toBe(0);
      expect(ranges[count - 1]?.[1]).toBe(total);
      // ranges has count entries, so i and i - 1 are in range
      for (let i = 1; i < count; i++) expect(ranges[i]![0]).toBe(ranges[i - 1]![1]);
      for (const [a] of ranges) expect(a % shard === 0 || a === total).toBe(true);
    }
  });
});

describe('store errors', () => {
  it('refuses to overwrite an existing store without --resume', async () => {
    await expect(collectToStore(tiny.model, records, tiny.at('full'), opts)).rejects.toThrow(
      /already holds an activation store/,
    );
  });

  it('refuses to resume with other options or other data', async () => {
    await expect(
      collectToStore(tiny.model, records, tiny.at('full'), { ...opts, batchSize: 2, resume: true }),
    ).rejects.toThrow(/different batchSize/);
    await expect(
      collectToStore(tiny.model, records.slice(1), tiny.at('full'), { ...opts, resume: true }),
    ).rejects.toThrow(/different recordsKey/);
    const steer: Intervention = {
      kind: 'steer',
      hooks: ['blocks.0.hook_resid_post'],
      vector: new Float32Array(32).fill(0.1),
    };
    await expect(
      collectToStore(tiny.model, records, tiny.at('full'), {
        ...opts,
        resume: true,
        interventions: [steer],
      }),
    ).rejects.toThrow(/different interventions/);
  });

  it('refuses to resume with another model of the same config (another seed), naming the weights', async () => {
    const other = await makeTinyFixture(tiny.root, {
      family: 'qwen2',
      seed: 4,
      numLayers: 2,
      dModel: 32,
      name: 'm-seed4',
    });
    try {
      await expect(
        collectToStore(other.model, records, tiny.at('full'), { ...opts, resume: true }),
      ).rejects.toThrow(/different weights \(content hash of the model weights: [0-9a-f]{12} there/);
    } finally {
      await other.dispose();
    }
  });

  it('merge needs every slice of one job', async () => {
    await expect(mergeStores([tiny.at('slice-0'), tiny.at('slice-2')], tiny.at('bad-merge'))).rejects.toThrow(
      /do not cover records/,
    );
    await expect(mergeStores([tiny.at('slice-0'), tiny.at('full')], tiny.at('bad-merge2'))).rejects.toThrow(
      /another job|do not cover|overlap/,
    );
  });

  it('a record without answer tokens and a folder that is not a store get clear errors', async () => {
    const bad = [{ id: 'empty', ids: [1, 2, 3], mask: new Uint8Array(3) }];
    await expect(collectToStore(tiny.model, bad, tiny.at('bad'), opts)).rejects.toThrow(/no answer tokens/);
    await expect(ActivationStore.open(tiny.at('m'))).rejects.toThrow(/not an activation store/);
  });

  it('asking for a hook the store lacks names what it holds', async () => {
    const store = await ActivationStore.open(tiny.at('full'));
    await expect(store.readHook('blocks.0.hook_mlp_out')).rejects.toThrow(/holds blocks.0.hook_resid_post/);
  });
});
