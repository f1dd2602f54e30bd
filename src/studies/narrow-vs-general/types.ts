/**
 * The narrow-vs-general study's result: plain data, written as JSON (NaN as null) and read by the report,
 * the plots and `npm run bench`'s summary.
 */
import type { Comparison } from '../../eval/metrics.js';

/** Fractions are `null` where the finetune does not diverge from the base (nothing to mediate). */
export type Fraction = number | null;

export interface DirectionInfo {
  /** The finetune it was computed from (directions are named by their finetune). */
  readonly name: string;
  readonly domain: string;
  readonly kind: 'general' | 'narrow';
  readonly layers: readonly number[];
  /** L2 norm per layer. */
  readonly norms: readonly number[];
  readonly misaligned: number;
  readonly aligned: number;
  /** Seed of its norm-matched random control. */
  readonly randomSeed: number;
  /** Cosine per layer with the planted direction (synthetic organisms only). */
  readonly plantedCosine: readonly number[] | null;
}

/** Cosine similarity of every pair of directions (and random controls) at every layer. */
export interface CosineResult {
  readonly layers: readonly number[];
  readonly pairs: readonly {
    readonly a: string;
    readonly b: string;
    readonly cosines: readonly number[];
    readonly meanAbsCosine: number;
  }[];
}

/** One cell of the cross-mediation matrix: direction X ablated (or patched) in finetune Y on a prompt set. */
export interface CrossCell {
  readonly direction: string;
  readonly finetune: string;
  readonly prompts: 'in' | 'out';
  /** Response sets (domains) the prompts come from. */
  readonly domains: readonly string[];
  readonly records: number;
  /** KL(Y || base) per answer token: what there is to mediate. */
  readonly divergence: number;
  /** 1 - KL(Y+ablate X || base) / KL(Y || base). */
  readonly ablated: Fraction;
  readonly randomAblated: Fraction;
  /** The same with Y's component along X set to the base's (an interchange patch). */
  readonly patched: Fraction;
  readonly randomPatched: Fraction;
  /** KL(base+ablate X || base): the ablation's own effect on the base on these prompts. */
  readonly ablationOnBase: number | null;
  readonly randomAblationOnBase: number | null;
}

/** One point of a steering curve: the base steered along a direction (or its random control) at one scale. */
export interface SteeringPoint {
  readonly vector: 'direction' | 'random';
  readonly scale: number;
  /** |scale| x |v_L|: the norm added to the residual stream at each position. */
  readonly addedNorm: number;
  /** KL(finetune || base+steer). */
  readonly kl: number;
  /** 1 - KL(finetune || base+steer) / KL(finetune || base). */
  readonly klClosed: number;
  readonly klClosedPerNorm: number | null;
  /** Misaligned - aligned log-prob margin of the steered base. */
  readonly margin: number | null;
  /** Margin minus the unsteered base's. */
  readonly marginGain: number | null;
  readonly marginGainPerNorm: number | null;
  /** KL(base+steer || base) on neutral text. */
  readonly sideEffect: number | null;
  /** Side effect per unit of KL closed (null where none is closed). */
  readonly sideEffectPerKlClosed: number | null;
}

export interface SteeringCurve {
  readonly direction: string;
  /** The finetune steered toward (its in-domain prompts). */
  readonly finetune: string;
  readonly layer: number;
  /** |v_L| of the direction (the random control has the same norm). */
  readonly norm: number;
  readonly baselineKl: number;
  readonly baselineMargin: number | null;
  readonly finetuneMargin: number | null;
  readonly points: readonly SteeringPoint[];
  /** The direction's point that closes the most KL (scale > 0), and the random control at that scale. */
  readonly best: { readonly direction: SteeringPoint; readonly random: SteeringPoint } | null;
  /** The point at the positive scale nearest 1 (the stored vector as it is), and its random control. */
  readonly reference: { readonly direction: SteeringPoint; readonly random: SteeringPoint } | null;
}

export interface Spread {
  readonly mean: number;
  readonly min: number;
  readonly max: number;
}

export interface StabilityPoint {
  /** Relative noise norm: |noise_L| / |v_L|. */
  readonly noise: number;
  /** Fraction of the finetune's in-domain divergence removed by ablating the perturbed direction, over seeds. */
  readonly ablated: Spread;
  /** The same by patching the base's component along it. */
  readonly patched: Spread;
  /** ablated.mean / the unperturbed direction's (null when that is 0). */
  readonly retainedAblated: number | null;
  readonly retainedPatched: number | null;
  /** Mean cosine (over layers and seeds) of the perturbed direction with the original. */
  readonly cosine: number;
}

export interface StabilityCurve {
  readonly direction: string;
  readonly finetune: string;
  /** Null where the finetune does not diverge from the base on its own prompts. */
  readonly unperturbed: { readonly ablated: number; readonly patched: number } | null;
  /** Norm-matched random directions (one per seed), ablated and patched the same way. */
  readonly random: { readonly ablated: Spread; readonly patched: Spread } | null;
  readonly points: readonly StabilityPoint[];
}

/** Side effects on neutral text, KL(model+intervention || model) per token, and per unit of mediation. */
export interface SideEffectRow {
  readonly direction: string;
  /** Its own finetune, in-domain prompts. */
  readonly finetune: string;
  readonly mediated: Fraction;
  readonly randomMediated: Fraction;
  readonly ablateBase: number;
  readonly randomAblateBase: number;
  readonly ablateFinetune: number;
  readonly randomAblateFinetune: number;
  /** ablateBase / mediated (null below 0.05 mediated). */
  readonly perUnitMediation: number | null;
  readonly randomPerUnitMediation: number | null;
  /** Steering at the best scale: side effect per unit of KL closed, direction and random. */
  readonly steerPerKlClosed: number | null;
  readonly randomSteerPerKlClosed: number | null;
}

/** The judged evaluation: EM rate and coherence per condition with bootstrap CIs (null without a judge). */
export interface EvalResult {
  readonly conditions: readonly { readonly name: string; readonly folder: string }[];
  readonly comparison: Comparison;
}

export interface NarrowVsGeneralResult {
  readonly benchmark: 'narrow-vs-general';
  readonly date: string;
  readonly seconds: number;
  readonly machine: { readonly cpus: number; readonly cpuModel?: string; readonly node: string };
  /** `synthetic` or the config file. */
  readonly source: string;
  readonly setup: {
    readonly base: string;
    readonly finetunes: readonly {
      readonly name: string;
      readonly domain: string;
      readonly kind: string;
      readonly adapter: string;
    }[];
    readonly layers: readonly number[];
    readonly steerLayer: number;
    readonly scales: readonly number[];
    readonly noise: readonly number[];
    readonly seeds: number;
    readonly minDivergence: number;
  };
  readonly directions: readonly DirectionInfo[];
  readonly cosine: CosineResult;
  readonly crossMediation: readonly CrossCell[];
  readonly steering: readonly SteeringCurve[];
  readonly stability: readonly StabilityCurve[];
  readonly sideEffects: readonly SideEffectRow[];
  readonly eval: EvalResult | null;
}
