/**
 * Projections of residual activations on a direction (persona-vector style monitoring): the signed length
 * `x . v / |v|` of a residual `x` along a direction `v`, in the residual's own units (the scale a steer of
 * `unit: true` adds). One function, {@link projectAt}, computes it for the server's per-token monitor
 * (serve/monitor.ts) and for {@link projectRecords}, what `emlens project` runs over a data set: per record and
 * layer the mean over its answer tokens, the mean over its prompt tokens and every token's value.
 */
import type { TokenizedRecord } from '../data/record.js';
import { EmlensError } from '../errors.js';
import { type HookName, hookName } from '../model/hooks.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { dotAt, norm } from '../util/vector.js';
import type { DirectionSet } from './direction.js';

/** The layers (ascending) to project at, each with its direction vector and that vector's norm (> 0). */
export interface ProjectionSpec {
  readonly layers: readonly number[];
  readonly vectors: readonly Float32Array[];
  readonly norms: readonly number[];
}

/**
 * The projection of the residual stored at `data[offset .. offset + v.length)` on `v`: `x . v / vNorm`
 * (`vNorm` = |v|, passed so a caller projecting many positions computes it once).
 */
export function projectAt(data: Float32Array, offset: number, v: Float32Array, vNorm: number): number {
  return dotAt(data, offset, v) / vNorm;
}

/** A spec for `layers` of a direction set; a missing layer or a zero vector is refused (one sentence each). */
export function projectionSpec(
  set: DirectionSet,
  layers: readonly number[],
  what = 'The direction',
): ProjectionSpec {
  const vectors: Float32Array[] = [];
  const norms: number[] = [];
  for (const l of layers) {
    const v = set.vectors.get(l);
    if (v === undefined) {
      throw new EmlensError(
        `${what} has no vector for layer ${l} (it has layers ${[...set.vectors.keys()].join(', ')}); project at those layers or use another direction.`,
      );
    }
    const n = norm(v);
    if (!(n > 0)) {
      throw new EmlensError(
        `${what} is a zero vector at layer ${l}; a projection on it means nothing, so drop that layer.`,
      );
    }
    vectors.push(v);
    norms.push(n);
  }
  return { layers: [...layers], vectors, norms };
}

/** The hooks a projection reads: `blocks.L.hook_resid_post` for each layer. */
export function projectionHooks(spec: ProjectionSpec): HookName[] {
  return spec.layers.map((l) => hookName(l, 'resid_post'));
}

/** One record's projections at one layer. */
export interface LayerProjection {
  readonly layer: number;
  /** Mean over the answer tokens (mask 1); NaN when the record has none. */
  readonly answerMean: number;
  /** Mean over the prompt tokens (mask 0: chat template, system and user turn); NaN when it has none. */
  readonly promptMean: number;
  /** Every token's projection, in token order (`[seq]`). */
  readonly tokens: Float64Array;
}

/** One record's projections, with the id and metadata it came with. */
export interface RecordProjection {
  readonly id: string;
  readonly meta: Readonly<Record<string, unknown>>;
  /** The record's token ids and answer mask (1 = answer), for rendering the per-token values over the text. */
  readonly ids: readonly number[];
  readonly mask: Uint8Array;
  readonly layers: readonly LayerProjection[];
}

export interface ProjectRecordsOptions {
  readonly batchSize?: number;
  readonly interventions?: readonly Intervention[];
  /** Called after each batch with the number of records done. */
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Projects every record's residuals (`blocks.L.hook_resid_post`, the same forward pass collection runs) on
 * the direction at each layer of `spec`. A record without a mask counts every token as answer.
 *
 * @example
 * const spec = projectionSpec(await loadDirections('general.safetensors'), [1, 2]);
 * const rows = await projectRecords(model, responsesToRecords(tokenizer, responses), spec);
 */
export async function projectRecords(
  model: Pick<Model, 'forward' | 'spec'>,
  records: readonly TokenizedRecord[],
  spec: ProjectionSpec,
  opts: ProjectRecordsOptions = {},
): Promise<RecordProjection[]> {
  const d = model.spec.dModel;
  if (spec.vectors.some((v) => v.length !== d)) {
    throw new EmlensError(
      `The direction has vectors of length ${spec.vectors[0]?.length} but the model's d_model is ${d}; use a direction computed on this model.`,
    );
  }
  const hooks = projectionHooks(spec);
  const batchSize = opts.batchSize ?? 8;
  const out: RecordProjection[] = [];
  for (let start = 0; start < records.length; start += batchSize) {
    const batch = records.slice(start, start + batchSize);
    const r = await model.forward(
      batch.map((rec) => rec.ids),
      { hooks, interventions: opts.interventions },
    );
    batch.forEach((rec, b) => {
      const mask = rec.mask ?? new Uint8Array(rec.ids.length).fill(1);
      const layers = spec.layers.map((layer, i) => {
        const t = r.hooks.get(hooks[i]!)!; // asked for above
        const seq = t.dims[1]!; // [batch, seq, d_model], left padded
        const first = b * seq + r.padding[b]!;
        const tokens = new Float64Array(rec.ids.length);
        let aSum = 0;
        let aN = 0;
        let pSum = 0;
        let pN = 0;
        for (let p = 0; p < rec.ids.length; p++) {
          const x = projectAt(t.data, (first + p) * d, spec.vectors[i]!, spec.norms[i]!);
          tokens[p] = x;
          if (mask[p]) {
            aSum += x;
            aN++;
          } else {
            pSum += x;
            pN++;
          }
        }
        return {
          layer,
          answerMean: aN ? aSum / aN : Number.NaN,
          promptMean: pN ? pSum / pN : Number.NaN,
          tokens,
        };
      });
      out.push({ id: rec.id, meta: rec.meta ?? {}, ids: rec.ids, mask, layers });
    });
    opts.onProgress?.(Math.min(start + batchSize, records.length), records.length);
  }
  return out;
}

/** Indices of `rows` sorted by the answer mean at `layer`, largest first (the samples pushing along `v`). */
export function rankByProjection(rows: readonly RecordProjection[], layer: number): number[] {
  const at = (r: RecordProjection) => {
    const l = r.layers.find((x) => x.layer === layer);
    if (!l) throw new EmlensError(`Layer ${layer} was not projected; rank by one of the projected layers.`);
    return Number.isNaN(l.answerMean) ? Number.NEGATIVE_INFINITY : l.answerMean;
  };
  return rows.map((_, i) => i).sort((a, b) => at(rows[b]!) - at(rows[a]!));
}
