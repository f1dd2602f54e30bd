/**
 * The cross-mediation matrix: every direction X ablated (and patched) in every finetune Y, on Y's in-domain
 * and out-of-domain prompts, as the fraction of Y's divergence from the base it removes, each beside X's
 * norm-matched random control. Built on the library's {@link mediation}.
 */

import type { TokenizedRecord } from '../../data/record.js';
import type { DirectionSet } from '../../directions/direction.js';
import { type MediationReport, mediation } from '../../interventions/mediation.js';
import { divergence } from '../../interventions/scoring.js';
import type { Model } from '../../model/model.js';
import type { CrossCell, Fraction } from './types.js';

/** Prompts a finetune is measured on, and the response sets (domains) they come from. */
export interface PromptSet {
  readonly domains: readonly string[];
  readonly records: readonly TokenizedRecord[];
}

/**
 * A direction and the user seed of its norm-matched random control (the study draws one control per
 * direction, so its tables' random columns are single draws, n=1; the control's own seed also derives from
 * the direction's content, so no two directions share a draw).
 */
export interface BenchDirection {
  readonly set: DirectionSet;
  readonly randomSeed: number;
}

export interface CrossMediationOptions {
  readonly base: Model;
  readonly finetunes: ReadonlyMap<string, Model>;
  /** By name; a direction's own finetune is the finetune of the same name. */
  readonly directions: ReadonlyMap<string, BenchDirection>;
  /** Per finetune: in-domain prompts, and out-of-domain prompts (null when there are none). */
  readonly prompts: ReadonlyMap<string, { readonly in: PromptSet; readonly out: PromptSet | null }>;
  /** Neutral text: the side effects of each direction, measured in its own finetune's in-domain cell. */
  readonly neutral: readonly TokenizedRecord[];
  readonly layers: readonly number[];
  readonly steerLayer: number;
  readonly minDivergence: number;
  readonly batchSize: number;
  readonly onProgress?: (message: string) => void;
}

export interface CrossMediationResult {
  readonly cells: readonly CrossCell[];
  /** Each direction's report in its own finetune on in-domain prompts (with side effects), by direction. */
  readonly own: ReadonlyMap<string, MediationReport>;
}

const orNull = (x: number): Fraction => (Number.isFinite(x) ? x : null);

/**
 * Measures every direction x finetune x {in, out} cell. A cell whose finetune does not diverge from the base
 * there (KL below `minDivergence`) is reported with its divergence and null fractions: there is nothing to
 * mediate.
 */
export async function crossMediation(opts: CrossMediationOptions): Promise<CrossMediationResult> {
  const cells: CrossCell[] = [];
  const own = new Map<string, MediationReport>();
  const kls = new Map<string, number>();
  // Every finetune has its prompts, and kls gets every (finetune, in/out) set there is, before it is read.
  for (const [y, model] of opts.finetunes) {
    const p = opts.prompts.get(y)!;
    for (const [which, set] of [
      ['in', p.in],
      ['out', p.out],
    ] as const) {
      if (set)
        kls.set(
          `${y}/${which}`,
          (await divergence(model, opts.base, set.records, { batchSize: opts.batchSize })).kl,
        );
    }
  }
  for (const [x, dir] of opts.directions) {
    for (const [y, model] of opts.finetunes) {
      const p = opts.prompts.get(y)!;
      for (const [which, set] of [
        ['in', p.in],
        ['out', p.out],
      ] as const) {
        if (!set) continue;
        const kl = kls.get(`${y}/${which}`)!;
        const cell = {
          direction: x,
          finetune: y,
          prompts: which,
          domains: set.domains,
          records: set.records.length,
        };
        if (kl < opts.minDivergence) {
          cells.push({
            ...cell,
            divergence: kl,
            ablated: null,
            randomAblated: null,
            patched: null,
            randomPatched: null,
            ablationOnBase: null,
            randomAblationOnBase: null,
          });
          continue;
        }
        const isOwn = x === y && which === 'in';
        const r = await mediation({
          base: opts.base,
          finetune: model,
          directions: dir.set,
          records: set.records,
          neutral: isOwn ? opts.neutral : undefined,
          layers: opts.layers,
          steerLayer: opts.steerLayer,
          seed: dir.randomSeed,
          minDivergence: opts.minDivergence,
          batchSize: opts.batchSize,
          label: `${x} direction in the ${y} finetune, ${which}-domain prompts`,
        });
        if (isOwn) own.set(x, r);
        cells.push({
          ...cell,
          divergence: r.kl.finetuneBase,
          ablated: orNull(r.fractionMediated),
          randomAblated: orNull(r.randomFractionMediated.mean),
          patched: orNull(r.patchedFractionMediated),
          randomPatched: orNull(r.randomPatchedFractionMediated.mean),
          ablationOnBase: r.kl.baseAblatedBase,
          randomAblationOnBase: r.kl.baseRandomAblatedBase.mean,
        });
      }
    }
    opts.onProgress?.(`cross-mediation: ${x} direction done`);
  }
  return { cells, own };
}
