/**
 * `trainSteeringVector`: a steering vector at one residual site, trained with Adam on the cross-entropy of the
 * answer tokens of `data` plus `klWeight` x KL(base || steered) on `klData` (the narrow-solution recipe of
 * "emergent misalignment is easy, narrow misalignment is hard"). Each step draws its batches from a seeded
 * generator of (seed, step), so a run resumed from a checkpoint takes exactly the steps the uninterrupted run
 * would have; the checkpoint (written atomically every `every` steps) holds the vector and Adam's moments in
 * float64 and the options it was made with, and a resume with other options is refused.
 */
import { readFile } from 'node:fs/promises';
import type { TokenizedRecord } from '../data/record.js';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { pathKind } from '../io/outputs.js';
import type { ResidualHookName } from '../model/hooks.js';
import type { GradRow } from './batch.js';
import type { GradModel } from './gradModel.js';
import { PARAM, residualSite } from './params.js';

export interface TrainVectorOptions {
  /** A residual site (`blocks.L.hook_resid_post`). */
  readonly site: string;
  /** Records whose answer tokens (`mask`) the steered model should predict. */
  readonly data: readonly TokenizedRecord[];
  /** Records (every token) on which the steered model should stay close to the base model. */
  readonly klData?: readonly TokenizedRecord[];
  /** W in loss = CE + W x KL (default 0). */
  readonly klWeight?: number;
  readonly steps: number;
  readonly lr: number;
  /** Records of `data` per step (and of `klData`, when given). */
  readonly batch: number;
  readonly seed: number;
  /** Adam's betas and epsilon (defaults 0.9, 0.999, 1e-8). */
  readonly adam?: { readonly beta1?: number; readonly beta2?: number; readonly eps?: number };
  /**
   * Checkpointing: the checkpoint file, written atomically every `every` steps and at the end; with `resume`,
   * a checkpoint found there continues the run (refused unless it was made with the same options and
   * `identity`, e.g. the model and data files' fingerprints).
   */
  readonly checkpoint?: {
    readonly path: string;
    readonly every: number;
    readonly resume?: boolean;
    readonly identity?: Readonly<Record<string, string>>;
  };
  /** Called after every step (progress bars). */
  readonly onStep?: (step: number, losses: StepLosses) => void;
}

export interface StepLosses {
  readonly loss: number;
  readonly ce: number;
  readonly kl: number;
}

export interface TrainVectorResult {
  /** The trained vector, `[d_model]`. */
  readonly vector: Float32Array;
  /** Losses of every step (before its update), from step 1. */
  readonly history: readonly StepLosses[];
  /** The step the run resumed from (0 for a fresh run). */
  readonly resumedFrom: number;
}

export const CHECKPOINT_FORMAT = 'emlens.train-vector-checkpoint/1';

interface Checkpoint {
  readonly format: typeof CHECKPOINT_FORMAT;
  readonly options: Record<string, unknown>;
  readonly step: number;
  readonly vector: number[];
  readonly m: number[];
  readonly v: number[];
  readonly history: StepLosses[];
}

/** A small seeded generator (mulberry32). */
function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `k` distinct indices of `n` (all of them when k >= n), drawn from `rand`. */
function sample(n: number, k: number, rand: () => number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  const take = Math.min(k, n);
  for (let i = 0; i < take; i++) {
    const j = i + Math.floor(rand() * (n - i));
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, take).sort((a, b) => a - b);
}

function checkOptions(model: GradModel, o: TrainVectorOptions): void {
  residualSite(model.spec, o.site);
  const positive = (name: string, v: number, integer: boolean) => {
    if (!(v > 0) || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw new EmlensError(`${name} must be a positive ${integer ? 'integer' : 'number'}, not ${v}.`);
    }
  };
  positive('steps', o.steps, true);
  positive('lr', o.lr, false);
  positive('batch', o.batch, true);
  const w = o.klWeight ?? 0;
  if (!(w >= 0) || !Number.isFinite(w)) throw new EmlensError(`The KL weight must be >= 0, not ${w}.`);
  if (w > 0 && (o.klData?.length ?? 0) === 0) {
    throw new EmlensError('A KL weight above 0 needs KL data (texts); give --kl-data or set --kl-weight 0.');
  }
  if (o.data.length === 0) throw new EmlensError('The training data holds no records; give at least one.');
  const scored = o.data.some((r) => r.ids.length > 1 && (r.mask ? r.mask.subarray(1).some((x) => x) : true));
  if (!scored) {
    throw new EmlensError('No record of the training data has an answer token to predict; check the data.');
  }
  if (o.checkpoint) positive('The checkpoint interval', o.checkpoint.every, true);
}

/** CE rows: weight 1 on predicting each answer token (token p is predicted at position p - 1). */
function ceRow(r: TokenizedRecord): GradRow {
  const ce = Array.from({ length: r.ids.length - 1 }, (_, i) => (r.mask ? r.mask[i + 1]! : 1));
  return { ids: r.ids, ce };
}

