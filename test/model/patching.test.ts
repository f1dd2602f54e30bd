/**
 * Activation patching: exact replacement and interpolation, causality, composition with ablation and
 * steering in the documented order, batching, attn/mlp outputs, the KV cache, the graph variants, and the
 * layer x position sweep.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { generate } from '../../src/generate/generate.js';
import { type HookName, type HookSelector, hookName } from '../../src/model/hooks.js';
import { type ForwardIntervention, positionWeights } from '../../src/model/interventions.js';
import { type ForwardResult, loadModel } from '../../src/model/model.js';
import { logitDiff, patchingSweep } from '../../src/model/patching.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { ids, maxAbsDiff, at as nth, vec } from '../helpers/numeric.js';

const SEQ = 7;
const K = 3; // the position where clean and corrupted differ
const ALL: readonly HookSelector[] = ['blocks.*.*'];

const tiny = useTinyModel('emlens-patching-', { family: 'qwen2', seed: 5, numLayers: 3 });
let clean: number[];
let corrupted: number[];

/** The `[d]` vector at token (b, p) of a `[batch, seq, d]` hook. */
function at(r: ForwardResult, hook: HookName, b: number, p: number): Float32Array {
  const t = r.hooks.get(hook)!;
  const [, seq, d] = t.dims;
  if (seq === undefined || d === undefined)
    throw new Error(`hook ${hook}: dims [${t.dims}] are not [batch, seq, d]`);
  return t.data.subarray((b * seq + p) * d, (b * seq + p + 1) * d);
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!; // in range: callers pass two d-wide vectors
  return s;
}

beforeAll(async () => {
  clean = ids(SEQ, 1);
  corrupted = [...clean];
  corrupted[K] = (nth(clean, K) + 17) % 300;
});

