/**
 * A small composable layer over the model's interventions: `Intervention[]` built from a direction set (a
 * direction file), a choice of layers, a scale and positions, with the checks that catch a direction from
 * another model. {@link composeInterventions} is the one road: every command (`generate`, `eval`, `steer`,
 * `ablate`, `mediate`, `sweep`), the server and the library build their interventions through it (or the two
 * builders it calls), so one request means one intervention everywhere.
 *
 * How a list of interventions composes (what `Model.forward` does, tested in test/interventions/compose.test.ts):
 *
 * - The list order never matters. The graph visits the residual sites in model order (the embedding output,
 *   then each block's `hook_resid_mid` and `hook_resid_post`), whatever order the list has.
 * - Two ablations commute: at a site the span of all their directions is removed at once (orthonormalised in
 *   float64), and projections at different sites act in model order.
 * - An ablation and a steer at different sites commute in list order: each acts at its own site.
 * - At one site the ablation comes first, then the addition: ablating `d` and steering by `v` at the same hook
 *   gives `x - P_d x + scale * v`, so the steered component survives even along `d`.
 * - Two steers at one site add their vectors.
 *
 * Sites of block `L` are `blocks.L.hook_resid_pre`, `blocks.L.hook_resid_mid` and `blocks.L.hook_resid_post`
 * (`resid_pre` of block L > 0 is the same site as `resid_post` of block L - 1). Ablating at every layer's
 * sites is therefore ablating at all `2L + 1` residual sites: what {@link orthogonalizeModel} bakes in.
 */
import {
  type DirectionMeta,
  type DirectionSet,
  directionDModel,
  directionLayers,
  directionSet,
  loadDirections,
} from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import { type HookName, hookName, type ResidualHook, type ResidualHookName } from '../model/hooks.js';
import type { Ablate, Intervention, PositionWeights, Steer } from '../model/interventions.js';
import type { ModelSpec } from '../model/spec.js';
import type { Float32Tensor } from '../model/tensor.js';
import { dotAt, unitVector } from '../util/vector.js';

// The vector math lives in util/vector.ts; re-exported for the code that imported unitVector from here.
export { unitVector };

/** Layers to act on: every layer of the model, one 0-based block index, or a list of them. */
export type LayerSelection = 'all' | number | readonly number[];

/** A residual hook of a block (where interventions can act). */
export type { ResidualHook };

/** The shape a direction must fit: the model's width and layer count. */
export type ModelShape = Pick<ModelSpec, 'numLayers' | 'dModel'>;

/** The three residual hooks of block `layer` (pre, mid, post). */
export function residualHooks(layer: number): ResidualHookName[] {
  return [hookName(layer, 'resid_pre'), hookName(layer, 'resid_mid'), hookName(layer, 'resid_post')];
}

/** Every residual site of a model: `blocks.0.hook_resid_pre` and each block's `resid_mid` and `resid_post`. */
export function allResidualHooks(numLayers: number): ResidualHookName[] {
  const hooks: ResidualHookName[] = [hookName(0, 'resid_pre')];
  for (let i = 0; i < numLayers; i++) hooks.push(hookName(i, 'resid_mid'), hookName(i, 'resid_post'));
  return hooks;
}

/**
 * Checks that a direction set can act on a model of this shape: its vectors have the model's d_model, and it
 * holds no layer the model lacks. `what` names the set in the error (e.g. the file path).
 */
export function checkDirectionsFit(set: DirectionSet, shape: ModelShape, what = 'The direction set'): void {
  const d = directionDModel(set);
  if (d !== shape.dModel) {
    throw new EmlensError(
      `${what} holds vectors of length ${d} but the model's d_model is ${shape.dModel}; use a direction computed on this model.`,
    );
  }
  const layers = directionLayers(set);
  const last = layers[layers.length - 1];
  if (last !== undefined && last >= shape.numLayers) {
    throw new EmlensError(
      `${what} holds a direction for layer ${last} but the model has layers 0..${shape.numLayers - 1}; use a direction computed on a model with this many layers.`,
    );
  }
}

/** Loads a direction file and checks it fits the model (see {@link checkDirectionsFit}). */
export async function loadDirectionsFor(path: string, shape: ModelShape): Promise<DirectionSet> {
  const set = await loadDirections(path);
  checkDirectionsFit(set, shape, `Direction file ${path}`);
  return set;
}

