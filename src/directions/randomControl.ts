/**
 * Norm-matched random controls of a direction set, and the summary of a metric over several of them.
 *
 * A control is one random vector per layer with the norm of the direction's vector at that layer. One draw
 * says little (its effect is itself a random variable), so callers draw K controls and report their mean and
 * spread beside the direction's number.
 *
 * Seeding: the stream of layer L of control k is keyed by sha256(layer L, the float32 bytes of the mimicked
 * vector at L, the user seed, k). So two directions never share a draw (the old `seed 0 for everything` gave
 * every direction the same vector up to scale: cos = 1 between their controls), the same inputs always give
 * the same control, and a layer's control does not depend on which other layers the set holds.
 */
import { createHash } from 'node:crypto';
import { basename, extname } from 'node:path';
import { EmlensError } from '../errors.js';
import { Rng } from '../util/random.js';
import { norm } from '../util/vector.js';
import { type DirectionSet, directionSet } from './direction.js';

/** `method` of a control's metadata. */
export const RANDOM_CONTROL_METHOD = 'random_norm_matched';

export interface RandomControlOptions {
  /** The user seed (default 0). */
  readonly seed?: number;
  /** Which control of the direction, 0-based (default 0); control k of K. */
  readonly index?: number;
  /** Name of the mimicked direction for the metadata (e.g. its file); default `sha256:` and a hash prefix. */
  readonly name?: string;
}

/** Hex sha256 of a set's content (layer indices and float32 vector bytes, in layer order). */
export function directionSha256(set: DirectionSet): string {
  const h = createHash('sha256');
  for (const [layer, v] of set.vectors) {
    h.update(`direction.${layer}:${v.length}:`);
    h.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  }
  return h.digest('hex');
}

/** True for a set made by {@link randomControl} (or by earlier emlens versions' random controls). */
export function isRandomControl(set: DirectionSet): boolean {
  return set.meta.method === RANDOM_CONTROL_METHOD;
}

function checkSeedAndIndex(seed: number, index: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new EmlensError(`The random-control seed is ${seed}; pass a non-negative integer (--seed).`);
  }
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new EmlensError(`The random-control index is ${index}; pass a non-negative integer.`);
  }
}

/** The 48-bit seed of one layer's stream (see the module comment). */
function layerSeed(layer: number, v: Float32Array, seed: number, index: number): number {
  const h = createHash('sha256');
  h.update(`emlens.random_control/1:${layer}:${seed}:${index}:`);
  h.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  return h.digest().readUIntBE(0, 6);
}

/**
 * Control `index` of `set`: per layer a draw from an isotropic Gaussian scaled to that layer's norm. Its
 * metadata names what it mimics (`random_of`, `random_of_sha256`, `random_of_method`), the `seed` and the
 * `control_index`; the data-derived fields of the direction (sample counts, source stores, positions) are
 * not copied: a control was computed from no samples.
 *
 * @example
 * const control = randomControl(general, { seed: 0, index: 0, name: 'general' });
 */
export function randomControl(set: DirectionSet, opts: RandomControlOptions = {}): DirectionSet {
  const seed = opts.seed ?? 0;
  const index = opts.index ?? 0;
  checkSeedAndIndex(seed, index);
  const vectors: [number, Float32Array][] = [];
  for (const [layer, v] of set.vectors) {
    const rng = Rng.derive(layerSeed(layer, v, seed, index), `direction.${layer}`);
    const r = new Float64Array(v.length); // [d_model]
    for (let j = 0; j < r.length; j++) r[j] = rng.normal();
    const scale = norm(v) / norm(r);
    const out = new Float32Array(v.length); // [d_model]
    for (let j = 0; j < r.length; j++) out[j] = r[j]! * scale; // j < r.length
    vectors.push([layer, out]);
  }
  const sha = directionSha256(set);
  const extra: Record<string, string> = {
    random_of: opts.name ?? `sha256:${sha.slice(0, 12)}`,
    random_of_sha256: sha,
    random_of_method: set.meta.method,
    seed: String(seed),
    control_index: String(index),
  };
  // A unit-norm set's control is unit-norm too; say so, as the set does.
  if (set.meta.extra?.normalized !== undefined) extra.normalized = set.meta.extra.normalized;
  return directionSet(vectors, {
    model: set.meta.model,
    hook: set.meta.hook,
    method: RANDOM_CONTROL_METHOD,
    positions: 'none',
    nPos: 0,
    nNeg: 0,
    sourcePos: '',
    sourceNeg: '',
    extra,
  });
}

