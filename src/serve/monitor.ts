/**
 * The `emlens.monitor` request field: per generated token, the projection of its residual
 * (`blocks.L.hook_resid_post` at the token's own position) on a direction, at each monitored layer. The
 * projection is `resid . v / |v|`, the signed length of the residual along the direction (the scale a steer of
 * `unit: true` adds to), so values of different layers and files compare in the residual's own units.
 */

import { type ProjectionSpec, projectAt } from '../directions/projection.js';
import { selectLayers } from '../interventions/compose.js';
import type { HookName } from '../model/hooks.js';
import { norm } from '../util/vector.js';
import { ApiError } from './apiError.js';
import { asApiError, type DirectionResolver, type ModelShape, specDirections } from './interventions.js';
import type { RequestMonitor } from './protocol.js';

/** What the worker needs to project: the layers (ascending) and each one's direction and norm. */
export type MonitorSpec = ProjectionSpec;

/** Checks a request's monitor and loads its direction; a problem is a 400 naming the field. */
export async function buildMonitor(
  m: RequestMonitor,
  shape: ModelShape,
  resolver: DirectionResolver,
  param = 'emlens.monitor',
): Promise<MonitorSpec> {
  const layers = asApiError(() => selectLayers(m.layers, shape.numLayers), `${param}.layers`);
  const set = await specDirections(m.direction, shape, resolver, `${param}.direction`);
  const vectors: Float32Array[] = [];
  const norms: number[] = [];
  for (const l of layers) {
    const v = set.vectors.get(l);
    if (v === undefined) {
      throw new ApiError(
        400,
        `The monitored direction has no vector for layer ${l} (it has layers ${[...set.vectors.keys()].join(', ')}); monitor those layers or use another direction.`,
        'invalid_request_error',
        'invalid_value',
        `${param}.layers`,
      );
    }
    const n = norm(v);
    if (!(n > 0)) {
      throw new ApiError(
        400,
        `The monitored direction is a zero vector at layer ${l}; a projection on it means nothing, so use a direction with a non-zero norm.`,
        'invalid_request_error',
        'invalid_value',
        `${param}.direction`,
      );
    }
    vectors.push(v);
    norms.push(n);
  }
  return { layers, vectors, norms };
}

/** The hooks a monitor reads. */
export function monitorHooks(m: MonitorSpec): HookName[] {
  return m.layers.map((l) => `blocks.${l}.hook_resid_post` as const);
}

/**
 * The projections of one row's residual at one position, a value per monitored layer: `hooks` are the
 * forward's `[batch, seq, d_model]` tensors, `row` and `pos` index into them.
 */
export function projectRow(
  m: MonitorSpec,
  hooks: ReadonlyMap<HookName, { readonly data: Float32Array; readonly dims: readonly number[] }>,
  row: number,
  pos: number,
): number[] {
  return m.layers.map((l, i) => {
    const t = hooks.get(`blocks.${l}.hook_resid_post`);
    if (!t) throw new Error(`the forward returned no blocks.${l}.hook_resid_post`); // asked for by monitorHooks
    const [, seq, d] = t.dims as [number, number, number]; // [batch, seq, d_model]
    return projectAt(t.data, (row * seq + pos) * d, m.vectors[i]!, m.norms[i]!); // i < layers.length = vectors.length
  });
}
