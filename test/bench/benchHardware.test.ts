/**
 * The hardware bounds the benchmarks divide by: the MatMul ceiling and the copy bandwidth, measured on small
 * inputs (the numbers are timings; what is checked is their bookkeeping), and the default thread count.
 */
import { availableParallelism } from 'node:os';
import { expect, it } from 'vitest';
import {
  blockGemmShapes,
  measureCopyBandwidth,
  measureMatMulCeiling,
  openMatMulCeiling,
} from '../../benchmarks/lib/hardware.js';
import { defaultThreads } from '../../src/model/session.js';
import { weightNames, weightShape } from '../../src/model/spec.js';
import { QWEN25_05B_SHAPE, tinySpec } from '../../src/model/tiny.js';

it('runs the given GEMMs and counts their FLOPs; a multi-pass run reports the time per pass; any row count runs', async () => {
  const shapes = [
    { k: 8, n: 16 },
    { k: 16, n: 4 },
  ];
  const ceiling = await openMatMulCeiling(shapes, 3, { threads: 1 });
  try {
    expect(ceiling.flops).toBe(2 * 3 * (8 * 16 + 16 * 4));
    const one = await ceiling.run();
    const perPass = await ceiling.run(5);
    expect(one).toBeGreaterThan(0);
    expect(perPass).toBeGreaterThan(0);
    expect(await ceiling.run(1, 7)).toBeGreaterThan(0); // other row counts on the same weights
  } finally {
    await ceiling.release();
  }
  const m = await measureMatMulCeiling(shapes, 3, { threads: 1, reps: 3 });
  expect(m.gflops).toBeCloseTo((2 * 3 * (8 * 16 + 16 * 4)) / (m.medianMs * 1e6), 12);
  expect(m.shapes).toBe(shapes);
});

it.each([1, 2])(
  'reports copy bandwidth as STREAM does (2 x bytes / best time), %i thread(s)',
  async (threads) => {
    const bytes = 1 << 20;
    const r = await measureCopyBandwidth({ bytes, threads, reps: 3 });
    expect(r.threads).toBe(threads);
    expect(r.runsMs).toHaveLength(3);
    expect(r.bestMs).toBe(Math.min(...r.runsMs));
    expect(r.gbPerS).toBeCloseTo((2 * bytes) / (r.bestMs * 1e6), 9);
  },
);

it('defaults to one onnxruntime thread per CPU this process may use', () => {
  expect(defaultThreads()).toBe(availableParallelism());
});

it('lists the block GEMMs the graph emits: fused q/k/v and gate/up, as many weights as the block projections', () => {
  const spec = tinySpec(QWEN25_05B_SHAPE);
  const shapes = blockGemmShapes(spec);
  expect(shapes).toEqual([
    { k: 896, n: (14 + 2 * 2) * 64 },
    { k: 896, n: 896 },
    { k: 896, n: 2 * 4864 },
    { k: 4864, n: 896 },
  ]);
  const projParams = weightNames(spec)
    .filter((n) => n.startsWith('model.layers.0.') && n.endsWith('_proj.weight'))
    .reduce((a, n) => a + weightShape(spec, n).reduce((x, y) => x * y, 1), 0);
  expect(shapes.reduce((a, s) => a + s.k * s.n, 0)).toBe(projParams);
});
