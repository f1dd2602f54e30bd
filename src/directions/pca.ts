/**
 * Directions beyond one mean difference: the first principal component of paired differences (`pca_diff`) or
 * of pair-centred activations (`pca_center`), as repeng's `read_representations` computes them, rank-k
 * subspaces spanned by several directions, and one direction averaged over several finetunes.
 *
 * All the linear algebra is ml-matrix in float64 (SVD); vectors are stored as float32.
 *
 * Semantics, per layer, with n pairs (pos_i, neg_i) of per-record activations (answer-token means):
 * - `pca_diff`: the first principal component of the differences d_i = pos_i - neg_i, with the differences
 *   centred first (sklearn's PCA, which repeng calls, subtracts the mean): the axis along which the pairs'
 *   differences vary most around their mean difference.
 * - `pca_center`: the first principal component of the 2n activations each minus its pair's centre
 *   c_i = (pos_i + neg_i) / 2. Those rows are ±d_i / 2, whose mean is zero, so this is the first principal
 *   axis of the uncentred differences (the direction with the largest mean squared projection of d_i),
 *   which is also what llama.cpp's cvector-generator computes.
 * - Sign: oriented so that the mean projection of the positive side exceeds the negative side's.
 * - Norm: unit (the file's metadata says `normalized: "true"`); the share of variance the component explains
 *   per layer is kept as `explained` (a JSON list) in the metadata.
 */
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import { ActivationStore } from '../activations/store.js';
import { EmlensError } from '../errors.js';
import { norm } from '../util/vector.js';
import { type DirectionMeta, type DirectionSet, directionSet } from './direction.js';

/** Per-record activations of one side: layer -> one row per record (each length d_model). */
export type LayerRows = ReadonlyMap<number, readonly ArrayLike<number>[]>;

export type PcaMethod = 'pca_diff' | 'pca_center';
export const PCA_METHODS: readonly PcaMethod[] = ['pca_diff', 'pca_center'];

export interface PcaOptions {
  readonly model?: string;
  readonly hook?: string;
  readonly positions?: string;
  readonly sourcePos?: string;
  readonly sourceNeg?: string;
}

/** The first principal axis (unit, float64) of the rows of `m` and the share of the total variance it explains. */
function firstAxis(m: Matrix): { axis: Float64Array; explained: number } {
  const svd = new SingularValueDecomposition(m, {
    computeLeftSingularVectors: false,
    computeRightSingularVectors: true,
    autoTranspose: true,
  });
  const s = svd.diagonal;
  const total = s.reduce((a, x) => a + x * x, 0);
  const axis = Float64Array.from(svd.rightSingularVectors.getColumn(0));
  return { axis, explained: total > 0 ? s[0]! ** 2 / total : 0 };
}

/**
 * `pca_diff` or `pca_center` directions per layer from paired rows: `pos[layer][i]` is paired with
 * `neg[layer][i]`, so both sides need the same layers and the same number of records.
 *
 * @example
 * const set = pcaDirections('pca_diff', await storeRecordRows(posStore), await storeRecordRows(negStore));
 */
export function pcaDirections(
  method: PcaMethod,
  pos: LayerRows,
  neg: LayerRows,
  opts: PcaOptions = {},
): DirectionSet {
  if (!PCA_METHODS.includes(method)) {
    throw new EmlensError(`Unknown PCA method '${method}'; use one of ${PCA_METHODS.join(', ')}.`);
  }
  const layers = [...pos.keys()].sort((a, b) => a - b);
  const negLayers = [...neg.keys()].sort((a, b) => a - b);
  if (layers.join(',') !== negLayers.join(',')) {
    throw new EmlensError(
      `The positive side has layers [${layers.join(', ')}] but the negative side [${negLayers.join(', ')}]; collect both at the same layers.`,
    );
  }
  const vectors: [number, Float32Array][] = [];
  const explained: number[] = [];
  let pairs = 0;
  for (const layer of layers) {
    const p = pos.get(layer)!; // both sides hold exactly these layers (checked above)
    const q = neg.get(layer)!;
    if (p.length !== q.length) {
      throw new EmlensError(
        `${method} pairs positive and negative records one to one, but the sides hold ${p.length} and ${q.length} records; give both sides the same number of records (or use mean_diff).`,
      );
    }
    if (p.length < 2) {
      throw new EmlensError(
        `${method} needs at least 2 pairs of records, but the sides hold ${p.length}; collect more records.`,
      );
    }
    pairs = p.length;
    const d = p[0]!.length;
    const diffs = new Matrix(p.length, d); // [pairs, d_model]
    for (let i = 0; i < p.length; i++) {
      const a = p[i]!;
      const b = q[i]!;
      if (a.length !== d || b.length !== d) {
        throw new EmlensError(
          `At layer ${layer} record ${i} has length ${a.length}/${b.length} but d_model is ${d}; both sides must come from the same model.`,
        );
      }
      for (let j = 0; j < d; j++) diffs.set(i, j, a[j]! - b[j]!);
    }
    let train: Matrix;
    if (method === 'pca_diff') {
      // sklearn's PCA (repeng) centres its input: the differences minus their mean.
      const mean = diffs.mean('column');
      train = diffs.clone().subRowVector(mean);
    } else {
      // Each activation minus its pair centre is ±d/2; PCA's own centring is then a no-op (mean zero).
      train = new Matrix(2 * p.length, d);
      for (let i = 0; i < p.length; i++) {
        for (let j = 0; j < d; j++) {
          const h = diffs.get(i, j) / 2;
          train.set(2 * i, j, h);
          train.set(2 * i + 1, j, -h);
        }
      }
    }
    const { axis, explained: share } = firstAxis(train);
    // Orient: the positive side's mean projection above the negative side's, i.e. mean(d_i) . axis > 0.
    let along = 0;
    for (let i = 0; i < p.length; i++) for (let j = 0; j < d; j++) along += diffs.get(i, j) * axis[j]!;
    const sign = along < 0 ? -1 : 1;
    vectors.push([layer, Float32Array.from(axis, (x) => sign * x)]);
    explained.push(share);
  }
  return directionSet(vectors, {
    model: opts.model ?? 'unknown',
    hook: opts.hook ?? 'hook_resid_post',
    method,
    positions: opts.positions ?? 'answer_mean',
    nPos: pairs,
    nNeg: pairs,
    sourcePos: opts.sourcePos ?? '',
    sourceNeg: opts.sourceNeg ?? '',
    extra: { normalized: 'true', explained: JSON.stringify(explained.map((x) => Number(x.toFixed(6)))) },
  });
}

