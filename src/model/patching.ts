/**
 * The activation-patching sweep of TransformerLens' `patching` module: run a clean and a corrupted input, then
 * rerun the corrupted one with the clean value of one hook at one position patched in, for every (hook,
 * position), and score each run with a metric (e.g. a logit difference).
 */
import ndarray, { type NdArray } from 'ndarray';
import { EmlensError } from '../errors.js';
import { type HookName, type HookSelector, resolveHooks } from './hooks.js';
import { patchSiteOf } from './interventions.js';
import type { Model } from './model.js';
import type { EncodeOptions, TraceSequence } from './trace.js';

/** Scores one run from its last-position logits (`[vocab]`). */
export type PatchingMetric = (logits: Float32Array) => number;

/** `logits[correct] - logits[wrong]` at the last position: the usual patching metric. */
export function logitDiff(correct: number, wrong: number): PatchingMetric {
  // an id outside the vocabulary reads as NaN, as the bare index did
  return (logits) => (logits[correct] ?? Number.NaN) - (logits[wrong] ?? Number.NaN);
}

export interface PatchingSweepOptions {
  /**
   * The hooks patched, one table row each, as names or patterns (`blocks.*.hook_resid_pre`: TransformerLens'
   * layer x position residual sweep); any residual hook, `hook_attn_out` or `hook_mlp_out`. Rows come in
   * model order (the result's `hooks`), whatever order they are given in.
   */
  readonly hooks: HookSelector | readonly HookSelector[];
  /** The positions patched, one table column each (negative counts from the end); default every position. */
  readonly positions?: readonly number[];
  readonly metric: PatchingMetric;
  /** Patched runs per forward call (rows of one batch); default 16. */
  readonly batchSize?: number;
  /** How text and conversations are encoded (see `model.toTokens`). */
  readonly encode?: EncodeOptions;
}

export interface PatchingSweepResult {
  /** Row names, in model order. */
  readonly hooks: readonly HookName[];
  /** Column positions (non-negative). */
  readonly positions: readonly number[];
  /**
   * `[hooks, positions]`: the metric of the corrupted run with the clean run's value of that hook at that
   * position patched in (a view over `values`).
   */
  readonly table: NdArray<Float64Array>;
  readonly values: Float64Array;
  /** The metric of the clean and of the corrupted run, unpatched. */
  readonly clean: number;
  readonly corrupted: number;
  readonly cleanTokens: readonly number[];
  readonly corruptedTokens: readonly number[];
}

async function oneRow(
  model: Model,
  input: TraceSequence,
  what: string,
  opts?: EncodeOptions,
): Promise<number[]> {
  const rows = await model.toTokens(input, opts);
  const [row] = rows;
  if (rows.length !== 1 || !row) {
    throw new EmlensError(
      `The ${what} input is a batch of ${rows.length}; patchingSweep takes one sequence each.`,
    );
  }
  return row;
}

/**
 * For every hook and position, the metric of the corrupted input run with the clean input's value of that
 * hook at that position patched in (`Patch` with weight 1 there). Both inputs must have the same number of
 * tokens, as in TransformerLens. Patched runs are batched `batchSize` at a time.
 *
 * @example
 * const r = await patchingSweep(model, 'The Eiffel Tower is in', 'The Colosseum is in', {
 *   hooks: 'blocks.*.hook_resid_pre',
 *   metric: logitDiff(paris, rome),
 * });
 * r.table.get(layer, position);
 */
export async function patchingSweep(
  model: Model,
  clean: TraceSequence,
  corrupted: TraceSequence,
  opts: PatchingSweepOptions,
): Promise<PatchingSweepResult> {
  const { numLayers, dModel: d, vocabSize } = model.spec;
  const hooks = resolveHooks(typeof opts.hooks === 'string' ? [opts.hooks] : opts.hooks, numLayers);
  for (const h of hooks) patchSiteOf(h, numLayers);
  const cleanTokens = await oneRow(model, clean, 'clean', opts.encode);
  const corruptedTokens = await oneRow(model, corrupted, 'corrupted', opts.encode);
  const seq = cleanTokens.length;
  if (corruptedTokens.length !== seq) {
    throw new EmlensError(
      `The clean input has ${seq} tokens but the corrupted one ${corruptedTokens.length}; patching needs inputs of the same length (pad or reword one).`,
    );
  }
  const positions = (opts.positions ?? Array.from({ length: seq }, (_, p) => p)).map((p) => {
    const q = p < 0 ? seq + p : p;
    if (!Number.isInteger(q) || q < 0 || q >= seq) {
      throw new EmlensError(`Position ${p} is outside the ${seq} tokens; use 0..${seq - 1} or -1..-${seq}.`);
    }
    return q;
  });
  const batchSize = opts.batchSize ?? 16;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new EmlensError(`batchSize must be a positive integer, not ${batchSize}.`);
  }

  const cleanRun = await model.forward([cleanTokens], { hooks });
  const corruptedRun = await model.forward([corruptedTokens]);
  const values = new Float64Array(hooks.length * positions.length);
  for (const [h, hook] of hooks.entries()) {
    const source = cleanRun.hooks.get(hook)!.data; // [1, seq, d]; fetched above with every hook
    for (let start = 0; start < positions.length; start += batchSize) {
      const chunk = positions.slice(start, start + batchSize);
      const rows = chunk.length;
      const patchValues = new Float32Array(rows * seq * d);
      const mask = new Float32Array(rows * seq);
      for (const [r, p] of chunk.entries()) {
        patchValues.set(source, r * seq * d);
        mask[r * seq + p] = 1;
      }
      const run = await model.forward(
        chunk.map(() => corruptedTokens),
        { interventions: [{ kind: 'patch', hook, values: patchValues, positions: mask }] },
      );
      for (let r = 0; r < rows; r++) {
        values[h * positions.length + start + r] = opts.metric(
          run.logits.data.subarray(r * vocabSize, (r + 1) * vocabSize),
        );
      }
    }
  }
  return {
    hooks,
    positions,
    table: ndarray(values, [hooks.length, positions.length]),
    values,
    clean: opts.metric(cleanRun.logits.data.subarray(0, vocabSize)),
    corrupted: opts.metric(corruptedRun.logits.data.subarray(0, vocabSize)),
    cleanTokens,
    corruptedTokens,
  };
}
