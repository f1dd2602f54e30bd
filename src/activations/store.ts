import { appendFile, copyFile, mkdir, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { type View, viewOf } from '../model/views.js';
import {
  MANIFEST_FILE,
  RECORDS_FILE,
  readManifest,
  type ShardEntry,
  type StoreManifest,
  writeManifest,
} from './manifest.js';

/** One shard's content, hook by hook. */
export interface ShardData {
  /** Per hook: `[rows, d_model]`. */
  readonly hooks: ReadonlyMap<string, Float32Array>;
  /** Answer tokens each record reduced over. */
  readonly tokenCounts: readonly number[];
  /** One JSON object per record. */
  readonly records: readonly Record<string, unknown>[];
}

export function shardFileName(index: number): string {
  return `shard-${String(index).padStart(5, '0')}.safetensors`;
}

/**
 * Appends a completed shard: the safetensors file first (atomic), then its record lines, then the manifest
 * (atomic) that lists it. A crash at any point leaves a manifest that lists only complete shards; records.jsonl
 * may then hold extra lines, which `openForResume` trims.
 */
export async function appendShard(dir: string, m: StoreManifest, data: ShardData): Promise<StoreManifest> {
  const file = shardFileName(m.shards.length);
  const rows = data.hooks.values().next().value?.length ?? 0;
  const tensors: Record<string, { dtype: 'F32' | 'I64'; shape: number[]; data: ArrayBufferView }> = {
    token_count: {
      dtype: 'I64',
      shape: [data.tokenCounts.length],
      data: BigInt64Array.from(data.tokenCounts.map(BigInt)),
    },
  };
  for (const [hook, values] of data.hooks) {
    tensors[hook] = { dtype: 'F32', shape: [values.length / m.dModel, m.dModel], data: values };
  }
  await writeSafetensors(join(dir, file), tensors, { format: m.format, reduce: m.reduce });
  await appendFile(join(dir, RECORDS_FILE), data.records.map((r) => `${JSON.stringify(r)}\n`).join(''));
  const entry: ShardEntry = {
    file,
    records: data.tokenCounts.length,
    firstRecord: m.range[0] + m.records,
    rows: rows / m.dModel,
  };
  const next: StoreManifest = {
    ...m,
    records: m.records + entry.records,
    shards: [...m.shards, entry],
    complete: m.records + entry.records === m.range[1] - m.range[0],
  };
  await writeManifest(dir, next);
  return next;
}

/** Creates a new, empty store, refusing to touch a folder that already holds one. */
export async function createStore(dir: string, m: StoreManifest): Promise<StoreManifest> {
  await mkdir(dir, { recursive: true });
  try {
    await readFile(join(dir, MANIFEST_FILE));
    throw new EmlensError(
      `${dir} already holds an activation store; pass --resume to continue it or choose another --out.`,
    );
  } catch (e) {
    if (e instanceof EmlensError) throw e;
  }
  await writeFile(join(dir, RECORDS_FILE), '');
  await writeManifest(dir, m);
  return m;
}

/** What identifies one collect job: a resumed run or a merged slice must agree on all of these. */
const JOB_KEYS = ['specKey', 'adapter', 'hooks', 'reduce', 'batchSize', 'shardSize', 'recordsKey'] as const;

/**
 * Opens an existing store to continue it: checks it was made with the same job, and trims record lines that
 * an interrupted run wrote after its last complete shard.
 */
export async function openForResume(dir: string, expected: StoreManifest): Promise<StoreManifest> {
  const m = await readManifest(dir);
  for (const k of [...JOB_KEYS, 'range'] as const) {
    if (JSON.stringify(m[k]) !== JSON.stringify(expected[k])) {
      throw new EmlensError(
        `The store at ${dir} was made with a different ${k}; resume it with the same model, data and options, or choose another --out.`,
      );
    }
  }
  const text = await readFile(join(dir, RECORDS_FILE), 'utf8');
  const lines = text.split('\n').filter(Boolean);
  if (lines.length < m.records) {
    throw new EmlensError(
      `${join(dir, RECORDS_FILE)} lists fewer records than the manifest; the store is damaged, collect it again.`,
    );
  }
  if (lines.length > m.records) {
    const keep = lines
      .slice(0, m.records)
      .map((l) => `${l}\n`)
      .join('');
    await truncate(join(dir, RECORDS_FILE), Buffer.byteLength(keep));
  }
  // Shard files past the manifest's list are leftovers of an interrupted write: the next append overwrites them.
  return m;
}

/** A store opened for reading. */
export class ActivationStore {
  private constructor(
    readonly dir: string,
    readonly manifest: StoreManifest,
  ) {}

  static async open(dir: string): Promise<ActivationStore> {
    return new ActivationStore(dir, await readManifest(dir));
  }

  private checkHook(hook: string): void {
    if (!this.manifest.hooks.includes(hook)) {
      throw new EmlensError(
        `The store at ${this.dir} has no hook '${hook}'; it holds ${this.manifest.hooks.join(', ')}.`,
      );
    }
  }

  /** All rows of one hook, shards concatenated: `[rows, d_model]`. */
  async readHook(hook: string): Promise<Float32Array> {
    this.checkHook(hook);
    const rows = this.rows();
    const out = new Float32Array(rows * this.manifest.dModel);
    let at = 0;
    for (const s of this.manifest.shards) {
      const f = await SafetensorsFile.open(join(this.dir, s.file));
      try {
        const v = await f.readFloat32(hook);
        out.set(v, at);
        at += v.length;
      } finally {
        await f.close();
      }
    }
    return out;
  }

  /**
   * All rows of one hook as a `[rows, d_model]` ndarray view over the buffer `readHook` returns; `pick(i, null)`
   * is row i (one record, or one answer token for `reduce: none`) without a copy.
   */
  async hookView(hook: string): Promise<View> {
    return viewOf(await this.readHook(hook), [this.rows(), this.manifest.dModel]);
  }

  /**
   * One shard's rows of a hook: a `[rows, d_model]` view over the tensor's bytes as read from the shard file
   * (no copy beyond that read). Shards hold `manifest.shards[index].records` records from `firstRecord` on.
   */
  async shardView(index: number, hook: string): Promise<View> {
    this.checkHook(hook);
    const s = this.manifest.shards[index];
    if (!Number.isInteger(index) || s === undefined) {
      throw new EmlensError(
        `The store at ${this.dir} has shards 0..${this.manifest.shards.length - 1}, not ${index}.`,
      );
    }
    const f = await SafetensorsFile.open(join(this.dir, s.file));
    try {
      return viewOf(await f.readFloat32(hook), [s.rows, this.manifest.dModel]);
    } finally {
      await f.close();
    }
  }

  /** Rows of every hook tensor, all shards together. */
  private rows(): number {
    return this.manifest.shards.reduce((a, s) => a + s.rows, 0);
  }

  /** Answer tokens per record. */
  async tokenCounts(): Promise<number[]> {
    const counts: number[] = [];
    for (const s of this.manifest.shards) {
      const f = await SafetensorsFile.open(join(this.dir, s.file));
      try {
        counts.push(...Array.from((await f.readTyped('token_count')) as BigInt64Array, Number));
      } finally {
        await f.close();
      }
    }
    return counts;
  }

  /** Per-record metadata lines. */
  async records(): Promise<Record<string, unknown>[]> {
    const text = await readFile(join(this.dir, RECORDS_FILE), 'utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .slice(0, this.manifest.records)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

/**
 * Joins the slices of one job (`--shard i/N` runs) into one store at `out`, in record order. The slices must
 * come from the same job (model, data, options) and cover it exactly.
 */
export async function mergeStores(dirs: readonly string[], out: string): Promise<StoreManifest> {
  if (dirs.length === 0) throw new EmlensError('Nothing to merge; pass the slice stores to join.');
  const parts = await Promise.all(dirs.map(async (d) => ({ dir: d, m: await readManifest(d) })));
  parts.sort((a, b) => a.m.range[0] - b.m.range[0]);
  const first = parts[0].m;
  let expectStart = 0;
  for (const { dir, m } of parts) {
    for (const k of [...JOB_KEYS, 'totalRecords'] as const) {
      if (JSON.stringify(m[k]) !== JSON.stringify(first[k])) {
        throw new EmlensError(
          `${dir} comes from another job than ${parts[0].dir} (${k} differs); merge slices of one collect job only.`,
        );
      }
    }
    if (!m.complete) throw new EmlensError(`${dir} is not complete; finish it with --resume before merging.`);
    if (m.range[0] !== expectStart) {
      throw new EmlensError(
        `The slices do not cover records ${expectStart}..${m.range[0] - 1}; add the missing slice store.`,
      );
    }
    expectStart = m.range[1];
  }
  if (expectStart !== first.totalRecords) {
    throw new EmlensError(
      `The slices cover ${expectStart} of ${first.totalRecords} records; add the missing slice stores.`,
    );
  }
  await mkdir(out, { recursive: true });
  try {
    await readFile(join(out, MANIFEST_FILE));
    throw new EmlensError(`${out} already holds an activation store; merge into a new folder.`);
  } catch (e) {
    if (e instanceof EmlensError) throw e;
  }
  const shards: ShardEntry[] = [];
  let records = '';
  for (const { dir, m } of parts) {
    for (const s of m.shards) {
      const file = shardFileName(shards.length);
      await copyFile(join(dir, s.file), join(out, `.${file}.tmp`));
      await rename(join(out, `.${file}.tmp`), join(out, file));
      shards.push({ ...s, file });
    }
    records += (await readFile(join(dir, RECORDS_FILE), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .slice(0, m.records)
      .map((l) => `${l}\n`)
      .join('');
  }
  await writeFile(join(out, RECORDS_FILE), records);
  const merged: StoreManifest = {
    ...first,
    range: [0, first.totalRecords],
    slice: null,
    records: first.totalRecords,
    shards,
    complete: true,
  };
  await writeManifest(out, merged);
  return merged;
}
