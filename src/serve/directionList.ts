/**
 * `GET /v1/emlens/directions`: the direction files a request may name (what the playground offers), each with
 * its layers and norms. Only files the {@link DirectionResolver} allows are listed, so a symlink out of
 * `--directions-dir` is not shown; files under the folder are named by their path relative to it.
 */
import { readdir } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { directionLayers, directionNorms } from '../directions/direction.js';
import type { DirectionResolver } from './interventions.js';

/** Files looked at in the folder at most: a listing stays quick on a folder that holds much else. */
const MAX_FILES = 1000;

export interface DirectionListing {
  /** What a request names in `direction`. */
  readonly id: string;
  readonly layers: number[];
  readonly norms: number[];
  readonly method: string;
  readonly model: string;
}

/** The allowed direction files that load, sorted by id; a file that does not load is left out. */
export async function listDirections(resolver: DirectionResolver): Promise<DirectionListing[]> {
  const ids: string[] = [];
  const dir = resolver.folder;
  if (dir !== null) {
    // Node's recursive readdir does not follow symlinked folders; symlinked files are checked by resolvePath.
    const names = (await readdir(dir, { recursive: true })).filter((n) => n.endsWith('.safetensors'));
    for (const n of names.slice(0, MAX_FILES)) ids.push(n.split(sep).join('/'));
  }
  for (const f of resolver.namedFiles) {
    if (dir === null || relative(dir, f).startsWith('..')) ids.push(f);
  }
  const out: DirectionListing[] = [];
  for (const id of [...new Set(ids)].sort()) {
    try {
      const set = await resolver.load(dir !== null && !id.startsWith('/') ? join(dir, id) : id, 'direction');
      out.push({
        id,
        layers: directionLayers(set),
        norms: directionNorms(set),
        method: set.meta.method,
        model: set.meta.model,
      });
    } catch {
      // not allowed (a symlink out of the folder) or not a direction file: not offered
    }
  }
  return out;
}