describe('patch', () => {
  it("patching every position of blocks.0.hook_resid_pre with the clean run's values gives the clean logits", async () => {
    const c = await tiny.model.forward([clean], { hooks: ['blocks.0.hook_resid_pre'], logits: 'all' });
    const x = await tiny.model.forward([corrupted], { logits: 'all' });
    expect(maxAbsDiff(x.logits.data, c.logits.data)).toBeGreaterThan(1e-3);
    const values = c.hooks.get('blocks.0.hook_resid_pre')!;
    const p = await tiny.model.forward([corrupted], {
      logits: 'all',
      interventions: [{ kind: 'patch', hook: 'blocks.0.hook_resid_pre', values }],
    });
    expect(maxAbsDiff(p.logits.data, c.logits.data)).toBeLessThanOrEqual(1e-5);
  });

  it('patching one position changes only that position and later ones (causality), exactly there', async () => {
    const hook = 'blocks.1.hook_resid_mid';
    const v = new Float32Array(SEQ * tiny.spec.dModel);
    for (let p = 0; p < SEQ; p++) v.set(vec(tiny.spec.dModel, 40 + p), p * tiny.spec.dModel);
    const base = await tiny.model.forward([clean], { hooks: ALL, logits: 'all' });
    const q = 4;
    const r = await tiny.model.forward([clean], {
      hooks: ALL,
      logits: 'all',
      interventions: [{ kind: 'patch', hook, values: v, positions: positionWeights(1, SEQ, [q]) }],
    });
    expect(at(r, hook, 0, q)).toEqual(v.subarray(q * tiny.spec.dModel, (q + 1) * tiny.spec.dModel));
    const last = hookName(tiny.spec.numLayers - 1, 'resid_post');
    for (let p = 0; p < SEQ; p++) {
      const drift = maxAbsDiff(at(r, last, 0, p), at(base, last, 0, p));
      if (p < q) expect(drift, `pos ${p}`).toBeLessThanOrEqual(1e-5);
      else expect(drift, `pos ${p}`).toBeGreaterThan(1e-3);
      const lv = tiny.spec.vocabSize;
      const dl = maxAbsDiff(
        r.logits.data.subarray(p * lv, (p + 1) * lv),
        base.logits.data.subarray(p * lv, (p + 1) * lv),
      );
      if (p < q) expect(dl).toBeLessThanOrEqual(1e-5);
      else expect(dl).toBeGreaterThan(1e-4);
    }
    // earlier hooks of the same token are untouched
    expect(
      maxAbsDiff(at(r, 'blocks.1.hook_attn_out', 0, q), at(base, 'blocks.1.hook_attn_out', 0, q)),
    ).toBeLessThanOrEqual(1e-6);
  });

  it('weight 0 equals no patch and a fractional weight interpolates', async () => {
    const hook = 'blocks.0.hook_resid_post';
    const rows = [clean, corrupted];
    const v = vec(2 * SEQ * tiny.spec.dModel, 9, 3);
    const base = await tiny.model.forward(rows, { hooks: ALL });
    const zero = await tiny.model.forward(rows, {
      hooks: ALL,
      interventions: [{ kind: 'patch', hook, values: v, positions: new Float32Array(2 * SEQ) }],
    });
    expect(maxAbsDiff(zero.logits.data, base.logits.data)).toBeLessThanOrEqual(1e-6);
    for (const name of base.hooks.keys()) {
      expect(maxAbsDiff(zero.hooks.get(name)!.data, base.hooks.get(name)!.data), name).toBeLessThanOrEqual(
        1e-6,
      );
    }
    const w = new Float32Array(2 * SEQ).map((_, i) => (i % 4) / 4);
    const half = await tiny.model.forward(rows, {
      hooks: [hook],
      interventions: [{ kind: 'patch', hook, values: v, positions: w }],
    });
    const x = base.hooks.get(hook)!.data;
    // In range: x and v are [2, SEQ, d], w holds one weight per token.
    const want = x.map((xi, i) => xi + w[Math.floor(i / tiny.spec.dModel)]! * (v[i]! - xi));
    expect(maxAbsDiff(half.hooks.get(hook)!.data, want)).toBeLessThanOrEqual(1e-5);
  });

  it('a batch of patched rows equals each row patched alone', async () => {
    const hook = 'blocks.1.hook_resid_post';
    const a = ids(5, 11);
    const b = ids(8, 12);
    const aC = [...a];
    aC[2] = (nth(aC, 2) + 1) % 300;
    const bC = [...b];
    bC[6] = (nth(bC, 6) + 1) % 300;
    const cleanBatch = await tiny.model.forward([a, b], { hooks: [hook] });
    const weights = new Float32Array(2 * 8);
    weights[3 + 3] = 1; // row 0 (3 pad): its position 3
    weights[8 + 6] = 0.5; // row 1: position 6, half way
    const batched = await tiny.model.forward([aC, bC], {
      logits: 'all',
      interventions: [{ kind: 'patch', hook, values: cleanBatch.hooks.get(hook)!, positions: weights }],
    });
    const lv = tiny.spec.vocabSize;
    for (const [row, src, corr, pos, m] of [
      [0, a, aC, 3, 1],
      [1, b, bC, 6, 0.5],
    ] as const) {
      const alone = await tiny.model.forward([src], { hooks: [hook] });
      const patched = await tiny.model.forward([corr], {
        logits: 'all',
        interventions: [
          {
            kind: 'patch',
            hook,
            values: alone.hooks.get(hook)!,
            positions: positionWeights(1, src.length, [pos]).map((x) => x * m),
          },
        ],
      });
      const pad = 8 - src.length;
      for (let p = 0; p < src.length; p++) {
        const got = batched.logits.data.subarray((row * 8 + pad + p) * lv, (row * 8 + pad + p + 1) * lv);
        const want = patched.logits.data.subarray(p * lv, (p + 1) * lv);
        expect(maxAbsDiff(got, want), `row ${row} pos ${p}`).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it('at one site: ablate, then steer, then patch (a fully patched token holds exactly the values)', async () => {
    const hook = 'blocks.1.hook_resid_post';
    const u = vec(tiny.spec.dModel, 3);
    const n = Math.sqrt(dot(u, u));
    const unit = u.map((x) => x / n);
    const s = vec(tiny.spec.dModel, 4);
    const v = vec(SEQ * tiny.spec.dModel, 5, 2);
    const edits: ForwardIntervention[] = [
      { kind: 'ablate', hooks: [hook], directions: [u] },
      { kind: 'steer', hooks: [hook], vector: s, scale: 1 },
    ];
    const full = await tiny.model.forward([clean], {
      hooks: [hook],
      interventions: [{ kind: 'patch', hook, values: v }, ...edits],
    });
    expect(full.hooks.get(hook)!.data).toEqual(v); // neither ablated nor steered afterwards
    expect(Math.abs(dot(v.subarray(0, tiny.spec.dModel), unit))).toBeGreaterThan(0.05);
    const edited = await tiny.model.forward([clean], { hooks: [hook], interventions: edits });
    const m = 0.25;
    const part = await tiny.model.forward([clean], {
      hooks: [hook],
      interventions: [...edits, { kind: 'patch', hook, values: v, positions: new Float32Array(SEQ).fill(m) }],
    });
    const e = edited.hooks.get(hook)!.data;
    expect(
      maxAbsDiff(
        part.hooks.get(hook)!.data,
        e.map((ei, i) => ei + m * (v[i]! - ei)), // in range: e and v have the hook's size
      ),
    ).toBeLessThanOrEqual(1e-5);
  });

  it('patches hook_attn_out and hook_mlp_out, and several sites at once', async () => {
    const d = tiny.spec.dModel;
    const va = vec(SEQ * d, 21);
    const vm = vec(SEQ * d, 22);
    const vr = vec(SEQ * d, 23);
    const r = await tiny.model.forward([clean], {
      hooks: ALL,
      interventions: [
        { kind: 'patch', hook: 'blocks.0.hook_attn_out', values: va },
        {
          kind: 'patch',
          hook: 'blocks.2.hook_mlp_out',
          values: vm,
          positions: positionWeights(1, SEQ, [-1]),
        },
        {
          kind: 'patch',
          hook: 'blocks.1.hook_resid_pre',
          values: vr,
          positions: positionWeights(1, SEQ, [0, 2]),
        },
      ],
    });
    expect(r.hooks.get('blocks.0.hook_attn_out')!.data).toEqual(va);
    const pre = r.hooks.get('blocks.0.hook_resid_pre')!.data;
    const mid = r.hooks.get('blocks.0.hook_resid_mid')!.data;
    expect(
      maxAbsDiff(
        mid,
        pre.map((x, i) => x + va[i]!), // in range: pre and va have the hook's size
      ),
    ).toBeLessThanOrEqual(1e-5);
    expect(at(r, 'blocks.2.hook_mlp_out', 0, SEQ - 1)).toEqual(vm.subarray((SEQ - 1) * d));
    expect(at(r, 'blocks.1.hook_resid_pre', 0, 2)).toEqual(vr.subarray(2 * d, 3 * d));
    expect(maxAbsDiff(at(r, 'blocks.1.hook_resid_pre', 0, 1), vr.subarray(d, 2 * d))).toBeGreaterThan(1e-2);
  });

  it('takes ndarray views from trace as values', async () => {
    const hook = 'blocks.1.hook_resid_mid';
    const c = await tiny.model.trace(clean, { hooks: [hook], logits: 'all' });
    const p = await tiny.model.trace(corrupted, {
      logits: 'all',
      interventions: [{ kind: 'patch', hook, values: c.cache.get(hook) }],
    });
    const lv = tiny.spec.vocabSize;
    expect(maxAbsDiff(p.logits.data.subarray(K * lv), c.logits.data.subarray(K * lv))).toBeLessThanOrEqual(
      1e-5,
    );
    // a strided (non-contiguous) view is read element by element
    const both = await tiny.model.trace([clean, corrupted], { hooks: [hook] });
    const q = await tiny.model.trace(corrupted, {
      interventions: [
        { kind: 'patch', hook, values: both.cache.get(hook).lo(0, 0, 0).hi(1, SEQ, tiny.spec.dModel) },
      ],
    });
    expect(maxAbsDiff(q.logits.data, c.logits.data.subarray((SEQ - 1) * lv))).toBeLessThanOrEqual(1e-5);
  });

  it('patches new tokens through the KV cache; generate refuses patches', async () => {
    const hook = 'blocks.0.hook_resid_post';
    const prompt = clean.slice(0, 5);
    const first = await tiny.model.forward([prompt], { returnCache: true });
    const next = clean.slice(5);
    const v = vec(next.length * tiny.spec.dModel, 31);
    const cont = await tiny.model.forward([next], {
      cache: first.cache,
      hooks: [hook],
      interventions: [{ kind: 'patch', hook, values: v }],
    });
    expect(cont.hooks.get(hook)!.data).toEqual(v);
    const whole = new Float32Array(SEQ * tiny.spec.dModel);
    whole.set(v, 5 * tiny.spec.dModel);
    const once = await tiny.model.forward([clean], {
      interventions: [{ kind: 'patch', hook, values: whole, positions: positionWeights(1, SEQ, [5, 6]) }],
    });
    expect(maxAbsDiff(cont.logits.data, once.logits.data)).toBeLessThanOrEqual(1e-5);
    const patch = { kind: 'patch', hook, values: whole } as unknown as never;
    await expect(generate(tiny.model, [prompt], { maxNewTokens: 2, interventions: [patch] })).rejects.toThrow(
      /Activation patches apply to forward and trace, not to generation/,
    );
  });

  it('refuses bad patches with one line', async () => {
    const hook = 'blocks.0.hook_resid_post';
    const run = (ivs: ForwardIntervention[]) => tiny.model.forward([clean], { interventions: ivs });
    await expect(run([{ kind: 'patch', hook, values: new Float32Array(5) }])).rejects.toThrow(
      /has 5 values but this call needs batch 1 x seq 7 x d_model 64/,
    );
    await expect(
      run([{ kind: 'patch', hook: 'blocks.*.hook_resid_post', values: new Float32Array(5) }]),
    ).rejects.toThrow(/name a single hook, not a pattern/);
    await expect(
      run([{ kind: 'patch', hook: 'blocks.9.hook_mlp_out', values: new Float32Array(5) }]),
    ).rejects.toThrow(EmlensError);
    const v = new Float32Array(SEQ * tiny.spec.dModel);
    await expect(
      run([
        { kind: 'patch', hook, values: v },
        { kind: 'patch', hook: 'blocks.1.hook_resid_pre', values: v },
      ]),
    ).rejects.toThrow(/the same tensor/);
    expect(() => positionWeights(1, SEQ, [SEQ])).toThrow(/outside this call's 7 positions/);
  });
});

describe('graph variants', () => {
  it('only the patching graph has the patch inputs; the plain and intervention graphs are as before', async () => {
    const folder = tiny.at('cache', nth(await readdir(tiny.at('cache')), 0, 'cache folder'));
    const files = (await readdir(folder)).filter((f) => f.endsWith('.onnx')).sort();
    expect(files).toEqual(
      expect.arrayContaining([
        'model-last-plain.onnx',
        'model-last-interventions.onnx',
        'model-last-patching.onnx',
      ]),
    );
    const inputs = async (f: string) => {
      const s = await ort.InferenceSession.create(join(folder, f));
      try {
        return s.inputNames;
      } finally {
        await s.release();
      }
    };
    const plain = await inputs('model-last-plain.onnx');
    const edit = await inputs('model-last-interventions.onnx');
    const patching = await inputs('model-last-patching.onnx');
    expect(plain.filter((n) => /steer|ablate|patch/.test(n))).toEqual([]);
    expect(edit.filter((n) => /patch/.test(n))).toEqual([]);
    expect(edit.filter((n) => /steer|ablate/.test(n))).toHaveLength(4);
    expect(patching.filter((n) => /patch/.test(n)).sort()).toEqual([
      'patch_mask',
      'patch_slots',
      'patch_values',
    ]);
    expect(patching.filter((n) => !/patch/.test(n))).toEqual(edit);
  });
});

describe('the fp16 profile', () => {
  it('patches too (within half precision)', async () => {
    const m16 = await loadModel(tiny.at('model'), {
      cacheDir: tiny.at('cache16'),
      threads: 1,
      profile: 'fp16',
    });
    try {
      const hook = 'blocks.0.hook_resid_pre';
      const c = await m16.trace(clean, { hooks: [hook, 'blocks.1.hook_mlp_out'] });
      const p = await m16.trace(corrupted, {
        hooks: ['blocks.1.hook_mlp_out'],
        interventions: [
          { kind: 'patch', hook, values: c.cache.get(hook) },
          {
            kind: 'patch',
            hook: 'blocks.1.hook_mlp_out',
            values: c.cache.get('blocks.1.hook_mlp_out'),
            positions: new Float32Array(SEQ),
          },
        ],
      });
      expect(maxAbsDiff(p.logits.data, c.logits.data)).toBeLessThanOrEqual(2e-2);
      expect(
        maxAbsDiff(p.cache.get('blocks.1.hook_mlp_out').data, c.cache.get('blocks.1.hook_mlp_out').data),
      ).toBeLessThanOrEqual(2e-2);
    } finally {
      await m16.dispose();
    }
  });
});

describe('patchingSweep', () => {
  it('returns a [layers, positions] table whose entries match single patched runs', async () => {
    const correct = 17;
    const wrong = 42;
    const metric = logitDiff(correct, wrong);
    const r = await patchingSweep(tiny.model, clean, corrupted, {
      hooks: 'blocks.*.hook_resid_pre',
      metric,
      batchSize: 3,
    });
    expect(r.hooks).toEqual([
      'blocks.0.hook_resid_pre',
      'blocks.1.hook_resid_pre',
      'blocks.2.hook_resid_pre',
    ]);
    expect(r.positions).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(r.table.shape).toEqual([3, SEQ]);
    expect(r.table.data).toBe(r.values);
    const c = await tiny.model.forward([clean]);
    const x = await tiny.model.forward([corrupted]);
    expect(r.clean).toBeCloseTo(nth(c.logits.data, correct) - nth(c.logits.data, wrong), 6);
    expect(r.corrupted).toBeCloseTo(nth(x.logits.data, correct) - nth(x.logits.data, wrong), 6);
    expect(Math.abs(r.clean - r.corrupted)).toBeGreaterThan(1e-4);
    // patching the embedding where the inputs differ makes the corrupted run the clean one
    expect(Math.abs(r.table.get(0, K) - r.clean)).toBeLessThanOrEqual(1e-5);
    // patching the embedding where they agree changes nothing
    for (const p of [0, 1, 2, 4, 5, 6])
      expect(Math.abs(r.table.get(0, p) - r.corrupted)).toBeLessThanOrEqual(1e-5);
    // before the corrupted token, every layer agrees (causality)
    for (let l = 0; l < 3; l++)
      for (const p of [0, 1, 2]) expect(Math.abs(r.table.get(l, p) - r.corrupted)).toBeLessThanOrEqual(1e-5);
    // one entry against a hand-made patched run
    const cleanHooks = await tiny.model.forward([clean], { hooks: ['blocks.2.hook_resid_pre'] });
    const one = await tiny.model.forward([corrupted], {
      interventions: [
        {
          kind: 'patch',
          hook: 'blocks.2.hook_resid_pre',
          values: cleanHooks.hooks.get('blocks.2.hook_resid_pre')!,
          positions: positionWeights(1, SEQ, [5]),
        },
      ],
    });
    expect(Math.abs(r.table.get(2, 5) - metric(one.logits.data))).toBeLessThanOrEqual(1e-5);
    const again = await patchingSweep(tiny.model, clean, corrupted, {
      hooks: ['blocks.*.hook_resid_pre'],
      metric,
    });
    expect(maxAbsDiff(again.values, r.values)).toBeLessThanOrEqual(1e-5);
  });

  it('patching the last residual at the last position gives the clean metric; inputs must match in length', async () => {
    const metric = logitDiff(3, 4);
    const r = await patchingSweep(tiny.model, clean, corrupted, {
      hooks: [`blocks.${tiny.spec.numLayers - 1}.hook_resid_post`, 'blocks.1.hook_mlp_out'],
      positions: [-1, K],
      metric,
    });
    expect(r.positions).toEqual([SEQ - 1, K]);
    expect(r.table.shape).toEqual([2, 2]);
    // rows follow model order, whatever the order asked
    expect(r.hooks).toEqual(['blocks.1.hook_mlp_out', `blocks.${tiny.spec.numLayers - 1}.hook_resid_post`]);
    expect(Math.abs(r.table.get(1, 0) - r.clean)).toBeLessThanOrEqual(1e-5);
    await expect(
      patchingSweep(tiny.model, clean, clean.slice(1), { hooks: 'blocks.0.hook_resid_pre', metric }),
    ).rejects.toThrow(/same length/);
  });
});
