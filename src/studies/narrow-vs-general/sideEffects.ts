/**
 * Side effects per unit of mediation: what ablating (or steering along) a direction does to ordinary text,
 * KL(model+intervention || model) on neutral text, divided by how much of the finetune's divergence it
 * mediates (or closes, for steering), each beside the norm-matched random control.
 */
import type { MediationReport } from '../../interventions/mediation.js';
import type { SideEffectRow, SteeringCurve } from './types.js';

/** Below this fraction mediated, a side effect is not divided by it (the ratio would mean nothing). */
export const MIN_MEDIATION_FOR_RATIO = 0.05;

const ratio = (kl: number, fraction: number): number | null =>
  Number.isFinite(fraction) && fraction >= MIN_MEDIATION_FOR_RATIO ? kl / fraction : null;

/**
 * The side-effect row of a direction from its mediation report in its own finetune (in-domain, measured with
 * neutral text) and its steering curve toward that finetune (null when there is none).
 */
export function sideEffectRow(
  direction: string,
  finetune: string,
  own: MediationReport,
  steering: SteeringCurve | null,
): SideEffectRow | null {
  const s = own.sideEffects;
  if (s === null) return null;
  const f = own.fractionMediated;
  // The study draws one control per direction (n=1): its mean is that draw.
  const rf = own.randomFractionMediated.mean;
  return {
    direction,
    finetune,
    mediated: Number.isFinite(f) ? f : null,
    randomMediated: Number.isFinite(rf) ? rf : null,
    ablateBase: s.ablateBase,
    randomAblateBase: s.randomAblateBase.mean,
    ablateFinetune: s.ablateFinetune,
    randomAblateFinetune: s.randomAblateFinetune.mean,
    perUnitMediation: ratio(s.ablateBase, f),
    randomPerUnitMediation: ratio(s.randomAblateBase.mean, rf),
    steerPerKlClosed: steering?.best?.direction.sideEffectPerKlClosed ?? null,
    randomSteerPerKlClosed: steering?.best?.random.sideEffectPerKlClosed ?? null,
  };
}