/** Controls 0..count-1 of `set` (see {@link randomControl}); `count` must be a positive integer. */
export function randomControls(
  set: DirectionSet,
  count: number,
  opts: Omit<RandomControlOptions, 'index'> = {},
): DirectionSet[] {
  checkControlCount(count);
  return Array.from({ length: count }, (_, index) => randomControl(set, { ...opts, index }));
}

/** Throws unless `count` is a usable number of random controls (1 or more). */
export function checkControlCount(count: number): void {
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new EmlensError(
      `The number of random controls is ${count}; pass a positive integer (--random-controls 1 or more).`,
    );
  }
}

/**
 * Where `emlens direction --random-control PATH --random-controls K` writes its controls: PATH itself for
 * K = 1, else PATH with `.r{k}` before the extension (`general-random.r0.safetensors`, ...).
 */
export function controlPaths(path: string, count: number): string[] {
  checkControlCount(count);
  if (count === 1) return [path];
  const ext = extname(path);
  const stem = ext === '' ? path : path.slice(0, -ext.length);
  return Array.from({ length: count }, (_, k) => `${stem}.r${k}${ext}`);
}

/** The name of a control file without its `.r{k}` part: `general-random.r2` -> `general-random`. */
export function controlStem(name: string): string {
  return basename(name).replace(/\.r\d+$/, '');
}

// ---------------------------------------------------------------------------------------------------------
// A metric over K controls

/** One metric over K random controls: what tables show beside the direction's value. */
export interface ControlSpread {
  /** Number of controls (K). */
  readonly n: number;
  readonly mean: number;
  /** Sample standard deviation (divisor n - 1); null for n = 1, where there is no spread to measure. */
  readonly sd: number | null;
  readonly min: number;
  readonly max: number;
  /** The value of each control, in control order. */
  readonly values: readonly number[];
}

/**
 * The mean, sample sd, min and max of a metric over controls. A NaN value (e.g. a fraction where there is
 * nothing to mediate) makes the summary NaN: it is not a number to average away.
 */
export function controlSpread(values: readonly number[]): ControlSpread {
  if (values.length === 0) {
    throw new EmlensError('A control summary needs at least one control; draw one or more random controls.');
  }
  const n = values.length;
  const mean = values.reduce((a, x) => a + x, 0) / n;
  const sd = n < 2 ? null : Math.sqrt(values.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1));
  return { n, mean, sd, min: Math.min(...values), max: Math.max(...values), values: [...values] };
}

const missing = (x: number | null | undefined): boolean => x === null || x === undefined || Number.isNaN(x);

/**
 * A control summary as one table cell, each number through `fmt`: `mean ± sd (min..max, n=K)`, or
 * `value (n=1)` for a single control; `n/a` where there is no number (read back from JSON, NaN is null).
 */
export function formatSpread(s: ControlSpread | null | undefined, fmt: (x: number) => string): string {
  if (s === null || s === undefined || missing(s.mean)) return s ? `n/a (n=${s.n})` : 'n/a';
  if (s.n === 1 || missing(s.sd)) return `${fmt(s.mean)} (n=${s.n})`;
  return `${fmt(s.mean)} ± ${fmt(s.sd as number)} (${fmt(s.min)}..${fmt(s.max)}, n=${s.n})`;
}

/** A plain number (a report written before controls had spreads) read as one control. */
export function asControlSpread(x: ControlSpread | number | null | undefined): ControlSpread | null {
  if (x === null || x === undefined) return null;
  if (typeof x === 'number') return { n: 1, mean: x, sd: null, min: x, max: x, values: [x] };
  return x;
}
