/**
 * The composable intervention layer: interventions built from direction sets, the sites they act at, the
 * checks against directions from another model, and how lists of interventions compose (order independence,
 * same-site ablate-then-add).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { type DirectionSet, directionSet, saveDirections } from '../../src/directions/direction.js';
import { EmlensError } from '../../src/errors.js';
import {
  ablateInterventions,
  allResidualHooks,
  checkDirectionsFit,
  constantDirectionSet,
  loadDirectionsFor,
  parseLayerList,
  patchInterventions,
  selectLayers,
  siteDirections,
  steerInterventions,
} from '../../src/interventions/compose.js';
import type { HookName, HookSelector } from '../../src/model/hooks.js';
import type { Intervention } from '../../src/model/interventions.js';
import type { ForwardResult } from '../../src/model/model.js';
import { Rng } from '../../src/util/random.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const tiny = useTinyModel('emlens-compose-', { family: 'qwen2', seed: 5, numLayers: 3, dModel: 32 });
let set: DirectionSet;
const rows = [
  [5, 17, 33, 80, 121, 7, 64],
  [9, 200, 41, 3],
];

function randomVec(d: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: d }, () => rng.normal());
}

function unit(v: Float32Array): Float32Array {
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
}

/** Largest |<x, u>| over the real tokens of a hook (u a unit vector). */
function maxProjection(r: ForwardResult, hook: HookName, u: Float32Array): number {
  const t = r.hooks.get(hook)!;
  const [batch, seq, d] = t.dims as [number, number, number]; // a hook tensor is [batch, seq, dModel]
  let worst = 0;
  // b, p and i below index within those dims, and u has d entries
  for (let b = 0; b < batch; b++) {
    for (let p = r.padding[b]!; p < seq; p++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += t.data[(b * seq + p) * d + i]! * u[i]!;
      worst = Math.max(worst, Math.abs(dot));
    }
  }
  return worst;
}

beforeAll(() => {
  set = directionSet(
    [0, 1, 2].map((l) => [l, randomVec(tiny.spec.dModel, 100 + l)] as const),
    {
      model: tiny.dir,
      hook: 'hook_resid_post',
      method: 'test',
      positions: 'all',
      nPos: 0,
      nNeg: 0,
      sourcePos: '',
      sourceNeg: '',
    },
  );
});

describe('building interventions from a direction set', () => {
  it('steers at blocks.L.hook_resid_post with each layer its own vector times the scale', () => {
    const ivs = steerInterventions(set, tiny.spec, { layers: [0, 2], scale: 3 });
    expect(ivs.map((iv) => iv.hooks)).toEqual([['blocks.0.hook_resid_post'], ['blocks.2.hook_resid_post']]);
    expect(ivs[1]?.vector).toBe(set.vectors.get(2));
    expect(ivs[1]?.scale).toBe(3);
    const fixed = steerInterventions(set, tiny.spec, { layers: 'all', from: 1, unit: true });
    expect(fixed).toHaveLength(3);
    expect(Math.hypot(...fixed[0]!.vector)).toBeCloseTo(1, 6); // three of them, checked just above
  });

  it("'own' gives each of the 2L+1 residual sites its own layer's vector; a single layer covers its input too", () => {
    const all = siteDirections(set, tiny.spec, { layers: 'all' });
    expect([...all.keys()].sort()).toEqual(allResidualHooks(tiny.spec.numLayers).sort());
    expect(all.size).toBe(2 * tiny.spec.numLayers + 1);
    for (const [hook, vs] of all) {
      expect(vs).toHaveLength(1);
      const layer = Number(/blocks\.(\d+)\./.exec(hook)![1]);
      expect(vs[0]).toBe(set.vectors.get(layer));
    }
    const one = siteDirections(set, tiny.spec, { layers: [1] });
    expect([...one.keys()]).toEqual([
      'blocks.1.hook_resid_pre',
      'blocks.1.hook_resid_mid',
      'blocks.1.hook_resid_post',
    ]);
    // rank k: two sets and a list of source layers stack their vectors at every site
    const rankK = siteDirections([set, set], tiny.spec, { layers: [2], from: [0, 1] });
    for (const vs of rankK.values()) expect(vs).toHaveLength(4);
    expect(ablateInterventions(set, tiny.spec, { layers: 'all', from: 1 })).toHaveLength(
      2 * tiny.spec.numLayers + 1,
    );
  });

  it('ablating at every layer removes the direction from every residual site', async () => {
    const d = set.vectors.get(1)!;
    const r = await tiny.model.forward(rows, {
      hooks: ['blocks.*.hook_resid_pre', 'blocks.*.hook_resid_mid', 'blocks.*.hook_resid_post'],
      interventions: ablateInterventions(set, tiny.spec, { layers: 'all', from: 1 }),
    });
    for (const hook of r.hooks.keys()) expect(maxProjection(r, hook, unit(d)), hook).toBeLessThan(1e-4);
  });

  it('patching a run with its own hooks changes nothing', async () => {
    const sites = siteDirections(set, tiny.spec, { layers: 'all' });
    const plain = await tiny.model.forward(rows, { hooks: [...sites.keys()], logits: 'all' });
    const patched = await tiny.model.forward(rows, {
      logits: 'all',
      interventions: patchInterventions(sites, plain.hooks),
    });
    expect(maxAbsDiff(patched.logits.data, plain.logits.data)).toBeLessThanOrEqual(1e-4);
  });
});

