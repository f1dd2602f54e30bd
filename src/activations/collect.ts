import { createHash } from 'node:crypto';
import type { TokenizedRecord } from '../data/record.js';
import { EmlensError } from '../errors.js';
import { pathKind } from '../io/outputs.js';
import { cacheKey } from '../model/cache.js';
import { adapterFingerprint, weightsFingerprint } from '../model/fingerprint.js';
import { concatVectors } from '../model/graph/weights.js';
import { type HookName, type HookSelector, resolveHooks } from '../model/hooks.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { STORE_FORMAT, STORE_VERSION, type StoreInputs, type StoreManifest, sliceRange } from './manifest.js';
import { type Reduction, reduceRow, selectedPositions } from './reduce.js';
import { appendShard, type ShardData, writeStore } from './store.js';

export { sliceRange };

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
  /** Replace what is at the output folder (atomically, once the new store is complete). */
  readonly overwrite?: boolean;
  readonly interventions?: readonly Intervention[];
  /**
   * The adapter the model was loaded with, as recorded in the manifest. When it names a folder (the CLI passes
   * the `--adapter` path) its weights and config are fingerprinted too; a label that is no folder is recorded
   * as it is. `adapterDir` names the folder when `adapter` is only a label.
   */
  readonly adapter?: string | null;
  readonly adapterDir?: string;
  /** Where weight-file hashes are cached (default `$EMLENS_CACHE_DIR` or `~/.cache/emlens`). */
  readonly cacheDir?: string;
  /**
   * Fingerprints of what made the records, which a resume or merge must match: content hashes of the data file
   * and of the tokenizer files, and the answer span. The CLI fills them in; null where unknown.
   */
  readonly provenance?: { readonly data?: string; readonly tokenizer?: string; readonly span?: string };
  /** Content fingerprint of the weights, when the model was not loaded from `model.dir`'s own files. */
  readonly weightsFingerprint?: string;
  /** Called after each batch with records done and the total of this run. */
  readonly onProgress?: (done: number, total: number) => void;
}

/** Hash of everything each record feeds the model (id, token ids, answer mask), in order. */
function recordsKey(records: readonly TokenizedRecord[]): string {
  const h = createHash('sha256');
  for (const r of records) {
    h.update(`${r.id}\u0000${r.ids.length}\u0000`);
    h.update(new Uint8Array(Int32Array.from(r.ids).buffer));
    h.update(r.mask ? `m${r.mask.length}\u0000` : 'all\u0000');
    if (r.mask) h.update(r.mask);
  }
  return h.digest('hex').slice(0, 24);
}

/** Content fingerprint of the adapter folder, or null when the options name none. */
async function adapterKey(opts: CollectOptions): Promise<string | null> {
  const dir = opts.adapterDir ?? opts.adapter;
  if (!dir) return null;
  if (opts.adapterDir === undefined && (await pathKind(dir)) !== 'dir') return null;
  return adapterFingerprint(dir, { cacheDir: opts.cacheDir });
}

/** Hash of the interventions applied while collecting (their vectors bit for bit), null for none. */
function interventionsKey(interventions: readonly Intervention[] | undefined): string | null {
  if (!interventions || interventions.length === 0) return null;
  const h = createHash('sha256');
  const bytes = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  for (const iv of interventions) {
    h.update(`${iv.kind}\u0000${JSON.stringify(iv.hooks)}\u0000`);
    const positions = iv.positions ?? 'all';
    if (positions === 'all') h.update('all\u0000');
    else h.update(bytes(positions));
    if (iv.kind === 'steer') {
      h.update(`${iv.scale ?? 1}\u0000`);
      h.update(bytes(iv.vector));
    } else {
      for (const d of iv.directions) h.update(bytes(d));
    }
  }
  return h.digest('hex');
}

