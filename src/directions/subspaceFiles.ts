/**
 * The files of a subspace: `emlens direction subspace --out F.safetensors` writes one unit direction file per
 * basis vector, `F.b0.safetensors`, `F.b1.safetensors`, ... (metadata `method` = `subspace`, `basis_index`,
 * `rank`). This module names those files (one road for the writer and the readers) and loads a subspace back
 * from the name given to `--out`, so `emlens ablate --direction F.safetensors` removes the whole span.
 */
import { extname } from 'node:path';
import { EmlensError } from '../errors.js';
import { pathExists } from '../io/files.js';
import { type DirectionSet, loadDirections } from './direction.js';

/** `F.safetensors` -> `F.b0.safetensors`, `F.b1.safetensors`, ... (k names). */
export function subspaceBasisPaths(out: string, k: number): string[] {
  const ext = extname(out);
  const stem = out.slice(0, out.length - ext.length);
  return Array.from({ length: k }, (_, j) => `${stem}.b${j}${ext}`);
}

/** The rank a subspace basis file records (metadata `rank`), or undefined for any other direction file. */
export function subspaceRank(set: DirectionSet): number | undefined {
  if (set.meta.method !== 'subspace') return undefined;
  const r = Number(set.meta.extra?.rank);
  return Number.isSafeInteger(r) && r > 0 ? r : undefined;
}

/** What {@link loadDirectionOrSubspace} found at a path. */
export interface LoadedDirections {
  /** One set for a direction file; the k basis sets (in basis order) for a subspace. */
  readonly sets: DirectionSet[];
  /** The files read. */
  readonly paths: string[];
  /** Set when the file is one basis vector of a larger subspace (the others were not read). */
  readonly partOfSubspace?: { readonly index: number; readonly rank: number };
}

/**
 * Reads `path` as a direction file when it exists; otherwise, when `path` is the name a subspace was written
 * under (its basis files `path.b0`, `path.b1`, ... exist), every basis file, checked to be one complete
 * subspace (basis indices 0..k-1 of one rank k). A basis file given directly is read alone, with
 * `partOfSubspace` saying what it belongs to.
 */
export async function loadDirectionOrSubspace(path: string): Promise<LoadedDirections> {
  if (await pathExists(path)) {
    const set = await loadDirections(path);
    const rank = subspaceRank(set);
    const index = Number(set.meta.extra?.basis_index);
    if (rank !== undefined && rank > 1 && Number.isSafeInteger(index)) {
      return { sets: [set], paths: [path], partOfSubspace: { index, rank } };
    }
    return { sets: [set], paths: [path] };
  }
  const [first] = subspaceBasisPaths(path, 1);
  if (first === undefined || !(await pathExists(first))) {
    throw new EmlensError(
      `Direction file ${path} does not exist (nor a subspace written under that name, ${first}); check the path.`,
    );
  }
  const head = await loadDirections(first);
  const rank = subspaceRank(head);
  if (rank === undefined) {
    throw new EmlensError(
      `${first} is not a subspace basis file (its method is ${head.meta.method}, not subspace); pass the direction file itself.`,
    );
  }
  const paths = subspaceBasisPaths(path, rank);
  const sets = [head];
  for (const [j, p] of paths.entries()) {
    if (j === 0) continue;
    if (!(await pathExists(p))) {
      throw new EmlensError(
        `The subspace ${path} has rank ${rank} but its basis file ${p} is missing; write it again with emlens direction subspace.`,
      );
    }
    const set = await loadDirections(p);
    if (subspaceRank(set) !== rank || set.meta.extra?.basis_index !== String(j)) {
      throw new EmlensError(
        `${p} is not basis vector ${j} of the rank-${rank} subspace ${path} (it records basis_index ${set.meta.extra?.basis_index ?? 'none'}, rank ${set.meta.extra?.rank ?? 'none'}); write the subspace again with emlens direction subspace.`,
      );
    }
    sets.push(set);
  }
  return { sets, paths };
}