/** `'all'` -> every layer; a layer or a list is checked (integers in range), deduplicated and sorted. */
export function selectLayers(layers: LayerSelection, numLayers: number): number[] {
  if (layers === 'all') return Array.from({ length: numLayers }, (_, i) => i);
  if (typeof layers === 'number') layers = [layers];
  if (!Array.isArray(layers) || layers.length === 0) {
    throw new EmlensError('No layers were chosen; pass a list of layers or "all".');
  }
  for (const l of layers) {
    if (!Number.isInteger(l) || l < 0 || l >= numLayers) {
      throw new EmlensError(
        `Layer ${l} is out of range: the model has layers 0..${numLayers - 1}; pick layers from those.`,
      );
    }
  }
  return [...new Set(layers)].sort((a, b) => a - b);
}

/** Parses `3,5`, `1-3` or `all` into a layer selection (checked against the model by {@link selectLayers}). */
export function parseLayerList(value: string, flag = '--layers'): 'all' | number[] {
  const v = value.trim();
  if (v === 'all') return 'all';
  const out: number[] = [];
  for (const part of v.split(',').map((s) => s.trim())) {
    const range = /^(\d+)-(\d+)$/.exec(part);
    if (range) {
      for (let l = Number(range[1]); l <= Number(range[2]); l++) out.push(l);
    } else if (/^\d+$/.test(part)) {
      out.push(Number(part));
    } else {
      throw new EmlensError(
        `${flag} '${value}' is not a list of layers; write it like ${flag} 1,2,3 or ${flag} all.`,
      );
    }
  }
  if (out.length === 0) {
    throw new EmlensError(`${flag} '${value}' names no layers; write it like ${flag} 1,2,3 or ${flag} all.`);
  }
  return out;
}

/** The vector of `layer` in a set; an error names the layers it holds when it lacks that one. */
export function directionAt(set: DirectionSet, layer: number, what = 'The direction set'): Float32Array {
  const v = set.vectors.get(layer);
  if (v === undefined) {
    throw new EmlensError(
      `${what} has no direction for layer ${layer} (it holds layers ${directionLayers(set).join(', ')}); pick layers it covers.`,
    );
  }
  return v;
}

/**
 * A set holding the same vector at each of `layers` (e.g. a planted, hand-made or inline direction), validated
 * as a loaded file is (finite values); `what` names it in errors.
 */
export function constantDirectionSet(
  vector: ArrayLike<number>,
  layers: readonly number[],
  meta: Partial<DirectionMeta> = {},
  what = 'the direction set',
): DirectionSet {
  const v = Float32Array.from(vector);
  return directionSet(
    layers.map((l) => [l, v] as const),
    {
      model: meta.model ?? 'unknown',
      hook: meta.hook ?? 'hook_resid_post',
      method: meta.method ?? 'given',
      positions: meta.positions ?? 'unknown',
      nPos: meta.nPos ?? 0,
      nNeg: meta.nNeg ?? 0,
      sourcePos: meta.sourcePos ?? '',
      sourceNeg: meta.sourceNeg ?? '',
      extra: meta.extra,
    },
    what,
  );
}

/**
 * Which layer's vector acts at a chosen layer's sites: `'own'` (default) each layer its own vector; a number
 * that layer's vector everywhere; a list the span of those layers' vectors everywhere (rank k).
 */
export type SourceLayers = 'own' | number | readonly number[];

export interface SteerSpec {
  /** Layers whose `hook` gets the vector. */
  readonly layers: LayerSelection;
  /** Multiplies the (unnormalised) vector; default 1. */
  readonly scale?: number;
  /** Which layer's vector to add (default: each layer its own). */
  readonly from?: 'own' | number;
  /** Default `hook_resid_post`, where the EM work steers. */
  readonly hook?: ResidualHook;
  /** Add the unit vector instead of the stored one (the scale is then in residual units). */
  readonly unit?: boolean;
  readonly positions?: PositionWeights;
}

/**
 * Steering interventions: `scale * v` added at `blocks.L.{hook}` for each chosen layer L, with `v` that layer's
 * vector of the set (or one fixed layer's, `from`).
 *
 * @example
 * const ivs = steerInterventions(set, model.spec, { layers: [2], scale: 4 });
 * await model.forward(ids, { interventions: ivs });
 */
