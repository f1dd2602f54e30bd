/**
 * The gradient graph's forward against emlens's inference graph (same loss from the ordinary logits, the same
 * steered logits), and its gradients against central finite differences in float64, on tiny models of every
 * family, with and without a LoRA adapter merged in.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GradModel } from '../../src/grad/gradModel.js';
import { PARAM, type ParamSpec } from '../../src/grad/params.js';
import type { ResidualHookName } from '../../src/model/hooks.js';
import type { TinyFamily, TinyModelOptions } from '../../src/model/tiny.js';
import { makeTinyFixture, type TempDir, type TinyModel, tempDir } from '../helpers/fixtures.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

const ROWS = [
  [5, 17, 42, 99, 7, 3, 250, 11],
  [8, 300, 21, 64, 2],
];

/** Mean next-token NLL of the rows from the inference model's all-position logits, in float64. */
async function inferenceNll(
  tiny: TinyModel,
  steer?: { site: ResidualHookName; vector: Float32Array },
): Promise<number> {
  const r = await tiny.model.forward(ROWS, {
    logits: 'all',
    ...(steer ? { interventions: [{ kind: 'steer', hooks: [steer.site], vector: steer.vector }] } : {}),
  });
  const V = tiny.spec.vocabSize;
  const S = Math.max(...ROWS.map((x) => x.length));
  const logits = r.logits.data;
  let total = 0;
  let count = 0;
  ROWS.forEach((row, b) => {
    const pad = r.padding[b]!;
    for (let i = 0; i + 1 < row.length; i++) {
      const at = (b * S + pad + i) * V;
      let m = Number.NEGATIVE_INFINITY;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[at + v]!);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(logits[at + v]! - m);
      total -= logits[at + row[i + 1]!]! - m - Math.log(z);
      count++;
    }
  });
  return total / count;
}

const FAMILIES: { name: string; opts: TinyModelOptions }[] = [
  { name: 'qwen2', opts: { family: 'qwen2' } },
  { name: 'llama (llama3 rope, mlp bias)', opts: { family: 'llama', ropeScaling: 'llama3', mlpBias: true } },
  { name: 'mistral (sliding window 4)', opts: { family: 'mistral', slidingWindow: 4, headDim: 8 } },
  { name: 'qwen3 (q/k norms)', opts: { family: 'qwen3' } },
  { name: 'gemma2 (softcaps, GELU)', opts: { family: 'gemma2', slidingWindow: 4 } },
  { name: 'gemma3 (local rope, q/k norms)', opts: { family: 'gemma3_text' as TinyFamily, slidingWindow: 4 } },
];

const SITE: ResidualHookName = 'blocks.0.hook_resid_post';
const STEER: ParamSpec = { steer: { sites: [SITE], shared: true } };

