import { EmlensError } from '../errors.js';
import { type ResidualHookSelector, resolveHooks, siteCount, siteOf } from './hooks.js';

/** Where in the current call an intervention applies: every position, or a `[batch, seq]` weight per token. */
export type PositionWeights = 'all' | Float32Array;

/** Add `scale * vector` to the residual stream at the given hooks. */
export interface Steer {
  readonly kind: 'steer';
  /** Residual hook names or patterns (`blocks.*.hook_resid_post`). */
  readonly hooks: readonly ResidualHookSelector[];
  readonly vector: Float32Array; // [d_model]
  readonly scale?: number;
  readonly positions?: PositionWeights;
}

/** Project the span of `directions` out of the residual stream at the given hooks. */
export interface Ablate {
  readonly kind: 'ablate';
  /** Residual hook names or patterns (`blocks.*.hook_resid_post`). */
  readonly hooks: readonly ResidualHookSelector[];
  /** One or more directions (rank k); they need not be normalised or orthogonal. */
  readonly directions: readonly Float32Array[]; // k x [d_model]
  readonly positions?: PositionWeights;
}

export type Intervention = Steer | Ablate;

/** Feeds for the graph's intervention inputs. */
export interface InterventionFeeds {
  readonly steerVectors: Float32Array; // [sites, d]
  readonly steerMask: Float32Array; // [sites, batch, seq]
  readonly ablateBasis: Float32Array; // [sites, rank, d]
  readonly ablateMask: Float32Array; // [sites, batch, seq]
  readonly rank: number;
}

/** Gram–Schmidt in float64; drops directions already in the span (or zero). */
export function orthonormalize(vectors: readonly Float32Array[]): Float64Array[] {
  const basis: Float64Array[] = [];
  for (const v of vectors) {
    const u = Float64Array.from(v);
    for (let pass = 0; pass < 2; pass++) {
      // two passes: classical Gram–Schmidt loses orthogonality in float arithmetic, twice is enough
      for (const b of basis) {
        let dot = 0;
        for (let i = 0; i < u.length; i++) dot += u[i] * b[i];
        for (let i = 0; i < u.length; i++) u[i] -= dot * b[i];
      }
    }
    let norm = 0;
    for (let i = 0; i < u.length; i++) norm += u[i] * u[i];
    norm = Math.sqrt(norm);
    const ref = Math.sqrt(v.reduce((a, x) => a + x * x, 0));
    if (norm <= 1e-6 * Math.max(ref, 1e-30)) continue;
    for (let i = 0; i < u.length; i++) u[i] /= norm;
    basis.push(u);
  }
  return basis;
}

function positionMask(p: PositionWeights | undefined, batch: number, seq: number): Float32Array {
  if (p === undefined || p === 'all') return new Float32Array(batch * seq).fill(1);
  if (p.length !== batch * seq) {
    throw new EmlensError(
      `An intervention's position weights have ${p.length} entries but this call has batch ${batch} x seq ${seq}; pass one weight per token.`,
    );
  }
  return p;
}

function sameMask(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Turns a list of interventions into the graph's feeds for one call of shape [batch, seq]. At each site the
 * ablations are applied first (the span of all their directions is removed), then the steering vectors added.
 */
export function interventionFeeds(
  interventions: readonly Intervention[],
  numLayers: number,
  dModel: number,
  batch: number,
  seq: number,
): InterventionFeeds {
  const sites = siteCount(numLayers);
  const bs = batch * seq;
  const steerVectors = new Float32Array(sites * dModel);
  const steerMask = new Float32Array(sites * bs);
  const steerMaskSet = new Map<number, Float32Array>();
  const ablateDirs = new Map<number, { dirs: Float32Array[]; mask: Float32Array }>();

  for (const iv of interventions) {
    const hooks = resolveHooks(iv.hooks, numLayers);
    const mask = positionMask(iv.positions, batch, seq);
    if (iv.kind === 'steer') {
      if (iv.vector.length !== dModel) {
        throw new EmlensError(
          `A steering vector has ${iv.vector.length} entries but the model's d_model is ${dModel}; use a direction computed on this model.`,
        );
      }
      const scale = iv.scale ?? 1;
      for (const h of hooks) {
        const site = siteOf(h, numLayers);
        const prev = steerMaskSet.get(site);
        if (prev && !sameMask(prev, mask)) {
          throw new EmlensError(
            `Two steering vectors at ${h} apply at different positions; combine them into one vector or use the same positions.`,
          );
        }
        steerMaskSet.set(site, mask);
        steerMask.set(mask, site * bs);
        for (let i = 0; i < dModel; i++) steerVectors[site * dModel + i] += scale * iv.vector[i];
      }
    } else {
      for (const d of iv.directions) {
        if (d.length !== dModel) {
          throw new EmlensError(
            `An ablation direction has ${d.length} entries but the model's d_model is ${dModel}; use a direction computed on this model.`,
          );
        }
      }
      for (const h of hooks) {
        const site = siteOf(h, numLayers);
        const prev = ablateDirs.get(site);
        if (prev && !sameMask(prev.mask, mask)) {
          throw new EmlensError(
            `Two ablations at ${h} apply at different positions; ablate their directions together or use the same positions.`,
          );
        }
        ablateDirs.set(site, { dirs: [...(prev?.dirs ?? []), ...iv.directions], mask });
      }
    }
  }

  const bases = new Map<number, Float64Array[]>();
  for (const [site, { dirs }] of ablateDirs) bases.set(site, orthonormalize(dirs));
  const rank = Math.max(1, ...[...bases.values()].map((b) => b.length));
  const ablateBasis = new Float32Array(sites * rank * dModel);
  const ablateMask = new Float32Array(sites * bs);
  for (const [site, basis] of bases) {
    basis.forEach((u, r) => {
      ablateBasis.set(u, (site * rank + r) * dModel);
    });
    ablateMask.set(ablateDirs.get(site)!.mask, site * bs);
  }
  return { steerVectors, steerMask, ablateBasis, ablateMask, rank };
}
