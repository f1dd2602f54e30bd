import { EmlensError } from '../errors.js';
import type { ActivationStore } from './store.js';

/**
 * Per-layer means of one side (positive or negative) and how many samples went into them: what
 * {@link storeLayerMeans} (and directions' LayerMeanAccumulator) produce and `meanDiff` consumes.
 */
export interface LayerMeans {
  readonly count: number;
  /** layer -> mean activation, float64. */
  readonly means: ReadonlyMap<number, Float64Array>;
}

/**
 * `token`: every answer token weighs the same (the mean over all answer tokens of all records, as the public
 * EM code computes it); `record`: every record weighs the same (the mean of per-record means).
 */
export type Weighting = 'token' | 'record';

/**
 * Means of `blocks.*.<hookType>` over a store, accumulated in float64. For `last`-reduced stores each record
 * has one row and both weightings agree.
 */
export async function storeLayerMeans(
  store: ActivationStore,
  hookType = 'hook_resid_post',
  weighting: Weighting = 'token',
): Promise<LayerMeans> {
  const m = store.manifest;
  const hooks = m.hooks.filter((h) => h.endsWith(`.${hookType}`));
  if (hooks.length === 0) {
    throw new EmlensError(
      `The store at ${store.dir} has no ${hookType} hooks (it holds ${m.hooks.join(', ')}); collect with --hooks 'blocks.*.${hookType}'.`,
    );
  }
  const counts = await store.tokenCounts();
  const d = m.dModel;
  const means = new Map<number, Float64Array>();
  for (const hook of hooks) {
    const layer = Number(/^blocks\.(\d+)\./.exec(hook)![1]); // hooks are resolved hook names
    const rows = await store.readHook(hook);
    const sum = new Float64Array(d);
    let total = 0;
    // i < d = sum.length; rows holds d values per stored row (token or record), one row per count or token
    if (m.reduce === 'none') {
      // rows are tokens, record after record
      let row = 0;
      for (const c of counts) {
        const w = weighting === 'token' ? 1 : 1 / c;
        for (let t = 0; t < c; t++, row++) for (let i = 0; i < d; i++) sum[i]! += w * rows[row * d + i]!;
        total += weighting === 'token' ? c : 1;
      }
    } else {
      counts.forEach((c, r) => {
        const w = m.reduce === 'answer_mean' && weighting === 'token' ? c : 1;
        for (let i = 0; i < d; i++) sum[i]! += w * rows[r * d + i]!;
        total += w;
      });
    }
    for (let i = 0; i < d; i++) sum[i]! /= total;
    means.set(layer, sum);
  }
  return { count: counts.length, means };
}