describe.each(FAMILIES)('gradient graph: $name', ({ opts }) => {
  let dir: TempDir;
  let tiny: TinyModel & { dispose(): Promise<void> };
  let g32: GradModel;
  let g64: GradModel;
  beforeAll(async () => {
    dir = await tempDir('emlens-grad-');
    tiny = await makeTinyFixture(dir.path, { ...opts, dModel: 32, numLayers: 2, intermediateSize: 48 });
    g32 = await GradModel.load(tiny.dir, { threads: 1 });
    g64 = await GradModel.load(tiny.dir, { threads: 1, dtype: 'float64' });
  });
  afterAll(async () => {
    await g32?.dispose();
    await g64?.dispose();
    await tiny?.dispose();
    await dir?.cleanup();
  });

  const rows = ROWS.map((ids) => ({ ids }));

  it('its loss is the inference model NLL, unsteered and steered', async () => {
    const d = tiny.spec.dModel;
    const r = rng(3);
    const v = Float32Array.from({ length: d }, () => r() * 2);
    const plain = await g32.run(rows, { params: STEER });
    expect(Math.abs(plain.loss - (await inferenceNll(tiny)))).toBeLessThan(2e-5);
    const steered = await g32.run(rows, { params: STEER, values: new Map([[PARAM.steer, v]]) });
    const reference = await inferenceNll(tiny, { site: SITE, vector: v });
    expect(Math.abs(steered.loss - reference)).toBeLessThan(2e-5);
    expect(Math.abs(steered.loss - plain.loss)).toBeGreaterThan(1e-3); // the vector does change the loss
  });

  it('the float64 gradient matches central finite differences; fp32 matches it within 1e-3', async () => {
    const d = tiny.spec.dModel;
    const r = rng(11);
    const v = Float64Array.from({ length: d }, () => r());
    const at = (x: Float64Array) => g64.run(rows, { params: STEER, values: new Map([[PARAM.steer, x]]) });
    const g = (await at(v)).grads.get(PARAM.steer)!;
    const h = 1e-5;
    let worst = 0;
    for (let k = 0; k < d; k++) {
      const plus = v.slice();
      const minus = v.slice();
      plus[k]! += h;
      minus[k]! -= h;
      const fd = ((await at(plus)).loss - (await at(minus)).loss) / (2 * h);
      worst = Math.max(worst, Math.abs(fd - g[k]!) / Math.max(1e-3, Math.abs(fd)));
    }
    expect(worst).toBeLessThan(1e-5);
    const g32v = (
      await g32.run(rows, { params: STEER, values: new Map([[PARAM.steer, Float32Array.from(v)]]) })
    ).grads.get(PARAM.steer)!;
    let num = 0;
    let den = 0;
    for (let k = 0; k < d; k++) {
      num += (g32v[k]! - g[k]!) ** 2;
      den += g[k]! ** 2;
    }
    expect(Math.sqrt(num / den)).toBeLessThan(1e-3);
    expect(Math.sqrt(den)).toBeGreaterThan(1e-3);
  });
});

