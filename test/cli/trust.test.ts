/**
 * What a user can trust the CLI not to do, through `main` on real files: no command replaces an output it did
 * not create unless --overwrite (and then atomically), argument errors are one line and exit 2, and zero
 * vectors are named instead of printed as NaN or written silently.
 */
import { cp, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { responsesToRecords } from '../../src/data/record.js';
import { readResponses } from '../../src/data/response.js';
import { compareDirections } from '../../src/directions/compare.js';
import { type DirectionSet, saveDirections } from '../../src/directions/direction.js';
import { zeroLayers } from '../../src/directions/fromStores.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { savePlantedGeneral } from '../helpers/organisms.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-trust-');
let org: string;
let manifest: OrganismManifest;
let base: string;
let direction: string;
let store: string;
let cache: string;
const run = runCli;
const common = () => ['--cache-dir', cache, '--threads', '1'];

/** A user's own file: its content must be byte-identical after a refused command. */
const MINE = 'my notes, not an emlens output\n';

beforeAll(async () => {
  cache = tmp.join('cache');
  org = tmp.join('organisms');
  manifest = await makeOrganisms(org, { seed: 0, responsesPerLabel: 4 });
  base = join(org, manifest.base);
  direction = tmp.join('general.safetensors');
  await savePlantedGeneral(org, manifest, direction);
  const tokenizer = await loadTokenizer(base);
  const responses = await readResponses(join(org, manifest.responses.general));
  const model = await loadModel(base, { cacheDir: cache, threads: 1 });
  store = tmp.join('store-a');
  try {
    await collectToStore(model, responsesToRecords(tokenizer, responses), store, { batchSize: 8 });
  } finally {
    await model.dispose();
  }
}, 300_000);

/** Asserts a refusal: exit 2, exactly one stderr line naming --overwrite, nothing on stdout. */
function expectRefused(r: { code: number; stdout: string; stderr: string }, pattern = /--overwrite/): void {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr.trimEnd().split('\n'), r.stderr).toHaveLength(1);
  expect(r.stderr).toMatch(/^emlens: /);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/internal error/);
}

/** A folder holding only the user's file `notes.txt`. */
async function userFolder(name: string): Promise<string> {
  const d = tmp.join(name);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'notes.txt'), MINE);
  return d;
}

