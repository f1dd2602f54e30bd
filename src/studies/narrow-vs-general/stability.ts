/**
 * Stability: how much of a direction's mediation survives random perturbations of the direction. Each layer's
 * vector gets isotropic Gaussian noise of a given norm relative to its own (0.1, 0.25, 0.5, 1.0, ...), over
 * several seeds; the perturbed direction is ablated (and patched) in the finetune on its in-domain prompts, and
 * the fraction of KL(finetune || base) it removes is compared with the unperturbed direction's and with
 * norm-matched random directions'. Built on the library's {@link mediation}.
 */
import type { TokenizedRecord } from '../../data/record.js';
import { cosine, type DirectionSet, directionSet } from '../../directions/direction.js';
import { mediation } from '../../interventions/mediation.js';
import type { Model } from '../../model/model.js';
import { Rng } from '../../util/random.js';
import type { BenchDirection } from './mediation.js';
import type { Spread, StabilityCurve, StabilityPoint } from './types.js';

/**
 * The direction with noise added to each layer's vector: `v + noise * |v| * r`, with `r` a unit vector drawn
 * from a stream per (seed, label, layer), so it does not depend on which other layers the set holds.
 *
 * @example
 * perturbDirections(set, 0.5, 1, 'general'); // every layer moved by half its norm in a random direction
 */
export function perturbDirections(set: DirectionSet, noise: number, seed: number, label = ''): DirectionSet {
  const vectors: [number, Float32Array][] = [];
  for (const [layer, v] of set.vectors) {
    const rng = Rng.derive(seed, `perturb/${label}/direction.${layer}`);
    const r = new Float64Array(v.length);
    let rr = 0;
    let vv = 0;
    // r has v's length, so every j below indexes both.
    for (let j = 0; j < r.length; j++) {
      r[j] = rng.normal();
      rr += r[j]! * r[j]!;
      vv += v[j]! * v[j]!;
    }
    const k = (noise * Math.sqrt(vv)) / Math.sqrt(rr);
    vectors.push([layer, Float32Array.from(v, (x, j) => x + k * r[j]!)]);
  }
  return directionSet(vectors, {
    ...set.meta,
    method: `${set.meta.method}+noise`,
    extra: { ...set.meta.extra, noise: String(noise), noise_seed: String(seed) },
  });
}

export interface StabilityOptions {
  readonly base: Model;
  readonly finetune: Model;
  readonly finetuneName: string;
  readonly direction: BenchDirection;
  readonly directionName: string;
  /** The finetune's in-domain prompts. */
  readonly records: readonly TokenizedRecord[];
  readonly layers: readonly number[];
  readonly steerLayer: number;
  readonly noise: readonly number[];
  readonly seeds: number;
  readonly minDivergence: number;
  readonly batchSize: number;
}

function spread(xs: readonly number[]): Spread {
  return {
    mean: xs.reduce((a, b) => a + b, 0) / xs.length,
    min: Math.min(...xs),
    max: Math.max(...xs),
  };
}

/**
 * Mediation (by ablation and by patch) of the perturbed direction at each noise level and seed; the random
 * control of seed s is a norm-matched random direction of that seed. A finetune that does not diverge from the
 * base on its own prompts gives an empty curve.
 */
export async function stability(opts: StabilityOptions): Promise<StabilityCurve> {
  const head = { direction: opts.directionName, finetune: opts.finetuneName };
  const run = (set: DirectionSet, seed: number) =>
    mediation({
      base: opts.base,
      finetune: opts.finetune,
      directions: set,
      records: opts.records,
      layers: opts.layers,
      steerLayer: opts.steerLayer,
      seed,
      minDivergence: opts.minDivergence,
      batchSize: opts.batchSize,
    });
  const set = opts.direction.set;
  const seedOf = (s: number) => opts.direction.randomSeed + 1000 * s;
  const first = await run(set, seedOf(0));
  if (!Number.isFinite(first.fractionMediated)) {
    return { ...head, unperturbed: null, random: null, points: [] };
  }
  const unperturbed = { ablated: first.fractionMediated, patched: first.patchedFractionMediated };
  const random = {
    ablated: [first.randomFractionMediated.mean],
    patched: [first.randomPatchedFractionMediated.mean],
  };
  const points: StabilityPoint[] = [];
  for (const [k, noise] of opts.noise.entries()) {
    const ablated: number[] = [];
    const patched: number[] = [];
    const cosines: number[] = [];
    for (let s = 0; s < opts.seeds; s++) {
      const p = perturbDirections(set, noise, s, opts.directionName);
      const r = await run(p, seedOf(s));
      ablated.push(r.fractionMediated);
      patched.push(r.patchedFractionMediated);
      // one control per seed (the first noise level's): the random spread is over seeds, not noise levels
      if (k === 0 && s > 0) {
        random.ablated.push(r.randomFractionMediated.mean);
        random.patched.push(r.randomPatchedFractionMediated.mean);
      }
      // p perturbs every layer of set.
      for (const [l, v] of set.vectors) cosines.push(cosine(v, p.vectors.get(l)!));
    }
    const a = spread(ablated);
    const b = spread(patched);
    const ratio = (x: number, of: number) => (Math.abs(of) > 1e-9 ? x / of : null);
    points.push({
      noise,
      ablated: a,
      patched: b,
      retainedAblated: ratio(a.mean, unperturbed.ablated),
      retainedPatched: ratio(b.mean, unperturbed.patched),
      cosine: cosines.reduce((x, y) => x + y, 0) / cosines.length,
    });
  }
  return {
    ...head,
    unperturbed,
    random: { ablated: spread(random.ablated), patched: spread(random.patched) },
    points,
  };
}
