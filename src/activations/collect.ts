import { createHash } from 'node:crypto';
import { EmlensError } from '../errors.js';
import { cacheKey } from '../model/cache.js';
import { concatVectors } from '../model/graph/weights.js';
import { type HookName, type HookSelector, resolveHooks } from '../model/hooks.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import type { StoreManifest } from './manifest.js';
import { type Reduction, reduceRow, selectedPositions } from './reduce.js';
import { appendShard, createStore, openForResume, type ShardData } from './store.js';

/** One sequence to collect: token ids and (optionally) which tokens are the answer. */
export interface CollectRecord {
  readonly id: string;
  readonly ids: readonly number[];
  /** 1 on answer tokens; without a mask every token counts. */
  readonly mask?: Uint8Array;
  /** Carried into the store's records.jsonl. */
  readonly meta?: Readonly<Record<string, unknown>>;
}

export interface CollectOptions {
  /** Hook names or patterns; default `blocks.*.hook_resid_post`. */
  readonly hooks?: readonly HookSelector[];
  readonly reduce?: Reduction;
  readonly batchSize?: number;
  /** Records per shard file; rounded up to a multiple of batchSize. */
  readonly shardSize?: number;
  /** Process only slice `index` of `count` (contiguous runs of whole shards). */
  readonly slice?: { readonly index: number; readonly count: number };
  readonly resume?: boolean;
  readonly interventions?: readonly Intervention[];
  readonly adapter?: string | null;
  /** Called after each batch with records done and the total of this run. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** Record range of slice `index` of `count`: whole shards, so every record sits in the same batch as unsliced. */
export function sliceRange(total: number, shardSize: number, index: number, count: number): [number, number] {
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(index) || index < 0 || index >= count) {
    throw new EmlensError(`Slice ${index}/${count} is not valid; use --shard i/N with 0 <= i < N.`);
  }
  const shards = Math.ceil(total / shardSize);
  const from = Math.floor((index * shards) / count) * shardSize;
  const to = Math.min(total, Math.floor(((index + 1) * shards) / count) * shardSize);
  return [Math.min(from, total), to];
}

function recordsKey(records: readonly CollectRecord[]): string {
  const h = createHash('sha256');
  for (const r of records) h.update(`${r.id}\u0000${r.ids.length}\u0000`);
  return h.digest('hex').slice(0, 24);
}

/** Runs one batch and reduces each record's hooks. */
async function runBatch(
  model: Model,
  batch: readonly CollectRecord[],
  hooks: readonly HookName[],
  reduce: Reduction,
  interventions: readonly Intervention[] | undefined,
): Promise<{ perHook: Map<string, Float32Array[]>; counts: number[] }> {
  const d = model.spec.dModel;
  const r = await model.forward(
    batch.map((rec) => rec.ids),
    { hooks, interventions },
  );
  const seq = Math.max(...batch.map((rec) => rec.ids.length));
  const perHook = new Map<string, Float32Array[]>(hooks.map((h) => [h, []]));
  const counts: number[] = [];
  batch.forEach((rec, b) => {
    const positions = selectedPositions(rec.ids.length, rec.mask, rec.id);
    counts.push(positions.length);
    for (const h of hooks) {
      // row b of [batch, seq, d], shifted past its left padding
      perHook.get(h)!.push(reduceRow(r.hooks.get(h)!.data, b * seq + r.padding[b], d, positions, reduce));
    }
  });
  return { perHook, counts };
}

/**
 * Collects activations into an on-disk store (manifest + safetensors shards + records.jsonl). Batches are
 * fixed by record index (never by what is left to do), so a resumed or sliced run computes every record in the
 * same batch as an uninterrupted one and writes byte-identical shards. Memory holds one shard at a time.
 */
export async function collectToStore(
  model: Model,
  records: readonly CollectRecord[],
  outDir: string,
  opts: CollectOptions = {},
): Promise<StoreManifest> {
  if (records.length === 0) throw new EmlensError('No records to collect; the data file has no usable rows.');
  const tooLong = records.findIndex((r) => r.ids.length > model.maxPositions);
  if (tooLong >= 0) {
    // Checked before the store is created: finding it at the forward pass of batch k would leave a partial store.
    const r = records[tooLong];
    throw new EmlensError(
      `Record ${tooLong + 1} ('${r.id}') is ${r.ids.length} tokens long but the model was loaded for at most ${model.maxPositions} positions; shorten or drop that record, or load the model with a larger maxPositions (up to its max_position_embeddings, ${model.spec.maxPositionEmbeddings}).`,
    );
  }
  const hooks = resolveHooks(opts.hooks ?? ['blocks.*.hook_resid_post'], model.spec.numLayers);
  const reduce = opts.reduce ?? 'answer_mean';
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1)
    throw new EmlensError(`Batch size ${batchSize} is not a positive integer.`);
  const shardSize = Math.ceil((opts.shardSize ?? 256) / batchSize) * batchSize;
  const range = opts.slice
    ? sliceRange(records.length, shardSize, opts.slice.index, opts.slice.count)
    : ([0, records.length] as [number, number]);
  const fresh: StoreManifest = {
    format: 'emlens-activations',
    version: 1,
    model: model.dir,
    adapter: opts.adapter ?? null,
    specKey: cacheKey(model.spec),
    dModel: model.spec.dModel,
    hooks,
    reduce,
    dtype: 'F32',
    batchSize,
    shardSize,
    totalRecords: records.length,
    recordsKey: recordsKey(records),
    range,
    slice: opts.slice ?? null,
    records: 0,
    shards: [],
    complete: range[0] === range[1],
    createdWith: 'emlens 0.1.0',
  };
  let m = opts.resume
    ? await openForResume(outDir, fresh).catch(async (e) => {
        if (e instanceof EmlensError && /not an activation store/.test(e.message))
          return createStore(outDir, fresh);
        throw e;
      })
    : await createStore(outDir, fresh);

  const total = range[1] - range[0];
  opts.onProgress?.(m.records, total);
  while (!m.complete) {
    const start = range[0] + m.records;
    const end = Math.min(range[1], start + shardSize);
    const perHook = new Map<string, Float32Array[]>(hooks.map((h) => [h, []]));
    const counts: number[] = [];
    const lines: Record<string, unknown>[] = [];
    for (let b = start; b < end; b += batchSize) {
      const batch = records.slice(b, Math.min(end, b + batchSize));
      const res = await runBatch(model, batch, hooks, reduce, opts.interventions);
      for (const h of hooks) perHook.get(h)!.push(...res.perHook.get(h)!);
      counts.push(...res.counts);
      batch.forEach((rec, k) => {
        lines.push({
          index: b + k,
          id: rec.id,
          tokens: rec.ids.length,
          answer_tokens: res.counts[k],
          ...rec.meta,
        });
      });
      opts.onProgress?.(m.records + (Math.min(end, b + batchSize) - start), total);
    }
    const data: ShardData = {
      hooks: new Map(hooks.map((h) => [h, concatVectors(perHook.get(h)!)])),
      tokenCounts: counts,
      records: lines,
    };
    m = await appendShard(outDir, m, data);
  }
  return m;
}
