/**
 * Every op's backward against a central finite difference, in float64: a tiny graph computes
 * loss = sum(op(x...) · r) for a fixed random r, outputs its gradients, and the same session's loss is
 * re-run at x ± h e_i for every element.
 */
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { Tape, type Val } from '../../src/grad/tape.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

interface Case {
  name: string;
  inputs: number[][];
  /** Builds the op from its parameter inputs. */
  op: (t: Tape, xs: Val[]) => Val;
  /** Inputs kept positive (sqrt, div denominators). */
  positive?: number[];
}

async function check(c: Case): Promise<number> {
  const t = new Tape(c.name, 'float64');
  const xs = c.inputs.map((s, i) => t.param(`x${i}`, s));
  const y = c.op(t, xs);
  const r = rng(99);
  const weights = t.constant(
    Array.from({ length: numel(y.shape) }, () => r()),
    y.shape,
  );
  const loss = t.reduceSum(t.mul(y, weights), [...y.shape.keys()], false);
  const grads = t.backward(loss, xs);
  t.output(loss, 'loss', []);
  grads.forEach((gname, i) => {
    t.output(gname, `g${i}`, c.inputs[i]!);
  });
  const session = await ort.InferenceSession.create(t.encode());
  const r2 = rng(7);
  const values = c.inputs.map((s, i) =>
    Float64Array.from({ length: numel(s) }, () =>
      c.positive?.includes(i) ? 0.5 + Math.abs(r2()) * 2 : r2() * 2,
    ),
  );
  const run = async (vals: Float64Array[]) => {
    const feeds: Record<string, ort.Tensor> = {};
    vals.forEach((v, i) => {
      feeds[`x${i}`] = new ort.Tensor('float64', v, c.inputs[i]!);
    });
    return session.run(feeds);
  };
  const out = await run(values);
  let worst = 0;
  const h = 1e-6;
  for (let i = 0; i < values.length; i++) {
    const g = out[`g${i}`]!.data as Float64Array;
    for (let k = 0; k < values[i]!.length; k++) {
      const plus = values.map((v) => v.slice());
      const minus = values.map((v) => v.slice());
      plus[i]![k]! += h;
      minus[i]![k]! -= h;
      const lp = ((await run(plus)).loss!.data as Float64Array)[0]!;
      const lm = ((await run(minus)).loss!.data as Float64Array)[0]!;
      const fd = (lp - lm) / (2 * h);
      worst = Math.max(worst, Math.abs(fd - g[k]!) / Math.max(1, Math.abs(fd)));
    }
  }
  await session.release();
  return worst;
}

