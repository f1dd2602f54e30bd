import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** Bump when the emitted graph changes, so every cached build is rebuilt. */
export const GRAPH_BUILDER_VERSION = '6';

/** `$EMLENS_CACHE_DIR`, else `~/.cache/emlens`. */
export function defaultCacheDir(): string {
  return process.env.EMLENS_CACHE_DIR || join(homedir(), '.cache', 'emlens');
}

/**
 * A cheap fingerprint of input files: path, size and modification time. Hashing multi-GB weights on every
 * load would cost seconds; a rewritten file changes its mtime, which is what we need to notice.
 */
export async function fileFingerprint(paths: readonly string[]): Promise<string[]> {
  return Promise.all(
    paths.map(async (p) => {
      const s = await stat(p);
      return `${p}:${s.size}:${Math.round(s.mtimeMs)}`;
    }),
  );
}

/** A short stable hash of everything a build depends on. */
export function cacheKey(parts: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify({ v: GRAPH_BUILDER_VERSION, parts }))
    .digest('hex')
    .slice(0, 24);
}
