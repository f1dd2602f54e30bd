import { realpath } from 'node:fs/promises';
import { storeLayerMeans, type Weighting } from '../activations/aggregate.js';
import { ActivationStore } from '../activations/store.js';
import { EmlensError } from '../errors.js';
import { type DirectionSet, meanDiff } from './direction.js';

/**
 * The mean-difference direction between two activation stores (positive minus negative, e.g. misaligned
 * minus aligned answers), per layer of `hookType`, with float64 means. Both stores must come from models of the
 * same architecture (d_model and hooks).
 */
export async function directionFromStores(
  posDir: string,
  negDir: string,
  opts: { hookType?: string; weighting?: Weighting } = {},
): Promise<DirectionSet> {
  const hookType = opts.hookType ?? 'hook_resid_post';
  // One store on both sides gives a zero direction that then steers and ablates nothing, silently.
  const [posReal, negReal] = await Promise.all([
    realpath(posDir).catch(() => posDir),
    realpath(negDir).catch(() => negDir),
  ]);
  if (posReal === negReal) {
    throw new EmlensError(
      `--pos ${posDir} and --neg ${negDir} are the same store, so their difference is zero; give the stores of the two sides (e.g. misaligned and aligned answers).`,
    );
  }
  const [pos, neg] = await Promise.all([ActivationStore.open(posDir), ActivationStore.open(negDir)]);
  if (pos.manifest.specKey !== neg.manifest.specKey || pos.manifest.dModel !== neg.manifest.dModel) {
    throw new EmlensError(
      `${posDir} and ${negDir} come from models of different shape; collect both sides with the same architecture.`,
    );
  }
  if (pos.manifest.reduce !== neg.manifest.reduce) {
    throw new EmlensError(
      `${posDir} holds '${pos.manifest.reduce}' and ${negDir} '${neg.manifest.reduce}' reductions; collect both the same way.`,
    );
  }
  for (const s of [pos, neg]) {
    if (!s.manifest.complete)
      throw new EmlensError(`${s.dir} is incomplete; finish it with 'emlens collect --resume'.`);
  }
  const weighting = opts.weighting ?? 'token';
  const [p, n] = await Promise.all([
    storeLayerMeans(pos, hookType, weighting),
    storeLayerMeans(neg, hookType, weighting),
  ]);
  const model = pos.manifest.adapter ? `${pos.manifest.model} + ${pos.manifest.adapter}` : pos.manifest.model;
  const set = meanDiff(p, n, {
    model,
    hook: hookType,
    positions: pos.manifest.reduce === 'answer_mean' ? `answer_mean/${weighting}` : pos.manifest.reduce,
    sourcePos: posDir,
    sourceNeg: negDir,
  });
  // Equal means at every layer: two copies of one store (or the same answers collected twice).
  if (zeroLayers(set).length === set.vectors.size) {
    throw new EmlensError(
      `--pos ${posDir} and --neg ${negDir} hold the same activations (the direction is zero at every layer); give the stores of the two sides (e.g. misaligned and aligned answers).`,
    );
  }
  return set;
}

/** The layers whose vector is all zeros (no direction there: steering and ablating it do nothing). */
export function zeroLayers(set: DirectionSet): number[] {
  return [...set.vectors]
    .filter(([, v]) => v.every((x) => x === 0))
    .map(([l]) => l)
    .sort((a, b) => a - b);
}
