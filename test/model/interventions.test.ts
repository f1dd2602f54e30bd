/**
 * Steering and directional ablation at residual-stream hooks: exact shifts, orthogonality, position masks,
 * no-op interventions, and persistence through the KV cache.
 */
import { describe, expect, it } from 'vitest';
import {
  type HookName,
  type HookSelector,
  hookName,
  type ResidualHookSelector,
} from '../../src/model/hooks.js';
import type { Intervention } from '../../src/model/interventions.js';
import type { ForwardResult, KVCache } from '../../src/model/model.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { ids, maxAbsDiff, at as nth, vec } from '../helpers/numeric.js';

const RESID: ResidualHookSelector[] = [
  'blocks.*.hook_resid_pre',
  'blocks.*.hook_resid_mid',
  'blocks.*.hook_resid_post',
];
const ALL_HOOKS: HookSelector[] = ['blocks.*.*'];
const L = 1; // the intervened layer (of 3)

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!; // in range: callers pass two d-wide vectors
  return s;
}

function norm(a: ArrayLike<number>): number {
  return Math.sqrt(dot(a, a));
}

/** The `[d]` vector at token (b, p) of a `[batch, seq, d]` hook. */
function at(r: ForwardResult, hook: HookName, b: number, p: number): Float32Array {
  const t = r.hooks.get(hook);
  if (!t) throw new Error(`hook ${hook} not returned`);
  const [, seq, d] = t.dims;
  if (seq === undefined || d === undefined)
    throw new Error(`hook ${hook}: dims [${t.dims}] are not [batch, seq, d]`);
  return t.data.subarray((b * seq + p) * d, (b * seq + p + 1) * d);
}

/** Largest |<x, u>| / |x| over every token of a hook, for a unit vector `u`. */
function maxCosine(r: ForwardResult, hook: HookName, u: Float32Array): number {
  const t = r.hooks.get(hook)!;
  const [batch, seq] = t.dims;
  if (batch === undefined || seq === undefined)
    throw new Error(`hook ${hook}: dims [${t.dims}] are not [batch, seq, d]`);
  let worst = 0;
  for (let b = 0; b < batch; b++) {
    for (let p = 0; p < seq; p++) {
      const x = at(r, hook, b, p);
      worst = Math.max(worst, Math.abs(dot(x, u)) / norm(x));
    }
  }
  return worst;
}

function unit(v: Float32Array): Float32Array {
  const n = norm(v);
  return v.map((x) => x / n);
}

const tiny = useTinyModel('emlens-interventions-', {
  family: 'llama',
  seed: 21,
  numLayers: 3,
  ropeScaling: 'llama3',
});

