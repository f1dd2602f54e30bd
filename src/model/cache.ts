import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** Bump when the emitted graph changes, so every cached build is rebuilt. */
export const GRAPH_BUILDER_VERSION = '1';

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

export function cacheKey(parts: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify({ v: GRAPH_BUILDER_VERSION, parts }))
    .digest('hex')
    .slice(0, 24);
}

/**
 * Returns the cache folder for `key`, building it with `build(tmpDir)` when absent. The build writes into a
 * private temporary folder that is renamed into place, so an interrupted build never leaves a half-written
 * model that a later load would trust, and two concurrent builds both end with a complete folder.
 */
export async function cachedBuild(
  cacheDir: string,
  key: string,
  build: (dir: string) => Promise<void>,
): Promise<{ dir: string; built: boolean }> {
  const dir = join(cacheDir, key);
  const marker = join(dir, 'build.json');
  try {
    JSON.parse(await readFile(marker, 'utf8'));
    return { dir, built: false };
  } catch {
    // not built yet (or a corrupt marker): build below
  }
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp);
  try {
    await build(tmp);
    await writeFile(join(tmp, 'build.json'), JSON.stringify({ key, builtAt: new Date().toISOString() }));
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return { dir, built: true };
}