const cases: Case[] = [
  { name: 'add-broadcast', inputs: [[2, 3], [3]], op: (t, [a, b]) => t.add(a!, b!) },
  {
    name: 'sub-broadcast',
    inputs: [
      [2, 1, 3],
      [4, 1],
    ],
    op: (t, [a, b]) => t.sub(a!, b!),
  },
  {
    name: 'mul-broadcast',
    inputs: [
      [2, 3],
      [2, 1],
    ],
    op: (t, [a, b]) => t.mul(a!, b!),
  },
  { name: 'div', inputs: [[2, 3], [3]], op: (t, [a, b]) => t.div(a!, b!), positive: [1] },
  { name: 'neg', inputs: [[4]], op: (t, [a]) => t.neg(a!) },
  { name: 'exp', inputs: [[2, 3]], op: (t, [a]) => t.exp(a!) },
  { name: 'tanh', inputs: [[2, 3]], op: (t, [a]) => t.tanh(a!) },
  { name: 'sigmoid', inputs: [[2, 3]], op: (t, [a]) => t.sigmoid(a!) },
  { name: 'sqrt', inputs: [[5]], op: (t, [a]) => t.sqrt(a!), positive: [0] },
  { name: 'softmax', inputs: [[2, 4]], op: (t, [a]) => t.softmax(a!) },
  { name: 'logSoftmax', inputs: [[2, 4]], op: (t, [a]) => t.logSoftmax(a!) },
  {
    name: 'matmul-2d',
    inputs: [
      [3, 4],
      [4, 2],
    ],
    op: (t, [a, b]) => t.matmul(a!, b!),
  },
  {
    name: 'matmul-batched-broadcast',
    inputs: [
      [2, 3, 4],
      [4, 5],
    ],
    op: (t, [a, b]) => t.matmul(a!, b!),
  },
  {
    name: 'matmul-4d',
    inputs: [
      [2, 2, 3, 4],
      [2, 2, 4, 3],
    ],
    op: (t, [a, b]) => t.matmul(a!, b!),
  },
  { name: 'reshape', inputs: [[2, 6]], op: (t, [a]) => t.reshape(a!, [3, 4]) },
  { name: 'transpose', inputs: [[2, 3, 4]], op: (t, [a]) => t.transpose(a!, [2, 0, 1]) },
  {
    name: 'concat',
    inputs: [
      [2, 3],
      [2, 2],
    ],
    op: (t, [a, b]) => t.concat([a!, b!], 1),
  },
  { name: 'slice', inputs: [[3, 6]], op: (t, [a]) => t.slice(a!, 1, 2, 5) },
  { name: 'expand', inputs: [[3, 1]], op: (t, [a]) => t.expand(a!, [2, 3, 4]) },
  { name: 'reduceSum', inputs: [[2, 3, 4]], op: (t, [a]) => t.reduceSum(a!, [1], false) },
  { name: 'reduceMean-keep', inputs: [[2, 3, 4]], op: (t, [a]) => t.reduceMean(a!, [0, 2], true) },
  {
    name: 'where',
    inputs: [[2, 3], [3]],
    op: (t, [a, b]) => {
      const mask = t.g.fresh('mask');
      t.g.initializer(mask, 'bool', [2, 3], Uint8Array.of(1, 0, 1, 0, 0, 1));
      return t.where(mask, a!, b!);
    },
  },
  {
    name: 'pickLast',
    inputs: [[2, 3, 4]],
    op: (t, [a]) => {
      const idx = t.g.fresh('idx');
      t.g.initializer(idx, 'int64', [2, 3, 1], BigInt64Array.of(0n, 3n, 1n, 2n, 2n, 0n));
      return t.pickLast(a!, { name: idx, shape: [2, 3, 1] });
    },
  },
  {
    name: 'gather-then-mul (embedding rows times a parameter)',
    inputs: [[3]],
    op: (t, [a]) => {
      const table = t.constant([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [4, 3]);
      const ids = t.g.fresh('ids');
      t.g.initializer(ids, 'int64', [2], BigInt64Array.of(3n, 1n));
      return t.mul(t.gather(table, { name: ids, shape: [2] }), a!);
    },
  },
  {
    name: 'fan-out (one value used twice accumulates)',
    inputs: [[3]],
    op: (t, [a]) => t.mul(t.tanh(a!), t.exp(a!)),
  },
  {
    name: 'composite: RMSNorm x / sqrt(mean(x²) + eps) · w',
    inputs: [[2, 4]],
    op: (t, [x]) => {
      const ms = t.reduceMean(t.mul(x!, x!), [1], true);
      const w = t.constant([0.5, 1, 1.5, 2], [4]);
      return t.mul(t.div(x!, t.sqrt(t.add(ms, t.scalar(1e-6)))), w);
    },
  },
  {
    name: 'composite: one causal attention head softmax(q kᵀ / √d + mask) v',
    inputs: [
      [3, 2],
      [3, 2],
      [3, 2],
    ],
    op: (t, [q, k, v]) => {
      const mask = t.constant([0, -1e9, -1e9, 0, 0, -1e9, 0, 0, 0], [3, 3]);
      const scores = t.add(t.div(t.matmul(q!, t.transpose(k!, [1, 0])), t.scalar(Math.SQRT2)), mask);
      return t.matmul(t.softmax(scores), v!);
    },
  },
];

describe('VJPs match float64 finite differences', () => {
  for (const c of cases) {
    it(c.name, async () => {
      expect(await check(c)).toBeLessThan(1e-7);
    });
  }

  it('a wrong VJP would be caught: the check sees a doubled gradient', async () => {
    // d/dx (x·x) through mul with both inputs the same value accumulates two terms; dropping one would be off by 2x.
    const worst = await check({ name: 'square', inputs: [[4]], op: (t, [a]) => t.mul(a!, a!) });
    expect(worst).toBeLessThan(1e-7);
  });
});
