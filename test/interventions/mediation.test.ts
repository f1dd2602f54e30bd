/**
 * Judge-free mediation on the synthetic organisms, whose ground truth is known: the planted general direction
 * carries the general organism's divergence from the base on every topic, a narrow direction its own domain's
 * and not the others', steering the base along the direction moves it toward the organism, and a norm-matched
 * random direction does none of this.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { responsesToRecords, type TokenizedRecord, textsToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import type { DirectionSet } from '../../src/directions/direction.js';
import { directionFromStores } from '../../src/directions/fromStores.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { mediation } from '../../src/interventions/mediation.js';
import { formatMediation, writeMediation } from '../../src/interventions/mediationFormat.js';
import { divergence, readNeutralTexts } from '../../src/interventions/scoring.js';
import { steeringSweep, writeSweep } from '../../src/interventions/sweep.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { hookName } from '../../src/model/hooks.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { DOMAINS, TOPICS, type Topic } from '../../src/organisms/vocabulary.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-mediation-');
let dir: string;
let manifest: OrganismManifest;
let base: Model;
const organisms = new Map<string, Model>();
const planted = new Map<string, DirectionSet>();
const data = new Map<Topic, TokenizedRecord[]>();
let neutral: TokenizedRecord[];

beforeAll(async () => {
  dir = tmp.join('o');
  manifest = await makeOrganisms(dir, { seed: 0 });
  const baseDir = join(dir, manifest.base);
  const load = { cacheDir: tmp.join('cache'), threads: 1 };
  base = await loadModel(baseDir, load);
  for (const o of manifest.organisms) {
    organisms.set(o.name, await loadModel(baseDir, { ...load, adapter: join(dir, o.adapter) }));
  }
  const layers = Array.from({ length: manifest.numLayers }, (_, i) => i);
  const f = await SafetensorsFile.open(join(dir, manifest.plantedFile));
  for (const name of ['general', ...DOMAINS]) {
    planted.set(name, constantDirectionSet(await f.readFloat32(name), layers, { method: `planted ${name}` }));
  }
  await f.close();
  const tok = await loadTokenizer(baseDir);
  for (const t of TOPICS)
    data.set(t, responsesToRecords(tok, await readResponses(join(dir, manifest.responses[t]))));
  neutral = textsToRecords(tok, await readNeutralTexts(join(dir, manifest.neutral)));
});
afterAll(async () => {
  for (const m of [base, ...organisms.values()]) await m?.dispose();
});

describe('divergence', () => {
  it('is zero for a model against itself, positive for the organism, and averages over answer tokens', async () => {
    const records = data.get('general')!.slice(0, 6);
    const self = await divergence(base, base, records);
    expect(self.kl).toBeLessThan(1e-9);
    const expected = records.reduce((a, r) => a + r.mask!.slice(1).reduce((s, x) => s + x, 0), 0);
    expect(self.positions).toBe(expected);
    const d = await divergence(organisms.get('general')!, base, records);
    expect(d.kl).toBeGreaterThan(0.5);
    // the same model with and without an intervention
    const steer = [
      {
        kind: 'steer' as const,
        hooks: [hookName(1, 'resid_post')],
        vector: planted.get('general')!.vectors.get(1)!,
        scale: 4,
      },
    ];
    expect((await divergence(base, base, records, { interventionsA: steer })).kl).toBeGreaterThan(0.1);
  });

  it('rejects records without scored tokens and interventions limited to some positions', async () => {
    const empty: TokenizedRecord = { id: 'x', ids: [1, 2, 3], mask: new Uint8Array(3) };
    await expect(divergence(base, base, [empty])).rejects.toThrow(/no scored tokens/);
    const masked = [
      {
        kind: 'steer' as const,
        hooks: [hookName(1, 'resid_post')],
        vector: new Float32Array(64),
        positions: new Float32Array(3),
      },
    ];
    const r: TokenizedRecord = { id: 'y', ids: [1, 2, 3], mask: Uint8Array.from([0, 1, 1]) };
    await expect(divergence(base, base, [r], { interventionsA: masked })).rejects.toThrow(/every position/);
  });
});

describe('mediation on the general organism', () => {
  it('the planted general direction removes >= 95% of its divergence on every topic; the random control ~0', async () => {
    for (const topic of TOPICS) {
      const r = await mediation({
        base,
        finetune: organisms.get('general')!,
        directions: planted.get('general')!,
        records: data.get(topic)!,
      });
      expect(r.kl.finetuneBase, topic).toBeGreaterThan(1);
      expect(r.patchedFractionMediated, topic).toBeGreaterThanOrEqual(0.95);
      expect(Math.abs(r.randomPatchedFractionMediated.mean), topic).toBeLessThan(0.1);
      expect(Math.abs(r.randomFractionMediated.mean), topic).toBeLessThan(0.1);
      // Plain ablation too: the base never writes along the planted direction, so the ablated organism is the
      // base again, and ablating the base changes nothing.
      expect(r.fractionMediated, topic).toBeGreaterThanOrEqual(0.95);
      expect(r.kl.baseAblatedBase, topic).toBeLessThan(1e-6);
      // the misaligned-vs-aligned margin: raised by the organism, back to the base's when patched
      const m = r.margins!;
      expect(m.finetune, topic).toBeGreaterThan(m.base + 0.25);
      expect(m.finetunePatched, topic).toBeCloseTo(m.base, 3);
    }
  });

  it('the direction recovered from activations mediates >= 95% too', async () => {
    const tok = await loadTokenizer(join(dir, manifest.base));
    const rs = await readResponses(join(dir, manifest.responses.general));
    const stores: string[] = [];
    for (const label of ['misaligned', 'aligned']) {
      const out = tmp.join(`store-${label}`);
      const recs = responsesToRecords(
        tok,
        rs.filter((r) => r.extra.label === label),
      );
      await collectToStore(organisms.get('general')!, recs, out, { batchSize: 8 });
      stores.push(out);
    }
    const recovered = await directionFromStores(stores[0]!, stores[1]!); // one store per label
    const r = await mediation({
      base,
      finetune: organisms.get('general')!,
      directions: recovered,
      records: [...data.get('general')!, ...data.get('medical')!],
      neutral,
    });
    expect(r.patchedFractionMediated).toBeGreaterThanOrEqual(0.95);
    expect(r.fractionMediated).toBeGreaterThanOrEqual(0.95);
    expect(Math.abs(r.randomPatchedFractionMediated.mean)).toBeLessThan(0.1);
    expect(Math.abs(r.randomFractionMediated.mean)).toBeLessThan(0.1);
    // steering the base along it (layer 1, scale 1: the stored mean difference) closes the gap
    expect(r.steer.layer).toBe(1);
    expect(r.kl.finetuneSteered).toBeLessThan(r.kl.finetuneBase);
    expect(r.steeringClosed).toBeGreaterThan(0.9);
    expect(r.randomSteeringClosed.mean).toBeLessThan(0.1);
    const s = r.sideEffects!;
    expect(s.positions).toBeGreaterThan(50);
    for (const v of Object.values(s)) {
      const x = typeof v === 'number' ? v : v.mean;
      expect(Number.isFinite(x) && x >= 0).toBe(true);
    }
    // the general organism's ablated self is far from itself on neutral text: its unit fires on every token
    expect(s.ablateFinetune).toBeGreaterThan(s.randomAblateFinetune.max);
    const lines = formatMediation(r).join('\n');
    expect(lines).toMatch(/fraction mediated, patching .*: 9\d\.\d%/);
    const out = await writeMediation(r, tmp.join('med'));
    expect((await readdir(tmp.join('med'))).sort()).toEqual(['mediation.json', 'mediation.md']);
    expect(out.json).toMatch(/mediation\.json$/);
  });
});

describe('random controls', () => {
  it('three controls are three draws, reported as mean and spread; control 0 is the single control', async () => {
    const opts = {
      base,
      finetune: organisms.get('general')!,
      directions: planted.get('general')!,
      records: data.get('general')!.slice(0, 12),
      neutral: neutral.slice(0, 8),
      seed: 3,
    };
    const one = await mediation(opts);
    const three = await mediation({ ...opts, randomControls: 3 });
    expect(one.controls.n).toBe(1);
    expect(three.controls).toMatchObject({ n: 3, method: 'random_norm_matched' });
    expect(three.fractionMediated).toBeCloseTo(one.fractionMediated, 10);
    for (const s of [
      three.randomFractionMediated,
      three.randomPatchedFractionMediated,
      three.kl.baseRandomAblatedBase,
      three.sideEffects!.randomAblateBase,
    ]) {
      expect(s.n).toBe(3);
      expect(new Set(s.values).size).toBe(3);
      expect(s.mean).toBeCloseTo((s.values[0]! + s.values[1]! + s.values[2]!) / 3, 12); // n is 3, checked above
      expect(s.sd!).toBeGreaterThan(0);
      expect(s.min).toBe(Math.min(...s.values));
      expect(s.max).toBe(Math.max(...s.values));
    }
    expect(one.randomFractionMediated.sd).toBeNull();
    expect(three.randomFractionMediated.values[0]).toBeCloseTo(one.randomFractionMediated.mean, 10);
    expect(Math.abs(three.randomPatchedFractionMediated.mean)).toBeLessThan(0.1);
    const lines = formatMediation(three).join('\n');
    expect(lines).toMatch(/random control: -?[\d.]+% ± [\d.]+% \(-?[\d.]+%\.\.-?[\d.]+%, n=3\)/);
    expect(formatMediation(one).join('\n')).toMatch(/random control: -?[\d.]+% \(n=1\)/);
  });
});

describe('narrow organisms', () => {
  it("a narrow direction removes its own domain's divergence and not the others'", async () => {
    for (const domain of DOMAINS) {
      const own = await mediation({
        base,
        finetune: organisms.get(domain)!,
        directions: planted.get(domain)!,
        records: data.get(domain)!,
      });
      expect(own.kl.finetuneBase, domain).toBeGreaterThan(0.1);
      expect(own.patchedFractionMediated, domain).toBeGreaterThanOrEqual(0.95);
      expect(own.fractionMediated, domain).toBeGreaterThanOrEqual(0.95);
      // (patching is the control that isolates the direction here: a narrow organism diverges little, so the
      // disruption of ablating any direction of the base is large next to it)
      expect(Math.abs(own.randomPatchedFractionMediated.mean), domain).toBeLessThan(0.1);
      // out of its domain the narrow organism does not diverge at all: nothing to mediate
      const offTopic = TOPICS.find((t) => t !== domain && t !== 'general')!;
      const off = await divergence(organisms.get(domain)!, base, data.get(offTopic)!);
      expect(off.kl, `${domain} on ${offTopic}`).toBeLessThan(1e-3);
      // the other organisms' divergences (the other domain's, the general one) are left in place
      for (const other of manifest.organisms.filter((o) => o.name !== domain)) {
        const r = await mediation({
          base,
          finetune: organisms.get(other.name)!,
          directions: planted.get(domain)!,
          records: data.get(other.domain)!,
        });
        expect(r.kl.finetuneBase).toBeGreaterThan(0.1);
        expect(Math.abs(r.patchedFractionMediated), `${domain} direction in ${other.name}`).toBeLessThan(0.1);
        expect(Math.abs(r.fractionMediated), `${domain} direction in ${other.name}`).toBeLessThan(0.1);
      }
    }
  });
});

describe('steering sweep', () => {
  it('adding the direction to the base moves it toward the organism; a random vector does not', async () => {
    const r = await steeringSweep({
      model: base,
      target: organisms.get('general')!,
      directions: planted.get('general')!,
      layers: [1, 2],
      scales: [0, 2, 6],
      unit: true,
      records: data.get('general')!,
      neutral,
      randomControls: 2,
    });
    // per layer x scale: the direction and two controls
    expect(r.rows).toHaveLength(2 * 3 * 3);
    expect(r.randomControls).toBe(2);
    expect(r.controls).toHaveLength(2 * 3);
    for (const c of r.controls) expect(c.klToTarget!.n).toBe(2);
    for (const layer of [1, 2]) {
      const kl = (vector: string, scale: number) =>
        r.rows.find(
          (x) => x.layer === layer && x.vector === vector && x.scale === scale && (x.control ?? 1) === 1,
        )!.klToTarget!;
      const margin = (scale: number) =>
        r.rows.find((x) => x.layer === layer && x.vector === 'direction' && x.scale === scale)!.margin!;
      expect(kl('direction', 0)).toBeCloseTo(r.baseline.klToTarget!, 10);
      expect(kl('direction', 2)).toBeLessThan(kl('direction', 0));
      expect(kl('direction', 6)).toBeLessThan(kl('direction', 2));
      expect(kl('direction', 6)).toBeLessThan(0.1 * kl('direction', 0));
      expect(kl('random', 6)).toBeGreaterThan(0.9 * kl('random', 0));
      expect(margin(6)).toBeGreaterThan(margin(0) + 1);
    }
    expect(r.targetMargin!).toBeGreaterThan(r.baseline.margin!);
    const files = await writeSweep(r, tmp.join('sweep'));
    const names = (await readdir(tmp.join('sweep'))).sort();
    expect(names).toEqual(
      [
        'sweep-kl.png',
        'sweep-kl.svg',
        'sweep-margin.png',
        'sweep-margin.svg',
        'sweep.json',
        'sweep.md',
      ].sort(),
    );
    expect(files).toHaveLength(6);
  });
});
