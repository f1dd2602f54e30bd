/**
 * LoRA weight-space analysis without a forward pass (the model-organisms phase-transition analysis): for a
 * series of adapter checkpoints, per adapted module, the Frobenius norms of A and B over the steps, the PCA of
 * the flattened B trajectory, the "local cosine" cos(v[t-k] - v[t], v[t+k] - v[t]) for several k, and the
 * cosine of each step's B with the final one. Float64 throughout (ml-matrix SVD for the PCA).
 *
 * The local cosine is -1 where the trajectory runs straight through step t and rises (towards 0, or +1 for a
 * reversal) where it bends: a rotation of B at step t shows as a peak there.
 */
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Matrix, SingularValueDecomposition } from 'ml-matrix';
import { EmlensError } from '../../errors.js';
import { inputExists } from '../../io/inputFiles.js';
import { SafetensorsFile } from '../../io/safetensors.js';
import { LoraAdapter } from './adapter.js';
import { ADAPTER_CONFIG_FILE } from './config.js';

/** One checkpoint folder and its training step. */
export interface Checkpoint {
  readonly dir: string;
  readonly step: number;
}

/** One module's trajectory over the checkpoints (arrays are per step, in step order). */
export interface ModuleTrajectory {
  readonly module: string;
  readonly rank: number;
  readonly normA: number[];
  readonly normB: number[];
  /** cos(B[t], B[last]). */
  readonly cosToFinal: number[];
  /** By k: cos(B[t-k] - B[t], B[t+k] - B[t]); null where t - k or t + k is outside the series or a difference is 0. */
  readonly localCosine: Record<string, (number | null)[]>;
  /** PCA of the centred [steps, out * rank] B trajectory: explained variance share and coordinates per step. */
  readonly pca: { readonly explained: number[]; readonly coords: number[][] };
}

export interface LoraTrajectory {
  readonly steps: number[];
  readonly checkpoints: string[];
  readonly ks: number[];
  readonly modules: ModuleTrajectory[];
}

const CHECKPOINT = /^checkpoint-(\d+)$/;

/**
 * The checkpoints a user named: several adapter folders (steps from their `checkpoint-N` names, else 0, 1, ...),
 * or one parent folder of `checkpoint-N` folders, sorted by N.
 */
export async function findCheckpoints(dirs: readonly string[]): Promise<Checkpoint[]> {
  let list: string[] = [...dirs];
  if (dirs.length === 1 && !(await inputExists(join(dirs[0]!, ADAPTER_CONFIG_FILE)))) {
    let entries: string[];
    try {
      entries = await readdir(dirs[0]!);
    } catch {
      throw new EmlensError(
        `--checkpoints ${dirs[0]} is not a folder; pass adapter folders or their parent.`,
      );
    }
    list = entries.filter((e) => CHECKPOINT.test(e)).map((e) => join(dirs[0]!, e));
    if (list.length === 0) {
      throw new EmlensError(
        `${dirs[0]} holds neither ${ADAPTER_CONFIG_FILE} nor checkpoint-N folders; pass adapter folders or their parent.`,
      );
    }
  }
  const named = list.map((dir) => CHECKPOINT.exec(basename(dir.replace(/[\\/]+$/, ''))));
  const cps = list.map((dir, i) => ({ dir, step: named.every((m) => m) ? Number(named[i]![1]) : i }));
  if (dirs.length === 1) cps.sort((a, b) => a.step - b.step);
  if (cps.length < 3) {
    throw new EmlensError(
      `A trajectory needs at least 3 checkpoints but ${cps.length} were given; pass more adapter folders.`,
    );
  }
  return cps;
}

