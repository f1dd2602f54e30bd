/**
 * onnxruntime's own profiler, read back: kernel time per op type, averaged over the runs that count. Benchmarks
 * load a model with `sessionOptions: profilingOptions(prefix)`, run it, dispose it (which writes the file),
 * then call {@link readKernelProfile}.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type * as ort from 'onnxruntime-node';

/** Session options that make onnxruntime write a profile named `<prefix>_<date>.json`. */
export function profilingOptions(prefix: string): ort.InferenceSession.SessionOptions {
  return { enableProfiling: true, profileFilePrefix: prefix };
}

export interface KernelProfile {
  /** Runs averaged over. */
  readonly runs: number;
  /** Milliseconds of kernel time per run, by op type, largest first. */
  readonly msPerRunByOp: ReadonlyMap<string, number>;
  readonly totalMsPerRun: number;
}

interface ProfileEvent {
  readonly cat: string;
  readonly name: string;
  readonly ts: number;
  readonly dur: number;
  readonly args: { readonly op_name?: string };
}

/**
 * Reads the newest profile written under `prefix` (and deletes the profile files) and averages kernel time over
 * its runs after the first `skipRuns` (warm-up runs grow the arena and fault its pages in).
 */
export async function readKernelProfile(prefix: string, skipRuns: number): Promise<KernelProfile> {
  const dir = dirname(prefix);
  const files = (await readdir(dir))
    .filter((f) => f.startsWith(basename(prefix)) && f.endsWith('.json'))
    .sort();
  if (files.length === 0) throw new Error(`onnxruntime wrote no profile under ${prefix}`); // so the last one exists
  const events = JSON.parse(await readFile(join(dir, files[files.length - 1]!), 'utf8')) as ProfileEvent[];
  await Promise.all(files.map((f) => rm(join(dir, f), { force: true })));
  const runs = events
    .filter((e) => e.name === 'model_run')
    .map((e) => [e.ts, e.ts + e.dur] as const)
    .sort((a, b) => a[0] - b[0])
    .slice(skipRuns);
  if (runs.length === 0) throw new Error(`the profile holds no runs after the first ${skipRuns}`);
  const counted = (ts: number) => runs.some(([from, to]) => ts >= from && ts <= to);
  const byOp = new Map<string, number>();
  for (const e of events) {
    const op = e.args?.op_name;
    if (e.cat === 'Node' && e.name.endsWith('_kernel_time') && op && counted(e.ts)) {
      byOp.set(op, (byOp.get(op) ?? 0) + e.dur / 1000 / runs.length);
    }
  }
  const sorted = new Map([...byOp].sort((a, b) => b[1] - a[1]));
  return {
    runs: runs.length,
    msPerRunByOp: sorted,
    totalMsPerRun: [...byOp.values()].reduce((a, b) => a + b, 0),
  };
}
