/**
 * Directions in the residual stream, one vector per layer, and the direction file that holds them.
 *
 * The file is plain safetensors, loadable with `safetensors.torch.load_file` in Python: one F32 1-D tensor per
 * layer named `direction.{i}` (i = 0-based block index; unnormalised, because the norm is information) and
 * `__metadata__` strings: `format`, `model`, `hook`, `method`, `positions`, `n_pos`, `n_neg`, `source_pos`,
 * `source_neg`, `d_model`, `layers` (a JSON list) and `norms` (a JSON list, one per layer), plus any extra keys.
 */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { LayerMeans } from '../activations/aggregate.js';
import { EmlensError } from '../errors.js';
import { claimOutputFile } from '../io/outputs.js';
import { SafetensorsFile, type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { norm, normalize } from '../util/vector.js';

// The vector math lives in util/vector.ts; re-exported for the code that imported it from here.
export { cosine, norm, normalize } from '../util/vector.js';

/** Value of the `format` metadata key. */
export const DIRECTION_FORMAT = 'emlens.direction/1';

/** Where and how a set of directions was made; `d_model`, `layers` and `norms` are derived from the vectors. */
export interface DirectionMeta {
  /** The model the activations came from (a Hugging Face id or folder). */
  readonly model: string;
  /** The hook the activations were read at, e.g. `hook_resid_post` (TransformerLens names). */
  readonly hook: string;
  /** How the vectors were made, e.g. `mean_diff`. */
  readonly method: string;
  /** Which token positions were reduced, e.g. `answer_mean`. */
  readonly positions: string;
  /** Number of positive (misaligned) and negative (aligned) samples. */
  readonly nPos: number;
  readonly nNeg: number;
  /** The activation stores (or other sources) of the two sides. */
  readonly sourcePos: string;
  readonly sourceNeg: string;
  /** Other metadata strings, kept as they are (e.g. `seed` of a random direction). */
  readonly extra?: Readonly<Record<string, string>>;
}

/** One direction per layer (keys: 0-based block indices, ascending); every vector has length d_model. */
export interface DirectionSet {
  readonly vectors: ReadonlyMap<number, Float32Array>;
  readonly meta: DirectionMeta;
}

// LayerMeans is produced by activations/aggregate.ts (and LayerMeanAccumulator below) and consumed here: it
// lives below both, in activations/, and is re-exported here for the code that imported it from directions.
export type { LayerMeans };

/** Metadata keys of the {@link DirectionMeta} fields (the provenance a GGUF export carries too). */
export const PROVENANCE_KEYS = [
  'model',
  'hook',
  'method',
  'positions',
  'n_pos',
  'n_neg',
  'source_pos',
  'source_neg',
] as const;

/** Metadata keys that {@link DirectionMeta} fields and derived values occupy. */
const RESERVED = new Set<string>(['format', ...PROVENANCE_KEYS, 'd_model', 'layers', 'norms']);

const NAME = /^direction\.(0|[1-9][0-9]*)$/;

/**
 * Builds a validated DirectionSet: layers sorted ascending, all vectors the same (non-zero) length and finite.
 * `what` names the source in error messages.
 */
export function directionSet(
  vectors: Iterable<readonly [number, Float32Array]>,
  meta: DirectionMeta,
  what = 'the direction set',
): DirectionSet {
  const entries = [...vectors].sort((a, b) => a[0] - b[0]);
  const [head] = entries;
  if (head === undefined) {
    throw new EmlensError(`${capital(what)} holds no layers; a direction set needs at least one layer.`);
  }
  const d = head[1].length;
  let previous = -1;
  for (const [layer, v] of entries) {
    if (!Number.isSafeInteger(layer) || layer < 0) {
      throw new EmlensError(`${capital(what)} has layer ${layer}; layers must be non-negative integers.`);
    }
    if (layer === previous) throw new EmlensError(`${capital(what)} holds layer ${layer} twice; keep one.`);
    previous = layer;
    if (!(v instanceof Float32Array)) {
      throw new EmlensError(
        `${capital(what)} has a non-Float32Array vector at layer ${layer}; pass float32.`,
      );
    }
    if (v.length === 0 || v.length !== d) {
      throw new EmlensError(
        `${capital(what)} has a vector of length ${v.length} at layer ${layer} but ${d} at layer ${head[0]}; all layers need the same non-zero d_model.`,
      );
    }
    for (let j = 0; j < v.length; j++) {
      if (!Number.isFinite(v[j])) {
        throw new EmlensError(
          `${capital(what)} has a non-finite value (${v[j]}) at layer ${layer}, index ${j}; recompute it from finite activations.`,
        );
      }
    }
  }
  for (const [k, n] of [
    ['nPos', meta.nPos],
    ['nNeg', meta.nNeg],
  ] as const) {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new EmlensError(`${capital(what)} has ${k} = ${n}; sample counts must be non-negative integers.`);
    }
  }
  return { vectors: new Map(entries), meta: { ...meta, extra: { ...meta.extra } } };
}

