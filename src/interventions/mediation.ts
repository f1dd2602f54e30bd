import { type DirectionSet, directionLayers, norm, normMatchedRandom } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import type { Model } from '../model/model.js';
import {
  type AblateSpec,
  ablateInterventions,
  checkDirectionsFit,
  type LayerSelection,
  type SourceLayers,
  selectLayers,
  siteDirections,
  steerInterventions,
} from './compose.js';
import { checkRecords, type EvalOptions, evaluatePlan, logprobMargin, type ScoredRecord } from './scoring.js';

export interface MediationOptions extends EvalOptions {
  readonly base: Model;
  readonly finetune: Model;
  readonly directions: DirectionSet;
  /** Prompt/response records (answer tokens scored; labels give the margins). */
  readonly records: readonly ScoredRecord[];
  /** Neutral text for the side effects (optional). */
  readonly neutral?: readonly ScoredRecord[];
  /** Layers whose residual sites lose the direction (default 'all'). */
  readonly layers?: LayerSelection;
  /** Which layer's vector is ablated at each site (default: each layer its own; one vector per site). */
  readonly from?: 'own' | number;
  /** The layer whose `hook_resid_post` the base is steered at (default: the middle layer of the set). */
  readonly steerLayer?: number;
  /** Steering scale on the stored (unnormalised) vector (default 1). */
  readonly steerScale?: number;
  /** Seed of the norm-matched random control (default 0). */
  readonly seed?: number;
  /** Short description of the direction for the report (e.g. its file). */
  readonly label?: string;
  /** Below this KL(finetune || base) (nats per token, default 1e-3) the fractions are NaN: nothing to mediate. */
  readonly minDivergence?: number;
}

export interface MediationMargins {
  readonly base: number;
  readonly finetune: number;
  readonly finetuneAblated: number;
  readonly finetuneRandomAblated: number;
  readonly finetunePatched: number;
  readonly baseSteered: number;
  readonly baseRandomSteered: number;
}

export interface SideEffects {
  /** Scored neutral positions. */
  readonly positions: number;
  /** KL(base+ablate || base). */
  readonly ablateBase: number;
  readonly randomAblateBase: number;
  /** KL(finetune+ablate || finetune). */
  readonly ablateFinetune: number;
  readonly randomAblateFinetune: number;
  /** KL(base+steer || base). */
  readonly steerBase: number;
  readonly randomSteerBase: number;
}

export interface MediationReport {
  readonly direction: string;
  readonly records: number;
  readonly positions: number;
  readonly ablate: { readonly layers: readonly number[]; readonly from: SourceLayers };
  readonly steer: { readonly layer: number; readonly scale: number; readonly norm: number };
  readonly seed: number;
  /** Fractions are NaN (n/a) when KL(finetune || base) is below this: there is nothing to mediate. */
  readonly minDivergence: number;
  /** Mean KL over answer positions, nats per token. */
  readonly kl: {
    /** KL(finetune || base): what there is to explain. */
    readonly finetuneBase: number;
    /** KL(finetune+ablate || base). */
    readonly ablatedBase: number;
    readonly randomAblatedBase: number;
    /** KL(finetune+patch || base): the finetune with its component along the direction set to the base's. */
    readonly patchedBase: number;
    readonly randomPatchedBase: number;
    /** KL(base+ablate || base): what the ablation does to the base itself on these records. */
    readonly baseAblatedBase: number;
    readonly baseRandomAblatedBase: number;
    /** KL(finetune || base+steer). */
    readonly finetuneSteered: number;
    readonly finetuneRandomSteered: number;
  };
  /** 1 - KL(finetune+ablate || base) / KL(finetune || base). */
  readonly fractionMediated: number;
  readonly randomFractionMediated: number;
  /**
   * 1 - KL(finetune+patch || base) / KL(finetune || base), where the patch sets the finetune's component along
   * the direction, at every ablated site and token, to the base's (an interchange intervention): it removes the
   * finetune's change along the direction without removing the base's own use of it, which plain ablation
   * also removes (`kl.baseAblatedBase`).
   */
  readonly patchedFractionMediated: number;
  readonly randomPatchedFractionMediated: number;
  /** 1 - KL(finetune || base+steer) / KL(finetune || base). */
  readonly steeringClosed: number;
  readonly randomSteeringClosed: number;
  readonly margins: MediationMargins | null;
  readonly sideEffects: SideEffects | null;
}