/** KL rows: KL at every position but the last (whose prediction no token of the text follows). */
function klRow(r: TokenizedRecord): GradRow {
  const n = r.ids.length;
  return {
    ids: r.ids,
    ce: new Array(n - 1).fill(0),
    kl: Array.from({ length: n }, (_, i) => (i < n - 1 ? 1 : 0)),
  };
}

async function readCheckpoint(path: string): Promise<Checkpoint | null> {
  if ((await pathKind(path)) === 'none') return null;
  let parsed: Checkpoint;
  try {
    parsed = JSON.parse(await readFile(path, 'utf8')) as Checkpoint;
  } catch {
    throw new EmlensError(`Checkpoint ${path} is not valid JSON; remove it to start over.`);
  }
  if (parsed.format !== CHECKPOINT_FORMAT) {
    throw new EmlensError(`${path} is not a train-vector checkpoint; remove it or choose another --out.`);
  }
  return parsed;
}

export async function trainSteeringVector(
  model: GradModel,
  o: TrainVectorOptions,
): Promise<TrainVectorResult> {
  checkOptions(model, o);
  const d = model.spec.dModel;
  const klWeight = o.klWeight ?? 0;
  const klData = klWeight > 0 ? (o.klData ?? []) : [];
  const beta1 = o.adam?.beta1 ?? 0.9;
  const beta2 = o.adam?.beta2 ?? 0.999;
  const eps = o.adam?.eps ?? 1e-8;
  // what a checkpoint must agree with to be resumed
  const options: Record<string, unknown> = {
    site: o.site,
    klWeight,
    steps: o.steps,
    lr: o.lr,
    batch: o.batch,
    seed: o.seed,
    beta1,
    beta2,
    eps,
    nData: o.data.length,
    nKl: klData.length,
    dModel: d,
    ...(o.checkpoint?.identity ?? {}),
  };
  let step = 0;
  let x = new Float64Array(d);
  let m = new Float64Array(d);
  let v = new Float64Array(d);
  const history: StepLosses[] = [];
  if (o.checkpoint) {
    const found = await readCheckpoint(o.checkpoint.path);
    if (found && !o.checkpoint.resume) {
      throw new EmlensError(
        `${o.checkpoint.path} holds a checkpoint of an earlier run; pass --resume to continue it, or choose another --out.`,
      );
    }
    if (found) {
      const differs = Object.keys({ ...options, ...found.options }).filter(
        (k) => JSON.stringify(options[k]) !== JSON.stringify(found.options[k]),
      );
      if (differs.length > 0) {
        const k = differs[0]!;
        throw new EmlensError(
          `The checkpoint in ${o.checkpoint.path} was made with ${k} = ${JSON.stringify(found.options[k])}, not ${JSON.stringify(options[k])}; resume with the same options, or choose another --out.`,
        );
      }
      step = found.step;
      x = Float64Array.from(found.vector);
      m = Float64Array.from(found.m);
      v = Float64Array.from(found.v);
      history.push(...found.history);
    }
  }
  const resumedFrom = step;
  const seq = Math.max(...o.data.map((r) => r.ids.length), ...klData.map((r) => r.ids.length));
  const params = { steer: { sites: [o.site as ResidualHookName], shared: true } };
  const save = async () => {
    if (!o.checkpoint) return;
    const c: Checkpoint = {
      format: CHECKPOINT_FORMAT,
      options,
      step,
      vector: [...x],
      m: [...m],
      v: [...v],
      history,
    };
    await writeAtomic(o.checkpoint.path, JSON.stringify(c));
  };

  while (step < o.steps) {
    const rand = mulberry((o.seed * 1_000_003 + step) >>> 0);
    const rows = sample(o.data.length, o.batch, rand).map((i) => ceRow(o.data[i]!));
    if (klData.length > 0) rows.push(...sample(klData.length, o.batch, rand).map((i) => klRow(klData[i]!)));
    const res = await model.run(rows, {
      params,
      values: new Map([[PARAM.steer, x]]),
      seq,
      ...(klData.length > 0 ? { kl: { scale: klWeight } } : {}),
    });
    const g = res.grads.get(PARAM.steer)!;
    step++;
    const c1 = 1 - beta1 ** step;
    const c2 = 1 - beta2 ** step;
    for (let i = 0; i < d; i++) {
      const gi = g[i]!;
      m[i] = beta1 * m[i]! + (1 - beta1) * gi;
      v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi;
      x[i]! -= (o.lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + eps);
    }
    const losses = { loss: res.loss, ce: res.ce, kl: res.kl };
    history.push(losses);
    o.onStep?.(step, losses);
    if (o.checkpoint && (step % o.checkpoint.every === 0 || step === o.steps)) await save();
  }
  return { vector: Float32Array.from(x), history, resumedFrom };
}
