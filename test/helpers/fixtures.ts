/**
 * The fixtures test files share: a temporary folder removed after use, and a tiny model (src/model/tiny.ts)
 * written into one and loaded with a private graph cache and one thread. Each comes in two forms: `useX`
 * registers `beforeAll`/`afterAll` for the enclosing file or `describe` and hands back a handle whose fields
 * are set once the hook has run; `withX` runs a function and cleans up after it, for a test that needs its
 * own. Hooks run in the order registered and `afterAll`s in reverse (vitest's default `sequence.hooks`),
 * so a file's own setup after `useTinyModel(...)` sees the model, and its own teardown runs before the model
 * is disposed and the folder removed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type LoadModelOptions, loadModel, type Model } from '../../src/model/model.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { makeTinyModel, type TinyModelOptions } from '../../src/model/tiny.js';

/** A temporary folder under the OS's tmpdir. */
export interface TempDir {
  readonly path: string;
  /** `join(path, ...parts)` */
  join(...parts: string[]): string;
  /** Removes the folder and everything in it. */
  cleanup(): Promise<void>;
}

/** Makes a fresh temporary folder named `prefix` + random characters. */
export async function tempDir(prefix: string): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return {
    path,
    join: (...parts) => join(path, ...parts),
    cleanup: () => rm(path, { recursive: true, force: true }),
  };
}

/** Runs `fn` with a fresh temporary folder, removed afterwards whether `fn` succeeds or throws. */
export async function withTempDir<T>(prefix: string, fn: (dir: TempDir) => Promise<T>): Promise<T> {
  const dir = await tempDir(prefix);
  try {
    return await fn(dir);
  } finally {
    await dir.cleanup();
  }
}

/** Reads a field a hook has not set yet: a test that does so has its hooks in the wrong order. */
function ready<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`${what} is read before its beforeAll ran`);
  return value;
}

/** A temporary folder made before the enclosing file's (or describe's) tests and removed after them. */
export function useTempDir(prefix: string): Omit<TempDir, 'cleanup'> {
  let dir: TempDir | undefined;
  beforeAll(async () => {
    dir = await tempDir(prefix);
  });
  afterAll(async () => {
    await dir?.cleanup();
  });
  return {
    get path() {
      return ready(dir, 'useTempDir().path').path;
    },
    join: (...parts) => ready(dir, 'useTempDir().join').join(...parts),
  };
}

export interface TinyFixtureOptions extends TinyModelOptions {
  /** Name of the model folder inside the temporary folder (default 'model'). */
  readonly name?: string;
  /**
   * How the model is loaded: options added to `{ cacheDir, threads: 1 }` (the cache a private folder beside
   * the model), or `false` to write the folder and load nothing (default `{}`).
   */
  readonly load?: Omit<LoadModelOptions, 'cacheDir'> | false;
}

/** A tiny model folder, its spec, and the model loaded from it (unless `load: false`). */
export interface TinyModel {
  /** The temporary folder holding the model folder and the graph cache. */
  readonly root: string;
  /** The model folder. */
  readonly dir: string;
  /** The graph cache the model was loaded with (`root/cache`), for further loads that should find it. */
  readonly cacheDir: string;
  readonly spec: ModelSpec;
  /** The loaded model; reading it after `load: false` throws. */
  readonly model: Model;
  /** `join(root, ...parts)` */
  at(...parts: string[]): string;
}

/** Writes and loads a tiny model inside `root`; `dispose` frees the model (the folder stays). */
export async function makeTinyFixture(
  root: string,
  options: TinyFixtureOptions,
): Promise<TinyModel & { dispose(): Promise<void> }> {
  const { name = 'model', load = {}, ...tiny } = options;
  const dir = join(root, name);
  const cacheDir = join(root, 'cache');
  const spec = await makeTinyModel(dir, tiny);
  const model = load === false ? undefined : await loadModel(dir, { ...load, cacheDir, threads: 1 });
  return {
    root,
    dir,
    cacheDir,
    spec,
    get model() {
      if (model === undefined) throw new Error('this tiny model fixture was made with load: false');
      return model;
    },
    at: (...parts) => join(root, ...parts),
    dispose: async () => {
      await model?.dispose();
    },
  };
}

/**
 * Runs `fn` with a tiny model in a fresh temporary folder named `prefix`...; the model is disposed and the
 * folder removed afterwards whether `fn` succeeds or throws.
 */
export async function withTinyModel<T>(
  prefix: string,
  options: TinyFixtureOptions,
  fn: (tiny: TinyModel) => Promise<T>,
): Promise<T> {
  return withTempDir(prefix, async (tmp) => {
    const tiny = await makeTinyFixture(tmp.path, options);
    try {
      return await fn(tiny);
    } finally {
      await tiny.dispose();
    }
  });
}

/**
 * A tiny model made and loaded before the enclosing file's (or describe's) tests, in its own temporary folder
 * named `prefix`...; disposed and removed after them.
 */
export function useTinyModel(prefix: string, options: TinyFixtureOptions): TinyModel {
  let tiny: (TinyModel & { dispose(): Promise<void> }) | undefined;
  let tmp: TempDir | undefined;
  beforeAll(async () => {
    tmp = await tempDir(prefix);
    tiny = await makeTinyFixture(tmp.path, options);
  });
  afterAll(async () => {
    await tiny?.dispose();
    await tmp?.cleanup();
  });
  const get = () => ready(tiny, 'useTinyModel()');
  return {
    get root() {
      return get().root;
    },
    get dir() {
      return get().dir;
    },
    get cacheDir() {
      return get().cacheDir;
    },
    get spec() {
      return get().spec;
    },
    get model() {
      return get().model;
    },
    at: (...parts) => get().at(...parts),
  };
}
