/**
 * The transfer matrix on the synthetic organisms (planted truth): each organism's own planted direction
 * carries its divergence, a narrow direction of one domain carries none of the other domain's organism, and
 * the norm-matched random controls carry none anywhere.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TokenizedRecord } from '../../src/data/record.js';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { saveDirections } from '../../src/directions/direction.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { formatTransfer, transferMatrix, writeTransfer } from '../../src/interventions/transfer.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-transfer-');
let base: Model;
const models: { name: string; model: Model }[] = [];
const directions: { name: string; set: ReturnType<typeof constantDirectionSet> }[] = [];
const records = new Map<string, TokenizedRecord[]>();
let dir: string;
let manifest: OrganismManifest;

beforeAll(async () => {
  dir = tmp.join('o');
  manifest = await makeOrganisms(dir, { seed: 0 });
  const baseDir = join(dir, manifest.base);
  const load = { cacheDir: tmp.join('cache'), threads: 1 };
  base = await loadModel(baseDir, load);
  const tok = await loadTokenizer(baseDir);
  const layers = Array.from({ length: manifest.numLayers }, (_, i) => i);
  const f = await SafetensorsFile.open(join(dir, manifest.plantedFile));
  for (const o of manifest.organisms) {
    models.push({
      name: o.name,
      model: await loadModel(baseDir, { ...load, adapter: join(dir, o.adapter) }),
    });
    directions.push({ name: o.name, set: constantDirectionSet(await f.readFloat32(o.name), layers) });
    const recs = responsesToRecords(tok, await readResponses(join(dir, manifest.responses[o.domain])));
    records.set(o.name, recs.slice(0, 12));
  }
  await f.close();
});
afterAll(async () => {
  for (const m of [base, ...models.map((x) => x.model)]) await m?.dispose();
});

describe('transferMatrix on the organisms', () => {
  it('is high on the diagonal, low between narrow organisms of different domains, random controls low', async () => {
    const seen: number[] = [];
    const r = await transferMatrix({
      base,
      finetunes: models,
      directions,
      records,
      randomControls: 2,
      onProgress: (done) => seen.push(done),
    });
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const cell = (a: string, b: string) => r.cells.find((c) => c.direction === a && c.finetune === b)!;
    for (const name of r.finetunes) {
      expect(cell(name, name).patched, name).toBeGreaterThanOrEqual(0.95);
      expect(cell(name, name).divergence, name).toBeGreaterThan(0.1);
    }
    expect(Math.abs(cell('medical', 'finance').patched)).toBeLessThan(0.1);
    expect(Math.abs(cell('finance', 'medical').patched)).toBeLessThan(0.1);
    for (const c of r.cells)
      expect(Math.abs(c.randomPatched), `${c.direction} in ${c.finetune}`).toBeLessThan(0.1);
    expect(r.cosine?.names).toEqual(r.directions);
    expect(formatTransfer(r)[0]).toMatch(/^general in general: patched \d+\.\d% \(random -?\d+\.\d%/);

    const out = tmp.join('out');
    const files = await writeTransfer(r, out);
    const json = JSON.parse(await readFile(files.json, 'utf8'));
    expect(json.cells).toHaveLength(9);
    expect(json.cosine.names).toEqual(r.directions);
    const csv = (await readFile(files.csv, 'utf8')).trim().split('\n');
    expect(csv[0]).toBe(
      'direction,finetune,divergence,patched,randomPatched,randomPatchedMaxAbs,ablated,randomAblated',
    );
    expect(csv).toHaveLength(10);
    expect(await readFile(files.svg, 'utf8')).toMatch(/<svg/);
    await expect(writeTransfer(r, out)).rejects.toThrow(/--overwrite/);
  }, 300_000);
});

describe('emlens transfer', () => {
  it('runs the matrix from the command line, per-finetune data, and refuses a bad NAME=PATH', async () => {
    const args = ['transfer', '--model', join(dir, manifest.base), '--random-controls', '1'];
    for (const o of manifest.organisms.filter((x) => x.kind === 'narrow')) {
      const file = tmp.join(`${o.name}.safetensors`);
      await saveDirections(file, directions.find((d) => d.name === o.name)!.set);
      args.push('--finetune', `${o.name}=${join(dir, o.adapter)}`, '--directions', `${o.name}=${file}`);
      args.push('--data', `${o.name}=${join(dir, manifest.responses[o.domain])}`);
    }
    const out = tmp.join('cli-out');
    const r = await runCli([...args, '--out', out, '--cache-dir', tmp.join('cache'), '--threads', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/medical in finance: patched -?\d+\.\d%/);
    expect(r.stdout).toContain(`wrote ${join(out, 'transfer.json')}`);
    // emlens report picks the output folder up as a transfer section
    const rep = await runCli(['report', out, '--out', tmp.join('report')]);
    expect(rep.code, rep.stderr).toBe(0);
    const html = await readFile(tmp.join('report', 'report.html'), 'utf8');
    expect(html).toContain('Transfer across finetunes');
    expect(html).toMatch(/direction \\ finetune/);
    const again = await runCli([...args, '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/--overwrite/);
    const bad = await runCli([
      'transfer',
      '--model',
      'x',
      '--finetune',
      'nope',
      '--directions',
      'a=b',
      '--data',
      'd',
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--finetune nope is not NAME=PATH/);
  }, 300_000);
});
