/**
 * Review leftovers of the direction commands: `--weighting` with a PCA method is refused, and `emlens ablate`
 * given the name a subspace was written under removes the whole span (every residual at the ablated sites is
 * orthogonal to every basis vector), while a single basis file ablates just that vector, with a note.
 */
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ablateCommandInterventions } from '../../src/cli/ablate.js';
import { type DirectionSet, loadDirections, saveDirections } from '../../src/directions/direction.js';
import { loadDirectionOrSubspace } from '../../src/directions/subspaceFiles.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { dot, norm } from '../../src/util/vector.js';
import { useTempDir } from '../helpers/fixtures.js';
import { savePlantedGeneral } from '../helpers/organisms.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-subablate-');
let dir: string;
let manifest: OrganismManifest;
let base: string;
let model: Model;
let subspace: string;

beforeAll(async () => {
  dir = tmp.join('o');
  manifest = await makeOrganisms(dir, { seed: 0 });
  base = join(dir, manifest.base);
  await savePlantedGeneral(dir, manifest, tmp.join('general.safetensors'));
  // a second direction, not parallel to the planted one: the span has rank 2
  const other = new Float32Array(64).map((_, i) => Math.sin(i + 1));
  await saveDirections(tmp.join('other.safetensors'), constantDirectionSet(other, [0, 1, 2, 3]));
  subspace = tmp.join('span.safetensors');
  const r = await runCli([
    'direction',
    'subspace',
    '--in',
    tmp.join('general.safetensors'),
    tmp.join('other.safetensors'),
    '--out',
    subspace,
  ]);
  expect(r.code, r.stderr).toBe(0);
  model = await loadModel(base, { cacheDir: tmp.join('cache'), threads: 1 });
});
afterAll(async () => {
  await model?.dispose();
});

const ablateArgs = (direction: string) => [
  'ablate',
  '--model',
  base,
  '--direction',
  direction,
  '--layers',
  'all',
  '--prompt',
  'hi',
  '--max-new-tokens',
  '2',
  '--cache-dir',
  tmp.join('cache'),
  '--threads',
  '1',
];

describe('emlens ablate with a subspace', () => {
  it('reads FILE.b0, FILE.b1 from the subspace name and removes the whole span', async () => {
    const loaded = await loadDirectionOrSubspace(subspace);
    expect(loaded.sets).toHaveLength(2);
    expect(loaded.paths.map((p) => basename(p))).toEqual(['span.b0.safetensors', 'span.b1.safetensors']);
    const ivs = ablateCommandInterventions(loaded.sets, model.spec, { layers: 'all', from: 'own' });
    const ids = [[1, 5, 9, 13, 2, 7]];
    const hooks = ['blocks.1.hook_resid_post', 'blocks.3.hook_resid_post'] as const;
    const plain = await model.forward(ids, { hooks: [...hooks] });
    const ablated = await model.forward(ids, { hooks: [...hooks], interventions: ivs });
    const d = model.spec.dModel;
    for (const h of hooks) {
      const layer = Number(h.split('.')[1]);
      const basis = loaded.sets.map((s: DirectionSet) => s.vectors.get(layer)!);
      const before = plain.hooks.get(h)!.data;
      const after = ablated.hooks.get(h)!.data;
      for (let t = 0; t < ids[0]!.length; t++) {
        const x = after.subarray(t * d, (t + 1) * d);
        const x0 = before.subarray(t * d, (t + 1) * d);
        for (const b of basis) {
          expect(Math.abs(dot(x, b))).toBeLessThan(1e-3 * norm(x0));
        }
      }
      // the planted residual had a component along the span to lose
      const hadAlong = basis.some((b) => Math.abs(dot(before.subarray(0, d), b)) > 1e-2);
      expect(hadAlong).toBe(true);
    }
  });

  it('the CLI says it ablates the rank-2 subspace; a lone basis file ablates one vector with a note', async () => {
    const whole = await runCli(ablateArgs(subspace));
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.stdout).toMatch(/ablating each layer's rank-2 subspace at 9 residual sites/);
    const one = await runCli(ablateArgs(tmp.join('span.b1.safetensors')));
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/ablating each layer's direction at 9 residual sites/);
    expect(one.stderr).toMatch(/is basis vector 1 of a rank-2 subspace; only it is ablated/);
  });

  it('refuses a missing file or an incomplete subspace with exit 2', async () => {
    const missing = await runCli(ablateArgs(tmp.join('nothing.safetensors')));
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/nothing\.safetensors does not exist \(nor a subspace written under/);
    // a subspace whose second basis file is gone
    const b0 = await loadDirections(tmp.join('span.b0.safetensors'));
    await saveDirections(tmp.join('half.b0.safetensors'), b0);
    const half = await runCli(ablateArgs(tmp.join('half.safetensors')));
    expect(half.code).toBe(2);
    expect(half.stderr).toMatch(/has rank 2 but its basis file .*half\.b1\.safetensors is missing/);
  });
});

describe('emlens direction --weighting', () => {
  it('is refused with a PCA method, naming the conflict', async () => {
    const r = await runCli([
      'direction',
      '--pos',
      tmp.join('a'),
      '--neg',
      tmp.join('b'),
      '--method',
      'pca_diff',
      '--weighting',
      'record',
      '--out',
      tmp.join('x.safetensors'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--weighting applies to --method mean_diff only; pca_diff pairs record i/);
  });
});
