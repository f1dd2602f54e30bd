/**
 * `gradient`: the gradient of the mean next-token NLL of one sequence with respect to a zero steering vector
 * added at one residual site at every position (what `emlens grad` writes). The smallest checkable piece of
 * the gradient machinery: the direction in which a steering vector would first move to lower the loss.
 */
import { EmlensError } from '../errors.js';
import type { ResidualHookName } from '../model/hooks.js';
import { GradModel, type GradModelOptions } from './gradModel.js';
import { PARAM, residualSite } from './params.js';

export interface GradientOptions extends GradModelOptions {
  /** A residual site: `blocks.L.hook_resid_pre`, `..._mid` or `..._post`. */
  readonly site: string;
}

export interface GradientResult {
  /** d loss / d v at v = 0, `[d_model]`. */
  readonly grad: Float32Array;
  /** Mean next-token NLL of the sequence (nats). */
  readonly loss: number;
}

/**
 * The gradient at `site` of the mean NLL of `ids` (at least two tokens). `model` is a folder (loaded, with
 * `adapter` merged when given, and released after) or an already loaded {@link GradModel}.
 */
export async function gradient(
  model: string | GradModel,
  ids: readonly number[],
  opts: GradientOptions,
): Promise<GradientResult> {
  if (ids.length < 2) {
    throw new EmlensError(
      `The loss needs at least two tokens (one to predict from, one to predict), but ${ids.length} ${ids.length === 1 ? 'was' : 'were'} given; give a longer --ids.`,
    );
  }
  const g = typeof model === 'string' ? await GradModel.load(model, opts) : model;
  try {
    residualSite(g.spec, opts.site); // checks the site before any graph is built
    const res = await g.run([{ ids }], {
      params: { steer: { sites: [opts.site as ResidualHookName], shared: true } },
    });
    return { grad: Float32Array.from(res.grads.get(PARAM.steer)!), loss: res.loss };
  } finally {
    if (typeof model === 'string') await g.dispose();
  }
}
