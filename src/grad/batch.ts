/**
 * The host side of a gradient graph's batch: rows of token ids left-padded to one length (as the inference
 * batches are), each row's positions, the additive attention masks, the RoPE cos/sin of those positions, and
 * the loss targets and weights, normalised so the CE and the KL are means over their weighted positions.
 */
import { EmlensError } from '../errors.js';
import { ropeTables } from '../model/rope.js';
import type { LayerType, ModelSpec } from '../model/spec.js';
import { GRAD_IO, layerKinds } from './forward.js';
import { LOSS_IO } from './graph.js';

/** One sequence of a batch and what it contributes to the losses. */
export interface GradRow {
  readonly ids: readonly number[];
  /**
   * Weight of the next-token NLL at each position i (predicting ids[i+1]): `ids.length - 1` entries. Default
   * all ones (the mean NLL of the row); all zeros for a row that only contributes to the KL.
   */
  readonly ce?: readonly number[];
  /** Weight of the KL at each position: `ids.length` entries. Default none (no KL from this row). */
  readonly kl?: readonly number[];
}

/** Additive mask value of a key a query does not see (finite, so fully masked padding rows stay finite). */
export const MASKED = -1e9;

export interface PackedBatch {
  readonly batch: number;
  readonly seq: number;
  /** Left padding of each row. */
  readonly padding: readonly number[];
  /** Batch feeds (ids, masks, RoPE), as typed arrays with their shapes; floats in float64 (cast per dtype). */
  readonly inputs: ReadonlyMap<string, { data: Float64Array | BigInt64Array; shape: number[] }>;
  /** Whether any row has KL weight. */
  readonly hasKl: boolean;
  /** Sums of the raw weights (before normalisation). */
  readonly ceTotal: number;
  readonly klTotal: number;
}

/** Packs rows, left-padded to the longest row (or to `minSeq` when longer: one graph for every batch). */
export function packBatch(spec: ModelSpec, rows: readonly GradRow[], minSeq = 0): PackedBatch {
  if (rows.length === 0) throw new EmlensError('A gradient batch needs at least one row of token ids.');
  const B = rows.length;
  const S = Math.max(minSeq, ...rows.map((r) => r.ids.length));
  const hd = spec.headDim;
  const kinds = layerKinds(spec);
  rows.forEach((r, b) => {
    if (r.ids.length === 0)
      throw new EmlensError(`Row ${b} of the gradient batch has no tokens; give it at least one.`);
    for (const id of r.ids) {
      if (!Number.isInteger(id) || id < 0 || id >= spec.vocabSize) {
        throw new EmlensError(
          `Token id ${id} (row ${b}) is outside the vocabulary 0-${spec.vocabSize - 1}; use ids the model's tokenizer makes.`,
        );
      }
    }
    if (r.ce && r.ce.length !== r.ids.length - 1) {
      throw new Error(`packBatch: row ${b} has ${r.ce.length} CE weights for ${r.ids.length} tokens`);
    }
    if (r.kl && r.kl.length !== r.ids.length) {
      throw new Error(`packBatch: row ${b} has ${r.kl.length} KL weights for ${r.ids.length} tokens`);
    }
  });
  const padding = rows.map((r) => S - r.ids.length);
  const ids = new BigInt64Array(B * S);
  const targets = new BigInt64Array(B * S);
  const ceW = new Float64Array(B * S);
  const klW = new Float64Array(B * S);
  rows.forEach((r, b) => {
    const pad = padding[b]!;
    r.ids.forEach((id, i) => {
      ids[b * S + pad + i] = BigInt(id);
      if (i + 1 < r.ids.length) {
        targets[b * S + pad + i] = BigInt(r.ids[i + 1]!);
        ceW[b * S + pad + i] = r.ce ? r.ce[i]! : 1;
      }
      if (r.kl) klW[b * S + pad + i] = r.kl[i]!;
    });
  });
  const sum = (a: Float64Array) => a.reduce((s, v) => s + v, 0);
  const ceTotal = sum(ceW);
  const klTotal = sum(klW);
  if (ceTotal > 0) for (let i = 0; i < ceW.length; i++) ceW[i]! /= ceTotal;
  if (klTotal > 0) for (let i = 0; i < klW.length; i++) klW[i]! /= klTotal;

  // query i sees key j iff j <= i, key j is a token, and (sliding layers) i - j < window
  const bias = new Float64Array(B * S * S).fill(MASKED); // [B, 1, S, S]
  const sliding = kinds.sliding ? new Float64Array(B * S * S).fill(MASKED) : null;
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < S; i++) {
      for (let j = padding[b]!; j <= i; j++) {
        bias[(b * S + i) * S + j] = 0;
        if (sliding && i - j < (spec.slidingWindow ?? 0)) sliding[(b * S + i) * S + j] = 0;
      }
    }
  }
  const inputs = new Map<string, { data: Float64Array | BigInt64Array; shape: number[] }>([
    [GRAD_IO.inputIds, { data: ids, shape: [B, S] }],
    [GRAD_IO.bias, { data: bias, shape: [B, 1, S, S] }],
    [LOSS_IO.targets, { data: targets, shape: [B, S, 1] }],
    [LOSS_IO.ceWeights, { data: ceW, shape: [B, S, 1] }],
    [LOSS_IO.klWeights, { data: klW, shape: [B, S, 1] }],
  ]);
  if (sliding) inputs.set(GRAD_IO.slidingBias, { data: sliding, shape: [B, 1, S, S] });
  const types: LayerType[] = kinds.localRope ? ['full', 'sliding'] : ['full'];
  for (const type of types) {
    // the float32 tables the inference graph uses, at each row's positions (padding slots at position 0)
    const { cos, sin } = ropeTables(spec, S, type);
    const half = hd / 2;
    const c = new Float64Array(B * S * hd); // [B, 1, S, hd]
    const s = new Float64Array(B * S * hd);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < S; i++) {
        const pos = Math.max(0, i - padding[b]!);
        for (let f = 0; f < half; f++) {
          const at = (b * S + i) * hd;
          c[at + f] = c[at + half + f] = cos[pos * half + f]!;
          s[at + f] = s[at + half + f] = sin[pos * half + f]!;
        }
      }
    }
    inputs.set(GRAD_IO.cos(type), { data: c, shape: [B, 1, S, hd] });
    inputs.set(GRAD_IO.sin(type), { data: s, shape: [B, 1, S, hd] });
  }
  return { batch: B, seq: S, padding, inputs, hasKl: klTotal > 0, ceTotal, klTotal };
}
