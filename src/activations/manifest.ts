import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import type { Reduction } from './reduce.js';

export const MANIFEST_FILE = 'manifest.json';
export const RECORDS_FILE = 'records.jsonl';
export const STORE_FORMAT = 'emlens-activations';
export const STORE_VERSION = 2;

export interface ShardEntry {
  readonly file: string;
  /** Records in this shard. */
  readonly records: number;
  /** Global index of the shard's first record. */
  readonly firstRecord: number;
  /** Rows of the hook tensors (records, or answer tokens for `none`). */
  readonly rows: number;
  /** Size and sha256 of the shard file, so a deleted, truncated or altered shard is noticed (v2). */
  readonly bytes?: number;
  readonly sha256?: string;
  /** sha256 of this shard's lines of records.jsonl (each line with its newline) (v2). */
  readonly recordsSha256?: string;
}

/**
 * Everything besides the model config that decides the numbers a store holds (v2). A resumed run or a merged
 * slice must agree on every field; hashes are sha256 hex, null where the caller did not say (library use
 * without a data file or tokenizer folder).
 */
export interface StoreInputs {
  /** Content hash of the model's safetensors weight files. */
  readonly weights: string;
  /** Content hash of the adapter's weights and config. */
  readonly adapterWeights: string | null;
  /** Content hash of tokenizer.json, tokenizer_config.json and chat_template.jinja. */
  readonly tokenizer: string | null;
  /** Content hash of the responses file. */
  readonly data: string | null;
  /** Which tokens are the answer (`after-user`, `content`). */
  readonly span: string | null;
  readonly profile: string;
  readonly device: string;
  readonly maxPositions: number;
  /** Hash of the interventions applied while collecting; null for none. */
  readonly interventions: string | null;
}

/** What each job field means, for the message that refuses a mismatch. */
export const FIELD_LABELS: Readonly<Record<string, string>> = {
  specKey: 'model config',
  weights: 'content hash of the model weights',
  adapter: 'adapter folder',
  adapterWeights: 'content hash of the adapter weights and config',
  tokenizer: 'content hash of the tokenizer and chat template',
  data: 'content hash of the data file',
  span: 'answer span',
  profile: 'graph precision',
  device: 'execution provider',
  maxPositions: 'longest sequence the graph accepts',
  interventions: 'interventions applied',
  hooks: 'hooks',
  reduce: 'reduction',
  batchSize: 'records per forward pass',
  shardSize: 'records per shard',
  recordsKey: 'hash of the record ids, token ids and answer masks',
  totalRecords: 'records of the whole job',
  range: 'record range of this slice',
};

/**
 * What a store holds and how it was made. Everything a resumed or merged run must agree on is here; the
 * `shards` list is the truth about what is done (a shard is listed only after its file is complete).
 */
export interface StoreManifest {
  readonly format: typeof STORE_FORMAT;
  /** 2 records `inputs` and shard checksums; 1 (older emlens) does not, so it can be read but not verified. */
  readonly version: 1 | 2;
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
  /** Hash of the job's records in order (ids, token ids, answer masks): a resume on other data is refused. */
  readonly recordsKey: string;
  /** Absent in v1 stores. */
  readonly inputs?: StoreInputs;
  /** This store's part of the job: `[start, end)` record indices and the slice it is. */
  readonly range: readonly [number, number];
  readonly slice: { readonly index: number; readonly count: number } | null;
  /** Records done (the sum over shards). */
  readonly records: number;
  readonly shards: readonly ShardEntry[];
  readonly complete: boolean;
  readonly createdWith: string;
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
  if (m.format !== STORE_FORMAT || (m.version !== 1 && m.version !== STORE_VERSION)) {
    throw new EmlensError(
      `${dir} holds format '${m.format}' v${m.version}, not ${STORE_FORMAT} v${STORE_VERSION}; collect it again with this emlens.`,
    );
  }
  return m;
}

/** Writes the manifest atomically (temp file + rename): a reader sees the old one or the new one. */
export async function writeManifest(dir: string, m: StoreManifest): Promise<void> {
  await writeAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(m, null, 2)}\n`);
}