/**
 * One row per record and layer of `blocks.*.<hookType>` from a store: the stored row for `answer_mean` and
 * `last` stores, the mean of the record's token rows for `none` stores.
 */
export async function storeRecordRows(
  store: ActivationStore,
  hookType = 'hook_resid_post',
): Promise<Map<number, Float32Array[]>> {
  const m = store.manifest;
  const hooks = m.hooks.filter((h) => h.endsWith(`.${hookType}`));
  if (hooks.length === 0) {
    throw new EmlensError(
      `The store at ${store.dir} has no ${hookType} hooks (it holds ${m.hooks.join(', ')}); collect with --hooks 'blocks.*.${hookType}'.`,
    );
  }
  if (!m.complete)
    throw new EmlensError(`${store.dir} is incomplete; finish it with 'emlens collect --resume'.`);
  const counts = await store.tokenCounts();
  const d = m.dModel;
  const out = new Map<number, Float32Array[]>();
  for (const hook of hooks) {
    const layer = Number(/^blocks\.(\d+)\./.exec(hook)![1]); // hooks are resolved hook names
    const data = await store.readHook(hook); // [rows, d_model]
    const rows: Float32Array[] = [];
    if (m.reduce === 'none') {
      let row = 0;
      for (const c of counts) {
        const s = new Float64Array(d);
        for (let t = 0; t < c; t++, row++) for (let i = 0; i < d; i++) s[i]! += data[row * d + i]!;
        rows.push(Float32Array.from(s, (x) => x / c));
      }
    } else {
      for (let r = 0; r < counts.length; r++) rows.push(data.slice(r * d, (r + 1) * d));
    }
    out.set(layer, rows);
  }
  return out;
}

/** {@link pcaDirections} between two stores (record i of `posDir` paired with record i of `negDir`). */
export async function pcaFromStores(
  method: PcaMethod,
  posDir: string,
  negDir: string,
  opts: { hookType?: string } = {},
): Promise<DirectionSet> {
  const hookType = opts.hookType ?? 'hook_resid_post';
  const [pos, neg] = await Promise.all([ActivationStore.open(posDir), ActivationStore.open(negDir)]);
  if (pos.manifest.specKey !== neg.manifest.specKey || pos.manifest.dModel !== neg.manifest.dModel) {
    throw new EmlensError(
      `${posDir} and ${negDir} come from models of different shape; collect both sides with the same architecture.`,
    );
  }
  const [p, n] = await Promise.all([storeRecordRows(pos, hookType), storeRecordRows(neg, hookType)]);
  const model = pos.manifest.adapter ? `${pos.manifest.model} + ${pos.manifest.adapter}` : pos.manifest.model;
  return pcaDirections(method, p, n, {
    model,
    hook: hookType,
    positions: pos.manifest.reduce,
    sourcePos: posDir,
    sourceNeg: negDir,
  });
}

/**
 * An orthonormal basis (float64, at most `rank` vectors) of the span of `vectors`, by SVD: the right singular
 * vectors of the [k, d] matrix whose singular value exceeds `tol` times the largest (so parallel inputs give
 * rank 1). With `rank` below the span's dimension the basis is the best rank-`rank` approximation's.
 */
