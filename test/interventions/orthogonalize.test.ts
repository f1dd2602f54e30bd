/**
 * Weight orthogonalisation: the baked model run plainly equals the original (adapter merged) with the direction
 * ablated at every residual site; the LM head is untouched (a tied one untied); existing folders are refused.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { orthogonalizeModel, residualWriters } from '../../src/interventions/orthogonalize.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { Intervention } from '../../src/model/interventions.js';
import { loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { makeOrganisms, type OrganismManifest } from '../../src/organisms/make.js';
import { Rng } from '../../src/util/random.js';
import { useTempDir } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const tmp = useTempDir('emlens-ortho-');
let orgDir: string;
let manifest: OrganismManifest;
let cacheDir: string;
let planted: Float32Array;

/** Ablation of `d` at every residual site, named by the three hook patterns. */
function everywhere(d: Float32Array): Intervention[] {
  return [
    {
      kind: 'ablate',
      hooks: ['blocks.*.hook_resid_pre', 'blocks.*.hook_resid_mid', 'blocks.*.hook_resid_post'],
      directions: [d],
    },
  ];
}

const rows = [
  [3, 50, 120, 7, 260, 44, 90, 11, 300],
  [200, 17, 5, 81],
];

beforeAll(async () => {
  orgDir = tmp.join('o');
  cacheDir = tmp.join('cache');
  manifest = await makeOrganisms(orgDir, { seed: 0 });
  const f = await SafetensorsFile.open(join(orgDir, manifest.plantedFile));
  planted = await f.readFloat32('general');
  await f.close();
});

describe('orthogonalizeModel', () => {
  it('the baked organism equals runtime ablation at all residual sites (max abs logit error <= 1e-4)', async () => {
    const base = join(orgDir, manifest.base);
    const adapter = join(orgDir, 'adapters', 'general');
    const out = tmp.join('general-ortho');
    // a direction file's layer: the planted direction, unnormalised (the unit vector is what is projected out)
    const set = constantDirectionSet(
      planted.map((x) => 3 * x),
      [0, 1, 2, 3],
    );
    const r = await orthogonalizeModel(base, out, { adapter, direction: set, layer: 2 });
    expect(r.modified).toEqual(residualWriters(r.spec));
    expect(r.modified).toHaveLength(1 + 2 * manifest.numLayers);
    expect((await readdir(out)).sort()).toEqual(
      [
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'tokenizer.json',
        'tokenizer_config.json',
      ].sort(),
    );
    const original = await loadModel(base, { adapter, cacheDir, threads: 1 });
    const baked = await loadModel(out, { cacheDir, threads: 1 });
    const want = await original.forward(rows, { logits: 'all', interventions: everywhere(planted) });
    const got = await baked.forward(rows, { logits: 'all' });
    expect(maxAbsDiff(got.logits.data, want.logits.data)).toBeLessThanOrEqual(1e-4);
    // and the bake did something: the organism's own logits differ
    const plain = await original.forward(rows, { logits: 'all' });
    expect(maxAbsDiff(got.logits.data, plain.logits.data)).toBeGreaterThan(0.1);
    // lm_head is the organism's, untouched
    const a = await SafetensorsFile.open(join(base, 'model.safetensors'));
    const b = await SafetensorsFile.open(join(out, 'model.safetensors'));
    expect(await b.readFloat32('lm_head.weight')).toEqual(await a.readFloat32('lm_head.weight'));
    const meta = b.metadata.emlens_orthogonalized;
    expect(meta).toBeDefined();
    expect(JSON.parse(meta!)).toMatchObject({ layer: 2, adapter });
    await a.close();
    await b.close();
    await original.dispose();
    await baked.dispose();
  });

  it('unties a tied LM head and projects o_proj and MLP biases (Llama with biases)', async () => {
    const dir = tmp.join('tied');
    const spec = await makeTinyModel(dir, {
      family: 'llama',
      seed: 4,
      numLayers: 2,
      dModel: 32,
      tieWordEmbeddings: true,
      qkvBias: true,
      mlpBias: true,
    });
    const rng = new Rng(9);
    const d = Float32Array.from({ length: spec.dModel }, () => rng.normal());
    const out = tmp.join('tied-ortho');
    const r = await orthogonalizeModel(dir, out, { direction: d });
    expect(r.untied).toBe(true);
    expect(r.modified).toContain('model.layers.1.self_attn.o_proj.bias');
    expect(r.modified).toContain('model.layers.0.mlp.down_proj.bias');
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(config.tie_word_embeddings).toBe(false);
    const original = await loadModel(dir, { cacheDir, threads: 1 });
    const baked = await loadModel(out, { cacheDir, threads: 1 });
    const want = await original.forward(rows, { logits: 'all', interventions: everywhere(d) });
    const got = await baked.forward(rows, { logits: 'all' });
    expect(maxAbsDiff(got.logits.data, want.logits.data)).toBeLessThanOrEqual(1e-4);
    await original.dispose();
    await baked.dispose();
  });

  it('refuses an existing output folder, a direction of another width and a layer out of range', async () => {
    const base = join(orgDir, manifest.base);
    const existing = tmp.join('general-ortho');
    await expect(orthogonalizeModel(base, existing, { direction: planted })).rejects.toThrow(
      /already exists and is not empty; pass --overwrite/,
    );
    const fresh = tmp.join('never');
    await expect(
      orthogonalizeModel(base, fresh, { direction: new Float32Array(32).fill(1) }),
    ).rejects.toThrow(/32 entries but the model's d_model is 64/);
    const set = constantDirectionSet(planted, [0, 1, 2, 3]);
    await expect(orthogonalizeModel(base, fresh, { direction: set, layer: 9 })).rejects.toThrow(EmlensError);
    await expect(orthogonalizeModel(base, fresh, { direction: set })).rejects.toThrow(
      /choose the one to project out/,
    );
    const deep = constantDirectionSet(planted, [0, 7]);
    await expect(orthogonalizeModel(base, fresh, { direction: deep, layer: 0 })).rejects.toThrow(
      /layer 7 but the model has layers 0\.\.3/,
    );
    expect(await readdir(tmp.path)).not.toContain('never');
  });
});
