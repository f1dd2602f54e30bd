import type { TokenizedRecord } from '../data/record.js';
import { type DirectionSet, directionLayers, norm } from '../directions/direction.js';
import {
  type ControlSpread,
  checkControlCount,
  controlSpread,
  directionSha256,
  randomControls,
} from '../directions/randomControl.js';
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
import { checkRecords, type EvalOptions, evaluatePlan, logprobMargin } from './scoring.js';

export interface MediationOptions extends EvalOptions {
  readonly base: Model;
  readonly finetune: Model;
  readonly directions: DirectionSet;
  /** Prompt/response records (answer tokens scored; labels give the margins). */
  readonly records: readonly TokenizedRecord[];
  /** Neutral text for the side effects (optional). */
  readonly neutral?: readonly TokenizedRecord[];
  /** Layers whose residual sites lose the direction (default 'all'). */
  readonly layers?: LayerSelection;
  /** Which layer's vector is ablated at each site (default: each layer its own; one vector per site). */
  readonly from?: 'own' | number;
  /** The layer whose `hook_resid_post` the base is steered at (default: the middle layer of the set). */
  readonly steerLayer?: number;
  /** Steering scale on the stored (unnormalised) vector (default 1). */
  readonly steerScale?: number;
  /** User seed of the norm-matched random controls (default 0); each control's own seed derives from it. */
  readonly seed?: number;
  /** How many norm-matched random controls (default 1); the report gives their mean and spread. */
  readonly randomControls?: number;
  /** Short description of the direction for the report (e.g. its file). */
  readonly label?: string;
  /** Below this KL(finetune || base) (nats per token, default 1e-3) the fractions are NaN: nothing to mediate. */
  readonly minDivergence?: number;
}

export interface MediationMargins {
  readonly base: number;
  readonly finetune: number;
  readonly finetuneAblated: number;
  readonly finetuneRandomAblated: ControlSpread;
  readonly finetunePatched: number;
  readonly baseSteered: number;
  readonly baseRandomSteered: ControlSpread;
}

export interface SideEffects {
  /** Scored neutral positions. */
  readonly positions: number;
  /** KL(base+ablate || base). */
  readonly ablateBase: number;
  readonly randomAblateBase: ControlSpread;
  /** KL(finetune+ablate || finetune). */
  readonly ablateFinetune: number;
  readonly randomAblateFinetune: ControlSpread;
  /** KL(base+steer || base). */
  readonly steerBase: number;
  readonly randomSteerBase: ControlSpread;
}

export interface MediationReport {
  readonly direction: string;
  readonly records: number;
  readonly positions: number;
  readonly ablate: { readonly layers: readonly number[]; readonly from: SourceLayers };
  readonly steer: { readonly layer: number; readonly scale: number; readonly norm: number };
  /** The user seed of the random controls. */
  readonly seed: number;
  /**
   * The norm-matched random controls: how many (`n`) and what they mimic. Every `random*` field is a
   * {@link ControlSpread} over these n controls (mean, sd, min, max, each control's value), not one draw.
   */
  readonly controls: {
    readonly n: number;
    readonly method: string;
    /** sha256 of the direction set they mimic (its layers and vector bytes). */
    readonly of: string;
  };
  /** Fractions are NaN (n/a) when KL(finetune || base) is below this: there is nothing to mediate. */
  readonly minDivergence: number;
  /** Mean KL over answer positions, nats per token. */
  readonly kl: {
    /** KL(finetune || base): what there is to explain. */
    readonly finetuneBase: number;
    /** KL(finetune+ablate || base). */
    readonly ablatedBase: number;
    readonly randomAblatedBase: ControlSpread;
    /** KL(finetune+patch || base): the finetune with its component along the direction set to the base's. */
    readonly patchedBase: number;
    readonly randomPatchedBase: ControlSpread;
    /** KL(base+ablate || base): what the ablation does to the base itself on these records. */
    readonly baseAblatedBase: number;
    readonly baseRandomAblatedBase: ControlSpread;
    /** KL(finetune || base+steer). */
    readonly finetuneSteered: number;
    readonly finetuneRandomSteered: ControlSpread;
  };
  /** 1 - KL(finetune+ablate || base) / KL(finetune || base). */
  readonly fractionMediated: number;
  readonly randomFractionMediated: ControlSpread;
  /**
   * 1 - KL(finetune+patch || base) / KL(finetune || base), where the patch sets the finetune's component along
   * the direction, at every ablated site and token, to the base's (an interchange intervention): it removes the
   * finetune's change along the direction without removing the base's own use of it, which plain ablation
   * also removes (`kl.baseAblatedBase`).
   */
  readonly patchedFractionMediated: number;
  readonly randomPatchedFractionMediated: ControlSpread;
  /** 1 - KL(finetune || base+steer) / KL(finetune || base). */
  readonly steeringClosed: number;
  readonly randomSteeringClosed: ControlSpread;
  readonly margins: MediationMargins | null;
  readonly sideEffects: SideEffects | null;
}

