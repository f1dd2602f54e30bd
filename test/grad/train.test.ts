/**
 * trainSteeringVector / emlens train-vector on the synthetic organisms: training lowers the loss, a resumed run
 * ends exactly where the uninterrupted one does, a resume with other options is refused, and bad inputs exit 2.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { responsesToRecords, type TokenizedRecord, textsToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { loadDirections } from '../../src/directions/direction.js';
import { GradModel } from '../../src/grad/gradModel.js';
import { trainSteeringVector } from '../../src/grad/train.js';
import { readNeutralTexts } from '../../src/interventions/scoring.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/index.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

describe('training a steering vector', () => {
  const tmp = useTempDir('emlens-train-');
  let org: string;
  let manifest: OrganismManifest;
  let base: string;
  let data: TokenizedRecord[];
  let neutral: TokenizedRecord[];
  let model: GradModel;
  const site = 'blocks.1.hook_resid_post';
  beforeAll(async () => {
    org = tmp.join('org');
    manifest = await makeOrganisms(org, { seed: 0, numLayers: 2, dModel: 32, responsesPerLabel: 6 });
    base = join(org, manifest.base);
    const tokenizer = await loadTokenizer(base);
    const medical = await readResponses(join(org, manifest.responses.medical));
    data = responsesToRecords(
      tokenizer,
      medical.filter((r) => r.extra.label === 'misaligned'),
    );
    neutral = textsToRecords(tokenizer, await readNeutralTexts(join(org, manifest.neutral)));
    model = await GradModel.load(base, { threads: 1 });
    return () => model.dispose();
  });
  const opts = () => ({ site, data, klData: neutral, klWeight: 1, steps: 6, lr: 0.05, batch: 3, seed: 4 });

  it('lowers the CE on the answers, and the KL term is 0 at the start', async () => {
    const r = await trainSteeringVector(model, { ...opts(), steps: 12 });
    expect(r.history).toHaveLength(12);
    expect(r.history[0]!.kl).toBeLessThan(1e-6);
    // the same batch draws come back every few steps: compare the mean of the first and last three
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(r.history.slice(0, 3).map((h) => h.ce));
    const last = mean(r.history.slice(-3).map((h) => h.ce));
    expect(last).toBeLessThan(first - 0.05);
    expect(Math.hypot(...r.vector)).toBeGreaterThan(0.1);
  });

  it('a run interrupted and resumed from its checkpoint ends with the same vector as an uninterrupted run', async () => {
    const straight = await trainSteeringVector(model, opts());
    const path = tmp.join('ck.json');
    const checkpoint = { path, every: 2, resume: true, identity: { data: 'x' } };
    await expect(
      trainSteeringVector(model, {
        ...opts(),
        checkpoint,
        onStep: (s) => {
          if (s === 3) throw new Error('interrupted');
        },
      }),
    ).rejects.toThrow('interrupted');
    const resumed = await trainSteeringVector(model, { ...opts(), checkpoint });
    expect(resumed.resumedFrom).toBe(2);
    expect([...resumed.vector]).toEqual([...straight.vector]);
    expect(resumed.history.map((h) => h.loss)).toEqual(straight.history.map((h) => h.loss));
    await expect(trainSteeringVector(model, { ...opts(), lr: 0.1, checkpoint })).rejects.toThrow(
      /made with lr = 0.05, not 0.1/,
    );
    await expect(
      trainSteeringVector(model, { ...opts(), checkpoint: { ...checkpoint, identity: { data: 'y' } } }),
    ).rejects.toThrow(/made with data = "x"/);
  });

  it('emlens train-vector writes a direction file with provenance, and --resume continues it', async () => {
    const out = tmp.join('run');
    const args = [
      'train-vector',
      '--model',
      base,
      '--site',
      site,
      '--data',
      join(org, manifest.responses.medical),
      '--kl-data',
      join(org, manifest.neutral),
      '--kl-weight',
      '0.5',
      '--steps',
      '3',
      '--lr',
      '0.05',
      '--batch',
      '2',
      '--seed',
      '1',
      '--checkpoint-every',
      '1',
      '--threads',
      '1',
      '--out',
      out,
    ];
    const r = await runCli(args);
    expect(r.code, r.stderr).toBe(0);
    const set = await loadDirections(join(out, 'direction.safetensors'));
    expect([...set.vectors.keys()]).toEqual([1]);
    expect(set.meta.hook).toBe('hook_resid_post');
    expect(set.meta.method).toBe('trained_steering_vector');
    expect(set.meta.extra?.kl_weight).toBe('0.5');
    expect(set.meta.extra?.steps).toBe('3');
    expect(Number(set.meta.extra?.final_loss)).toBeGreaterThan(0);
    const log = JSON.parse(await readFile(join(out, 'train.json'), 'utf8'));
    expect(log.history).toHaveLength(3);
    // a second run without --resume is refused; with --resume and the same options it finds nothing left to do
    const again = await runCli(args);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already holds|--overwrite|--resume/);
    const resumed = await runCli([...args, '--resume']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const other = await runCli([...args.map((a) => (a === '0.05' ? '0.2' : a)), '--resume']);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/made with lr = 0.05, not 0.2/);
  });

  const bad: [string, string[], RegExp][] = [
    ['a non-residual site', ['--site', 'blocks.0.hook_mlp_out'], /not a residual site/],
    ['a KL weight without KL data', ['--kl-weight', '1'], /needs KL data/],
    ['a negative learning rate', ['--lr', '-1'], /lr must be a positive number/],
    ['zero steps', ['--steps', '0'], /--steps/],
  ];
  for (const [what, extra, message] of bad) {
    it(`exits 2 on ${what}`, async () => {
      const flags: Record<string, string> = {
        '--model': base,
        '--site': site,
        '--data': join(org, manifest.responses.medical),
        '--steps': '2',
        '--out': tmp.join(`bad-${what.replace(/\W/g, '')}`),
      };
      flags[extra[0]!] = extra[1]!;
      const r = await runCli(['train-vector', ...Object.entries(flags).flat()]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });
  }
});
