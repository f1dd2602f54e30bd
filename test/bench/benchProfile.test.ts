/**
 * The benchmarks' reading of onnxruntime's own profiler: a tiny model loaded with profiling on, run three
 * times and disposed, gives per-op kernel times averaged over the runs after the skipped ones.
 */
import { readdir } from 'node:fs/promises';
import { expect, it } from 'vitest';
import { profilingOptions, readKernelProfile } from '../../benchmarks/lib/profile.js';
import { makeTinyFixture, useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-profile-');

it('averages kernel time per op over the counted runs and removes the profile files', async () => {
  const prefix = tmp.join('prof');
  const tiny = await makeTinyFixture(tmp.path, {
    family: 'qwen2',
    seed: 3,
    name: 'tiny',
    load: { sessionOptions: profilingOptions(prefix) },
  });
  for (let r = 0; r < 3; r++) await tiny.model.forward([[1, 2, 3, 4]]);
  await tiny.dispose();
  const profile = await readKernelProfile(prefix, 1);
  expect(profile.runs).toBe(2);
  // Every block runs its MatMuls (qkv, o, gate, up, down) and one Attention per layer.
  expect([...profile.msPerRunByOp.keys()]).toEqual(expect.arrayContaining(['MatMul', 'Attention']));
  const times = [...profile.msPerRunByOp.values()];
  expect(times.every((ms) => ms > 0)).toBe(true);
  expect(times).toEqual([...times].sort((a, b) => b - a));
  expect(profile.totalMsPerRun).toBeCloseTo(
    times.reduce((a, b) => a + b, 0),
    9,
  );
  expect((await readdir(tmp.path)).filter((f) => f.startsWith('prof'))).toEqual([]);
  await expect(readKernelProfile(prefix, 0)).rejects.toThrow(/no profile/);
});
