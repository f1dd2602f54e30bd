/**
 * PCA directions, subspaces and averages: numerics on constructed data (known principal axes) and, on the
 * synthetic organisms, recovery of the planted general direction from per-record activation stores.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { cosine, type DirectionSet, directionSet, loadDirections } from '../../src/directions/direction.js';
import {
  averageDirections,
  directionSubspace,
  pcaDirections,
  pcaFromStores,
  subspaceBasis,
} from '../../src/directions/pca.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { Rng } from '../../src/util/random.js';
import { dot, norm } from '../../src/util/vector.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-pca-');

function unit(d: number, rng: Rng): Float64Array {
  const v = Float64Array.from(rng.normalArray(d));
  const n = Math.hypot(...v);
  return v.map((x) => x / n);
}

describe('pcaDirections on constructed pairs', () => {
  // pos_i = base_i + a_i u, neg_i = base_i + b_i w: the differences vary most along u (a_i spread) and their
  // mean lies along u as well; noise is small and shared within a pair.
  const d = 16;
  const rng = new Rng(7);
  const u = unit(d, rng);
  const pos: Float32Array[] = [];
  const neg: Float32Array[] = [];
  for (let i = 0; i < 40; i++) {
    const base = rng.normalArray(d);
    const a = 1 + 3 * Math.abs(rng.normal());
    pos.push(Float32Array.from(base, (x, j) => x + a * u[j]! + 0.01 * rng.normal()));
    neg.push(Float32Array.from(base, (x) => x + 0.01 * rng.normal()));
  }
  const rows = (r: Float32Array[]) => new Map([[0, r]]);

  it('both methods find the planted axis with the positive side on the positive end, unit norm', () => {
    for (const method of ['pca_diff', 'pca_center'] as const) {
      const set = pcaDirections(method, rows(pos), rows(neg));
      const v = set.vectors.get(0)!;
      expect(cosine(v, Float32Array.from(u)), method).toBeGreaterThan(0.999);
      expect(norm(v), method).toBeCloseTo(1, 5);
      expect(set.meta.method).toBe(method);
      expect(JSON.parse(set.meta.extra!.explained!)[0]).toBeGreaterThan(0.9);
      // swapping the sides flips the sign (orientation by mean projection)
      const flipped = pcaDirections(method, rows(neg), rows(pos)).vectors.get(0)!;
      expect(cosine(flipped, v), method).toBeLessThan(-0.999);
    }
  });

  it('pca_diff centres the differences, pca_center does not', () => {
    // Differences = constant c + t_i w with t_i of mean zero: the spread is along w, the mean along c.
    const c = unit(d, rng);
    const w = Float64Array.from(unit(d, rng));
    const wc = dot(w, c);
    for (let j = 0; j < d; j++) w[j]! -= wc * c[j]!;
    const p2: Float32Array[] = [];
    const n2: Float32Array[] = [];
    for (let i = 0; i < 30; i++) {
      const t = i % 2 === 0 ? 0.5 : -0.5;
      p2.push(Float32Array.from({ length: d }, (_, j) => 5 * c[j]! + t * w[j]!));
      n2.push(new Float32Array(d));
    }
    const diff = pcaDirections('pca_diff', rows(p2), rows(n2)).vectors.get(0)!;
    const center = pcaDirections('pca_center', rows(p2), rows(n2)).vectors.get(0)!;
    expect(Math.abs(cosine(diff, Float32Array.from(w)))).toBeGreaterThan(0.999);
    expect(cosine(center, Float32Array.from(c))).toBeGreaterThan(0.999);
  });

  it('refuses unpaired sides and unknown methods', () => {
    expect(() => pcaDirections('pca_diff', rows(pos), rows(neg.slice(1)))).toThrow(/same number of records/);
    expect(() => pcaDirections('pca_x' as 'pca_diff', rows(pos), rows(neg))).toThrow(/Unknown PCA method/);
  });
});

describe('subspaces and averages', () => {
  it('subspaceBasis is orthonormal and drops dependent vectors', () => {
    const rng = new Rng(3);
    const a = rng.normalArray(8);
    const b = rng.normalArray(8);
    const c = a.map((x, i) => 2 * x - b[i]!);
    const basis = subspaceBasis([a, b, c]);
    expect(basis).toHaveLength(2);
    expect(dot(basis[0]!, basis[1]!)).toBeCloseTo(0, 10);
    for (const v of basis) expect(norm(v)).toBeCloseTo(1, 10);
    // a lies in the span: its residual after projection is zero
    const r = Float64Array.from(a);
    for (const v of basis) {
      const p = dot(r, v);
      for (let j = 0; j < 8; j++) r[j]! -= p * v[j]!;
    }
    expect(norm(r)).toBeLessThan(1e-6); // c is float32-rounded
    expect(subspaceBasis([a, b, c], { rank: 1 })).toHaveLength(1);
  });

  it('directionSubspace gives k unit sets; averageDirections normalises before averaging', () => {
    const e = (i: number, s = 1) => Float32Array.from({ length: 4 }, (_, j) => (j === i ? s : 0));
    const mk = (v: Float32Array) => constantDirectionSet(v, [0, 1]);
    const sets = [mk(e(0, 10)), mk(e(1, 0.1))];
    const sub = directionSubspace(sets);
    expect(sub).toHaveLength(2);
    expect(sub[0]!.meta.method).toBe('subspace');
    const avg = averageDirections(sets).vectors.get(1)!;
    expect([...avg]).toEqual([0.5, 0.5, 0, 0]);
    const mismatch = directionSet([[5, e(0)]], sets[0]!.meta);
    expect(() => averageDirections([sets[0]!, mismatch])).toThrow(/share no layer/);
  });
});

describe('on the synthetic organisms', () => {
  let dir: string;
  let manifest: OrganismManifest;
  let model: Model;
  let planted: Float32Array;
  const stores: string[] = [];

  beforeAll(async () => {
    dir = tmp.join('o');
    manifest = await makeOrganisms(dir, { seed: 0 });
    const baseDir = join(dir, manifest.base);
    model = await loadModel(baseDir, {
      cacheDir: tmp.join('cache'),
      threads: 1,
      adapter: join(dir, 'adapters/general'),
    });
    const f = await SafetensorsFile.open(join(dir, manifest.plantedFile));
    planted = await f.readFloat32('general');
    await f.close();
    const tok = await loadTokenizer(baseDir);
    const rs = await readResponses(join(dir, manifest.responses.general));
    for (const label of ['misaligned', 'aligned']) {
      const out = tmp.join(`store-${label}`);
      const recs = responsesToRecords(
        tok,
        rs.filter((r) => r.extra.label === label),
      );
      await collectToStore(model, recs, out, { batchSize: 8 });
      stores.push(out);
    }
  });
  afterAll(async () => {
    await model?.dispose();
  });

  it('pca_diff and pca_center recover the planted general direction from the adapter layer on', async () => {
    for (const method of ['pca_diff', 'pca_center'] as const) {
      const set: DirectionSet = await pcaFromStores(method, stores[0]!, stores[1]!);
      for (const layer of [1, 2, 3]) {
        const c = cosine(set.vectors.get(layer)!, planted);
        expect(c, `${method} layer ${layer}`).toBeGreaterThan(0.9);
      }
    }
  });

  it('emlens direction --method pca_center writes a unit direction file', async () => {
    const out = tmp.join('pca.safetensors');
    const r = await runCli([
      'direction',
      '--pos',
      stores[0]!,
      '--neg',
      stores[1]!,
      '--method',
      'pca_center',
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const set = await loadDirections(out);
    expect(set.meta.method).toBe('pca_center');
    expect(cosine(set.vectors.get(2)!, planted)).toBeGreaterThan(0.9);
    expect(norm(set.vectors.get(2)!)).toBeCloseTo(1, 5);
  });
});