/** The layers of a set, ascending. */
export function directionLayers(set: DirectionSet): number[] {
  return [...set.vectors.keys()];
}

/** The common vector length of a set. */
export function directionDModel(set: DirectionSet): number {
  const first = set.vectors.values().next();
  return first.done ? 0 : first.value.length;
}

/** The L2 norm of every layer's vector (float64), in layer order. */
export function directionNorms(set: DirectionSet): number[] {
  return [...set.vectors.values()].map(norm);
}

/** Every layer scaled to unit norm; the metadata gains `normalized: "true"` (the norms are then lost). */
export function normalizeSet(set: DirectionSet): DirectionSet {
  const vectors: [number, Float32Array][] = [];
  for (const [layer, v] of set.vectors) {
    if (norm(v) === 0) {
      throw new EmlensError(
        `Layer ${layer} of the direction set is a zero vector and cannot be normalised; drop that layer first.`,
      );
    }
    vectors.push([layer, normalize(v)]);
  }
  return directionSet(vectors, { ...set.meta, extra: { ...set.meta.extra, normalized: 'true' } });
}

/** Options of {@link meanDiff}: the provenance written into the metadata. */
export interface MeanDiffOptions {
  readonly model?: string;
  readonly hook?: string;
  readonly positions?: string;
  readonly sourcePos?: string;
  readonly sourceNeg?: string;
}

/**
 * The mean-difference direction per layer: `mean(pos) - mean(neg)`, subtracted in float64, stored as float32.
 * Both sides must hold the same layers and vector lengths, each from at least one sample.
 *
 * @example
 * const set = meanDiff(misalignedMeans, alignedMeans, { model: 'Qwen/Qwen2.5-0.5B-Instruct' });
 */
export function meanDiff(pos: LayerMeans, neg: LayerMeans, opts: MeanDiffOptions = {}): DirectionSet {
  for (const [side, m] of [
    ['positive', pos],
    ['negative', neg],
  ] as const) {
    if (!Number.isSafeInteger(m.count) || m.count <= 0) {
      throw new EmlensError(
        `The ${side} side has ${m.count} samples; a mean difference needs at least one sample on each side.`,
      );
    }
  }
  const posLayers = [...pos.means.keys()].sort((a, b) => a - b);
  const negLayers = [...neg.means.keys()].sort((a, b) => a - b);
  if (posLayers.join(',') !== negLayers.join(',')) {
    throw new EmlensError(
      `The positive side has layers [${posLayers.join(', ')}] but the negative side [${negLayers.join(', ')}]; collect both at the same layers.`,
    );
  }
  const vectors: [number, Float32Array][] = [];
  for (const layer of posLayers) {
    // Both sides hold exactly these layers (checked above).
    const p = pos.means.get(layer)!;
    const q = neg.means.get(layer)!;
    if (p.length !== q.length) {
      throw new EmlensError(
        `At layer ${layer} the positive mean has length ${p.length} but the negative ${q.length}; both sides must come from the same model.`,
      );
    }
    const v = new Float32Array(p.length); // [d_model]
    for (let j = 0; j < p.length; j++) v[j] = p[j]! - q[j]!; // p and q have the same length (checked)
    vectors.push([layer, v]);
  }
  return directionSet(vectors, {
    model: opts.model ?? 'unknown',
    hook: opts.hook ?? 'hook_resid_post',
    method: 'mean_diff',
    positions: opts.positions ?? 'answer_mean',
    nPos: pos.count,
    nNeg: neg.count,
    sourcePos: opts.sourcePos ?? '',
    sourceNeg: opts.sourceNeg ?? '',
  });
}

/**
 * Accumulates per-layer sums in float64 and yields {@link LayerMeans}; feed it one sample at a time.
 *
 * @example
 * const acc = new LayerMeanAccumulator();
 * for (const sample of samples) acc.add(sample); // Map<layer, Float32Array>
 * const means = acc.result();
 */
export class LayerMeanAccumulator {
  private readonly sums = new Map<number, Float64Array>();
  private n = 0;

  /** Adds one sample: a vector per layer; every sample must hold the same layers and lengths. */
  add(sample: ReadonlyMap<number, ArrayLike<number>>): void {
    if (this.n > 0 && sample.size !== this.sums.size) {
      throw new EmlensError(
        `Sample ${this.n} has ${sample.size} layers but earlier samples had ${this.sums.size}; every sample needs the same layers.`,
      );
    }
    for (const [layer, v] of sample) {
      let s = this.sums.get(layer);
      if (s === undefined) {
        if (this.n > 0) {
          throw new EmlensError(
            `Sample ${this.n} has layer ${layer}, which earlier samples lacked; every sample needs the same layers.`,
          );
        }
        s = new Float64Array(v.length);
        this.sums.set(layer, s);
      }
      if (s.length !== v.length) {
        throw new EmlensError(
          `Sample ${this.n} has length ${v.length} at layer ${layer} but earlier samples ${s.length}; every sample needs the same d_model.`,
        );
      }
      for (let j = 0; j < v.length; j++) s[j]! += v[j]!; // s and v have the same length (checked)
    }
    this.n++;
  }