describe('steering', () => {
  it('adding v at blocks.L.hook_resid_post shifts it by exactly v and changes later layers', async () => {
    const rows = [ids(6, 1), ids(6, 2)];
    const v = vec(tiny.spec.dModel, 3);
    const base = await tiny.model.forward(rows, { hooks: ALL_HOOKS });
    const steered = await tiny.model.forward(rows, {
      hooks: ALL_HOOKS,
      interventions: [{ kind: 'steer', hooks: [hookName(L, 'resid_post')], vector: v, scale: 1 }],
    });
    const post = hookName(L, 'resid_post');
    let laterChange = 0;
    for (let b = 0; b < 2; b++) {
      for (let p = 0; p < 6; p++) {
        const shift = at(steered, post, b, p).map((x, i) => x - at(base, post, b, p)[i]!); // both d-wide
        expect(maxAbsDiff(shift, v), `token ${b},${p}`).toBeLessThanOrEqual(1e-5);
        // the next block reads the steered stream
        const next = hookName(L + 1, 'resid_pre');
        expect(maxAbsDiff(at(steered, next, b, p), at(steered, post, b, p))).toBe(0);
        // everything before the intervention is untouched
        for (let l = 0; l <= L; l++) {
          for (const h of ['resid_pre', 'resid_mid', 'attn_out', 'mlp_out'] as const) {
            const name = hookName(l, h);
            expect(maxAbsDiff(at(steered, name, b, p), at(base, name, b, p)), name).toBeLessThanOrEqual(1e-6);
          }
        }
        // later layers respond to the shift beyond just carrying it along
        const lastPost = hookName(tiny.spec.numLayers - 1, 'resid_post');
        const carried = at(base, lastPost, b, p).map((x, i) => x + v[i]!); // both d-wide
        laterChange = Math.max(laterChange, maxAbsDiff(at(steered, lastPost, b, p), carried));
      }
    }
    expect(laterChange).toBeGreaterThan(1e-2);
    expect(maxAbsDiff(steered.logits.data, base.logits.data)).toBeGreaterThan(1e-3);
  });

  it('scale multiplies the vector', async () => {
    const rows = [ids(5, 4)];
    const v = vec(tiny.spec.dModel, 5);
    const hook = hookName(L, 'resid_mid');
    const base = await tiny.model.forward(rows, { hooks: [hook] });
    const steered = await tiny.model.forward(rows, {
      hooks: [hook],
      interventions: [{ kind: 'steer', hooks: [hook], vector: v, scale: -2.5 }],
    });
    for (let p = 0; p < 5; p++) {
      const shift = at(steered, hook, 0, p).map((x, i) => x - at(base, hook, 0, p)[i]!); // both d-wide
      expect(
        maxAbsDiff(
          shift,
          v.map((x) => -2.5 * x),
        ),
      ).toBeLessThanOrEqual(1e-5);
    }
  });

  it('a [batch, seq] position weight mask only shifts the masked tokens, by weight * v', async () => {
    const seq = 6;
    const rows = [ids(seq, 6), ids(seq, 7)];
    const v = vec(tiny.spec.dModel, 8);
    // row 0: tokens 3 and 5 (weight 1 and 0.5); row 1: token 4 only
    const weights = new Float32Array(2 * seq);
    weights[3] = 1;
    weights[5] = 0.5;
    weights[seq + 4] = 1;
    const firstMasked = [3, 4];
    const post = hookName(L, 'resid_post');
    const base = await tiny.model.forward(rows, { hooks: ALL_HOOKS });
    const steered = await tiny.model.forward(rows, {
      hooks: ALL_HOOKS,
      interventions: [{ kind: 'steer', hooks: [post], vector: v, positions: weights }],
    });
    for (let b = 0; b < 2; b++) {
      for (let p = 0; p < seq; p++) {
        const w = nth(weights, b * seq + p, 'weights');
        const shift = at(steered, post, b, p).map((x, i) => x - at(base, post, b, p)[i]!); // both d-wide
        expect(
          maxAbsDiff(
            shift,
            v.map((x) => w * x),
          ),
          `token ${b},${p}`,
        ).toBeLessThanOrEqual(1e-5);
        if (p < nth(firstMasked, b)) {
          // causal: tokens before the first steered one see nothing of it, at any layer
          for (const [name] of steered.hooks) {
            expect(maxAbsDiff(at(steered, name, b, p), at(base, name, b, p)), name).toBeLessThanOrEqual(1e-6);
          }
        }
      }
    }
  });
});

describe('ablation', () => {
  it('ablating d at blocks.L.hook_resid_post leaves it orthogonal to d (and removes exactly its projection)', async () => {
    const rows = [ids(7, 9), ids(7, 10)];
    const post = hookName(L, 'resid_post');
    const base = await tiny.model.forward(rows, { hooks: [post] });
    // the direction of the mean residual, so the stream has a large component along it to remove
    const d = new Float32Array(tiny.spec.dModel);
    for (let b = 0; b < 2; b++) {
      for (let p = 0; p < 7; p++) {
        const x = at(base, post, b, p);
        for (let i = 0; i < d.length; i++) d[i]! += 3 * x[i]!; // in range: d and x are both d-wide
      }
    }
    const u = unit(d);
    expect(maxCosine(base, post, u)).toBeGreaterThan(0.1);
    const ablated = await tiny.model.forward(rows, {
      hooks: [post],
      interventions: [{ kind: 'ablate', hooks: [post], directions: [d] }],
    });
    expect(maxCosine(ablated, post, u)).toBeLessThanOrEqual(1e-4);
    for (let b = 0; b < 2; b++) {
      for (let p = 0; p < 7; p++) {
        const x = at(base, post, b, p);
        const c = dot(x, u);
        const want = x.map((xi, i) => xi - c * u[i]!); // both d-wide
        expect(maxAbsDiff(at(ablated, post, b, p), want)).toBeLessThanOrEqual(1e-5);
      }
    }
  });

  it('rank-2 ablation of two non-orthogonal directions leaves it orthogonal to both', async () => {
    const rows = [ids(8, 11)];
    const post = hookName(L, 'resid_post');
    const d1 = vec(tiny.spec.dModel, 12, 2);
    const d2 = d1.map((x, i) => 0.8 * x + 0.3 * vec(tiny.spec.dModel, 13)[i]!); // both dModel-wide
    expect(Math.abs(dot(unit(d1), unit(d2)))).toBeGreaterThan(0.5);
    const base = await tiny.model.forward(rows, { hooks: [post] });
    const ablated = await tiny.model.forward(rows, {
      hooks: [post],
      interventions: [{ kind: 'ablate', hooks: [post], directions: [d1, d2] }],
    });
    // the component along d2 not explained by d1 is also gone, not just d1
    const e2 = unit(d2.map((x, i) => x - dot(d2, unit(d1)) * unit(d1)[i]!)); // both dModel-wide
    expect(maxCosine(base, post, e2)).toBeGreaterThan(1e-2);
    for (const d of [d1, d2, e2]) expect(maxCosine(ablated, post, unit(d))).toBeLessThanOrEqual(1e-4);
  });

  it('ablating at every residual site leaves every residual hook orthogonal', async () => {
    const rows = [ids(4, 14), ids(9, 15)]; // left padding too
    const d = vec(tiny.spec.dModel, 16);
    const u = unit(d);
    const base = await tiny.model.forward(rows, { hooks: RESID });
    const ablated = await tiny.model.forward(rows, {
      hooks: RESID,
      interventions: [{ kind: 'ablate', hooks: RESID, directions: [d] }],
    });
    expect(ablated.hooks.size).toBe(3 * tiny.spec.numLayers);
    for (const [name] of ablated.hooks) {
      expect(maxCosine(base, name, u), `${name} before`).toBeGreaterThan(1e-3);
      const pad = ablated.padding;
      const t = ablated.hooks.get(name)!;
      for (let b = 0; b < 2; b++) {
        for (let p = nth(pad, b, 'padding'); p < nth(t.dims, 1, 'dims'); p++) {
          const x = at(ablated, name, b, p);
          expect(Math.abs(dot(x, u)), `${name} token ${b},${p}`).toBeLessThanOrEqual(1e-4 * norm(x));
        }
      }
    }
  });

  it('ablation and steering at one site: ablate first, then add', async () => {
    const rows = [ids(5, 17)];
    const hook = hookName(L, 'resid_mid');
    const d = vec(tiny.spec.dModel, 18);
    const u = unit(d);
    const res = await tiny.model.forward(rows, {
      hooks: [hook],
      interventions: [
        { kind: 'steer', hooks: [hook], vector: u, scale: 2 },
        { kind: 'ablate', hooks: [hook], directions: [d] },
      ],
    });
    for (let p = 0; p < 5; p++) expect(dot(at(res, hook, 0, p), u)).toBeCloseTo(2, 4);
  });
});