/** Runs one batch and reduces each record's hooks. */
async function runBatch(
  model: Model,
  batch: readonly TokenizedRecord[],
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
      // row b of [batch, seq, d], shifted past its left padding. perHook has every hook, the forward pass
      // returned every hook asked for, and b < batch.length = r.padding.length.
      perHook.get(h)!.push(reduceRow(r.hooks.get(h)!.data, b * seq + r.padding[b]!, d, positions, reduce));
    }
  });
  return { perHook, counts };
}

/** What {@link planCollect} needs of a model: known from its config and load options, before it is loaded. */
export type CollectModel = Pick<Model, 'dir' | 'spec' | 'profile' | 'device' | 'maxPositions'>;

/**
 * The manifest a collect of `records` starts from: the job (model, inputs, options, record range) and no shards.
 * Hashes the weight files (cached) and the records.
 */
export async function planCollect(
  model: CollectModel,
  records: readonly TokenizedRecord[],
  opts: CollectOptions = {},
): Promise<StoreManifest> {
  if (records.length === 0) throw new EmlensError('No records to collect; the data file has no usable rows.');
  const tooLong = records.findIndex((r) => r.ids.length > model.maxPositions);
  if (tooLong >= 0) {
    // Checked before the store is created: finding it at the forward pass of batch k would leave a partial store.
    const r = records[tooLong]!; // findIndex found it
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
  const inputs: StoreInputs = {
    weights: opts.weightsFingerprint ?? (await weightsFingerprint(model.dir, { cacheDir: opts.cacheDir })),
    adapterWeights: await adapterKey(opts),
    tokenizer: opts.provenance?.tokenizer ?? null,
    data: opts.provenance?.data ?? null,
    span: opts.provenance?.span ?? null,
    profile: model.profile,
    device: model.device,
    maxPositions: model.maxPositions,
    interventions: interventionsKey(opts.interventions),
  };
  const fresh: StoreManifest = {
    format: STORE_FORMAT,
    version: STORE_VERSION,
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
    inputs,
    range,
    slice: opts.slice ?? null,
    records: 0,
    shards: [],
    complete: range[0] === range[1],
    createdWith: 'emlens 0.1.0',
  };
  return fresh;
}

/**
 * Collects activations into an on-disk store (manifest + safetensors shards + records.jsonl). Batches are
 * fixed by record index (never by what is left to do), so a resumed or sliced run computes every record in the
 * same batch as an uninterrupted one and writes byte-identical shards. Memory holds one shard at a time.
 */
export async function collectToStore(
  model: Model,
  records: readonly TokenizedRecord[],
  outDir: string,
  opts: CollectOptions = {},
): Promise<StoreManifest> {
  const fresh = await planCollect(model, records, opts);
  const { reduce, batchSize, shardSize, range } = fresh;
  // planCollect resolved these against the model (resolveHooks), so they are hook names of this model
  const hooks = fresh.hooks as readonly HookName[];
  const total = range[1] - range[0];
  return writeStore(outDir, fresh, { resume: opts.resume, overwrite: opts.overwrite }, async (dir, start) => {
    let m = start;
    opts.onProgress?.(m.records, total);
    while (!m.complete) {
      const first = range[0] + m.records;
      const end = Math.min(range[1], first + shardSize);
      const perHook = new Map<string, Float32Array[]>(hooks.map((h) => [h, []]));
      const counts: number[] = [];
      const lines: Record<string, unknown>[] = [];
      for (let b = first; b < end; b += batchSize) {
        const batch = records.slice(b, Math.min(end, b + batchSize));
        const res = await runBatch(model, batch, hooks, reduce, opts.interventions);
        // both maps were made with every hook
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
        opts.onProgress?.(m.records + (Math.min(end, b + batchSize) - first), total);
      }
      const data: ShardData = {
        hooks: new Map(hooks.map((h) => [h, concatVectors(perHook.get(h)!)])), // made with every hook
        tokenCounts: counts,
        records: lines,
      };
      m = await appendShard(dir, m, data);
    }
    return m;
  });
}
