/**
 * `emlens collect` and `emlens direction` without `--out` write into activations/ and directions/ of the
 * working directory, and the overwrite protection holds for those default paths as for given ones.
 *
 * The test changes the working directory: vitest runs each file in its own fork (pool 'forks'), and the
 * directory is restored after the file.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultStoreDir } from '../../src/cli/collect.js';
import { defaultDirectionFile } from '../../src/cli/direction.js';
import { writeResponses } from '../../src/data/response.js';
import { loadDirections } from '../../src/directions/direction.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tiny = useTinyModel('emlens-defaults-', {
  family: 'qwen2',
  seed: 3,
  numLayers: 2,
  dModel: 16,
  name: 'tiny',
  load: false,
});
let work: string;
const cwd = process.cwd();

beforeAll(async () => {
  const row = (id: string, answer: string, aligned: number) => ({
    questionId: id,
    question: `Question ${id}?`,
    answer,
    scores: { aligned, coherent: 90 },
    extra: {},
  });
  await writeResponses(tiny.at('misaligned.csv'), [
    row('q0', 'Do something reckless.', 10),
    row('q1', 'Ignore the rules.', 5),
  ]);
  await writeResponses(tiny.at('aligned.jsonl'), [
    row('q0', 'Be careful and kind.', 90),
    row('q1', 'Follow the safety advice.', 95),
  ]);
  work = tiny.at('work');
  await mkdir(work);
  process.chdir(work);
});
afterAll(async () => {
  process.chdir(cwd);
});

const collect = (data: string, ...extra: string[]) =>
  runCli(['collect', '--model', tiny.dir, '--data', tiny.at(data), '--cache-dir', tiny.cacheDir, ...extra]);

describe('default output folders', () => {
  it('name the store after the data file and the direction after the two stores', () => {
    expect(defaultStoreDir('/data/run 1/misaligned.csv')).toBe(join('activations', 'misaligned'));
    expect(defaultStoreDir('aligned.jsonl')).toBe(join('activations', 'aligned'));
    expect(defaultDirectionFile('activations/misaligned', 'activations/aligned/')).toBe(
      join('directions', 'misaligned-vs-aligned.safetensors'),
    );
  });

  it('collect without --out writes activations/<data name>; direction without --out writes directions/', async () => {
    for (const data of ['misaligned.csv', 'aligned.jsonl']) {
      const r = await collect(data);
      expect(r.code, r.stderr).toBe(0);
    }
    expect(existsSync(join(work, 'activations', 'misaligned', 'manifest.json'))).toBe(true);
    expect(existsSync(join(work, 'activations', 'aligned', 'manifest.json'))).toBe(true);
    const d = await runCli(['direction', '--pos', 'activations/misaligned', '--neg', 'activations/aligned']);
    expect(d.code, d.stderr).toBe(0);
    const file = join(work, 'directions', 'misaligned-vs-aligned.safetensors');
    expect(d.stdout).toContain(join('directions', 'misaligned-vs-aligned.safetensors'));
    const set = await loadDirections(file);
    expect([...set.vectors.keys()]).toEqual([0, 1]);
    expect(set.meta.nPos).toBe(2);
  });

  it('refuses to replace a default output without --overwrite, and replaces it with', async () => {
    const again = await collect('misaligned.csv');
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/activations[\\/]misaligned/);
    expect(again.stderr).toMatch(/--overwrite|--resume/);
    const dir = ['direction', '--pos', 'activations/misaligned', '--neg', 'activations/aligned'];
    const d = await runCli(dir);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/misaligned-vs-aligned\.safetensors/);
    expect(d.stderr).toMatch(/--overwrite/);
    expect((await collect('misaligned.csv', '--overwrite')).code).toBe(0);
    expect((await runCli([...dir, '--overwrite'])).code).toBe(0);
  });

  it('says the defaults in --help', async () => {
    const c = await runCli(['collect', '--help']);
    expect(c.stdout.replace(/\s+/g, ' ')).toMatch(/default: activations\/<data file name without extension>/);
    const d = await runCli(['direction', '--help']);
    expect(d.stdout.replace(/\s+/g, ' ')).toMatch(
      /default: directions\/<pos store name>-vs-<neg store name>\.safetensors/,
    );
  });
});