describe('no command overwrites what it did not create', () => {
  it('trace refuses an existing --out file, and --overwrite replaces it', async () => {
    const out = tmp.join('trace.safetensors');
    await writeFile(out, MINE);
    const args = ['trace', '--model', base, '--ids', '1,2,3', '--out', out, ...common()];
    expectRefused(await run(args), /trace\.safetensors already exists; pass --overwrite/);
    expect(await readFile(out, 'utf8')).toBe(MINE);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    const f = await SafetensorsFile.open(out);
    expect(f.has('input_ids')).toBe(true);
    await f.close();
  });

  it("trace refuses to write onto the model's own model.safetensors; with --overwrite it is atomic", async () => {
    const model = tmp.join('tiny-for-trace');
    await makeTinyModel(model, { family: 'qwen2', seed: 2, numLayers: 1, dModel: 32 });
    const weights = join(model, 'model.safetensors');
    const before = await readFile(weights);
    const args = ['trace', '--model', model, '--ids', '1,2', '--out', weights, ...common()];
    expectRefused(await run(args), /model\.safetensors already exists/);
    expect((await readFile(weights)).equals(before)).toBe(true);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    const f = await SafetensorsFile.open(weights);
    expect(f.has('logits')).toBe(true);
    await f.close();
    expect((await readdir(model)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('tiny-model refuses a non-empty folder, takes an empty one, and --overwrite replaces it whole', async () => {
    const d = await userFolder('tiny-existing');
    const args = ['tiny-model', '--out', d, '--layers', '1', '--d-model', '32'];
    expectRefused(await run(args), /already exists and is not empty; pass --overwrite/);
    expect(await readdir(d)).toEqual(['notes.txt']);
    expect(await readFile(join(d, 'notes.txt'), 'utf8')).toBe(MINE);
    const empty = tmp.join('tiny-empty');
    await mkdir(empty);
    expect((await run(['tiny-model', '--out', empty, '--layers', '1', '--d-model', '32'])).code).toBe(0);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readdir(d)).toContain('config.json');
  });

  it('organisms refuses a non-empty folder, and --overwrite replaces it', async () => {
    const d = await userFolder('organisms-existing');
    const args = ['organisms', '--out', d, '--responses', '2'];
    expectRefused(await run(args));
    expect(await readdir(d)).toEqual(['notes.txt']);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readdir(d)).toContain('organisms.json');
  });

  it('demo refuses a non-empty --out before any work', async () => {
    const d = await userFolder('demo-existing');
    const r = await run(['demo', '--out', d, '--threads', '1']);
    expectRefused(r);
    expect(await readdir(d)).toEqual(['notes.txt']);
  });

  it('compare refuses an earlier compare.json in --out, leaves other files alone, and --overwrite replaces it', async () => {
    const d = await userFolder('compare-out');
    await writeFile(join(d, 'compare.json'), MINE);
    const other = tmp.join('other.safetensors');
    await saveDirections(other, constantDirectionSet(new Float32Array(64).fill(1), [0, 1, 2, 3]));
    const args = ['compare', direction, other, '--out', d];
    const refused = await run(args);
    expectRefused(refused, /already holds compare\.json from an earlier run/);
    expect(refused.stdout).toBe('');
    expect(await readFile(join(d, 'compare.json'), 'utf8')).toBe(MINE);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(join(d, 'compare.json'), 'utf8')).not.toBe(MINE);
    expect(await readFile(join(d, 'notes.txt'), 'utf8')).toBe(MINE);
  });

  it('direction --out, export-gguf and import-gguf refuse an existing file and replace it with --overwrite', async () => {
    const out = tmp.join('dir-existing.safetensors');
    await writeFile(out, MINE);
    const imp = ['direction', 'import-gguf', '--in', tmp.join('x.gguf'), '--out', out];
    const exp = ['direction', 'export-gguf', '--in', direction, '--out', tmp.join('x.gguf')];
    expect((await run(exp)).code).toBe(0);
    expectRefused(await run(exp), /x\.gguf already exists; pass --overwrite/);
    expect((await run([...exp, '--overwrite'])).code).toBe(0);
    expectRefused(await run(imp), /dir-existing\.safetensors already exists; pass --overwrite/);
    expect(await readFile(out, 'utf8')).toBe(MINE);
    expect((await run([...imp, '--overwrite'])).code).toBe(0);
    // Refused before the stores are read (these two would be refused later, as one store's copy).
    expectRefused(
      await run(['direction', '--pos', store, '--neg', tmp.join('nope'), '--out', out]),
      /already exists; pass --overwrite/,
    );
  });

  it('orthogonalize refuses a non-empty --out and replaces it with --overwrite', async () => {
    const d = await userFolder('ortho-existing');
    const args = ['orthogonalize', '--model', base, '--direction', direction, '--layer', '2', '--out', d];
    expectRefused(await run(args), /not empty; pass --overwrite/);
    expect(await readdir(d)).toEqual(['notes.txt']);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readdir(d)).toContain('model.safetensors');
  });

  it('report refuses an earlier report in --out and replaces it with --overwrite', async () => {
    const d = await userFolder('report-out');
    await writeFile(join(d, 'report.md'), MINE);
    const args = ['report', direction, '--out', d];
    const refused = await run(args);
    expectRefused(refused, /already holds report\.md from an earlier run/);
    expect(await readFile(join(d, 'report.md'), 'utf8')).toBe(MINE);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(join(d, 'report.md'), 'utf8')).not.toBe(MINE);
    expect(await readFile(join(d, 'notes.txt'), 'utf8')).toBe(MINE);
  });

  it('mediate refuses an earlier mediation.json before loading anything, and --overwrite replaces it', async () => {
    const d = await userFolder('mediate-out');
    await writeFile(join(d, 'mediation.json'), MINE);
    const args = [
      'mediate',
      '--base',
      base,
      '--adapter',
      join(org, 'adapters', 'general'),
      '--direction',
      direction,
      '--data',
      join(org, manifest.responses.general),
      '--out',
      d,
      ...common(),
    ];
    const refused = await run(args);
    expectRefused(refused, /already holds mediation\.json from an earlier run/);
    expect(refused.stdout).toBe('');
    expect(await readFile(join(d, 'mediation.json'), 'utf8')).toBe(MINE);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(d, 'mediation.json'), 'utf8')).records).toBeGreaterThan(0);
  });

  it('sweep refuses an earlier sweep.md before loading anything, and --overwrite replaces it', async () => {
    const d = await userFolder('sweep-out');
    await writeFile(join(d, 'sweep.md'), MINE);
    const args = [
      'sweep',
      '--model',
      base,
      '--direction',
      direction,
      '--scales',
      '0,1',
      '--layers',
      '1',
      '--data',
      join(org, manifest.responses.general),
      '--out',
      d,
      ...common(),
    ];
    const refused = await run(args);
    expectRefused(refused, /already holds sweep\.md from an earlier run/);
    expect(await readFile(join(d, 'sweep.md'), 'utf8')).toBe(MINE);
    const r = await run([...args, '--overwrite']);
    expect(r.code, r.stderr).toBe(0);
    expect(await readFile(join(d, 'sweep.md'), 'utf8')).toMatch(/\| layer \| scale \|/);
  });

  it('eval refuses a non-empty folder that is not an eval folder', async () => {
    const d = await userFolder('eval-not-mine');
    const r = await run([
      'eval',
      '--model',
      base,
      '--questions',
      tmp.join('q.yaml'),
      '--judge',
      'local:x',
      '--out',
      d,
    ]);
    expectRefused(r, /is not an emlens eval folder .*choose a new --out/);
    expect(await readdir(d)).toEqual(['notes.txt']);
  });
});