/** The trajectory of every module the checkpoints share (each must adapt the same modules at the same shapes). */
export async function loraTrajectory(
  checkpoints: readonly Checkpoint[],
  opts: { ks?: readonly number[] } = {},
): Promise<LoraTrajectory> {
  const ks = [...(opts.ks ?? [1, 2, 4])];
  for (const k of ks) {
    if (!Number.isInteger(k) || k < 1)
      throw new EmlensError(`--k ${k} is not a positive integer; pass e.g. 1,2,4.`);
  }
  const adapters = await Promise.all(checkpoints.map((c) => LoraAdapter.load(c.dir)));
  const first = adapters[0]!;
  const names = [...first.modules.keys()].sort();
  for (const [i, a] of adapters.entries()) {
    const here = [...a.modules.keys()].sort();
    if (here.join('\n') !== names.join('\n')) {
      throw new EmlensError(
        `${checkpoints[i]!.dir} adapts other modules than ${checkpoints[0]!.dir}; pass checkpoints of one training run.`,
      );
    }
  }
  // factors[step][module] = { A, B } as float64
  const factors: Map<string, { A: Float64Array; B: Float64Array }>[] = [];
  for (const [i, a] of adapters.entries()) {
    const f = await SafetensorsFile.open(a.file);
    try {
      const m = new Map<string, { A: Float64Array; B: Float64Array }>();
      for (const name of names) {
        const mod = a.modules.get(name)!;
        const ref = first.modules.get(name)!;
        if (
          mod.rank !== ref.rank ||
          mod.inFeatures !== ref.inFeatures ||
          mod.outFeatures !== ref.outFeatures
        ) {
          throw new EmlensError(
            `${checkpoints[i]!.dir} has ${name} at rank ${mod.rank} [${mod.outFeatures}, ${mod.inFeatures}] but ${checkpoints[0]!.dir} at rank ${ref.rank} [${ref.outFeatures}, ${ref.inFeatures}]; pass checkpoints of one training run.`,
          );
        }
        m.set(name, {
          A: Float64Array.from(await f.readFloat32(mod.keyA)),
          B: Float64Array.from(await f.readFloat32(mod.keyB)),
        });
      }
      factors.push(m);
    } finally {
      await f.close();
    }
  }
  const modules = names.map((name) => {
    const Bs = factors.map((m) => m.get(name)!.B);
    const last = Bs[Bs.length - 1]!;
    const localCosine: Record<string, (number | null)[]> = {};
    for (const k of ks) {
      localCosine[String(k)] = Bs.map((v, t) => {
        const before = Bs[t - k];
        const after = Bs[t + k];
        if (!before || !after) return null;
        return cosine(sub(before, v), sub(after, v));
      });
    }
    return {
      module: first.modules.get(name)!.module,
      rank: first.modules.get(name)!.rank,
      normA: factors.map((m) => norm(m.get(name)!.A)),
      normB: Bs.map(norm),
      cosToFinal: Bs.map((v) => cosine(v, last) ?? 0),
      localCosine,
      pca: trajectoryPca(Bs),
    };
  });
  return { steps: checkpoints.map((c) => c.step), checkpoints: checkpoints.map((c) => c.dir), ks, modules };
}

/** PCA of rows (centred, float64 SVD): each component's variance share and each row's coordinates. */
export function trajectoryPca(
  rows: readonly Float64Array[],
  components = 3,
): { explained: number[]; coords: number[][] } {
  const n = rows.length;
  const d = rows[0]!.length;
  const mean = new Float64Array(d);
  for (const r of rows) for (let j = 0; j < d; j++) mean[j]! += r[j]! / n;
  const m = new Matrix(n, d); // [steps, out * rank]
  rows.forEach((r, i) => {
    for (let j = 0; j < d; j++) m.set(i, j, r[j]! - mean[j]!);
  });
  const svd = new SingularValueDecomposition(m, { autoTranspose: true });
  const s = svd.diagonal;
  const total = s.reduce((a, x) => a + x * x, 0);
  const c = Math.min(components, s.length);
  const U = svd.leftSingularVectors;
  return {
    explained: s.slice(0, c).map((x) => (total > 0 ? (x * x) / total : 0)),
    coords: rows.map((_, i) => Array.from({ length: c }, (_, k) => U.get(i, k) * s[k]!)),
  };
}

function sub(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((x, i) => x - b[i]!);
}

function norm(a: Float64Array): number {
  let s = 0;
  for (const x of a) s += x * x;
  return Math.sqrt(s);
}

function cosine(a: Float64Array, b: Float64Array): number | null {
  const na = norm(a);
  const nb = norm(b);
  if (na === 0 || nb === 0) return null;
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s / (na * nb);
}