/** The middle layer the set holds (steering default). */
export function middleLayer(set: DirectionSet): number {
  const layers = directionLayers(set);
  return layers[Math.floor((layers.length - 1) / 2)]!; // a direction set holds at least one layer
}

/**
 * How much of the finetune's divergence from the base a direction mediates, beside `randomControls` (K,
 * default 1) norm-matched random directions measured the same way; every control figure is their mean and
 * spread over the K draws (a {@link ControlSpread}), never one draw presented as the control.
 *
 * @example
 * const r = await mediation({ base, finetune, directions, records, randomControls: 3, seed: 0 });
 * r.fractionMediated; // e.g. 0.97
 * r.randomFractionMediated; // e.g. { n: 3, mean: 0.01, sd: 0.004, min: 0.006, max: 0.014, values: [...] }
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
  const count = opts.randomControls ?? 1;
  checkControlCount(count);
  const randoms = randomControls(directions, count, { seed, name: opts.label });
  const layers = selectLayers(opts.layers ?? 'all', spec.numLayers);
  const from = opts.from ?? 'own';
  const ablateSpec: AblateSpec = { layers, from };
  const ablate = ablateInterventions(directions, spec, ablateSpec);
  const patchSites = siteDirections(directions, spec, ablateSpec);
  const steerLayer = opts.steerLayer ?? middleLayer(directions);
  const steerScale = opts.steerScale ?? 1;
  const steerSpec = { layers: [steerLayer], scale: steerScale };
  const steer = steerInterventions(directions, spec, steerSpec);
  // Control k's conditions are named `...+random{k}-...`; every control gets the same measurements.
  const controls = randoms.map((random, k) => ({
    tag: `random${k}`,
    ablate: ablateInterventions(random, spec, ablateSpec),
    patchSites: siteDirections(random, spec, ablateSpec),
    steer: steerInterventions(random, spec, steerSpec),
  }));
  const tags = controls.map((c) => c.tag);

  const conditions = [
    { name: 'base', model: base },
    { name: 'finetune', model: finetune },
    { name: 'finetune+ablate', model: finetune, interventions: ablate },
    { name: 'finetune+patch', model: finetune, patch: { source: 'base', sites: patchSites } },
    { name: 'base+ablate', model: base, interventions: ablate },
    { name: 'base+steer', model: base, interventions: steer },
    ...controls.flatMap((c) => [
      { name: `finetune+${c.tag}-ablate`, model: finetune, interventions: c.ablate },
      { name: `finetune+${c.tag}-patch`, model: finetune, patch: { source: 'base', sites: c.patchSites } },
      { name: `base+${c.tag}-ablate`, model: base, interventions: c.ablate },
      { name: `base+${c.tag}-steer`, model: base, interventions: c.steer },
    ]),
  ];
  const main = await evaluatePlan(
    {
      conditions,
      pairs: [
        ['finetune', 'base'],
        ['finetune+ablate', 'base'],
        ['finetune+patch', 'base'],
        ['base+ablate', 'base'],
        ['finetune', 'base+steer'],
        ...tags.flatMap((t): [string, string][] => [
          [`finetune+${t}-ablate`, 'base'],
          [`finetune+${t}-patch`, 'base'],
          [`base+${t}-ablate`, 'base'],
          ['finetune', `base+${t}-steer`],
        ]),
      ],
      logprobs: [
        'base',
        'finetune',
        'finetune+ablate',
        'finetune+patch',
        'base+steer',
        ...tags.flatMap((t) => [`finetune+${t}-ablate`, `base+${t}-steer`]),
      ],
    },
    opts.records,
    { batchSize: opts.batchSize, onProgress: opts.onProgress },
  );
  // kl, margin and s read pairs and log-probs the plans above asked for, so the entries are there.
  const kl = (a: string, b: string) => main.kl.get(`${a}||${b}`)!;
  const total = kl('finetune', 'base');
  const minDivergence = opts.minDivergence ?? 1e-3;
  const fraction = (rest: number) => (total >= minDivergence ? 1 - rest / total : Number.NaN);
  // One metric over the controls: `pick(tag)` is control tag's value.
  const over = (pick: (tag: string) => number) => controlSpread(tags.map(pick));

  const margin = (name: string) => logprobMargin(main.logprob.get(name)!, opts.records);
  // A margin is null only without both labels, the same for every condition: non-null past the base's.
  const baseMargin = margin('base');
  const margins: MediationMargins | null =
    baseMargin === null
      ? null
      : {
          base: baseMargin,
          finetune: margin('finetune')!,
          finetuneAblated: margin('finetune+ablate')!,
          finetuneRandomAblated: over((t) => margin(`finetune+${t}-ablate`)!),
          finetunePatched: margin('finetune+patch')!,
          baseSteered: margin('base+steer')!,
          baseRandomSteered: over((t) => margin(`base+${t}-steer`)!),
        };

  let sideEffects: SideEffects | null = null;
  if (opts.neutral) {
    const side = await evaluatePlan(
      {
        conditions: [
          { name: 'base', model: base },
          { name: 'base+ablate', model: base, interventions: ablate },
          { name: 'base+steer', model: base, interventions: steer },
          { name: 'finetune', model: finetune },
          { name: 'finetune+ablate', model: finetune, interventions: ablate },
          ...controls.flatMap((c) => [
            { name: `base+${c.tag}-ablate`, model: base, interventions: c.ablate },
            { name: `base+${c.tag}-steer`, model: base, interventions: c.steer },
            { name: `finetune+${c.tag}-ablate`, model: finetune, interventions: c.ablate },
          ]),
        ],
        pairs: [
          ['base+ablate', 'base'],
          ['base+steer', 'base'],
          ['finetune+ablate', 'finetune'],
          ...tags.flatMap((t): [string, string][] => [
            [`base+${t}-ablate`, 'base'],
            [`base+${t}-steer`, 'base'],
            [`finetune+${t}-ablate`, 'finetune'],
          ]),
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
      randomAblateBase: over((t) => s(`base+${t}-ablate`, 'base')),
      ablateFinetune: s('finetune+ablate', 'finetune'),
      randomAblateFinetune: over((t) => s(`finetune+${t}-ablate`, 'finetune')),
      steerBase: s('base+steer', 'base'),
      randomSteerBase: over((t) => s(`base+${t}-steer`, 'base')),
    };
  }

  const v = directions.vectors.get(steerLayer)!; // steerInterventions checked the set holds steerLayer
  return {
    direction: opts.label ?? `${directions.meta.method} (${directions.meta.model})`,
    records: opts.records.length,
    positions: main.positions,
    ablate: { layers, from },
    steer: { layer: steerLayer, scale: steerScale, norm: norm(v) },
    seed,
    // randomControls made count >= 1 controls.
    controls: { n: count, method: randoms[0]!.meta.method, of: directionSha256(directions) },
    minDivergence,
    kl: {
      finetuneBase: total,
      ablatedBase: kl('finetune+ablate', 'base'),
      randomAblatedBase: over((t) => kl(`finetune+${t}-ablate`, 'base')),
      patchedBase: kl('finetune+patch', 'base'),
      randomPatchedBase: over((t) => kl(`finetune+${t}-patch`, 'base')),
      baseAblatedBase: kl('base+ablate', 'base'),
      baseRandomAblatedBase: over((t) => kl(`base+${t}-ablate`, 'base')),
      finetuneSteered: kl('finetune', 'base+steer'),
      finetuneRandomSteered: over((t) => kl('finetune', `base+${t}-steer`)),
    },
    fractionMediated: fraction(kl('finetune+ablate', 'base')),
    randomFractionMediated: over((t) => fraction(kl(`finetune+${t}-ablate`, 'base'))),
    patchedFractionMediated: fraction(kl('finetune+patch', 'base')),
    randomPatchedFractionMediated: over((t) => fraction(kl(`finetune+${t}-patch`, 'base'))),
    steeringClosed: fraction(kl('finetune', 'base+steer')),
    randomSteeringClosed: over((t) => fraction(kl('finetune', `base+${t}-steer`))),
    margins,
    sideEffects,
  };
}