describe('gradient graph with LoRA: an adapter merged in, and LoRA factors as parameters', () => {
  let dir: TempDir;
  let tiny: TinyModel & { dispose(): Promise<void> };
  let adapted: TinyModel & { dispose(): Promise<void> };
  const r = rng(5);
  const d = 32;
  const ff = 48;
  // rank-2 factors on block 1's down_proj (in ff, out d) and block 0's q_proj (in d, out d), alpha 4: scale 2
  const factors = {
    'model.layers.1.mlp.down_proj': {
      A: Float32Array.from({ length: 2 * ff }, () => r()),
      B: Float32Array.from({ length: d * 2 }, () => r()),
    },
    'model.layers.0.self_attn.q_proj': {
      A: Float32Array.from({ length: 2 * d }, () => r()),
      B: Float32Array.from({ length: d * 2 }, () => r()),
    },
  };
  const lora: ParamSpec = {
    lora: [
      { layer: 1, module: 'down_proj', rank: 2, scale: 2 },
      { layer: 0, module: 'q_proj', rank: 2, scale: 2 },
    ],
  };
  const loraValues = () =>
    new Map([
      [PARAM.loraA(lora.lora![0]!), factors['model.layers.1.mlp.down_proj'].A],
      [PARAM.loraB(lora.lora![0]!), factors['model.layers.1.mlp.down_proj'].B],
      [PARAM.loraA(lora.lora![1]!), factors['model.layers.0.self_attn.q_proj'].A],
      [PARAM.loraB(lora.lora![1]!), factors['model.layers.0.self_attn.q_proj'].B],
    ]);
  beforeAll(async () => {
    dir = await tempDir('emlens-grad-lora-');
    const { writePeftAdapter } = await import('../../src/model/lora/index.js');
    tiny = await makeTinyFixture(dir.path, {
      family: 'qwen2',
      dModel: d,
      numLayers: 2,
      intermediateSize: ff,
    });
    await writePeftAdapter(dir.join('adapter'), { r: 2, alpha: 4, tensors: factors });
    adapted = await makeTinyFixture(dir.join('a'), {
      family: 'qwen2',
      dModel: d,
      numLayers: 2,
      intermediateSize: ff,
      load: { adapter: dir.join('adapter') },
    });
  });
  afterAll(async () => {
    await adapted?.dispose();
    await tiny?.dispose();
    await dir?.cleanup();
  });
  const rows = ROWS.map((ids) => ({ ids }));

  it('with --adapter the loss is the adapted inference model NLL, and differs from the base', async () => {
    const g = await GradModel.load(tiny.dir, { adapter: dir.join('adapter'), threads: 1 });
    try {
      const res = await g.run(rows, { params: STEER });
      const reference = await inferenceNll(adapted);
      expect(Math.abs(res.loss - reference)).toBeLessThan(2e-5);
      expect(Math.abs(reference - (await inferenceNll(tiny)))).toBeGreaterThan(1e-3);
    } finally {
      await g.dispose();
    }
  });

  it('LoRA factors as parameters reproduce the adapter, and their gradients match finite differences', async () => {
    const g32 = await GradModel.load(tiny.dir, { threads: 1 });
    const g64 = await GradModel.load(tiny.dir, { threads: 1, dtype: 'float64' });
    try {
      const res = await g32.run(rows, { params: lora, values: loraValues() });
      expect(Math.abs(res.loss - (await inferenceNll(adapted)))).toBeLessThan(2e-5);
      const base = new Map([...loraValues()].map(([k, v]) => [k, Float64Array.from(v)]));
      const at = (vals: Map<string, Float64Array>) => g64.run(rows, { params: lora, values: vals });
      const grads = (await at(base)).grads;
      const h = 1e-5;
      let worst = 0;
      for (const [name, v] of base) {
        const gv = grads.get(name)!;
        for (let k = 0; k < v.length; k += 7) {
          const plus = new Map(base);
          const minus = new Map(base);
          const vp = v.slice();
          const vm = v.slice();
          vp[k]! += h;
          vm[k]! -= h;
          plus.set(name, vp);
          minus.set(name, vm);
          const fd = ((await at(plus)).loss - (await at(minus)).loss) / (2 * h);
          worst = Math.max(worst, Math.abs(fd - gv[k]!) / Math.max(1e-3, Math.abs(fd)));
        }
      }
      expect(worst).toBeLessThan(1e-5);
    } finally {
      await g32.dispose();
      await g64.dispose();
    }
  });

  it('the KL to the base is zero with zero parameters and its gradient matches finite differences', async () => {
    const g64 = await GradModel.load(tiny.dir, { threads: 1, dtype: 'float64' });
    try {
      const klRows = [
        { ids: ROWS[0]!, ce: new Array(ROWS[0]!.length - 1).fill(0), kl: new Array(ROWS[0]!.length).fill(1) },
        { ids: ROWS[1]! },
      ];
      const zero = await g64.run(klRows, { params: STEER, kl: { scale: 3 } });
      expect(Math.abs(zero.kl)).toBeLessThan(1e-12);
      expect(Math.abs(zero.loss - zero.ce)).toBeLessThan(1e-12);
      const rr = rng(8);
      const v = Float64Array.from({ length: d }, () => rr());
      const at = (x: Float64Array) =>
        g64.run(klRows, { params: STEER, values: new Map([[PARAM.steer, x]]), kl: { scale: 3 } });
      const res = await at(v);
      expect(res.kl).toBeGreaterThan(1e-4);
      expect(Math.abs(res.loss - (res.ce + 3 * res.kl))).toBeLessThan(1e-10);
      const gv = res.grads.get(PARAM.steer)!;
      let worst = 0;
      for (let k = 0; k < d; k += 3) {
        const plus = v.slice();
        const minus = v.slice();
        plus[k]! += 1e-5;
        minus[k]! -= 1e-5;
        const fd = ((await at(plus)).loss - (await at(minus)).loss) / 2e-5;
        worst = Math.max(worst, Math.abs(fd - gv[k]!) / Math.max(1e-3, Math.abs(fd)));
      }
      expect(worst).toBeLessThan(1e-5);
    } finally {
      await g64.dispose();
    }
  });
});
