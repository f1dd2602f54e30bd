import { EmlensError } from '../errors.js';

/**
 * How a record's per-token activations become what the store keeps:
 * - `answer_mean`: the mean over the record's answer tokens (float64), with the token count, so the store
 *   yields both the token-weighted mean over all answer tokens (what the public EM code computes) and the
 *   mean of per-record means;
 * - `last`: the last token (of the answer span when a mask is given, else of the sequence);
 * - `none`: every answer token (per-token; for small sets).
 */
export type Reduction = 'answer_mean' | 'last' | 'none';

export const REDUCTIONS: readonly Reduction[] = ['answer_mean', 'last', 'none'];

/** Positions a record contributes: its answer tokens, or all tokens when it has no mask. */
export function selectedPositions(length: number, mask: Uint8Array | undefined, recordId: string): number[] {
  if (mask && mask.length !== length) {
    throw new EmlensError(
      `Record '${recordId}' has ${length} tokens but an answer mask of ${mask.length}; build the mask from the same token ids.`,
    );
  }
  const positions: number[] = [];
  for (let p = 0; p < length; p++) if (!mask || mask[p]) positions.push(p);
  if (positions.length === 0) {
    throw new EmlensError(`Record '${recordId}' has no answer tokens; check the answer text is not empty.`);
  }
  return positions;
}

/**
 * Reduces one row of a hook tensor. `hook` is `[seq, d]` for the row (padding already skipped via `offset`).
 * Returns the reduced vectors (`[k, d]`, k = 1 except for `none`).
 */
export function reduceRow(
  hook: Float32Array,
  offset: number,
  d: number,
  positions: readonly number[],
  reduce: Reduction,
): Float32Array {
  if (reduce === 'last') {
    const p = positions.at(-1);
    if (p === undefined) return new Float32Array(0); // no positions: the empty slice it always was
    return hook.slice((offset + p) * d, (offset + p + 1) * d);
  }
  if (reduce === 'none') {
    const out = new Float32Array(positions.length * d);
    positions.forEach((p, k) => {
      out.set(hook.subarray((offset + p) * d, (offset + p + 1) * d), k * d);
    });
    return out;
  }
  const sum = new Float64Array(d); // accumulate in float64: answers can be hundreds of tokens
  // i < d = sum.length; base + i is inside the row's [seq, d] (positions are positions of the row)
  for (const p of positions) {
    const base = (offset + p) * d;
    for (let i = 0; i < d; i++) sum[i]! += hook[base + i]!;
  }
  const mean = new Float32Array(d);
  for (let i = 0; i < d; i++) mean[i] = sum[i]! / positions.length;
  return mean;
}
