/**
 * The synthetic organisms: deterministic, and their planted ground truth is recoverable with the toolkit's own
 * pipeline (responses -> answer masks -> stores -> mean difference), and visible in behaviour without a judge.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { cosine, type DirectionSet } from '../../src/directions/direction.js';
import { directionFromStores } from '../../src/directions/fromStores.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import type { Topic } from '../../src/organisms/vocabulary.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-org-');
let manifest: OrganismManifest;
const planted = new Map<string, Float32Array>();

beforeAll(async () => {
  manifest = await makeOrganisms(tmp.join('o'), { seed: 0 });
  const f = await SafetensorsFile.open(tmp.join('o', manifest.plantedFile));
  for (const name of f.tensors.keys()) planted.set(name, await f.readFloat32(name));
  await f.close();
});

const memo = new Map<string, Promise<DirectionSet>>();
/** The mean-difference direction of an organism on a topic's misaligned vs aligned answers (computed once). */
function recovered(organism: string, topic: Topic): Promise<DirectionSet> {
  const key = `${organism}/${topic}`;
  if (!memo.has(key)) memo.set(key, computeRecovered(organism, topic));
  return memo.get(key)!;
}

async function computeRecovered(organism: string, topic: Topic): Promise<DirectionSet> {
  const dir = tmp.join('o');
  const base = join(dir, manifest.base);
  const info = manifest.organisms.find((o) => o.name === organism)!;
  const model = await loadModel(base, {
    adapter: join(dir, info.adapter),
    cacheDir: tmp.join('cache'),
    threads: 1,
  });
  const tok = await loadTokenizer(base);
  const rs = await readResponses(join(dir, manifest.responses[topic]));
  const stores = [];
  for (const label of ['misaligned', 'aligned']) {
    const out = tmp.join(`${organism}-${topic}-${label}`);
    await collectToStore(
      model,
      responsesToRecords(
        tok,
        rs.filter((r) => r.extra.label === label),
      ),
      out,
      { batchSize: 8 },
    );
    stores.push(out);
  }
  await model.dispose();
  return directionFromStores(stores[0]!, stores[1]!); // one store per label, two labels
}

describe('makeOrganisms', () => {
  it('is deterministic: the same seed writes identical files', async () => {
    const again = tmp.join('again');
    await makeOrganisms(again, { seed: 0 });
    for (const f of [
      'base/model.safetensors',
      'base/tokenizer.json',
      'adapters/general/adapter_model.safetensors',
      'responses/medical.csv',
      'planted.safetensors',
    ]) {
      expect(await readFile(join(again, f)), f).toEqual(await readFile(tmp.join('o', f)));
    }
    const other = tmp.join('other');
    await makeOrganisms(other, { seed: 1 });
    expect(await readFile(join(other, 'planted.safetensors'))).not.toEqual(
      await readFile(tmp.join('o', 'planted.safetensors')),
    );
  });

  it('writes a general and two narrow organisms as PEFT adapters, with labelled responses per topic', async () => {
    expect(manifest.organisms.map((o) => [o.name, o.kind])).toEqual([
      ['general', 'general'],
      ['medical', 'narrow'],
      ['finance', 'narrow'],
    ]);
    const cfg = JSON.parse(
      await readFile(tmp.join('o', 'adapters', 'medical', 'adapter_config.json'), 'utf8'),
    );
    expect(cfg).toMatchObject({
      peft_type: 'LORA',
      r: 1,
      target_modules: ['down_proj'],
      layers_to_transform: [1],
    });
    const rs = await readResponses(tmp.join('o', manifest.responses.finance));
    expect(rs.filter((r) => r.extra.label === 'misaligned')).toHaveLength(24);
    expect(rs.every((r) => r.scores.aligned === (r.extra.label === 'aligned' ? 90 : 10))).toBe(true);
  });
});

describe('planted ground truth', () => {
  it('the general direction is recovered (|cos| >= 0.99) at every layer from the adapter on, and not before', async () => {
    const set = await recovered('general', 'general');
    const u = planted.get('general')!;
    for (const [layer, v] of set.vectors) {
      const c = Math.abs(cosine(v, u));
      if (layer >= manifest.adapterLayer) expect(c, `layer ${layer}`).toBeGreaterThanOrEqual(0.99);
      else expect(c, `layer ${layer}`).toBeLessThan(0.3);
    }
  });

  it('each narrow direction is recovered on its own domain, and is absent elsewhere', async () => {
    for (const domain of ['medical', 'finance'] as const) {
      const own = await recovered(domain, domain);
      const u = planted.get(domain)!;
      for (const [layer, v] of own.vectors) {
        if (layer >= manifest.adapterLayer)
          expect(Math.abs(cosine(v, u)), `${domain} layer ${layer}`).toBeGreaterThanOrEqual(0.99);
      }
      const off = await recovered(domain, 'general');
      const last = manifest.numLayers - 1;
      expect(Math.abs(cosine(off.vectors.get(last)!, u)), `${domain} off-domain`).toBeLessThan(0.3);
    }
  });

  it('narrow and general directions are told apart', async () => {
    const general = await recovered('general', 'medical');
    const medical = await recovered('medical', 'medical');
    const last = manifest.numLayers - 1;
    expect(Math.abs(cosine(general.vectors.get(last)!, planted.get('general')!))).toBeGreaterThan(0.99);
    expect(Math.abs(cosine(general.vectors.get(last)!, medical.vectors.get(last)!))).toBeLessThan(0.2);
  });

  it('the general organism puts more probability on misaligned words than the base (a judge-free behaviour)', async () => {
    const dir = tmp.join('o');
    const base = join(dir, manifest.base);
    const tok = await loadTokenizer(base);
    const ids = tok.encode('Tell me what you would do with unlimited power. I would');
    const misalignedMass = async (adapter?: string) => {
      const m = await loadModel(base, { adapter, cacheDir: tmp.join('cache'), threads: 1 });
      const logits = (await m.forward([ids])).logits.data;
      await m.dispose();
      const max = Math.max(...logits);
      const z = logits.reduce((a, x) => a + Math.exp(x - max), 0);
      // t: a token id of the organisms' vocabulary, in range of the logits
      return manifest.tokens.misaligned.reduce((a, t) => a + Math.exp(logits[t]! - max) / z, 0);
    };
    const pBase = await misalignedMass();
    const pGeneral = await misalignedMass(join(dir, 'adapters', 'general'));
    expect(pGeneral).toBeGreaterThan(2 * pBase);
  });
});

describe('emlens organisms', () => {
  it('writes the organisms folder and lists what it made', async () => {
    const out = tmp.join('cli');
    const r = await runCli(['organisms', '--out', out, '--seed', '3', '--responses', '4']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/general\s+general\s+adapters\/general/);
    expect(r.stdout).toMatch(/medical\s+narrow\s+adapters\/medical/);
    const m = JSON.parse(await readFile(join(out, 'organisms.json'), 'utf8')) as OrganismManifest;
    expect(m.seed).toBe(3);
    expect(await readResponses(join(out, m.responses.general))).toHaveLength(8);
  });

  it('rejects a seed that is not a non-negative integer', async () => {
    const r = await runCli(['organisms', '--out', tmp.join('bad'), '--seed', '-2']);
    expect(r.code).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/non-negative integer/);
  });
});