describe('no-op interventions', () => {
  it('a zero steering vector and a zero ablation direction change nothing', async () => {
    const rows = [ids(3, 19), ids(6, 20)];
    const zero = new Float32Array(tiny.spec.dModel);
    const base = await tiny.model.forward(rows, { hooks: ALL_HOOKS });
    const variants: Intervention[][] = [
      [{ kind: 'steer', hooks: RESID, vector: zero }],
      [{ kind: 'ablate', hooks: RESID, directions: [zero] }],
      [
        { kind: 'steer', hooks: RESID, vector: zero, scale: 5 },
        { kind: 'ablate', hooks: RESID, directions: [zero, zero] },
      ],
    ];
    for (const interventions of variants) {
      const r = await tiny.model.forward(rows, { hooks: ALL_HOOKS, interventions });
      expect(maxAbsDiff(r.logits.data, base.logits.data)).toBeLessThanOrEqual(1e-6);
      for (const [name, t] of base.hooks) {
        expect(maxAbsDiff(r.hooks.get(name)!.data, t.data), name).toBeLessThanOrEqual(1e-6);
      }
    }
  });
});

describe('through the KV cache', () => {
  it('cached step-by-step decoding with steering equals full recomputation with steering', async () => {
    const hook = hookName(L, 'resid_post');
    const interventions: Intervention[] = [
      { kind: 'steer', hooks: [hook], vector: vec(tiny.spec.dModel, 22), scale: 1.5 },
      { kind: 'ablate', hooks: ['blocks.0.hook_resid_mid'], directions: [vec(tiny.spec.dModel, 23)] },
    ];
    const prompts = [ids(4, 24), ids(2, 25)];
    const seqs = prompts.map((p) => [...p]);
    let res = await tiny.model.forward(prompts, { interventions, returnCache: true });
    const plain = await tiny.model.forward(prompts);
    expect(maxAbsDiff(res.logits.data, plain.logits.data)).toBeGreaterThan(1e-3);
    let cache: KVCache = res.cache!;
    for (let step = 0; step < 4; step++) {
      const next = ids(2, 26 + step);
      seqs.forEach((s, r) => {
        s.push(nth(next, r));
      });
      res = await tiny.model.forward(
        next.map((t) => [t]),
        { interventions, cache, returnCache: true },
      );
      cache = res.cache!;
      for (let r = 0; r < 2; r++) {
        const full = await tiny.model.forward([nth(seqs, r)], { interventions });
        const got = res.logits.data.subarray(r * tiny.spec.vocabSize, (r + 1) * tiny.spec.vocabSize);
        expect(maxAbsDiff(got, full.logits.data), `step ${step} row ${r}`).toBeLessThanOrEqual(1e-4);
      }
    }
  });
});
