import type { NdArray } from 'ndarray';
import { EmlensError } from '../errors.js';
import { type ResidualHookSelector, resolveHooks, siteCount, siteOf } from './hooks.js';
import type { Float32Tensor } from './tensor.js';

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

/**
 * Activation patching, as TransformerLens' hook that replaces an activation: at one hook, each token's value
 * `x` becomes `x + m * (values - x)` for its weight `m` in `positions` (1 replaces with `values`, 0 keeps `x`,
 * in between interpolates). The hook is a residual hook (`hook_resid_pre|mid|post`), `hook_attn_out` or
 * `hook_mlp_out` (patching those changes the residual write they feed, not the stream already there).
 *
 * At a residual site that also has an ablation or a steer, the order is ablate, steer, then patch: a fully
 * patched token holds exactly `values` (so a hook value recorded from another run patches back bit for bit),
 * and the ablation and steer act on the tokens the patch keeps.
 *
 * With a KV cache (`forward({ cache })`), `values` and `positions` cover the new tokens only. `generate` and
 * the server take `Intervention`s, which exclude patches (a patch needs values for positions not yet sampled).
 */
export interface Patch {
  readonly kind: 'patch';
  /** One hook name (not a pattern), e.g. `blocks.0.hook_resid_pre` or `blocks.1.hook_mlp_out`. */
  readonly hook: string;
  /**
   * `[batch, seq, d_model]`, laid out as this call's hook output (left padding included), e.g. the
   * same hook of a clean run: a `Float32Array`, a `Float32Tensor` or an ndarray view (`trace().cache.get`).
   */
  readonly values: Float32Array | Float32Tensor | NdArray<Float32Array>;
  /** `[batch, seq]` weight per token (see {@link positionWeights}); default every token. */
  readonly positions?: PositionWeights;
}

/** The edits that apply anywhere, generation included: steering and ablation. */
export type Intervention = Steer | Ablate;

/** What `forward` and `trace` accept: steering, ablation and activation patching. */
export type ForwardIntervention = Intervention | Patch;

/**
 * Patch sites: the residual sites (`siteOf`: 0 .. 2L), then `hook_attn_out` of each block (2L+1 .. 3L), then
 * `hook_mlp_out` of each block (3L+1 .. 4L).
 */
export function patchSiteCount(numLayers: number): number {
  return 4 * numLayers + 1;
}

/** The patch-site index of a hook, or an error naming the hooks that can be patched. */
export function patchSiteOf(hook: string, numLayers: number): number {
  const m = /^blocks\.(\d+)\.(hook_attn_out|hook_mlp_out)$/.exec(hook);
  if (m && Number(m[1]) < numLayers) {
    return (m[2] === 'hook_attn_out' ? 2 * numLayers + 1 : 3 * numLayers + 1) + Number(m[1]);
  }
  if (/^blocks\.\d+\.hook_resid_(pre|mid|post)$/.test(hook)) {
    try {
      return siteOf(hook, numLayers);
    } catch {
      // fall through to the patch-specific message
    }
  }
  throw new EmlensError(
    `Patches apply at one hook of blocks.{0..${numLayers - 1}} (hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out), not '${hook}'; name a single hook, not a pattern.`,
  );
}

/**
 * `[batch, seq]` position weights that are 1 at `positions` (indices into each row of this call, left padding
 * included) in every row, 0 elsewhere; negative indices count from the end (-1 is the last token).
 */
export function positionWeights(batch: number, seq: number, positions: readonly number[]): Float32Array {
  const w = new Float32Array(batch * seq);
  for (const p of positions) {
    const q = p < 0 ? seq + p : p;
    if (!Number.isInteger(q) || q < 0 || q >= seq) {
      throw new EmlensError(
        `Position ${p} is outside this call's ${seq} positions; use 0..${seq - 1} or -1..-${seq}.`,
      );
    }
    for (let b = 0; b < batch; b++) w[b * seq + q] = 1;
  }
  return w;
}

/** Feeds for the patch inputs of the patching graph. */
export interface PatchFeeds {
  /** `[patchSites]`: which `values` slot each patch site reads (unpatched sites read slot 0 with weight 0). */
  readonly slots: BigInt64Array;
  /** `[count, batch, seq, d]` */
  readonly values: Float32Array;
  /** `[patchSites, batch, seq]` */
  readonly mask: Float32Array;
  readonly count: number;
}

/** Feeds for the graph's intervention inputs. */
export interface InterventionFeeds {
  readonly steerVectors: Float32Array; // [sites, d]
  readonly steerMask: Float32Array; // [sites, batch, seq]
  readonly ablateBasis: Float32Array; // [sites, rank, d]
  readonly ablateMask: Float32Array; // [sites, batch, seq]
  readonly rank: number;
  /** Present when some intervention is a patch (the graph with patch inputs is then used). */
  readonly patch?: PatchFeeds;
}

