import { createHash } from 'node:crypto';
import { readdirSync, rmSync } from 'node:fs';
import { appendFile, copyFile, mkdir, readdir, readFile, stat, truncate } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { pathKind, writeFolderAtomic } from '../io/outputs.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { sha256File } from '../model/fingerprint.js';
import { type View, viewOf } from '../model/views.js';
import { assertUnlocked, LOCK_FILE, StoreLock } from './lock.js';
import {
  FIELD_LABELS,
  MANIFEST_FILE,
  RECORDS_FILE,
  readManifest,
  type ShardEntry,
  STORE_VERSION,
  type StoreInputs,
  type StoreManifest,
  sliceRange,
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

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * Appends a completed shard: the safetensors file first (atomic), then its record lines, then the manifest
 * (atomic) that lists it with its size and checksums. A crash at any point leaves a manifest that lists only
 * complete shards; records.jsonl may then hold extra lines, which `openForResume` trims.
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
  const path = join(dir, file);
  await writeSafetensors(path, tensors, { format: m.format, reduce: m.reduce });
  const lines = data.records.map((r) => `${JSON.stringify(r)}\n`).join('');
  await appendFile(join(dir, RECORDS_FILE), lines);
  const entry: ShardEntry = {
    file,
    records: data.tokenCounts.length,
    firstRecord: m.range[0] + m.records,
    rows: rows / m.dModel,
    bytes: (await stat(path)).size,
    sha256: await sha256File(path),
    recordsSha256: sha256(lines),
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

/** Fields a resumed run or a merged slice must agree on, in the order a mismatch is reported. */
const MODEL_KEYS = ['specKey'] as const;
const INPUT_KEYS = [
  'weights',
  'adapterWeights',
  'profile',
  'device',
  'maxPositions',
  'tokenizer',
  'data',
  'span',
  'interventions',
] as const satisfies readonly (keyof StoreInputs)[];
const OPTION_KEYS = ['hooks', 'reduce', 'batchSize', 'shardSize', 'recordsKey'] as const;

function shown(v: unknown): string {
  if (typeof v === 'string' && /^[0-9a-f]{24,}$/.test(v)) return v.slice(0, 12);
  return JSON.stringify(v);
}

/** The first job field on which two manifests differ, as `field (label: a there, b here)`, or null. */
function jobDifference(
  a: StoreManifest,
  b: StoreManifest,
  last: 'range' | 'totalRecords',
  ignore: readonly string[] = [],
): { field: string; a: string; b: string } | null {
  const fields: [string, unknown, unknown][] = [
    ...MODEL_KEYS.map((k): [string, unknown, unknown] => [k, a[k], b[k]]),
    ...INPUT_KEYS.map((k): [string, unknown, unknown] => [k, a.inputs?.[k], b.inputs?.[k]]),
    ...OPTION_KEYS.map((k): [string, unknown, unknown] => [k, a[k], b[k]]),
    [last, a[last], b[last]],
  ];
  for (const [field, x, y] of fields) {
    if (ignore.includes(field)) continue;
    if (JSON.stringify(x) !== JSON.stringify(y)) return { field, a: shown(x), b: shown(y) };
  }
  return null;
}

/** Refuses a store written by an emlens that recorded no fingerprints or checksums. */
function requireVerifiable(dir: string, m: StoreManifest, doing: string): void {
  if (m.version < STORE_VERSION || !m.inputs) {
    throw new EmlensError(
      `The store at ${dir} was written by an older emlens (manifest v${m.version}) that records no weight fingerprints or shard checksums, so it cannot be ${doing} safely; collect it again (with --overwrite) using this emlens.`,
    );
  }
}

/**
 * Checks that every shard the manifest lists is there with its recorded size and sha256, and that records.jsonl
 * holds each shard's lines unchanged. Throws one {@link EmlensError} naming the first problem. Returns false
 * (checking only that files exist) for a v1 store, which records no checksums.
 */
export async function verifyStore(dir: string, m?: StoreManifest): Promise<boolean> {
  const manifest = m ?? (await readManifest(dir));
  const fix = 'restore it, or collect the store again with --overwrite';
  for (const s of manifest.shards) {
    const path = join(dir, s.file);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch {
      throw new EmlensError(`Shard ${s.file} listed in the manifest of store ${dir} is missing; ${fix}.`);
    }
    if (s.bytes !== undefined && size !== s.bytes) {
      throw new EmlensError(
        `Shard ${path} is ${size} bytes but the manifest of the store lists ${s.bytes} (truncated or replaced); ${fix}.`,
      );
    }
    if (s.sha256 !== undefined && (await sha256File(path)) !== s.sha256) {
      throw new EmlensError(
        `Shard ${path} does not match the sha256 its store's manifest lists (the file was altered or damaged); ${fix}.`,
      );
    }
  }
  const lines = await recordLines(dir, manifest);
  if (manifest.version < STORE_VERSION) return false;
  let at = 0;
  for (const s of manifest.shards) {
    const text = lines.slice(at, at + s.records).join('');
    at += s.records;
    if (s.recordsSha256 !== undefined && sha256(text) !== s.recordsSha256) {
      throw new EmlensError(
        `The lines of ${join(dir, RECORDS_FILE)} for shard ${s.file} (records ${s.firstRecord}..${s.firstRecord + s.records - 1}) do not match the sha256 the manifest lists (the file was edited or written by two runs at once); ${fix}.`,
      );
    }
  }
  return true;
}

/** records.jsonl split into lines (each with its newline), with a clear error when it is missing or short. */
async function recordLines(dir: string, m: StoreManifest): Promise<string[]> {
  const path = join(dir, RECORDS_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    throw new EmlensError(
      `${path} is missing, so the record metadata of the store's ${m.records} records is lost; restore the file, or collect the store again with --overwrite.`,
    );
  }
  const lines = text.split(/(?<=\n)/).filter((l) => l.endsWith('\n'));
  if (lines.length < m.records) {
    throw new EmlensError(
      `${path} holds ${lines.length} record lines but the manifest lists ${m.records} records (the file was truncated); restore it, or collect the store again with --overwrite.`,
    );
  }
  return lines;
}

/** Writes the files of a new, empty store into `dir` (a folder the caller has locked). */
async function initStore(dir: string, m: StoreManifest): Promise<StoreManifest> {
  await writeAtomic(join(dir, RECORDS_FILE), '');
  await writeManifest(dir, m);
  return m;
}

function checkSameJob(
  dir: string,
  m: StoreManifest,
  expected: StoreManifest,
  ignore?: readonly string[],
): void {
  const diff = jobDifference(m, expected, 'range', ignore);
  if (diff) {
    throw new EmlensError(
      `The store at ${dir} was made with a different ${diff.field} (${FIELD_LABELS[diff.field]}: ${diff.a} there, ${diff.b} now); resume it with the same model, data and options, or choose another --out.`,
    );
  }
}

/**
 * Checks, before the model is loaded, everything about writing `expected` to `out` that can be checked then:
 * the path (see {@link checkStoreOut}) and, for a resume of an existing store, that no one is writing it, that
 * it is of the same job (but for the `ignore`d fields, known only once the model is loaded) and intact. The
 * checks are repeated under the lock when the store is opened.
 */
export async function preflightStore(
  out: string,
  expected: StoreManifest,
  opts: WriteStoreOptions & { readonly ignore?: readonly string[] },
): Promise<void> {
  const state = await checkStoreOut(out, opts);
  if (state !== 'store' || !opts.resume) return;
  const m = await readManifest(out);
  requireVerifiable(out, m, 'resumed');
  checkSameJob(out, m, expected, opts.ignore);
  await verifyStore(out, m);
}

/**
 * Opens an existing store to continue it: checks it was made with the same job, that its shards and record
 * lines are intact, and trims record lines that an interrupted run wrote after its last complete shard.
 */
export async function openForResume(dir: string, expected: StoreManifest): Promise<StoreManifest> {
  const m = await readManifest(dir);
  requireVerifiable(dir, m, 'resumed');
  checkSameJob(dir, m, expected);
  await verifyStore(dir, m);
  const lines = await recordLines(dir, m);
  const keep = Buffer.byteLength(lines.slice(0, m.records).join(''));
  // Also a torn last line without its newline: left there, the next shard's first line would be glued to it.
  if ((await stat(join(dir, RECORDS_FILE))).size !== keep) await truncate(join(dir, RECORDS_FILE), keep);
  // Shard files past the manifest's list are leftovers of an interrupted write: the next append overwrites them.
  return m;
}

/**
 * What is in an existing folder: nothing, a store, or something else. A lock, temp files and an empty
 * records.jsonl are what a writer killed before its first manifest leaves: that folder counts as empty.
 */
async function folderState(dir: string): Promise<'empty' | 'store' | 'foreign'> {
  const entries = (await readdir(dir)).filter(
    (e) => e !== LOCK_FILE && !(e.startsWith('.') && e.endsWith('.tmp')),
  );
  if (entries.includes(MANIFEST_FILE)) return 'store';
  if (entries.length === 1 && entries[0] === RECORDS_FILE && (await stat(join(dir, RECORDS_FILE))).size === 0)
    return 'empty';
  return entries.length === 0 ? 'empty' : 'foreign';
}

/**
 * Checks, before any work, that a store may be written at `out` with these options (see {@link writeStore});
 * throws one {@link EmlensError} line otherwise. Returns what is there now.
 */
export async function checkStoreOut(
  out: string,
  opts: WriteStoreOptions,
): Promise<'empty' | 'store' | 'foreign'> {
  if (opts.resume && opts.overwrite) {
    throw new EmlensError(
      '--resume continues the store in --out and --overwrite replaces it; pass one of them.',
    );
  }
  const kind = await pathKind(out);
  if (kind === 'file') {
    throw new EmlensError(
      `--out ${out} is a file, not an activation store folder; choose a folder path (a new one, or a store to continue with --resume).`,
    );
  }
  if (kind === 'other') {
    throw new EmlensError(
      `--out ${out} is a link, FIFO or device, not an activation store folder; name the folder itself or a new one.`,
    );
  }
  // A folder being written (or left locked) is reported as such, whatever it holds yet.
  if (kind === 'dir') await assertUnlocked(out);
  const state = kind === 'none' ? 'empty' : await folderState(out);
  if (state === 'foreign' && !opts.overwrite) {
    throw new EmlensError(
      `--out ${out} is a folder that is not an activation store (no ${MANIFEST_FILE}); pass --overwrite to replace it, or choose another --out.`,
    );
  }
  if (state === 'store' && !opts.resume && !opts.overwrite) {
    throw new EmlensError(
      `${out} already holds an activation store; pass --resume to continue it, --overwrite to replace it, or choose another --out.`,
    );
  }
  return state;
}

export interface WriteStoreOptions {
  /** Continue the store in `out` (or start one there if there is none). */
  readonly resume?: boolean;
  /** Replace what is in `out`, atomically: the old folder stays whole until the new store is complete. */
  readonly overwrite?: boolean;
}

/**
 * Opens the store folder `out` for writing, under its lock, and runs `fill` to add shards. A new store is
 * started in an absent or empty folder; an existing store is continued with `resume`; anything else (an
 * existing store without `resume`, a folder that is not a store) is refused unless `overwrite`, which builds the
 * new store in a temp folder beside `out` and swaps it in when `fill` returns. A file at `out` is always refused.
 */
export async function writeStore(
  out: string,
  fresh: StoreManifest,
  opts: WriteStoreOptions,
  fill: (dir: string, m: StoreManifest) => Promise<StoreManifest>,
): Promise<StoreManifest> {
  const state = await checkStoreOut(out, opts);
  if (opts.overwrite && state !== 'empty') return replaceStore(out, fresh, fill);

  await mkdir(out, { recursive: true });
  const lock = await StoreLock.acquire(out);
  try {
    // Checked again under the lock: another writer may have started a store here since.
    const now = await folderState(out);
    let m: StoreManifest;
    if (now === 'store') {
      if (!opts.resume) {
        throw new EmlensError(
          `${out} already holds an activation store; pass --resume to continue it, --overwrite to replace it, or choose another --out.`,
        );
      }
      m = await openForResume(out, fresh);
    } else {
      m = await initStore(out, fresh);
    }
    return await fill(out, m);
  } finally {
    await lock.release();
  }
}

/** Temp folders {@link writeFolderAtomic} makes beside `dir` for this process. */
function removeOwnTempSiblings(dir: string): void {
  const parent = dirname(resolve(dir));
  const prefix = `.${basename(dir)}.${process.pid}.`;
  for (const f of readdirSync(parent)) {
    if (f.startsWith(prefix) && f.endsWith('.tmp')) rmSync(join(parent, f), { recursive: true, force: true });
  }
}

/** `--overwrite`: a new store in a temp folder, swapped in only when complete; `out` is locked meanwhile. */
async function replaceStore(
  out: string,
  fresh: StoreManifest,
  fill: (dir: string, m: StoreManifest) => Promise<StoreManifest>,
): Promise<StoreManifest> {
  const outLock = await StoreLock.acquire(out, () => removeOwnTempSiblings(out));
  try {
    return await writeFolderAtomic(out, { overwrite: true }, async (tmp) => {
      const lock = await StoreLock.acquire(tmp, () => rmSync(tmp, { recursive: true, force: true }));
      try {
        return await fill(tmp, await initStore(tmp, fresh));
      } finally {
        await lock.release();
      }
    });
  } finally {
    await outLock.release();
  }
}

/** A store opened for reading. */
export class ActivationStore {
  private constructor(
    readonly dir: string,
    readonly manifest: StoreManifest,
  ) {}

  /**
   * Opens a store, checking (cheaply: by size) that its listed shards are there; {@link ActivationStore.verify}
   * checks their content too.
   */
  static async open(dir: string): Promise<ActivationStore> {
    const m = await readManifest(dir);
    for (const s of m.shards) {
      let size: number;
      try {
        size = (await stat(join(dir, s.file))).size;
      } catch {
        throw new EmlensError(
          `Shard ${s.file} listed in the manifest of store ${dir} is missing; restore it, or collect the store again with --overwrite.`,
        );
      }
      if (s.bytes !== undefined && size !== s.bytes) {
        throw new EmlensError(
          `Shard ${join(dir, s.file)} is ${size} bytes but the manifest of the store lists ${s.bytes} (truncated or replaced); restore it, or collect the store again with --overwrite.`,
        );
      }
    }
    return new ActivationStore(dir, m);
  }

  /** Whether the manifest records checksums (v2); a v1 store can be read but not verified. */
  get verifiable(): boolean {
    return this.manifest.version >= STORE_VERSION;
  }

  /** Checks every shard's size and sha256 and the record lines; see {@link verifyStore}. */
  verify(): Promise<boolean> {
    return verifyStore(this.dir, this.manifest);
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
    return (await recordLines(this.dir, this.manifest))
      .slice(0, this.manifest.records)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

function span(range: readonly [number, number]): string {
  return `records ${range[0]}..${range[1] - 1}`;
}

function sliceName(m: StoreManifest): string {
  return m.slice ? `slice ${m.slice.index}/${m.slice.count}` : 'an unsliced store';
}

/** ` (slice i/N, j/N are missing)` when the parts are of one N-way split, else ''. */
function missingSlices(parts: readonly StoreManifest[], gap: readonly [number, number]): string {
  const counts = new Set(parts.map((m) => m.slice?.count));
  const [count] = counts;
  const [first] = parts;
  if (counts.size !== 1 || count === undefined || !first) return '';
  const missing: string[] = [];
  for (let i = 0; i < count; i++) {
    const [a, b] = sliceRange(first.totalRecords, first.shardSize, i, count);
    if (a < gap[1] && b > gap[0]) missing.push(`${i}/${count}`);
  }
  if (missing.length === 0) return '';
  return ` (slice ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} missing)`;
}

export interface MergeOptions {
  /** Replace an existing folder at `out` (atomically). */
  readonly overwrite?: boolean;
}

/**
 * Joins the slices of one job (`--shard i/N` runs) into one store at `out`, in record order. The slices must
 * come from the same job (model, data, options), be intact, and cover it exactly once. The store is built in a
 * temp folder beside `out` and renamed into place, so a failed merge leaves nothing behind.
 */
export async function mergeStores(
  dirs: readonly string[],
  out: string,
  opts: MergeOptions = {},
): Promise<StoreManifest> {
  if (dirs.length === 0) throw new EmlensError('Nothing to merge; pass the slice stores to join.');
  const parts = await Promise.all(dirs.map(async (d) => ({ dir: d, m: await readManifest(d) })));
  for (const { dir, m } of parts) requireVerifiable(dir, m, 'merged');
  parts.sort((a, b) => a.m.range[0] - b.m.range[0] || a.m.range[1] - b.m.range[1]);
  const [head] = parts;
  if (!head) throw new Error('mergeStores: no parts'); // dirs is non-empty (checked above)
  const first = head.m;
  let expectStart = 0;
  let previous: { dir: string; m: StoreManifest } | undefined;
  for (const part of parts) {
    const { dir, m } = part;
    const diff = jobDifference(first, m, 'totalRecords');
    if (diff) {
      throw new EmlensError(
        `${dir} comes from another job than ${head.dir} (${diff.field} differs: ${FIELD_LABELS[diff.field]} ${diff.b} vs ${diff.a}); merge slices of one collect job only.`,
      );
    }
    if (!m.complete) throw new EmlensError(`${dir} is not complete; finish it with --resume before merging.`);
    if (previous && m.range[0] < expectStart) {
      const p = previous;
      const same = p.m.range[0] === m.range[0] && p.m.range[1] === m.range[1];
      throw new EmlensError(
        same
          ? `${p.dir} and ${dir} are the same ${sliceName(m)} (${span(m.range)}); pass each slice once.`
          : `${p.dir} (${sliceName(p.m)}, ${span(p.m.range)}) and ${dir} (${sliceName(m)}, ${span(m.range)}) overlap in ${span([m.range[0], Math.min(expectStart, m.range[1])])}; merge the slices of one --shard i/N split, each once.`,
      );
    }
    if (m.range[0] > expectStart) {
      const gap: [number, number] = [expectStart, m.range[0]];
      throw new EmlensError(
        `The slices do not cover records ${gap[0]}..${gap[1] - 1}${missingSlices(
          parts.map((q) => q.m),
          gap,
        )}; add the missing slice store.`,
      );
    }
    expectStart = m.range[1];
    previous = part;
  }
  if (expectStart !== first.totalRecords) {
    const gap: [number, number] = [expectStart, first.totalRecords];
    throw new EmlensError(
      `The slices do not cover records ${gap[0]}..${gap[1] - 1} of ${first.totalRecords}${missingSlices(
        parts.map((q) => q.m),
        gap,
      )}; add the missing slice stores.`,
    );
  }
  for (const { dir, m } of parts) await verifyStore(dir, m);

  const build = async (tmp: string): Promise<StoreManifest> => {
    const tmpLock = await StoreLock.acquire(tmp, () => rmSync(tmp, { recursive: true, force: true }));
    try {
      return await copyParts(tmp);
    } finally {
      await tmpLock.release();
    }
  };
  const copyParts = async (tmp: string): Promise<StoreManifest> => {
    const shards: ShardEntry[] = [];
    let records = '';
    for (const { dir, m } of parts) {
      for (const s of m.shards) {
        const file = shardFileName(shards.length);
        await copyFile(join(dir, s.file), join(tmp, file));
        shards.push({ ...s, file });
      }
      records += (await recordLines(dir, m)).slice(0, m.records).join('');
    }
    await writeAtomic(join(tmp, RECORDS_FILE), records);
    const merged: StoreManifest = {
      ...first,
      range: [0, first.totalRecords],
      slice: null,
      records: first.totalRecords,
      shards,
      complete: true,
    };
    await writeManifest(tmp, merged);
    return merged;
  };
  // An existing store at `out` is locked while it is replaced, so no `collect --resume` writes into it meanwhile.
  const lock =
    opts.overwrite && (await pathKind(out)) === 'dir'
      ? await StoreLock.acquire(out, () => removeOwnTempSiblings(out))
      : undefined;
  try {
    return await writeFolderAtomic(out, { overwrite: opts.overwrite }, build);
  } finally {
    await lock?.release();
  }
}
