/**
 * Steering and ablation specs (server flags and the per-request `emlens` field) turned into interventions,
 * with direction files restricted to the ones the server was allowed to read.
 *
 * The specs go through the library's {@link composeInterventions}, as every command's do: steering layer L adds
 * `scale * v` at `blocks.L.hook_resid_post`; ablating removes `v` from every residual site of the chosen blocks,
 * each site once (owned by its block). A file direction is the file's `direction.L` for each layer L; an inline
 * vector is used at every layer listed. Errors are 400s naming the spec's field (`param`).
 */
import { createHash } from 'node:crypto';
import { lstat, realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { type DirectionSet, loadDirections } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import {
  checkDirectionsFit,
  composeInterventions,
  constantDirectionSet,
  type InterventionRequest,
  type ModelShape,
  selectLayers,
} from '../interventions/compose.js';
import type { Intervention } from '../model/interventions.js';
import { ApiError } from './apiError.js';
import type { DirectionSpec, PositionsPolicy, RequestAblate, RequestSteer } from './protocol.js';

export type { ModelShape } from '../interventions/compose.js';

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

  /** The directions folder (real path), or null. */
  get folder(): string | null {
    return this.dir;
  }

  /** The files named one by one (real paths). */
  get namedFiles(): readonly string[] {
    return [...this.files];
  }

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

/** Runs `f`; an EmlensError it throws (not already an ApiError) becomes a 400 naming `param`. */
export function asApiError<T>(f: () => T, param: string, code = 'invalid_value'): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof EmlensError && !(e instanceof ApiError)) {
      throw new ApiError(400, e.message, 'invalid_request_error', code, param);
    }
    throw e;
  }
}

/**
 * One spec's direction as a set: an allowed file through the shared loader (F32, finite), or an inline vector
 * held at every layer and checked the same way (finite, the model's d_model).
 */
export async function specDirections(
  direction: DirectionSpec,
  shape: ModelShape,
  resolver: DirectionResolver,
  param: string,
): Promise<DirectionSet> {
  if (typeof direction === 'string') {
    const set = await resolver.load(direction, param);
    asApiError(
      () => checkDirectionsFit(set, shape, `Direction file '${direction}'`),
      param,
      'invalid_direction',
    );
    return set;
  }
  return asApiError(() => {
    const set = constantDirectionSet(
      direction,
      Array.from({ length: shape.numLayers }, (_, i) => i),
      { method: 'inline' },
      'the inline direction',
    );
    checkDirectionsFit(set, shape, 'The inline direction');
    return set;
  }, param);
}

/**
 * The interventions of a set of steer/ablate specs, built by {@link composeInterventions} (ablations first).
 * `prefix` names the specs in error messages (`emlens` for the request field, `server` for the command line).
 */
export async function buildInterventions(
  specs: { readonly steer?: readonly RequestSteer[]; readonly ablate?: readonly RequestAblate[] },
  shape: ModelShape,
  resolver: DirectionResolver,
  prefix: string,
): Promise<Intervention[]> {
  // Each spec is checked alone, so that an error names the field at fault: layers, then the direction, then
  // whether the direction covers the layers (or the `from` layer) asked for.
  const out: Intervention[] = [];
  const one = async (kind: 'steer' | 'ablate', i: number, spec: RequestSteer | RequestAblate) => {
    const param = `${prefix}.${kind}[${i}]`;
    asApiError(() => selectLayers(spec.layers, shape.numLayers), `${param}.layers`);
    const direction = await specDirections(spec.direction, shape, resolver, `${param}.direction`);
    const request: InterventionRequest =
      kind === 'steer' ? { steer: [{ ...spec, direction }] } : { ablate: [{ ...spec, direction }] };
    const at = spec.from !== undefined && spec.from !== 'own' ? 'from' : 'layers';
    out.push(...asApiError(() => composeInterventions(request, shape), `${param}.${at}`));
  };
  for (const [i, a] of (specs.ablate ?? []).entries()) await one('ablate', i, a);
  for (const [i, s] of (specs.steer ?? []).entries()) await one('steer', i, s);
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