describe('argument errors exit 2 with one line', () => {
  const cases: [string, string[], RegExp][] = [
    ['a missing required option', ['trace', '--ids', '1'], /required option '--model <dir>' not specified/],
    [
      '--n abc',
      ['generate', '--model', 'm', '--prompt', 'p', '--n', 'abc'],
      /'abc' is invalid: expected a positive integer/,
    ],
    [
      '--port 99999',
      ['serve', '--model', 'm', '--port', '99999'],
      /'99999' is invalid: expected a port number/,
    ],
    ['--port 1.5', ['serve', '--model', 'm', '--port', '1.5'], /'1\.5' is invalid: expected a port number/],
    [
      '--shard 3/2',
      ['eval', '--model', 'm', '--questions', 'q', '--judge', 'j', '--out', 'o', '--shard', '3/2'],
      /'3\/2' is invalid: expected i\/N with 0 <= i < N/,
    ],
    [
      '--top-p 0',
      ['generate', '--model', 'm', '--prompt', 'p', '--top-p', '0'],
      /expected a number in \(0, 1\]/,
    ],
    [
      '--temperature -1',
      ['eval', '--model', 'm', '--questions', 'q', '--judge', 'j', '--out', 'o', '--temperature', '-1'],
      /expected a number >= 0/,
    ],
    [
      '--batch-size 1e3',
      ['collect', '--model', 'm', '--data', 'd', '--out', 'o', '--batch-size', '1e3'],
      /positive integer/,
    ],
    ['an unknown option', ['info', '--model', 'm', '--bogus'], /unknown option '--bogus'/],
    ['too many arguments', ['info', '--model', 'm', 'extra'], /too many arguments for 'info'/],
    ['an unknown command', ['trac'], /unknown command 'trac' \(Did you mean trace\?\)/],
  ];
  it.each(cases)('%s', async (_name, args, pattern) => {
    const r = await run(args);
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(pattern);
    expect(lines[0]).toMatch(/; run 'emlens( [a-z-]+)* --help' for usage\.$/);
    expect(r.stderr + r.stdout).not.toMatch(/Usage:/);
  });

  it('names the subcommand in the hint', async () => {
    const r = await run(['direction', 'export-gguf', '--out', tmp.join('z.gguf')]);
    expect(r.stderr).toBe(
      "emlens: required option '--in <file>' not specified; run 'emlens direction export-gguf --help' for usage.\n",
    );
  });

  it('--help and --version still print and exit 0', async () => {
    const h = await run(['trace', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/Usage: emlens trace/);
    expect(h.stdout).toMatch(/--overwrite/);
    const top = await run(['--help']);
    expect(top.code).toBe(0);
    expect(top.stdout).toMatch(/Usage: emlens/);
    const v = await run(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout.trim()).toBe('0.1.0');
  });
});

describe('zero vectors', () => {
  /** A set whose layer l is the constant vector values[l] (0: a zero vector). */
  const set = (values: Record<number, number>): DirectionSet => ({
    meta: constantDirectionSet(new Float32Array(4).fill(1), [0]).meta,
    vectors: new Map(Object.entries(values).map(([l, x]) => [Number(l), new Float32Array(4).fill(x)])),
  });

  it('compare prints n/a, never NaN, for a layer where a vector is zero, and warns naming the file and layer', async () => {
    const a = tmp.join('za.safetensors');
    const b = tmp.join('zb.safetensors');
    await saveDirections(a, set({ 0: 1, 1: 0, 2: 1 }));
    await saveDirections(b, set({ 0: 1, 1: 1, 2: -1 }));
    const r = await run(['compare', a, b, '--out', tmp.join('zero-compare')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/nan/i);
    expect(r.stdout).toMatch(/\| 1 +\| +n\/a \|/);
    expect(r.stderr).toBe(`emlens: warning: ${a} is all zeros at layer 1; its cosines there are n/a.\n`);
    const json = JSON.parse(await readFile(tmp.join('zero-compare', 'compare.json'), 'utf8'));
    expect(json.pairs[0].cosines).toEqual([1, null, -1]);
  });

  it('compare refuses a file that is zero at every common layer', async () => {
    const z = tmp.join('zz.safetensors');
    const ones = tmp.join('ones.safetensors');
    await saveDirections(z, set({ 0: 0, 1: 0, 2: 0 }));
    await saveDirections(ones, set({ 0: 1, 1: 1, 2: 1 }));
    const r = await run(['compare', z, ones, '--out', tmp.join('zz-compare')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/'zz' is all zeros at every common layer/);
    expect(() =>
      compareDirections([
        { name: 'z', set: set({ 0: 0 }) },
        { name: 'a', set: set({ 0: 1 }) },
      ]),
    ).toThrow(/all zeros/);
  });

  it('direction refuses one store as both --pos and --neg (same path, another spelling, or a copy)', async () => {
    const out = tmp.join('same.safetensors');
    const copy = tmp.join('store-copy');
    await cp(store, copy, { recursive: true });
    for (const neg of [store, `${store}/`, tmp.join('.', 'store-a'), copy]) {
      const r = await run(['direction', '--pos', store, '--neg', neg, '--out', out]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(neg === copy ? /hold the same activations/ : /are the same store/);
    }
    await expect(readFile(out)).rejects.toThrow();
  });

  it('zeroLayers names the layers a direction is all zeros at', () => {
    expect(zeroLayers(set({ 0: 1, 1: 0, 3: 0 }))).toEqual([1, 3]);
    expect(zeroLayers(set({ 0: 1 }))).toEqual([]);
  });
});