  get count(): number {
    return this.n;
  }

  /** The means so far (copies; the accumulator can keep going). */
  result(): LayerMeans {
    const means = new Map<number, Float64Array>();
    for (const [layer, s] of this.sums)
      means.set(
        layer,
        s.map((x) => x / this.n),
      );
    return { count: this.n, means };
  }
}

/** The `__metadata__` strings of a set (what {@link saveDirections} writes). */
export function directionMetadata(set: DirectionSet): Record<string, string> {
  const m = set.meta;
  const extra: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.extra ?? {})) {
    if (RESERVED.has(k)) {
      throw new EmlensError(`Extra metadata key '${k}' is reserved for the direction file; rename it.`);
    }
    extra[k] = v;
  }
  return {
    format: DIRECTION_FORMAT,
    model: m.model,
    hook: m.hook,
    method: m.method,
    positions: m.positions,
    n_pos: String(m.nPos),
    n_neg: String(m.nNeg),
    source_pos: m.sourcePos,
    source_neg: m.sourceNeg,
    d_model: String(directionDModel(set)),
    layers: JSON.stringify(directionLayers(set)),
    norms: JSON.stringify(directionNorms(set)),
    ...extra,
  };
}

export interface SaveDirectionsOptions {
  /** Replace an existing file (default: refuse). */
  readonly overwrite?: boolean;
  /** The CLI flag that named the path, for the refusal message (default `--out`). */
  readonly flag?: string;
}

/**
 * Writes a direction file atomically (temp file + rename), creating the folder; refuses to replace an
 * existing file unless `overwrite` is set.
 */
export async function saveDirections(
  path: string,
  set: DirectionSet,
  opts: SaveDirectionsOptions = {},
): Promise<void> {
  const checked = directionSet(set.vectors, set.meta);
  const metadata = directionMetadata(checked);
  await claimOutputFile(path, { overwrite: opts.overwrite, flag: opts.flag, createParent: true });
  const tensors = new Map<string, TensorToWrite>();
  for (const [layer, v] of checked.vectors) {
    tensors.set(`direction.${layer}`, { dtype: 'F32', shape: [v.length], data: v });
  }
  await mkdir(dirname(path), { recursive: true });
  await writeSafetensors(path, tensors, metadata);
}

/**
 * Reads a direction file, validating that every tensor is an F32 1-D `direction.{i}` of one common length and
 * that the `d_model` and `layers` metadata, when present, agree with the tensors. Missing provenance keys
 * (a file written by other tools) read as `unknown` / 0.
 */
export async function loadDirections(path: string): Promise<DirectionSet> {
  const file = await SafetensorsFile.open(path);
  try {
    const bad = (what: string) =>
      new EmlensError(`Direction file ${path} ${what}; write it with saveDirections or emlens.`);
    const vectors: [number, Float32Array][] = [];
    for (const [name, t] of file.tensors) {
      const m = NAME.exec(name);
      if (m === null) throw bad(`holds tensor '${name}', which is not named direction.{layer}`);
      if (t.dtype !== 'F32') throw bad(`stores '${name}' as ${t.dtype}, but directions must be F32`);
      if (t.shape.length !== 1) {
        throw bad(
          `stores '${name}' with shape [${t.shape.join(', ')}], but a direction must be 1-D [d_model]`,
        );
      }
      vectors.push([Number(m[1]), await file.readFloat32(name)]);
    }
    if (vectors.length === 0) throw bad('holds no direction.{layer} tensors');
    const md = file.metadata;
    const count = (key: string): number => {
      const v = md[key];
      if (v === undefined) return 0;
      if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
        throw bad(`has metadata ${key} = '${v}', which is not a non-negative integer`);
      }
      return Number(v);
    };
    const extra: Record<string, string> = {};
    for (const [k, v] of Object.entries(md)) if (!RESERVED.has(k)) extra[k] = v;
    const set = directionSet(
      vectors,
      {
        model: md.model ?? 'unknown',
        hook: md.hook ?? 'unknown',
        method: md.method ?? 'unknown',
        positions: md.positions ?? 'unknown',
        nPos: count('n_pos'),
        nNeg: count('n_neg'),
        sourcePos: md.source_pos ?? '',
        sourceNeg: md.source_neg ?? '',
        extra,
      },
      `Direction file ${path}`,
    );
    if (md.d_model !== undefined && md.d_model !== String(directionDModel(set))) {
      throw bad(`says d_model ${md.d_model} but its vectors have length ${directionDModel(set)}`);
    }
    if (md.layers !== undefined) {
      let listed: unknown;
      try {
        listed = JSON.parse(md.layers);
      } catch {
        listed = undefined;
      }
      const actual = directionLayers(set);
      if (!Array.isArray(listed) || [...listed].sort((a, b) => a - b).join(',') !== actual.join(',')) {
        throw bad(`lists layers ${md.layers} but holds tensors for layers [${actual.join(', ')}]`);
      }
    }
    return set;
  } finally {
    await file.close();
  }
}

function capital(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