/** A patch's values as one contiguous `[batch, seq, d]` buffer (the given one when it already is). */
function patchValues(p: Patch, batch: number, seq: number, d: number): Float32Array {
  const want = batch * seq * d;
  const v = p.values;
  let data: Float32Array;
  if (v instanceof Float32Array) data = v;
  else if ('dims' in v) data = v.data;
  else {
    const [n0 = 0, n1 = 0, n2 = 0] = v.shape; // the defaults are never read: both uses need 3 dims
    const [t0, t1, t2] = v.stride;
    const dense = v.shape.length === 3 && v.offset === 0 && t2 === 1 && t1 === n2 && t0 === n1 * n2;
    if (v.size !== want || v.shape.length !== 3) data = new Float32Array(v.size);
    else if (dense) data = v.data.length === want ? v.data : v.data.subarray(0, want);
    else {
      data = new Float32Array(want);
      let k = 0;
      for (let b = 0; b < n0; b++)
        for (let s = 0; s < n1; s++) for (let i = 0; i < n2; i++) data[k++] = v.get(b, s, i);
    }
  }
  if (data.length !== want) {
    throw new EmlensError(
      `The patch at ${p.hook} has ${data.length} values but this call needs batch ${batch} x seq ${seq} x d_model ${d} = ${want}; patch with the same hook of a run on inputs of the same shape.`,
    );
  }
  return data;
}

/** Gram–Schmidt in float64; drops directions already in the span (or zero). */
export function orthonormalize(vectors: readonly Float32Array[]): Float64Array[] {
  const basis: Float64Array[] = [];
  // Indices: i < u.length = v.length, and every basis vector is one of the vectors (callers pass directions
  // of one d_model), so i is in range of b too.
  for (const v of vectors) {
    const u = Float64Array.from(v);
    for (let pass = 0; pass < 2; pass++) {
      // two passes: classical Gram–Schmidt loses orthogonality in float arithmetic, twice is enough
      for (const b of basis) {
        let dot = 0;
        for (let i = 0; i < u.length; i++) dot += u[i]! * b[i]!;
        for (let i = 0; i < u.length; i++) u[i]! -= dot * b[i]!;
      }
    }
    let norm = 0;
    for (let i = 0; i < u.length; i++) norm += u[i]! * u[i]!;
    norm = Math.sqrt(norm);
    const ref = Math.sqrt(v.reduce((a, x) => a + x * x, 0));
    if (norm <= 1e-6 * Math.max(ref, 1e-30)) continue;
    for (let i = 0; i < u.length; i++) u[i]! /= norm;
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
 * ablations are applied first (the span of all their directions is removed), then the steering vectors added,
 * then the patch (if any) interpolates toward its values.
 */
export function interventionFeeds(
  interventions: readonly ForwardIntervention[],
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

  const patches = new Map<number, { hook: string; values: Float32Array; mask: Float32Array }>();

  for (const iv of interventions) {
    const mask = positionMask(iv.positions, batch, seq);
    if (iv.kind === 'patch') {
      const site = patchSiteOf(iv.hook, numLayers);
      const prev = patches.get(site);
      if (prev) {
        throw new EmlensError(
          `Two patches at ${iv.hook === prev.hook ? iv.hook : `${prev.hook} and ${iv.hook} (the same tensor)`}; merge them into one patch (its values and position weights).`,
        );
      }
      patches.set(site, { hook: iv.hook, values: patchValues(iv, batch, seq, dModel), mask });
      continue;
    }
    const hooks = resolveHooks(iv.hooks, numLayers);
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
        // i < dModel = iv.vector.length (checked above); site < sites, so the sum is < steerVectors.length
        for (let i = 0; i < dModel; i++) steerVectors[site * dModel + i]! += scale * iv.vector[i]!;
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
    ablateMask.set(ablateDirs.get(site)!.mask, site * bs); // bases has exactly ablateDirs' sites
  }
  if (patches.size === 0) return { steerVectors, steerMask, ablateBasis, ablateMask, rank };
  const slots = new BigInt64Array(patchSiteCount(numLayers));
  // one patch (the common case) is fed from its own buffer, uncopied
  const [only] = patches.values();
  const values = patches.size === 1 && only ? only.values : new Float32Array(patches.size * bs * dModel);
  const pmask = new Float32Array(patchSiteCount(numLayers) * bs);
  let slot = 0;
  for (const [site, p] of patches) {
    slots[site] = BigInt(slot);
    if (patches.size > 1) values.set(p.values, slot * bs * dModel);
    pmask.set(p.mask, site * bs);
    slot++;
  }
  return {
    steerVectors,
    steerMask,
    ablateBasis,
    ablateMask,
    rank,
    patch: { slots, values, mask: pmask, count: patches.size },
  };
}