/** The middle layer the set holds (steering default). */
export function middleLayer(set: DirectionSet): number {
  const layers = directionLayers(set);
  return layers[Math.floor((layers.length - 1) / 2)];
}

/**
 * How much of the finetune's divergence from the base a direction mediates, with a norm-matched random
 * direction as a control (see the module comment for the definitions).
 *
 * @example
 * const r = await mediation({ base, finetune, directions, records });
 * r.fractionMediated; // e.g. 0.97
 * r.randomFractionMediated; // e.g. 0.01
 */
export async function mediation(opts: MediationOptions): Promise<MediationReport> {
  const { base, finetune, directions } = opts;
  const spec = base.spec;
  if (finetune.spec.dModel !== spec.dModel || finetune.spec.numLayers !== spec.numLayers) {
    throw new EmlensError(
      'The finetune and the base have different shapes; load the finetune as the base plus its adapter.',
    );
  }
  checkDirectionsFit(directions, spec);
  checkRecords(opts.records, 'prompt/response');
  if (opts.neutral) checkRecords(opts.neutral, 'neutral');
  const seed = opts.seed ?? 0;
  const random = normMatchedRandom(directions, seed);
  const layers = selectLayers(opts.layers ?? 'all', spec.numLayers);
  const from = opts.from ?? 'own';
  const ablateSpec: AblateSpec = { layers, from };
  const ablate = ablateInterventions(directions, spec, ablateSpec);
  const ablateRandom = ablateInterventions(random, spec, ablateSpec);
  const patchSites = siteDirections(directions, spec, ablateSpec);
  const randomPatchSites = siteDirections(random, spec, ablateSpec);
  const steerLayer = opts.steerLayer ?? middleLayer(directions);
  const steerScale = opts.steerScale ?? 1;
  const steerSpec = { layers: [steerLayer], scale: steerScale };
  const steer = steerInterventions(directions, spec, steerSpec);
  const steerRandom = steerInterventions(random, spec, steerSpec);

  const conditions = [
    { name: 'base', model: base },
    { name: 'finetune', model: finetune },
    { name: 'finetune+ablate', model: finetune, interventions: ablate },
    { name: 'finetune+random-ablate', model: finetune, interventions: ablateRandom },
    { name: 'finetune+patch', model: finetune, patch: { source: 'base', sites: patchSites } },
    { name: 'finetune+random-patch', model: finetune, patch: { source: 'base', sites: randomPatchSites } },
    { name: 'base+ablate', model: base, interventions: ablate },
    { name: 'base+random-ablate', model: base, interventions: ablateRandom },
    { name: 'base+steer', model: base, interventions: steer },
    { name: 'base+random-steer', model: base, interventions: steerRandom },
  ];
  const main = await evaluatePlan(
    {
      conditions,
      pairs: [
        ['finetune', 'base'],
        ['finetune+ablate', 'base'],
        ['finetune+random-ablate', 'base'],
        ['finetune+patch', 'base'],
        ['finetune+random-patch', 'base'],
        ['base+ablate', 'base'],
        ['base+random-ablate', 'base'],
        ['finetune', 'base+steer'],
        ['finetune', 'base+random-steer'],
      ],
      logprobs: [
        'base',
        'finetune',
        'finetune+ablate',
        'finetune+random-ablate',
        'finetune+patch',
        'base+steer',
        'base+random-steer',
      ],
    },
    opts.records,
    { batchSize: opts.batchSize, onProgress: opts.onProgress },
  );
  const kl = (a: string, b: string) => main.kl.get(`${a}||${b}`)!;
  const total = kl('finetune', 'base');
  const minDivergence = opts.minDivergence ?? 1e-3;
  const fraction = (rest: number) => (total >= minDivergence ? 1 - rest / total : Number.NaN);

  const margin = (name: string) => logprobMargin(main.logprob.get(name)!, opts.records);
  const baseMargin = margin('base');
  const margins: MediationMargins | null =
    baseMargin === null
      ? null
      : {
          base: baseMargin,
          finetune: margin('finetune')!,
          finetuneAblated: margin('finetune+ablate')!,
          finetuneRandomAblated: margin('finetune+random-ablate')!,
          finetunePatched: margin('finetune+patch')!,
          baseSteered: margin('base+steer')!,
          baseRandomSteered: margin('base+random-steer')!,
        };

  let sideEffects: SideEffects | null = null;
  if (opts.neutral) {
    const side = await evaluatePlan(
      {
        conditions: [
          { name: 'base', model: base },
          { name: 'base+ablate', model: base, interventions: ablate },
          { name: 'base+random-ablate', model: base, interventions: ablateRandom },
          { name: 'base+steer', model: base, interventions: steer },
          { name: 'base+random-steer', model: base, interventions: steerRandom },
          { name: 'finetune', model: finetune },
          { name: 'finetune+ablate', model: finetune, interventions: ablate },
          { name: 'finetune+random-ablate', model: finetune, interventions: ablateRandom },
        ],
        pairs: [
          ['base+ablate', 'base'],
          ['base+random-ablate', 'base'],
          ['base+steer', 'base'],
          ['base+random-steer', 'base'],
          ['finetune+ablate', 'finetune'],
          ['finetune+random-ablate', 'finetune'],
        ],
        logprobs: [],
      },
      opts.neutral,
      { batchSize: opts.batchSize },
    );
    const s = (a: string, b: string) => side.kl.get(`${a}||${b}`)!;
    sideEffects = {
      positions: side.positions,
      ablateBase: s('base+ablate', 'base'),
      randomAblateBase: s('base+random-ablate', 'base'),
      ablateFinetune: s('finetune+ablate', 'finetune'),
      randomAblateFinetune: s('finetune+random-ablate', 'finetune'),
      steerBase: s('base+steer', 'base'),
      randomSteerBase: s('base+random-steer', 'base'),
    };
  }

  const v = directions.vectors.get(steerLayer)!;
  return {
    direction: opts.label ?? `${directions.meta.method} (${directions.meta.model})`,
    records: opts.records.length,
    positions: main.positions,
    ablate: { layers, from },
    steer: { layer: steerLayer, scale: steerScale, norm: norm(v) },
    seed,
    minDivergence,
    kl: {
      finetuneBase: total,
      ablatedBase: kl('finetune+ablate', 'base'),
      randomAblatedBase: kl('finetune+random-ablate', 'base'),
      patchedBase: kl('finetune+patch', 'base'),
      randomPatchedBase: kl('finetune+random-patch', 'base'),
      baseAblatedBase: kl('base+ablate', 'base'),
      baseRandomAblatedBase: kl('base+random-ablate', 'base'),
      finetuneSteered: kl('finetune', 'base+steer'),
      finetuneRandomSteered: kl('finetune', 'base+random-steer'),
    },
    fractionMediated: fraction(kl('finetune+ablate', 'base')),
    randomFractionMediated: fraction(kl('finetune+random-ablate', 'base')),
    patchedFractionMediated: fraction(kl('finetune+patch', 'base')),
    randomPatchedFractionMediated: fraction(kl('finetune+random-patch', 'base')),
    steeringClosed: fraction(kl('finetune', 'base+steer')),
    randomSteeringClosed: fraction(kl('finetune', 'base+random-steer')),
    margins,
    sideEffects,
  };
}
