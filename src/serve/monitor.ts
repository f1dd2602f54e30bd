/**
 * The `emlens.monitor` request field: per generated token, the projection of its residual
 * (`blocks.L.hook_resid_post` at the token's own position) on a direction, at each monitored layer. The
 * projection is `resid . v / |v|`, the signed length of the residual along the direction (the scale a steer of
 * `unit: true` adds to), so values of different layers and files compare in the residual's own units.
 */

import { type ProjectionSpec, projectAt, projectionSpec } from '../directions/projection.js';
import { selectLayers } from '../interventions/compose.js';
import type { HookName } from '../model/hooks.js';
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
  return asApiError(() => projectionSpec(set, layers, 'The monitored direction'), `${param}.layers`);
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
