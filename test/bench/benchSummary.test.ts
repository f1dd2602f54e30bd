/**
 * `npm run bench`'s summary (benchmarks/lib/summary.ts): each figure beside its same-run bound and its goal,
 * met or not, from the benchmark JSONs; a missing JSON is reported as not run.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { benchSummary, collectRows, forwardRows, generateRows } from '../../benchmarks/lib/summary.js';
import { useTempDir } from '../helpers/fixtures.js';

const machine = { cpus: 2, cpuModel: 'test cpu', node: 'v20' };
const forward = {
  date: 'd1',
  machine,
  model: { layers: 24 },
  prefill: [
    { tokens: 128, medianMs: 100, gflops: 100, ceilingGflops: 200, ratioToCeiling: 0.5 },
    {
      tokens: 512,
      medianMs: 400,
      gflops: 190,
      ceilingGflops: 200,
      ratioToCeiling: 0.95,
      hookOverhead: 0.08,
      medianMsAllResidPostHooks: 432,
    },
  ],
};
const generate = {
  date: 'd2',
  machine,
  promptTokens: 32,
  newTokens: 64,
  memoryBound: {
    copyGbPerS1Thread: 30,
    copyGbPerSAllThreads: 40,
    weightBytesPerToken: 2e9,
    boundTokensPerS: 20,
  },
  singleStream: { decodeTokensPerS: 17, ratioToBandwidthBound: 0.85 },
  batches: [{ batch: 32, sampling: 'greedy', decodeTokensPerS: 100, speedupOverSingle: 5.9 }],
  gemvCeiling: { medianMs: 62.5, tokensPerS: 16, weightGbPerS: 32 },
  batchKernelCeiling: { tokens: 32, medianMs: 250, speedupOverOneToken: 7.5 },
};
const collect = {
  date: 'd3',
  machine,
  hooks: 'blocks.*.hook_resid_post (24)',
  sample: { records: 256, forwardOnlyTokPerS: 100, collectTokPerS: 95, ratio: 0.95 },
  rssMiB: { after1k: 1000, after4096: 1200 },
};

const tmp = useTempDir('emlens-bench-summary-');
beforeAll(async () => {
  await writeFile(tmp.join('forward.json'), JSON.stringify(forward));
  await writeFile(tmp.join('generate.json'), JSON.stringify(generate));
  await writeFile(tmp.join('collect.json'), JSON.stringify(collect));
  await mkdir(tmp.join('narrow-vs-general'));
});

describe('benchmark summary', () => {
  it('puts each figure beside its same-run bound and judges it against its goal', () => {
    const f = forwardRows(forward);
    expect(f.map((r) => r.met)).toEqual([null, true, false]);
    expect(f[1]?.bound).toBe('MatMul ceiling 200.0 GFLOP/s');
    const g = generateRows(generate);
    expect(g.map((r) => r.met)).toEqual([true, null, false, null]);
    expect(g[0]?.bound).toMatch(/copy bandwidth 40\.0 GB\/s .* = 20\.00 tok\/s/);
    // context rows: the kernels' own ratio to the bound, and their own batch-32 speedup
    expect(g[1]?.ratio).toBe('0.800');
    expect(g[3]).toMatchObject({ ratio: '7.50x', measured: '250 ms vs 63 ms (medians)' });
    const c = collectRows(collect);
    expect(c.map((r) => r.met)).toEqual([true, false]); // memory grew by 20%
  });

  it('writes a markdown table with a met column, and notes a benchmark that has not run', async () => {
    const md = await benchSummary(tmp.path, [
      { name: 'forward', command: 'npx tsx benchmarks/forward.ts', exitCode: 0, seconds: 12 },
    ]);
    expect(md).toMatch(/\| forward \| prefill, 512 tokens .* \| 0\.950 \| >= 0\.9 of the ceiling \| met \|/);
    expect(md).toMatch(/\| generate \| batch 32 decode, greedy .* \| not met \|/);
    expect(md).toMatch(/\| directions \| not run \|/);
    expect(md).toMatch(/forward: `npx tsx benchmarks\/forward.ts` ok in 12 s/);
    expect(md).toMatch(/Goals met: 3 of 6\./);
  });
});
