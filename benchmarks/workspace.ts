/**
 * What the benchmark scripts share: their work folder (not committed), the Qwen2.5-0.5B-shaped random model
 * generated into it on first use, its graph cache, and a log line prefixed with the script's name.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pathExists, writeAtomic } from '../src/io/files.js';
import { makeTinyModel, QWEN25_05B_SHAPE } from '../src/model/tiny.js';

export const work = join(import.meta.dirname, '.work');
export const modelDir = join(work, 'qwen25-05b-shape');
export const cacheDir = join(work, 'cache');

/** A logger writing `bench:<name>: message` lines to stderr. */
export function benchLog(name: string): (message: string) => void {
  return (m) => process.stderr.write(`bench:${name}: ${m}\n`);
}

/** Creates the work folder and generates the benchmark model unless it is there already. */
export async function ensureBenchModel(log: (message: string) => void): Promise<void> {
  await mkdir(work, { recursive: true });
  if (await pathExists(join(modelDir, 'config.json'))) return;
  log('generating the Qwen2.5-0.5B-shaped random model (not committed)');
  await makeTinyModel(modelDir, { ...QWEN25_05B_SHAPE, dtype: 'BF16' });
}

/** Writes a benchmark's JSON result to `benchmarks/results/<name>.json` (atomically); returns the path. */
export async function writeResult(name: string, result: unknown): Promise<string> {
  const dir = join(import.meta.dirname, 'results');
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${name}.json`);
  await writeAtomic(path, `${JSON.stringify(result, null, 2)}\n`);
  return path;
}

/** A positive integer setting from the environment (`name`), or `fallback` when unset. */
export function envCount(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`${name}=${raw} is not a positive integer; set it to e.g. ${fallback} or unset it.`);
  }
  return n;
}

/**
 * The order to run compared configurations in, round by round: as given in even rounds, reversed in odd ones.
 * On a host whose speed drifts, a fixed order favours whatever always runs first (best-of-rounds picks the
 * early, fast rounds); alternating cancels a steady drift.
 */
export function inRoundOrder<T>(items: readonly T[], round: number): T[] {
  return round % 2 === 0 ? [...items] : [...items].reverse();
}