export function subspaceBasis(
  vectors: readonly ArrayLike<number>[],
  opts: { rank?: number; tol?: number } = {},
): Float64Array[] {
  const [head] = vectors;
  if (head === undefined) throw new EmlensError('A subspace needs at least one vector; pass some.');
  const d = head.length;
  const m = new Matrix(vectors.length, d); // [k, d_model]
  vectors.forEach((v, i) => {
    if (v.length !== d) {
      throw new EmlensError(
        `Vector ${i} has length ${v.length} but vector 0 has ${d}; a subspace needs vectors of one length.`,
      );
    }
    for (let j = 0; j < d; j++) m.set(i, j, v[j]!);
  });
  const svd = new SingularValueDecomposition(m, {
    computeLeftSingularVectors: false,
    computeRightSingularVectors: true,
    autoTranspose: true,
  });
  const s = svd.diagonal;
  const tol = (opts.tol ?? 1e-6) * (s[0] ?? 0);
  const limit = Math.min(opts.rank ?? vectors.length, vectors.length, d);
  const basis: Float64Array[] = [];
  for (let k = 0; k < limit && s[k]! > tol && s[k]! > 0; k++) {
    basis.push(Float64Array.from(svd.rightSingularVectors.getColumn(k)));
  }
  if (basis.length === 0) throw new EmlensError('The vectors are all zero, so they span no subspace.');
  return basis;
}

/**
 * The rank-k subspace the sets span at each layer they share, as k direction sets (set j holds basis vector j
 * at every layer, unit norm): what {@link ablateInterventions} takes to remove the whole span at once. The
 * rank is the smallest rank of any layer (at most `rank`), so every returned set holds every shared layer.
 */
export function directionSubspace(
  sets: readonly DirectionSet[],
  opts: { rank?: number; tol?: number } = {},
): DirectionSet[] {
  const layers = sharedLayers(sets);
  const bases = new Map(
    layers.map((l) => [
      l,
      subspaceBasis(
        sets.map((s) => s.vectors.get(l)!),
        opts,
      ),
    ]),
  );
  const k = Math.min(...[...bases.values()].map((b) => b.length));
  const out: DirectionSet[] = [];
  for (let j = 0; j < k; j++) {
    out.push(
      directionSet(
        layers.map((l) => [l, Float32Array.from(bases.get(l)![j]!)] as const),
        derivedMeta(sets, 'subspace', { basis_index: String(j), rank: String(k) }),
      ),
    );
  }
  return out;
}

/**
 * One direction from several (e.g. one per finetune): each layer's vectors normalised to unit norm, then
 * averaged (float64), as the model-organisms code builds its general direction. The result is not
 * renormalised: its norm (1 when the inputs agree, less when they disagree) says how much they agree.
 */
export function averageDirections(sets: readonly DirectionSet[]): DirectionSet {
  const layers = sharedLayers(sets);
  const vectors = layers.map((l) => {
    const d = sets[0]!.vectors.get(l)!.length;
    const sum = new Float64Array(d);
    sets.forEach((s, i) => {
      const v = s.vectors.get(l)!;
      const n = norm(v);
      if (n === 0) {
        throw new EmlensError(
          `Direction set ${i + 1} is a zero vector at layer ${l} and cannot be normalised; drop that layer or set.`,
        );
      }
      for (let j = 0; j < d; j++) sum[j]! += v[j]! / n;
    });
    return [l, Float32Array.from(sum, (x) => x / sets.length)] as const;
  });
  return directionSet(vectors, derivedMeta(sets, 'average_normalized', { averaged: String(sets.length) }));
}

function sharedLayers(sets: readonly DirectionSet[]): number[] {
  const [first] = sets;
  if (first === undefined) throw new EmlensError('No direction sets were given; pass at least one.');
  const d = first.vectors.values().next().value?.length;
  const layers = [...first.vectors.keys()].filter((l) => sets.every((s) => s.vectors.has(l)));
  if (layers.length === 0) {
    throw new EmlensError('The direction sets share no layer; compute them at the same layers.');
  }
  sets.forEach((s, i) => {
    if (s.vectors.get(layers[0]!)!.length !== d) {
      throw new EmlensError(
        `Direction set ${i + 1} has d_model ${s.vectors.get(layers[0]!)!.length} but set 1 has ${d}; use directions of one model.`,
      );
    }
  });
  return layers;
}

function derivedMeta(
  sets: readonly DirectionSet[],
  method: string,
  extra: Record<string, string>,
): DirectionMeta {
  const m = sets[0]!.meta; // sharedLayers checked there is at least one
  const models = [...new Set(sets.map((s) => s.meta.model))];
  return {
    model: models.length === 1 ? models[0]! : models.join(' | '),
    hook: m.hook,
    method,
    positions: m.positions,
    nPos: sets.reduce((a, s) => a + s.meta.nPos, 0),
    nNeg: sets.reduce((a, s) => a + s.meta.nNeg, 0),
    sourcePos: sets.map((s) => s.meta.sourcePos).join(' | '),
    sourceNeg: sets.map((s) => s.meta.sourceNeg).join(' | '),
    extra: { ...extra, inputs: JSON.stringify(sets.map((s) => s.meta.method)) },
  };
}