export function steerInterventions(set: DirectionSet, shape: ModelShape, spec: SteerSpec): Steer[] {
  checkDirectionsFit(set, shape);
  const scale = spec.scale ?? 1;
  if (!Number.isFinite(scale))
    throw new EmlensError(`The steering scale ${scale} is not a finite number; pass one.`);
  const hook = spec.hook ?? 'hook_resid_post';
  return selectLayers(spec.layers, shape.numLayers).map((layer) => {
    const source = spec.from === undefined || spec.from === 'own' ? layer : spec.from;
    let vector = directionAt(set, source);
    if (spec.unit) vector = unitVector(vector, `layer ${source} of the direction set`);
    return {
      kind: 'steer',
      hooks: [hookName(layer, hook)],
      vector,
      scale,
      ...(spec.positions !== undefined ? { positions: spec.positions } : {}),
    };
  });
}

export interface AblateSpec {
  /** Layers whose residual sites lose the directions (see {@link siteDirections}); `'all'`: every site. */
  readonly layers: LayerSelection;
  /** Which layers' vectors are removed (default: each layer its own; see {@link SourceLayers}). */
  readonly from?: SourceLayers;
  readonly positions?: PositionWeights;
}

/**
 * The residual sites a layer selection covers, each with the vectors acting there.
 *
 * The sites of a chosen block L are its `resid_mid` and `resid_post`, and its input `resid_pre` unless block
 * L - 1 is chosen too (then that site is L - 1's `resid_post`; block 0's input, the embedding output, is
 * always block 0's). So `'all'` covers each of the `2L + 1` sites once, and a single layer its input, middle
 * and output.
 *
 * - With `from: 'own'` (default) a site gets the vectors of the block it belongs to (one per set).
 * - With a fixed source (`from`: a layer or a list) every site gets the same vectors: those layers' vectors of
 *   every set (rank k).
 */
export function siteDirections(
  sets: DirectionSet | readonly DirectionSet[],
  shape: ModelShape,
  spec: Pick<AblateSpec, 'layers' | 'from'>,
): Map<ResidualHookName, Float32Array[]> {
  const list = Array.isArray(sets) ? (sets as readonly DirectionSet[]) : [sets as DirectionSet];
  if (list.length === 0) throw new EmlensError('No direction sets were given to ablate; pass at least one.');
  list.forEach((s, i) => {
    checkDirectionsFit(s, shape, list.length > 1 ? `Direction set ${i + 1}` : 'The direction set');
  });
  const layers = selectLayers(spec.layers, shape.numLayers);
  const chosen = new Set(layers);
  const from = spec.from ?? 'own';
  let fixed: Float32Array[] | null = null;
  if (from !== 'own') {
    const sources = typeof from === 'number' ? [from] : [...from];
    if (sources.length === 0)
      throw new EmlensError('No source layers were given to ablate; pass at least one.');
    fixed = list.flatMap((s) => sources.map((l) => directionAt(s, l)));
  }
  const out = new Map<ResidualHookName, Float32Array[]>();
  for (const layer of layers) {
    const vs = fixed ?? list.map((s) => directionAt(s, layer));
    // resid_pre of block L > 0 is resid_post of block L - 1: named once, by the block it belongs to
    if (layer === 0 || !chosen.has(layer - 1)) out.set(hookName(layer, 'resid_pre'), vs);
    out.set(hookName(layer, 'resid_mid'), vs);
    out.set(hookName(layer, 'resid_post'), vs);
  }
  return out;
}

/**
 * Ablation interventions from one or more direction sets (rank k: the span of every set's vectors at a site
 * is removed together), at the sites {@link siteDirections} assigns.
 *
 * @example
 * // the direction of layer 2, removed from every residual site (what orthogonalisation bakes in)
 * ablateInterventions(set, model.spec, { layers: 'all', from: 2 });
 */
export function ablateInterventions(
  sets: DirectionSet | readonly DirectionSet[],
  shape: ModelShape,
  spec: AblateSpec,
): Ablate[] {
  const positions = spec.positions !== undefined ? { positions: spec.positions } : {};
  return [...siteDirections(sets, shape, spec)].map(([hook, directions]) => ({
    kind: 'ablate',
    hooks: [hook],
    directions,
    ...positions,
  }));
}

