/**
 * Steering and ablation specs (server flags and the per-request `emlens` field) turned into interventions,
 * with direction files restricted to the ones the server was allowed to read.
 *
 * Conventions (as `emlens generate`): steering layer L adds `scale * v` at `blocks.L.hook_resid_post`;
 * ablating layer L removes `v`'s direction at `blocks.L.hook_resid_pre`, `hook_resid_mid` and `hook_resid_post`.
 * A file direction is the file's `direction.L` for each layer L; an inline vector is used at every layer listed.
 */
import { createHash } from 'node:crypto';
import { lstat, realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { type DirectionSet, loadDirections } from '../directions/direction.js';
import type { Intervention } from '../model/interventions.js';
import { ApiError } from './apiError.js';
import type { AblateSpec, DirectionSpec, LayersSpec, PositionsPolicy, SteerSpec } from './protocol.js';

export interface ModelShape {
  readonly numLayers: number;
  readonly dModel: number;
}

/** Where direction files may come from: files under a folder, and files named one by one. */
export interface DirectionAccess {
  /** Every file under this folder (symlinks resolved) may be named; relative paths resolve against it. */
  readonly directionsDir?: string;
  /** These files may be named too (by any path that resolves to them). */
  readonly files?: readonly string[];
}

/** Resolves and loads direction files, allowing only the paths of a {@link DirectionAccess}. */
export class DirectionResolver {
  private readonly cache = new Map<string, { stamp: string; set: Promise<DirectionSet> }>();

  private constructor(
    private readonly dir: string | null,
    private readonly files: ReadonlySet<string>,
  ) {}

  static async create(access: DirectionAccess): Promise<DirectionResolver> {
    let dir: string | null = null;
    if (access.directionsDir !== undefined) {
      try {
        dir = await realpath(access.directionsDir);
      } catch {
        throw new ApiError(
          400,
          `The directions folder ${access.directionsDir} does not exist; create it or pass another --directions-dir.`,
        );
      }
      // A file here would make every request path resolve "under" nothing: refuse it before the server listens.
      if (!(await stat(dir)).isDirectory()) {
        throw new ApiError(
          400,
          `--directions-dir ${access.directionsDir} is a file, not a folder; pass the folder that holds the direction files (or name single files with --allow-direction).`,
        );
      }
    }
    const files = new Set<string>();
    for (const f of access.files ?? []) {
      try {
        files.add(await realpath(f));
      } catch {
        throw new ApiError(400, `The direction file ${f} does not exist; check the path.`);
      }
    }
    return new DirectionResolver(dir, files);
  }

  /** Whether a real (symlink-free) path lies inside the directions folder, or is the folder itself. */
  private inside(real: string): boolean {
    if (this.dir === null) return false;
    return real === this.dir || real.startsWith(this.dir.endsWith(sep) ? this.dir : this.dir + sep);
  }

  /**
   * Whether a path that does not exist would lie inside the folder: its deepest existing ancestor, with every
   * symlink resolved, must be inside. Only then may the answer say "missing" (400): for anything else a 400 vs
   * 403 would tell a client which files exist outside the folder (through a symlinked subfolder, `..`, an
   * absolute path or a dangling symlink), so those all get the 403 a forbidden existing file gets.
   */
  private async missingInside(candidate: string): Promise<boolean> {
    let p = candidate;
    for (;;) {
      try {
        await lstat(p);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ENOTDIR')
          return false;
      }
      const up = dirname(p);
      if (up === p) return false;
      p = up;
    }
    // `p` exists (as a name); a dangling or looping symlink there has no real path and is not inside.
    try {
      return this.inside(await realpath(p));
    } catch {
      return false;
    }
  }

  /** The real path of an allowed direction file, or a 403 (or 400 when it is inside the folder but missing). */
  async resolvePath(path: string, param: string): Promise<string> {
    const candidate = isAbsolute(path) || this.dir === null ? resolve(path) : resolve(this.dir, path);
    let real: string | null = null;
    try {
      real = await realpath(candidate);
    } catch {
      real = null;
    }
    if (real !== null && (this.files.has(real) || (real !== this.dir && this.inside(real)))) return real;
    if (real === null && (await this.missingInside(candidate))) {
      throw new ApiError(
        400,
        `There is no direction file '${path}' under the directions folder; name an existing file.`,
        'invalid_request_error',
        'direction_not_found',
        param,
      );
    }
    throw new ApiError(
      403,
      `Direction file '${path}' is not one this server may read; name a file under the server's --directions-dir or one given on its command line.`,
      'permission_error',
      'direction_not_allowed',
      param,
    );
  }

  /** The direction set in an allowed file (cached until the file changes). */
  async load(path: string, param: string): Promise<DirectionSet> {
    const real = await this.resolvePath(path, param);
    const s = await stat(real);
    const stamp = `${s.size}:${s.mtimeMs}`;
    const hit = this.cache.get(real);
    if (hit && hit.stamp === stamp) return hit.set;
    const set = loadDirections(real).catch((e: unknown) => {
      this.cache.delete(real);
      throw new ApiError(400, (e as Error).message, 'invalid_request_error', 'invalid_direction', param);
    });
    this.cache.set(real, { stamp, set });
    return set;
  }
}

/** `3`, `[3, 5]` or `all` as sorted distinct layers, each checked against the model. */
export function expandLayers(layers: LayersSpec, numLayers: number, param: string): number[] {
  if (layers === 'all') return Array.from({ length: numLayers }, (_, i) => i);
  const list = [...new Set(typeof layers === 'number' ? [layers] : layers)].sort((a, b) => a - b);
  const bad = list.find((l) => l >= numLayers);
  if (bad !== undefined) {
    throw new ApiError(
      400,
      `Layer ${bad} does not exist (the model has layers 0..${numLayers - 1}); pick layers from those.`,
      'invalid_request_error',
      'invalid_value',
      param,
    );
  }
  return list;
}

/** The vector of each layer: the file's `direction.L`, or the inline vector at every layer. */
async function layerVectors(
  direction: DirectionSpec,
  layers: readonly number[],
  shape: ModelShape,
  resolver: DirectionResolver,
  param: string,
): Promise<Map<number, Float32Array>> {
  const out = new Map<number, Float32Array>();
  if (typeof direction !== 'string') {
    if (direction.length !== shape.dModel) {
      throw new ApiError(
        400,
        `The inline direction has ${direction.length} entries but the model's d_model is ${shape.dModel}; send one number per residual dimension.`,
        'invalid_request_error',
        'invalid_value',
        `${param}.direction`,
      );
    }
    const v = Float32Array.from(direction);
    for (const l of layers) out.set(l, v);
    return out;
  }
  const set = await resolver.load(direction, `${param}.direction`);
  for (const l of layers) {
    const v = set.vectors.get(l);
    if (v === undefined) {
      throw new ApiError(
        400,
        `Direction file '${direction}' has no direction.${l} (it holds layers ${[...set.vectors.keys()].join(', ')}); pick layers it covers.`,
        'invalid_request_error',
        'invalid_value',
        `${param}.layers`,
      );
    }
    if (v.length !== shape.dModel) {
      throw new ApiError(
        400,
        `Direction file '${direction}' has vectors of length ${v.length} but the model's d_model is ${shape.dModel}; use directions computed on this model.`,
        'invalid_request_error',
        'invalid_direction',
        `${param}.direction`,
      );
    }
    out.set(l, v);
  }
  return out;
}

/**
 * The interventions of a set of steer/ablate specs, ablations first (at a site they act before steering in
 * any case). `prefix` names the specs in error messages (`emlens` for the request field).
 */
export async function buildInterventions(
  specs: { readonly steer?: readonly SteerSpec[]; readonly ablate?: readonly AblateSpec[] },
  shape: ModelShape,
  resolver: DirectionResolver,
  prefix: string,
): Promise<Intervention[]> {
  const out: Intervention[] = [];
  for (const [i, a] of (specs.ablate ?? []).entries()) {
    const param = `${prefix}.ablate[${i}]`;
    const layers = expandLayers(a.layers, shape.numLayers, `${param}.layers`);
    for (const [l, d] of await layerVectors(a.direction, layers, shape, resolver, param)) {
      out.push({
        kind: 'ablate',
        hooks: [`blocks.${l}.hook_resid_pre`, `blocks.${l}.hook_resid_mid`, `blocks.${l}.hook_resid_post`],
        directions: [d],
      });
    }
  }
  for (const [i, s] of (specs.steer ?? []).entries()) {
    const param = `${prefix}.steer[${i}]`;
    const layers = expandLayers(s.layers, shape.numLayers, `${param}.layers`);
    for (const [l, v] of await layerVectors(s.direction, layers, shape, resolver, param)) {
      out.push({ kind: 'steer', hooks: [`blocks.${l}.hook_resid_post`], vector: v, scale: s.scale ?? 1 });
    }
  }
  return out;
}

/**
 * A key equal for two requests exactly when their interventions and position policy are the same, so they
 * can share a batch (the graph takes one steering vector and one ablation basis per site).
 */
export function interventionKey(interventions: readonly Intervention[], positions: PositionsPolicy): string {
  if (interventions.length === 0) return 'none';
  const h = createHash('sha256');
  h.update(positions);
  for (const iv of interventions) {
    h.update(`|${iv.kind}|${iv.hooks.join(',')}|`);
    if (iv.kind === 'steer') {
      h.update(`${iv.scale ?? 1}|`);
      h.update(new Uint8Array(iv.vector.buffer, iv.vector.byteOffset, iv.vector.byteLength));
    } else {
      for (const d of iv.directions) h.update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    }
  }
  return h.digest('hex');
}
