/**
 * Projection monitoring on the synthetic organisms: `emlens project` screens a data set (the planted
 * misaligned answers rank first along the planted direction), every value equals dot(residual, unit
 * direction) of a plain forward pass, the server's per-token monitor computes the same numbers, and bad
 * inputs exit 2 without overwriting anything.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { loadDirections } from '../../src/directions/direction.js';
import { projectionSpec, projectRecords, rankByProjection } from '../../src/directions/projection.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { projectRow } from '../../src/serve/monitor.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { dot, norm } from '../../src/util/vector.js';
import { useTempDir } from '../helpers/fixtures.js';
import { savePlantedGeneral } from '../helpers/organisms.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-project-');
let dir: string;
let manifest: OrganismManifest;
let base: string;
let direction: string;
let data: string;
let model: Model;

beforeAll(async () => {
  dir = tmp.join('o');
  manifest = await makeOrganisms(dir, { seed: 0 });
  base = join(dir, manifest.base);
  direction = tmp.join('general.safetensors');
  await savePlantedGeneral(dir, manifest, direction);
  data = join(dir, manifest.responses.general);
  model = await loadModel(base, { cacheDir: tmp.join('cache'), threads: 1 });
});
afterAll(async () => {
  await model?.dispose();
});

const common = () => ['--cache-dir', tmp.join('cache'), '--threads', '1'];

describe('emlens project', () => {
  it('a dataset screen ranks the planted misaligned samples first (CSV, --rank)', async () => {
    const out = tmp.join('screen.csv');
    const r = await runCli([
      'project',
      '--model',
      base,
      '--direction',
      direction,
      '--data',
      data,
      '--layers',
      '1,2',
      '--adapter',
      join(dir, 'adapters', 'general'),
      '--rank',
      '2',
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const lines = (await readFile(out, 'utf8')).trim().split('\n');
    const head = lines[0]!.split(',');
    expect(head.slice(0, 1)).toEqual(['id']);
    expect(head).toContain('label');
    expect(head).toContain('question_id');
    const labelCol = head.indexOf('label');
    const layerCol = head.indexOf('layer');
    const layer2 = lines
      .slice(1)
      .map((l) => l.split(','))
      .filter((c) => c[layerCol] === '2');
    const n = layer2.filter((c) => c[labelCol] === 'misaligned').length;
    expect(n).toBeGreaterThan(0);
    // every misaligned answer above every aligned one
    expect(layer2.slice(0, n).every((c) => c[labelCol] === 'misaligned')).toBe(true);
    expect(layer2.slice(n).every((c) => c[labelCol] !== 'misaligned')).toBe(true);
  });

  it('each value is dot(residual, unit direction) of a forward pass; the server monitor agrees', async () => {
    const tokenizer = await loadTokenizer(base);
    const responses = (await readResponses(data)).slice(0, 3);
    const records = responsesToRecords(tokenizer, responses);
    const set = await loadDirections(direction);
    const spec = projectionSpec(set, [1, 3]);
    const rows = await projectRecords(model, records, spec, { batchSize: 1 });
    const d = model.spec.dModel;
    for (const [k, rec] of records.entries()) {
      const f = await model.forward([rec.ids], {
        hooks: ['blocks.1.hook_resid_post', 'blocks.3.hook_resid_post'],
      });
      for (const [i, layer] of [1, 3].entries()) {
        const t = f.hooks.get(`blocks.${layer}.hook_resid_post`)!;
        const v = set.vectors.get(layer)!;
        const unit = Float64Array.from(v, (x) => x / norm(v));
        let aSum = 0;
        let aN = 0;
        for (let p = 0; p < rec.ids.length; p++) {
          const want = dot(t.data.subarray(p * d, (p + 1) * d), unit);
          expect(rows[k]!.layers[i]!.tokens[p]).toBeCloseTo(want, 9);
          // the playground's per-token monitor: the same function, the same number
          expect(projectRow(spec, f.hooks, 0, p)[i]).toBe(rows[k]!.layers[i]!.tokens[p]);
          if (rec.mask![p]) {
            aSum += want;
            aN++;
          }
        }
        expect(rows[k]!.layers[i]!.answerMean).toBeCloseTo(aSum / aN, 9);
        expect(Number.isFinite(rows[k]!.layers[i]!.promptMean)).toBe(true);
      }
    }
    expect(rankByProjection(rows, 1)).toHaveLength(3);
  });

  it('JSONL carries per-token values and token texts', async () => {
    const out = tmp.join('monitor.jsonl');
    const r = await runCli([
      'project',
      '--model',
      base,
      '--direction',
      direction,
      '--data',
      data,
      '--layers',
      '2',
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const first = JSON.parse((await readFile(out, 'utf8')).split('\n')[0]!);
    expect(first.tokens.length).toBe(first.answer_mask.length);
    expect(first.layers[0].layer).toBe(2);
    expect(first.layers[0].tokens.length).toBe(first.tokens.length);
    expect(typeof first.question_id).toBe('string');
    // emlens report renders it: the ranked table and a token heatmap per top record
    const rep = await runCli(['report', out, '--out', tmp.join('report')]);
    expect(rep.code, rep.stderr).toBe(0);
    const md = await readFile(join(tmp.join('report'), 'report.md'), 'utf8');
    expect(md).toMatch(/Projections: /);
    expect(md).toMatch(/projection per token \(answer tokens marked \*\)/);
    expect(md).toMatch(/Records by answer projection at layer 2, largest first/);
  });

  it('bad inputs exit 2 and an existing --out is kept unless --overwrite', async () => {
    const args = (out: string, extra: string[] = []) => [
      'project',
      '--model',
      base,
      '--direction',
      direction,
      '--data',
      data,
      '--out',
      out,
      ...extra,
      ...common(),
    ];
    const txt = await runCli(args(tmp.join('x.txt')));
    expect(txt.code).toBe(2);
    expect(txt.stderr).toMatch(/must end in \.csv or \.jsonl/);
    const rank = await runCli(args(tmp.join('r.csv'), ['--layers', '1', '--rank', '3']));
    expect(rank.code).toBe(2);
    expect(rank.stderr).toMatch(/--rank 3 is not one of the projected layers \(1\)/);
    const range = await runCli(args(tmp.join('l.csv'), ['--layers', '9']));
    expect(range.code).toBe(2);
    expect(range.stderr).toMatch(/Layer 9 is out of range/);
    const kept = tmp.join('kept.csv');
    await writeFile(kept, 'mine\n');
    const again = await runCli(args(kept));
    expect(again.code).toBe(2);
    expect(await readFile(kept, 'utf8')).toBe('mine\n');
    const over = await runCli(args(kept, ['--layers', '1', '--overwrite']));
    expect(over.code, over.stderr).toBe(0);
    expect(await readFile(kept, 'utf8')).toMatch(/^id,/);
  });
});