/** A steer with the direction set whose vectors it adds (`D` is a file path or inline vector at the server's edge). */
export type SteerRequest<D = DirectionSet> = SteerSpec & { readonly direction: D };

/** An ablation with the direction set whose vectors it removes. */
export type AblateRequest<D = DirectionSet> = AblateSpec & { readonly direction: D };

/**
 * Everything to steer and ablate in one call: what `emlens generate`, `eval`, `steer`, `ablate`, the server's
 * `emlens` request field and the library all reduce to before {@link composeInterventions} builds it.
 *
 * Positions: for a scoring call (`Model.forward`, `scoreRecords`) give `positions` (a `[batch, seq]` weight per
 * token, per spec or here for every spec without its own). For generation leave them unset and pass an
 * `InterventionPositions` policy (`all`, `prompt`, `generated`) to `generate` (or the server's `positions`): the
 * decode loop places this same list at each prefill and decode call.
 */
export interface InterventionRequest<D = DirectionSet> {
  readonly steer?: readonly SteerRequest<D>[];
  readonly ablate?: readonly AblateRequest<D>[];
  /** Positions of every spec that sets none (default: every position). */
  readonly positions?: PositionWeights;
}

/**
 * The interventions of a request, ablations first (at a site they act before steering in any case): each ablate
 * spec through {@link ablateInterventions} (every residual site of the chosen blocks once, owned by its block,
 * so `'all'` is a rank-1 projection at each of the `2L + 1` sites), each steer spec through
 * {@link steerInterventions} (`scale * v` at `blocks.L.hook_resid_post` by default). Every command, the server and
 * the library build their interventions here, so the same request gives the same graph feeds everywhere.
 *
 * @example
 * const set = await loadDirectionsFor('directions/em.safetensors', model.spec);
 * const ivs = composeInterventions({ ablate: [{ direction: set, layers: 'all' }] }, model.spec);
 * await generate(model, prompts, { maxNewTokens: 64, interventions: ivs, interventionPositions: 'generated' });
 */
export function composeInterventions(request: InterventionRequest, shape: ModelShape): Intervention[] {
  const at = <S extends { readonly positions?: PositionWeights }>(s: S): S =>
    s.positions === undefined && request.positions !== undefined ? { ...s, positions: request.positions } : s;
  const out: Intervention[] = [];
  for (const a of request.ablate ?? []) out.push(...ablateInterventions(a.direction, shape, at(a)));
  for (const s of request.steer ?? []) out.push(...steerInterventions(s.direction, shape, at(s)));
  return out;
}

/**
 * Interventions that patch a source run's component along one direction per site into this run: at each site
 * `x <- x - (x.e) e + (x_src.e) e` for the unit vector `e`, i.e. an ablation followed by a per-token steer
 * along `e` (same-site order: ablate, then add). `source` holds the source run's hooks at those sites, from a
 * forward pass on the same rows (`[batch, seq, d_model]`, same padding). With `sites` from
 * {@link siteDirections} of a finetune's direction and the base as the source, this removes the finetune's
 * change along the direction and keeps the base's own component.
 */
export function patchInterventions(
  sites: ReadonlyMap<ResidualHookName, readonly Float32Array[]>,
  source: ReadonlyMap<HookName, Float32Tensor>,
): Intervention[] {
  const out: Intervention[] = [];
  for (const [hook, vs] of sites) {
    const [v] = vs;
    if (v === undefined || vs.length !== 1) {
      throw new EmlensError(
        `Patching needs one direction per site but ${hook} has ${vs.length}; patch with a single direction set and one source layer per site.`,
      );
    }
    const x = source.get(hook);
    if (!x) throw new Error(`patchInterventions: the source run did not fetch ${hook}`);
    const e = unitVector(v, `the direction at ${hook}`);
    const d = e.length;
    const n = x.data.length / d;
    const weights = new Float32Array(n); // [batch * seq]: the source's coordinate along e per token
    for (let t = 0; t < n; t++) weights[t] = dotAt(x.data, t * d, e);
    out.push({ kind: 'ablate', hooks: [hook], directions: [e] });
    out.push({ kind: 'steer', hooks: [hook], vector: e, scale: 1, positions: weights });
  }
  return out;
}
