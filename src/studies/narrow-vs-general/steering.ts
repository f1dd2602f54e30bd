/**
 * Steering efficiency: the base steered along a direction (and its norm-matched random control) at one layer
 * over a range of scales, toward a finetune; the behaviour change per unit of added norm: the fraction of
 * KL(finetune || base) closed, the misaligned-vs-aligned log-prob margin gained, and the side effect on neutral
 * text. Built on the library's {@link steeringSweep}.
 */
import type { TokenizedRecord } from '../../data/record.js';
import { norm } from '../../directions/direction.js';
import { directionAt } from '../../interventions/compose.js';
import { type SweepRow, steeringSweep } from '../../interventions/sweep.js';
import type { Model } from '../../model/model.js';
import type { BenchDirection } from './mediation.js';
import type { SteeringCurve, SteeringPoint } from './types.js';

export interface SteeringEfficiencyOptions {
  readonly base: Model;
  /** The finetune steered toward, and its name. */
  readonly finetune: Model;
  readonly finetuneName: string;
  readonly direction: BenchDirection;
  readonly directionName: string;
  readonly layer: number;
  readonly scales: readonly number[];
  /** The finetune's in-domain prompts (labelled, for the margin). */
  readonly records: readonly TokenizedRecord[];
  readonly neutral: readonly TokenizedRecord[];
  readonly batchSize: number;
}

const per = (x: number | null, by: number, min = 1e-12): number | null =>
  x === null || !(Math.abs(by) > min) ? null : x / by;

/** One steering curve (direction and random control) with its efficiencies. */
export async function steeringEfficiency(opts: SteeringEfficiencyOptions): Promise<SteeringCurve> {
  const sweep = await steeringSweep({
    model: opts.base,
    target: opts.finetune,
    directions: opts.direction.set,
    layers: [opts.layer],
    scales: opts.scales,
    records: opts.records,
    neutral: opts.neutral,
    seed: opts.direction.randomSeed,
    batchSize: opts.batchSize,
  });
  const vNorm = norm(directionAt(opts.direction.set, opts.layer));
  // The sweep has a target, so every row has a KL to it.
  const kl0 = sweep.baseline.klToTarget!;
  const m0 = sweep.baseline.margin;
  const point = (row: SweepRow): SteeringPoint => {
    const addedNorm = Math.abs(row.scale) * vNorm;
    const kl = row.klToTarget!;
    const klClosed = kl0 > 0 ? 1 - kl / kl0 : 0;
    const marginGain = row.margin === null || m0 === null ? null : row.margin - m0;
    return {
      vector: row.vector,
      scale: row.scale,
      addedNorm,
      kl,
      klClosed,
      klClosedPerNorm: per(klClosed, addedNorm),
      margin: row.margin,
      marginGain,
      marginGainPerNorm: per(marginGain, addedNorm),
      sideEffect: row.sideEffect,
      sideEffectPerKlClosed: klClosed > 0.05 ? per(row.sideEffect, klClosed) : null,
    };
  };
  const points = sweep.rows.map(point);
  const steered = points.filter((p) => p.vector === 'direction' && p.scale !== 0);
  const bestPoint = steered.reduce<SteeringPoint | null>(
    (b, p) => (b === null || p.klClosed > b.klClosed ? p : b),
    null,
  );
  const refPoint = steered.reduce<SteeringPoint | null>(
    (b, p) => (p.scale > 0 && (b === null || Math.abs(p.scale - 1) < Math.abs(b.scale - 1)) ? p : b),
    null,
  );
  const withRandom = (p: SteeringPoint | null) =>
    p === null
      ? null
      : // the sweep has a random row at every scale it has a direction row at
        { direction: p, random: points.find((q) => q.vector === 'random' && q.scale === p.scale)! };
  return {
    direction: opts.directionName,
    finetune: opts.finetuneName,
    layer: opts.layer,
    norm: vNorm,
    baselineKl: kl0,
    baselineMargin: m0,
    finetuneMargin: sweep.targetMargin,
    points,
    best: withRandom(bestPoint),
    reference: withRandom(refPoint),
  };
}
