/**
 * Content fingerprints of model inputs (weights, adapters, tokenizers, data files): sha256 of the bytes, so two
 * files that differ only in their values (another seed of the same config) are told apart, which a path, size
 * and mtime key cannot do.
 *
 * Hashing streams at about 1 GB/s, so multi-GB weights cost seconds; each file's hash is cached under
 * `<cacheDir>/fingerprints/`, keyed by its real path, size, mtime, ctime, inode and device. A rewrite changes
 * ctime even when the writer restores mtime (`touch -d`, `cp -p`), so a stale cache entry is not reused.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { WeightSource } from '../io/weightSource.js';
import { defaultCacheDir } from './cache.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from './lora/index.js';

export interface FingerprintOptions {
  /** Where per-file hashes are cached (default `$EMLENS_CACHE_DIR` or `~/.cache/emlens`); null: no cache. */
  readonly cacheDir?: string | null;
}

/** sha256 (hex) of a file's bytes, streamed. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** sha256 (hex) of a file's bytes, from the cache when the file is unchanged since it was hashed. */
export async function cachedSha256(path: string, opts: FingerprintOptions = {}): Promise<string> {
  const real = await realpath(path);
  const s = await stat(real, { bigint: true });
  const identity = {
    path: real,
    size: String(s.size),
    mtime: String(s.mtimeNs),
    ctime: String(s.ctimeNs),
    ino: String(s.ino),
    dev: String(s.dev),
  };
  const dir = opts.cacheDir === null ? null : join(opts.cacheDir ?? defaultCacheDir(), 'fingerprints');
  const entry = dir
    ? join(dir, `${createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 32)}.json`)
    : null;
  if (entry) {
    try {
      const cached = JSON.parse(await readFile(entry, 'utf8')) as { identity: unknown; sha256: unknown };
      if (JSON.stringify(cached.identity) === JSON.stringify(identity) && typeof cached.sha256 === 'string') {
        return cached.sha256;
      }
    } catch {
      // no entry yet, or an unreadable one: hash again
    }
  }
  const sha256 = await sha256File(real);
  if (dir && entry) {
    // The cache only saves time: a read-only or full cache folder must not fail the run.
    try {
      await mkdir(dir, { recursive: true });
      await writeAtomic(entry, `${JSON.stringify({ identity, sha256 })}\n`);
    } catch {}
  }
  return sha256;
}

/** One hash over named parts, order as given. */
function combine(parts: readonly (readonly [string, string])[]): string {
  const h = createHash('sha256');
  for (const [name, value] of parts) h.update(`${name}\u0000${value}\u0000`);
  return h.digest('hex');
}

/**
 * Fingerprint of a model folder's weights: the content hash of every safetensors weight file (by file name,
 * sorted), so the same values give the same fingerprint wherever the folder lies.
 */
export async function weightsFingerprint(modelDir: string, opts: FingerprintOptions = {}): Promise<string> {
  const source = await WeightSource.open(modelDir); // headers only: validates the folder, lists its files
  const files = [...source.files].sort();
  await source.close();
  const parts: [string, string][] = [];
  for (const f of files) parts.push([basename(f), await cachedSha256(f, opts)]);
  return combine(parts);
}

/** Fingerprint of a PEFT adapter: its weights' content and its config (scaling, targets). */
export async function adapterFingerprint(adapterDir: string, opts: FingerprintOptions = {}): Promise<string> {
  const parts: [string, string][] = [];
  for (const f of [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE]) {
    try {
      parts.push([f, await cachedSha256(join(adapterDir, f), opts)]);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ENOTDIR')
        throw e;
      throw new EmlensError(
        `No ${f} in ${adapterDir}; point --adapter at a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors).`,
      );
    }
  }
  return combine(parts);
}

/** Files beside a model that decide how text becomes token ids (the chat template included). */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja'] as const;

/** Fingerprint of a folder's tokenizer and chat template; an absent optional file counts as absent. */
export async function tokenizerFingerprint(dir: string): Promise<string> {
  const parts: [string, string][] = [];
  for (const f of TOKENIZER_FILES) {
    try {
      parts.push([f, await sha256File(join(dir, f))]);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      parts.push([f, 'absent']);
    }
  }
  return combine(parts);
}