describe('composition', () => {
  const logits = async (ivs: Intervention[], hooks: HookSelector[] = []) =>
    tiny.model.forward(rows, { logits: 'all', interventions: ivs, hooks });

  it('two ablations give the same result in either order (at the same and at different sites)', async () => {
    const a: Intervention = {
      kind: 'ablate',
      hooks: ['blocks.1.hook_resid_mid', 'blocks.2.hook_resid_post'],
      directions: [randomVec(tiny.spec.dModel, 1)],
    };
    const b: Intervention = {
      kind: 'ablate',
      hooks: ['blocks.1.hook_resid_mid', 'blocks.0.hook_resid_pre'],
      directions: [randomVec(tiny.spec.dModel, 2)],
    };
    const ab = await logits([a, b]);
    const ba = await logits([b, a]);
    expect(maxAbsDiff(ab.logits.data, ba.logits.data)).toBeLessThanOrEqual(1e-5);
    expect(maxAbsDiff(ab.logits.data, (await logits([a])).logits.data)).toBeGreaterThan(1e-3);
  });

  it('an ablation and a steer at different sites commute in list order', async () => {
    const ablate: Intervention = {
      kind: 'ablate',
      hooks: ['blocks.2.hook_resid_mid'],
      directions: [randomVec(tiny.spec.dModel, 3)],
    };
    const steer: Intervention = {
      kind: 'steer',
      hooks: ['blocks.0.hook_resid_post'],
      vector: randomVec(tiny.spec.dModel, 4),
      scale: 2,
    };
    const x = await logits([ablate, steer]);
    const y = await logits([steer, ablate]);
    expect(maxAbsDiff(x.logits.data, y.logits.data)).toBe(0);
  });

  it('at one site the ablation comes first, then the addition, whatever the list order', async () => {
    const d = randomVec(tiny.spec.dModel, 5);
    const u = unit(d);
    const hook = 'blocks.1.hook_resid_post';
    const ablate: Intervention = { kind: 'ablate', hooks: [hook], directions: [d] };
    const steer: Intervention = { kind: 'steer', hooks: [hook], vector: u, scale: 3 };
    for (const order of [
      [ablate, steer],
      [steer, ablate],
    ]) {
      const r = await logits(order, [hook]);
      // every token's component along d is exactly the added 3 * u: the addition survives the ablation
      const t = r.hooks.get(hook)!;
      const [batch, seq, dm] = t.dims as [number, number, number]; // a hook tensor is [batch, seq, dModel]
      // b, p and i below index within those dims, and u has dm entries
      for (let b = 0; b < batch; b++) {
        for (let p = r.padding[b]!; p < seq; p++) {
          let dot = 0;
          for (let i = 0; i < dm; i++) dot += t.data[(b * seq + p) * dm + i]! * u[i]!;
          expect(dot).toBeCloseTo(3, 4);
        }
      }
    }
  });
});

describe('errors', () => {
  it('a direction of another width or from a model with more layers is refused with a clear message', async () => {
    const narrow = constantDirectionSet(new Float32Array(16).fill(1), [0, 1]);
    expect(() => checkDirectionsFit(narrow, tiny.spec)).toThrow(EmlensError);
    expect(() => steerInterventions(narrow, tiny.spec, { layers: [0] })).toThrow(
      /length 16 .* d_model is 32/,
    );
    const deep = constantDirectionSet(new Float32Array(tiny.spec.dModel).fill(1), [0, 5]);
    expect(() => ablateInterventions(deep, tiny.spec, { layers: [0] })).toThrow(/layer 5 .* layers 0\.\.2/);
    const path = tiny.at('narrow.safetensors');
    await saveDirections(path, narrow);
    await expect(loadDirectionsFor(path, tiny.spec)).rejects.toThrow(
      /d_model is 32; use a direction computed on this model/,
    );
  });

  it('layers out of range, layers the set lacks and malformed layer lists are refused', () => {
    expect(() => selectLayers([3], tiny.spec.numLayers)).toThrow(
      /Layer 3 is out of range: the model has layers 0\.\.2/,
    );
    const partial = constantDirectionSet(new Float32Array(tiny.spec.dModel).fill(1), [2]);
    expect(() => steerInterventions(partial, tiny.spec, { layers: [1] })).toThrow(/no direction for layer 1/);
    expect(() => parseLayerList('1,x')).toThrow(EmlensError);
    expect(parseLayerList('1-2,0')).toEqual([1, 2, 0]);
    expect(parseLayerList('all')).toBe('all');
  });
});
