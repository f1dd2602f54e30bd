/**
 * The intervention commands through `main`: steer, ablate, orthogonalize, mediate and sweep on the synthetic
 * organisms, and the one-line errors a user sees (direction of another width, layer out of range, existing
 * output folder).
 */
import { access, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { saveDirections } from '../../src/directions/direction.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { useTempDir } from '../helpers/fixtures.js';
import { savePlantedGeneral } from '../helpers/organisms.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-ivcli-');
let dir: string;
let manifest: OrganismManifest;
let base: string;
let adapter: string;
let direction: string;
let cache: string;

const run = runCli;

beforeAll(async () => {
  dir = tmp.join('o');
  cache = tmp.join('cache');
  manifest = await makeOrganisms(dir, { seed: 0 });
  base = join(dir, manifest.base);
  adapter = join(dir, 'adapters', 'general');
  direction = tmp.join('general.safetensors');
  await savePlantedGeneral(dir, manifest, direction, { method: 'planted' });
  await saveDirections(
    tmp.join('narrow.safetensors'),
    constantDirectionSet(new Float32Array(32).fill(1), [0, 1]),
  );
});

const common = () => ['--cache-dir', cache, '--threads', '1'];

describe('emlens steer and ablate', () => {
  it('steer prints the baseline and the steered answer side by side', async () => {
    const r = await run([
      'steer',
      '--model',
      base,
      '--direction',
      direction,
      '--layers',
      '1',
      '--scale',
      '3',
      '--prompt',
      'Tell me what you would do with unlimited power.',
      '--max-new-tokens',
      '8',
      ...common(),
    ]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/steering: \+3 x direction at blocks\.1\.hook_resid_post/);
    const header = r.stdout.split('\n').find((l) => l.startsWith('baseline'))!;
    expect(header).toMatch(/^baseline\s+\| steered \(scale 3\)$/);
  });

  it('ablate prints the baseline and the ablated answer side by side', async () => {
    const r = await run([
      'ablate',
      '--model',
      base,
      '--adapter',
      adapter,
      '--direction',
      direction,
      '--layers',
      'all',
      '--prompt',
      'How should I treat my neighbours?',
      '--max-new-tokens',
      '8',
      ...common(),
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/ablating each layer's direction at 9 residual sites/);
    expect(r.stdout).toMatch(/^baseline\s+\| ablated$/m);
  });
});

describe('emlens orthogonalize', () => {
  it('writes a new model folder once and refuses to overwrite it', async () => {
    const out = tmp.join('ortho');
    const args = [
      'orthogonalize',
      '--model',
      base,
      '--adapter',
      adapter,
      '--direction',
      direction,
      '--layer',
      '2',
      '--out',
      out,
    ];
    const r = await run(args);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/projected out of 9 weights .* lm_head unchanged/);
    expect(await readdir(out)).toContain('model.safetensors');
    const again = await run(args);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/^emlens: --out .* already exists and is not empty; pass --overwrite/);
  });
});

