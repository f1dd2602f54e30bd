/**
 * What `train-vector` leaves in its output folder: the trained vector as a direction file (the format every
 * direction command reads) with its provenance, and train.json with the options and the loss of every step.
 */
import { join } from 'node:path';
import { type DirectionSet, directionSet, saveDirections } from '../directions/direction.js';
import { writeAtomic } from '../io/files.js';
import type { TrainVectorResult } from './train.js';

export const TRAIN_FILES = {
  direction: 'direction.safetensors',
  log: 'train.json',
  checkpoint: 'checkpoint.json',
} as const;

export interface TrainProvenance {
  readonly model: string;
  readonly adapter?: string;
  readonly site: string;
  readonly data: string;
  readonly klData?: string;
  readonly klWeight: number;
  readonly steps: number;
  readonly lr: number;
  readonly batch: number;
  readonly seed: number;
  readonly nData: number;
  readonly nKl: number;
}

/** The trained vector as a one-layer direction set at the site's block and hook, provenance in its metadata. */
export function trainedDirection(result: TrainVectorResult, p: TrainProvenance): DirectionSet {
  const [, layer, hook] = /^blocks\.(\d+)\.(hook_resid_\w+)$/.exec(p.site) ?? [];
  const last = result.history[result.history.length - 1];
  return directionSet([[Number(layer), result.vector]], {
    model: p.model,
    hook: hook ?? p.site,
    method: 'trained_steering_vector',
    positions: 'all',
    nPos: p.nData,
    nNeg: p.nKl,
    sourcePos: p.data,
    sourceNeg: p.klData ?? 'none',
    extra: {
      site: p.site,
      ...(p.adapter ? { adapter: p.adapter } : {}),
      kl_weight: String(p.klWeight),
      steps: String(p.steps),
      lr: String(p.lr),
      batch: String(p.batch),
      seed: String(p.seed),
      final_loss: String(last?.loss ?? Number.NaN),
      final_ce: String(last?.ce ?? Number.NaN),
      final_kl: String(last?.kl ?? Number.NaN),
    },
  });
}

/** Writes direction.safetensors and train.json into `dir` (each atomically). */
export async function writeTrainOutput(
  dir: string,
  result: TrainVectorResult,
  p: TrainProvenance,
): Promise<void> {
  await saveDirections(join(dir, TRAIN_FILES.direction), trainedDirection(result, p), { overwrite: true });
  await writeAtomic(
    join(dir, TRAIN_FILES.log),
    `${JSON.stringify({ provenance: p, resumedFrom: result.resumedFrom, history: result.history }, null, 2)}\n`,
  );
}
