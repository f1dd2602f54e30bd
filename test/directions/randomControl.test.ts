/**
 * Norm-matched random controls: each direction gets its own draws (seeded by its content, the user seed and
 * the control index), K controls are K distinct vectors, a control's metadata carries no data of the
 * direction it mimics, and a metric over controls is reported as mean and spread.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  cosine,
  type DirectionMeta,
  type DirectionSet,
  directionMetadata,
  directionSet,
  loadDirections,
  norm,
  saveDirections,
} from '../../src/directions/direction.js';
import {
  asControlSpread,
  controlPaths,
  controlSpread,
  controlStem,
  directionSha256,
  formatSpread,
  isRandomControl,
  RANDOM_CONTROL_METHOD,
  randomControl,
  randomControls,
} from '../../src/directions/randomControl.js';
import { EmlensError } from '../../src/errors.js';
import { Rng } from '../../src/util/random.js';
import { useTempDir } from '../helpers/fixtures.js';

const META: DirectionMeta = {
  model: 'Qwen/Qwen2.5-0.5B-Instruct',
  hook: 'hook_resid_post',
  method: 'mean_diff',
  positions: 'answer_mean',
  nPos: 120,
  nNeg: 340,
  sourcePos: 'activations/misaligned',
  sourceNeg: 'activations/aligned',
  extra: { note: 'data-derived' },
};

const D = 4096;
// cos of independent isotropic vectors ~ N(0, 1/d): sd 0.016 at d = 4096, so 0.08 is five sd.
const FAR_FROM_ONE = 0.08;

function set(layers: readonly number[], seed: number, d = D): DirectionSet {
  return directionSet(
    layers.map((l) => [l, Rng.derive(seed, `l${l}`).normalArray(d, 2)] as const),
    META,
  );
}

const tmp = useTempDir('emlens-controls-');

describe('randomControl', () => {
  it('gives two different directions different controls with the same seed (|cos| far from 1)', () => {
    const general = set([0, 3, 7], 1);
    const medical = set([0, 3, 7], 2);
    const finance = set([0, 3, 7], 3);
    const controls = [general, medical, finance].map((s) => randomControl(s, { seed: 0 }));
    for (let i = 0; i < controls.length; i++) {
      for (let j = i + 1; j < controls.length; j++) {
        for (const l of [0, 3, 7]) {
          // i, j within the loop bounds
          const c = cosine(controls[i]!.vectors.get(l)!, controls[j]!.vectors.get(l)!);
          expect(Math.abs(c), `controls ${i} and ${j} at layer ${l}`).toBeLessThan(FAR_FROM_ONE);
        }
      }
    }
    // Directions that differ only in norm are different directions too.
    const scaled = directionSet(
      [...general.vectors].map(([l, v]) => [l, v.map((x) => 2 * x)] as const),
      META,
    );
    const c = cosine(randomControl(scaled).vectors.get(3)!, controls[0]!.vectors.get(3)!);
    expect(Math.abs(c)).toBeLessThan(FAR_FROM_ONE);
  });

  it('is the same control for the same inputs, and another for another seed or index', () => {
    const s = set([0, 3, 7], 6);
    const r = randomControl(s, { seed: 42 });
    expect(randomControl(s, { seed: 42 }).vectors).toEqual(r.vectors);
    // a copy of the set (new buffers, same content) and another name give the same draw
    const copy = directionSet(
      [...s.vectors].map(([l, v]) => [l, Float32Array.from(v)] as const),
      { ...META, method: 'copy' },
    );
    expect(randomControl(copy, { seed: 42, name: 'other' }).vectors).toEqual(r.vectors);
    expect(randomControl(s, { seed: 43 }).vectors.get(3)).not.toEqual(r.vectors.get(3));
    expect(randomControl(s, { seed: 42, index: 1 }).vectors.get(3)).not.toEqual(r.vectors.get(3));
    // a layer's control depends on that layer's vector only, not on which other layers the set holds
    const only3 = directionSet([[3, s.vectors.get(3)!]], META);
    expect(randomControl(only3, { seed: 42 }).vectors.get(3)).toEqual(r.vectors.get(3));
    // isotropic: ~orthogonal to the direction, and different layers draw different vectors
    for (const [l, v] of s.vectors) expect(Math.abs(cosine(r.vectors.get(l)!, v))).toBeLessThan(FAR_FROM_ONE);
    expect(Math.abs(cosine(r.vectors.get(0)!, r.vectors.get(7)!))).toBeLessThan(FAR_FROM_ONE);
  });

  it('draws K distinct controls, each norm-matched at every layer', () => {
    const s = set([1, 2, 5], 9);
    const cs = randomControls(s, 4, { seed: 7 });
    expect(cs).toHaveLength(4);
    for (const [k, c] of cs.entries()) {
      expect(c.meta.extra).toMatchObject({ control_index: String(k), seed: '7' });
      for (const [l, v] of s.vectors) expect(norm(c.vectors.get(l)!) / norm(v)).toBeCloseTo(1, 6);
    }
    for (let i = 0; i < cs.length; i++) {
      for (let j = i + 1; j < cs.length; j++) {
        for (const l of [1, 2, 5]) {
          // i, j within the loop bounds
          const c = cosine(cs[i]!.vectors.get(l)!, cs[j]!.vectors.get(l)!);
          expect(Math.abs(c), `controls ${i}, ${j} at layer ${l}`).toBeLessThan(FAR_FROM_ONE);
        }
      }
    }
    expect(cs[2]?.vectors).toEqual(randomControl(s, { seed: 7, index: 2 }).vectors);
    for (const bad of [0, -1, 1.5]) {
      expect(() => randomControls(s, bad)).toThrow(EmlensError);
      expect(() => randomControls(s, bad)).toThrow(/--random-controls 1 or more/);
    }
    expect(() => randomControl(s, { seed: -1 })).toThrow(/non-negative integer \(--seed\)/);
  });

  it('names what it mimics and copies none of its data-derived metadata', async () => {
    const s = set([0, 1], 3, 16);
    const c = randomControl(s, { seed: 5, index: 2, name: 'general' });
    expect(isRandomControl(c)).toBe(true);
    expect(c.meta).toMatchObject({
      model: META.model,
      hook: META.hook,
      method: RANDOM_CONTROL_METHOD,
      positions: 'none',
      nPos: 0,
      nNeg: 0,
      sourcePos: '',
      sourceNeg: '',
    });
    expect(c.meta.extra).toEqual({
      random_of: 'general',
      random_of_sha256: directionSha256(s),
      random_of_method: 'mean_diff',
      seed: '5',
      control_index: '2',
    });
    const md = directionMetadata(c);
    expect(md).toMatchObject({ n_pos: '0', n_neg: '0', source_pos: '', source_neg: '' });
    expect(md.note).toBeUndefined();
    const path = tmp.join('general-random.safetensors');
    await saveDirections(path, c);
    const back = await loadDirections(path);
    expect(back.meta).toMatchObject({ nPos: 0, nNeg: 0, sourcePos: '', sourceNeg: '' });
    expect(back.meta.extra).toMatchObject({ random_of_sha256: directionSha256(s), control_index: '2' });
    // without a name, the hash names it
    expect(randomControl(s).meta.extra?.random_of).toBe(`sha256:${directionSha256(s).slice(0, 12)}`);
  });
});

describe('control files and summaries', () => {
  it('writes PATH for one control and PATH.r{k} before the extension for several', () => {
    expect(controlPaths('d/general-random.safetensors', 1)).toEqual(['d/general-random.safetensors']);
    expect(controlPaths('d/general-random.safetensors', 3)).toEqual([
      'd/general-random.r0.safetensors',
      'd/general-random.r1.safetensors',
      'd/general-random.r2.safetensors',
    ]);
    expect(controlPaths('rand', 2)).toEqual(['rand.r0', 'rand.r1']);
    expect(controlStem('general-random.r2')).toBe('general-random');
    expect(controlStem('general-random')).toBe('general-random');
  });

  it('summarises a metric over controls as mean, sample sd, min and max, and prints n', () => {
    const s = controlSpread([0.1, 0.3, 0.2]);
    expect(s.n).toBe(3);
    expect(s.mean).toBeCloseTo(0.2, 12);
    expect(s.sd).toBeCloseTo(0.1, 12);
    expect([s.min, s.max]).toEqual([0.1, 0.3]);
    expect(formatSpread(s, (x) => x.toFixed(2))).toBe('0.20 ± 0.10 (0.10..0.30, n=3)');
    const one = controlSpread([0.25]);
    expect(one.sd).toBeNull();
    expect(formatSpread(one, (x) => x.toFixed(2))).toBe('0.25 (n=1)');
    expect(formatSpread(controlSpread([Number.NaN, 1]), String)).toBe('n/a (n=2)');
    // read back from JSON, NaN is null
    const json = JSON.parse(JSON.stringify(controlSpread([Number.NaN]))) as ReturnType<typeof controlSpread>;
    expect(formatSpread(json, String)).toBe('n/a (n=1)');
    expect(asControlSpread(0.5)).toMatchObject({ n: 1, mean: 0.5, sd: null });
    expect(() => controlSpread([])).toThrow(EmlensError);
  });
});

describe('reports of directions and controls', () => {
  it('shows controls as controls (no copied samples or stores) and their cosines as mean and spread', async () => {
    const { directionsSection } = await import('../../src/report/activations.js');
    const dir = tmp.join('report-dirs');
    const general = set([0, 1], 11, 64);
    const medical = set([0, 1], 12, 64);
    const files = {
      general: join(dir, 'general.safetensors'),
      medical: join(dir, 'medical.safetensors'),
      r0: join(dir, 'medical-random.r0.safetensors'),
      r1: join(dir, 'medical-random.r1.safetensors'),
      old: join(dir, 'general-random.safetensors'),
    };
    await saveDirections(files.general, general);
    await saveDirections(files.medical, medical);
    const [c0, c1] = randomControls(medical, 2, { name: 'medical' });
    expect(c1).toBeDefined(); // so c0! and c1! below
    await saveDirections(files.r0, c0!);
    await saveDirections(files.r1, c1!);
    // a control as older versions wrote it: the mimicked direction's counts and stores copied over
    await saveDirections(files.old, {
      ...randomControl(general),
      meta: { ...general.meta, method: RANDOM_CONTROL_METHOD, extra: { seed: '0' } },
    });
    const s = await directionsSection(Object.values(files), 'Directions', []);
    const [fileTable] = s.tables;
    expect(fileTable).toBeDefined(); // so fileTable! below
    const controlRows = fileTable!.rows.filter((r) => r[0]?.includes('random'));
    expect(controlRows).toHaveLength(3);
    for (const row of controlRows) {
      expect(row[3], row[0]).toBe('none (random control)');
      expect(row[4], row[0]).toBe('none (random control)');
      expect(row.join(' ')).not.toMatch(/120|activations\//);
    }
    const cos = s.tables.find((t) => t.caption?.startsWith('Cosine similarity'))!;
    const row = cos.rows.find((r) => r[0] === 'general ~ random(medical) (control, n=2)');
    expect(row, cos.rows.map((r) => r[0]).join('; ')).toBeDefined();
    expect(row![row!.length - 1]).toMatch(/^[\d.]+ ± [\d.]+ \([\d.]+\.\.[\d.]+, n=2\)$/);
  });

  it('reads a mediation report written before controls had spreads as one control (n=1)', async () => {
    const { mediationSection } = await import('../../src/report/effects.js');
    const path = tmp.join('old-mediation.json');
    const old = {
      direction: 'general.safetensors',
      records: 4,
      positions: 20,
      ablate: { layers: [0, 1], from: 'own' },
      steer: { layer: 1, scale: 1, norm: 6 },
      seed: 0,
      minDivergence: 0.001,
      kl: {
        finetuneBase: 1,
        ablatedBase: 0.1,
        randomAblatedBase: 0.99,
        patchedBase: 0.05,
        randomPatchedBase: 0.98,
        baseAblatedBase: 0,
        baseRandomAblatedBase: 0.01,
        finetuneSteered: 0.2,
        finetuneRandomSteered: 1.01,
      },
      fractionMediated: 0.9,
      randomFractionMediated: 0.01,
      patchedFractionMediated: 0.95,
      randomPatchedFractionMediated: 0.02,
      steeringClosed: 0.8,
      randomSteeringClosed: null,
      margins: null,
      sideEffects: null,
    };
    await import('node:fs/promises').then((fs) => fs.writeFile(path, JSON.stringify(old)));
    const s = await mediationSection(path, path, []);
    const [t] = s.tables;
    expect(t).toBeDefined(); // so t! below
    expect(t!.header[2]).toBe('random control (n=1)');
    expect(t!.rows.find((r) => r[0]?.startsWith('fraction mediated (patch'))![2]).toBe('2.0% (n=1)');
    expect(t!.rows.find((r) => r[0]?.startsWith('fraction closed'))![2]).toBe('n/a (n=1)');
  });
});