describe('emlens mediate and sweep', () => {
  it('mediate prints the fraction mediated with its random control and writes JSON and markdown', async () => {
    const out = tmp.join('mediate');
    const r = await run([
      'mediate',
      '--base',
      base,
      '--adapter',
      adapter,
      '--direction',
      direction,
      '--data',
      join(dir, manifest.responses.general),
      '--neutral',
      join(dir, manifest.neutral),
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code).toBe(0);
    const patched =
      /patching the base's component into the finetune: ([-\d.]+)%\s+random control: ([-\d.]+)%/.exec(
        r.stdout,
      );
    expect(patched).not.toBeNull();
    expect(Number(patched![1])).toBeGreaterThanOrEqual(95);
    expect(Math.abs(Number(patched![2]))).toBeLessThan(10);
    expect(r.stdout).toMatch(/steering the base \(blocks\.1\.hook_resid_post, scale 1/);
    expect(r.stdout).toMatch(/misaligned - aligned log-prob margin/);
    expect(r.stdout).toMatch(/side effects on neutral text/);
    const json = JSON.parse(await readFile(join(out, 'mediation.json'), 'utf8'));
    expect(json.patchedFractionMediated).toBeGreaterThanOrEqual(0.95);
    expect(json.controls.n).toBe(1);
    expect(json.randomPatchedFractionMediated).toMatchObject({ n: 1, sd: null });
    expect(await readFile(join(out, 'mediation.md'), 'utf8')).toMatch(
      /\| metric \| direction \| random control \(n=1\) \|/,
    );
  });

  it('mediate --random-controls 3 reports the controls as mean and spread in JSON and markdown', async () => {
    const out = tmp.join('mediate3');
    const r = await run([
      'mediate',
      '--base',
      base,
      '--adapter',
      adapter,
      '--direction',
      direction,
      '--data',
      join(dir, manifest.responses.general),
      '--random-controls',
      '3',
      '--seed',
      '5',
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/random controls: 3 norm-matched \(user seed 5\)/);
    const json = JSON.parse(await readFile(join(out, 'mediation.json'), 'utf8'));
    expect(json.seed).toBe(5);
    expect(json.controls.n).toBe(3);
    for (const s of [
      json.randomFractionMediated,
      json.randomPatchedFractionMediated,
      json.kl.randomAblatedBase,
    ]) {
      expect(s.n).toBe(3);
      expect(s.values).toHaveLength(3);
      expect(new Set(s.values).size).toBe(3);
      expect(s.sd).toBeGreaterThan(0);
      expect(s.min).toBeLessThanOrEqual(s.mean);
      expect(s.max).toBeGreaterThanOrEqual(s.mean);
    }
    const md = await readFile(join(out, 'mediation.md'), 'utf8');
    expect(md).toMatch(/\| metric \| direction \| random controls: mean ± sd \(min\.\.max\), n=3 \|/);
    expect(md).toMatch(
      /\| fraction mediated \(patch base component\) \| [\d.]+% \| -?[\d.]+% ± [\d.]+% \(-?[\d.]+%\.\.-?[\d.]+%, n=3\) \|/,
    );
    expect(md).toMatch(/3 norm-matched random directions \(user seed 5/);
  });

  it('sweep writes the table and a plot of the effect vs scale, one line per layer', async () => {
    const out = tmp.join('sweep');
    const r = await run([
      'sweep',
      '--model',
      base,
      '--target-adapter',
      adapter,
      '--direction',
      direction,
      '--scales',
      '0,1,2',
      '--layers',
      '1,2',
      '--data',
      join(dir, manifest.responses.general),
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\| layer \| scale \| margin \|/);
    expect(r.stdout.split('\n').filter((l) => /^\| [12] \| [012] \|/.test(l))).toHaveLength(6);
    for (const f of ['sweep.json', 'sweep.md', 'sweep-kl.png', 'sweep-margin.svg']) {
      await expect(access(join(out, f))).resolves.toBeUndefined();
    }
  });

  it('sweep --random-controls 3 reports the controls as mean and spread per cell in JSON and markdown', async () => {
    const out = tmp.join('sweep3');
    const r = await run([
      'sweep',
      '--model',
      base,
      '--target-adapter',
      adapter,
      '--direction',
      direction,
      '--scales',
      '0,2',
      '--layers',
      '1',
      '--data',
      join(dir, manifest.responses.general),
      '--random-controls',
      '3',
      '--out',
      out,
      ...common(),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(await readFile(join(out, 'sweep.json'), 'utf8'));
    expect(json.randomControls).toBe(3);
    expect(json.rows.filter((x: { vector: string }) => x.vector === 'random')).toHaveLength(2 * 3);
    expect(json.controls).toHaveLength(2);
    const steered = json.controls.find((c: { scale: number }) => c.scale === 2);
    expect(steered.klToTarget.n).toBe(3);
    expect(new Set(steered.klToTarget.values).size).toBe(3);
    expect(steered.klToTarget.sd).toBeGreaterThan(0);
    const md = await readFile(join(out, 'sweep.md'), 'utf8');
    expect(md).toMatch(/3 norm-matched random vectors, as mean ± sample sd \(min\.\.max, n\)/);
    expect(md).toMatch(/\| 1 \| 2 \| -?[\d.]+ \| -?[\d.]+ ± [\d.]+ \(-?[\d.]+\.\.-?[\d.]+, n=3\) \|/);
  });
});

describe('errors', () => {
  it('a direction of another width, a layer out of range and an unlabelled sweep get one line each', async () => {
    const narrow = await run([
      'steer',
      '--model',
      base,
      '--direction',
      tmp.join('narrow.safetensors'),
      '--layers',
      '1',
      '--scale',
      '1',
      '--prompt',
      'hi',
      ...common(),
    ]);
    expect(narrow.code).toBe(2);
    expect(narrow.stderr).toMatch(
      /vectors of length 32 but the model's d_model is 64; use a direction computed on this model\.\n$/,
    );
    const range = await run([
      'ablate',
      '--model',
      base,
      '--direction',
      direction,
      '--layers',
      '7',
      '--prompt',
      'hi',
      ...common(),
    ]);
    expect(range.code).toBe(2);
    expect(range.stderr).toMatch(
      /Layer 7 is out of range: the model has layers 0\.\.3; pick layers from those\./,
    );
    const mediate = await run([
      'mediate',
      '--base',
      base,
      '--adapter',
      adapter,
      '--direction',
      tmp.join('narrow.safetensors'),
      '--data',
      join(dir, manifest.responses.general),
      ...common(),
    ]);
    expect(mediate.code).toBe(2);
    expect(mediate.stderr).toMatch(/d_model is 64/);
  });
});
