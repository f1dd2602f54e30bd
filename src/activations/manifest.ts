import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import type { Reduction } from './reduce.js';

export const MANIFEST_FILE = 'manifest.json';
export const RECORDS_FILE = 'records.jsonl';
export const STORE_FORMAT = 'emlens-activations';

export interface ShardEntry {
  readonly file: string;
  /** Records in this shard. */
  readonly records: number;
  /** Global index of the shard's first record. */
  readonly firstRecord: number;
  /** Rows of the hook tensors (records, or answer tokens for `none`). */
  readonly rows: number;
}

/**
 * What a store holds and how it was made. Everything a resumed or merged run must agree on is here; the
 * `shards` list is the truth about what is done (a shard is listed only after its file is complete).
 */
export interface StoreManifest {
  readonly format: typeof STORE_FORMAT;
  readonly version: 1;
  readonly model: string;
  readonly adapter: string | null;
  /** Hash of the model spec, so a store from another model is noticed. */
  readonly specKey: string;
  readonly dModel: number;
  readonly hooks: readonly string[];
  readonly reduce: Reduction;
  readonly dtype: 'F32';
  readonly batchSize: number;
  /** Records per shard (a multiple of batchSize, so no batch straddles two shards). */
  readonly shardSize: number;
  /** Records of the whole job (all slices). */
  readonly totalRecords: number;
  /** Hash of the job's record ids in order: a resume on other data is refused. */
  readonly recordsKey: string;
  /** This store's part of the job: `[start, end)` record indices and the slice it is. */
  readonly range: readonly [number, number];
  readonly slice: { readonly index: number; readonly count: number } | null;
  /** Records done (the sum over shards). */
  readonly records: number;
  readonly shards: readonly ShardEntry[];
  readonly complete: boolean;
  readonly createdWith: string;
}

/** Reads a store's manifest with a clear error if the folder is not a store. */
export async function readManifest(dir: string): Promise<StoreManifest> {
  let text: string;
  try {
    text = await readFile(join(dir, MANIFEST_FILE), 'utf8');
  } catch {
    throw new EmlensError(
      `${dir} is not an activation store (no ${MANIFEST_FILE}); point at a folder 'emlens collect' wrote.`,
    );
  }
  let m: StoreManifest;
  try {
    m = JSON.parse(text) as StoreManifest;
  } catch (e) {
    throw new EmlensError(
      `${join(dir, MANIFEST_FILE)} is not valid JSON (${(e as Error).message}); the store is damaged, collect it again.`,
    );
  }
  if (m.format !== STORE_FORMAT || m.version !== 1) {
    throw new EmlensError(
      `${dir} holds format '${m.format}' v${m.version}, not ${STORE_FORMAT} v1; collect it again with this emlens.`,
    );
  }
  return m;
}

/** Writes the manifest atomically (temp file + rename): a reader sees the old one or the new one. */
export async function writeManifest(dir: string, m: StoreManifest): Promise<void> {
  await writeAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(m, null, 2)}\n`);
}
