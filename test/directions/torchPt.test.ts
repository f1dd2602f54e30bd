/**
 * Direction files from and to torch.save files: the layouts real torch wrote (test/goldens/pt), the CLI, and
 * round trips through emlens's own writer of torch's format.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { directionSet, loadDirections, saveDirections } from '../../src/directions/direction.js';
import { exportPt, importPt } from '../../src/directions/torchPt.js';
import { readTorchPt, type TorchTensor } from '../../src/io/torchPt.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const GOLDENS = join(import.meta.dirname, '..', 'goldens', 'pt');
const tmp = useTempDir('emlens-dir-pt-');
const expected = JSON.parse(await readFile(join(GOLDENS, 'expected.json'), 'utf8')) as {
  files: Record<string, unknown>;
};
type T = { tensor: { values: number[]; shape: number[] } };

/** The float32 values torch saved. */
const f32 = (v: number[]) => [...Float32Array.from(v)];

describe('importPt on files written by real torch', () => {
  it('a list of per-layer tensors (model-organisms layout): element i = block i', async () => {
    const r = await importPt(join(GOLDENS, 'mo_directions.pt'));
    expect(r.layout).toBe('list');
    expect(r.description).toBe('a list of 4 tensors [8] (F32), element i = layer i');
    const want = expected.files.mo_directions as T[];
    expect([...r.set.vectors.keys()]).toEqual([0, 1, 2, 3]);
    for (const [i, w] of want.entries()) expect([...r.set.vectors.get(i)!]).toEqual(f32(w.tensor.values));
  });
  it('as hidden_states: index 0 dropped, index i = block i - 1', async () => {
    const r = await importPt(join(GOLDENS, 'mo_directions.pt'), { hiddenStates: true });
    const want = expected.files.mo_directions as T[];
    expect([...r.set.vectors.keys()]).toEqual([0, 1, 2]);
    expect([...r.set.vectors.get(0)!]).toEqual(f32(want[1]!.tensor.values));
  });
  it('a [layers, d_model] tensor: row i = block i', async () => {
    const r = await importPt(join(GOLDENS, 'stacked.pt'));
    expect(r.layout).toBe('stacked');
    const w = (expected.files.stacked as T).tensor.values;
    expect([...r.set.vectors.get(2)!]).toEqual(f32(w.slice(16, 24)));
  });
  it('dicts keyed by layer_N strings and by ints', async () => {
    const a = await importPt(join(GOLDENS, 'layer_dict.pt'));
    expect(a.layout).toBe('dict');
    expect([...a.set.vectors.keys()]).toEqual([0, 1, 2]);
    const b = await importPt(join(GOLDENS, 'int_keys.pt'));
    expect([...b.set.vectors.keys()]).toEqual([3, 5]);
  });
  it('refuses layouts that are not directions, naming what it found', async () => {
    await expect(importPt(join(GOLDENS, 'dtypes.pt'))).rejects.toThrow(
      /key "scalar", which does not end in a layer number|key "f32"/,
    );
    await expect(importPt(join(GOLDENS, 'evil_system.pt'))).rejects.toThrow(/posix\.system/);
  });
});

describe('exportPt', () => {
  const set = directionSet(
    [
      [0, Float32Array.of(1, 2, 3)],
      [1, Float32Array.of(-1, 0.5, 0)],
      [2, Float32Array.of(0.25, 0, 8)],
    ],
    {
      model: 'm',
      hook: 'hook_resid_post',
      method: 'mean_diff',
      positions: 'answer_mean',
      nPos: 1,
      nNeg: 1,
      sourcePos: 'a',
      sourceNeg: 'b',
    },
  );
  for (const layout of ['list', 'stacked', 'dict'] as const) {
    it(`round-trips as a ${layout}`, async () => {
      const path = tmp.join(`rt-${layout}.pt`);
      const r = await exportPt(set, path, { layout });
      expect(r.layout).toBe(layout);
      const back = await importPt(path);
      expect(back.layout).toBe(layout);
      expect([...back.set.vectors]).toEqual([...set.vectors]);
    });
  }
  it('writes bf16 rounded, and a dict for non-dense layers by default', async () => {
    const sparse = directionSet([[4, Float32Array.of(1.00390625, 2)]], set.meta);
    const path = tmp.join('sparse.pt');
    expect((await exportPt(sparse, path, { dtype: 'BF16' })).layout).toBe('dict');
    const v = (await readTorchPt(path)) as Map<number, TorchTensor>;
    expect(v.get(4)!.dtype).toBe('BF16');
    expect([...v.get(4)!.toFloat32()]).toEqual([1, 2]);
    await expect(exportPt(sparse, tmp.join('s2.pt'), { layout: 'list' })).rejects.toThrow(
      /use --layout dict/,
    );
  });
});

describe('emlens direction import/export --format pt', () => {
  it('imports, exports, says the layout, refuses to overwrite, exits 2 on a bad file', async () => {
    const out = tmp.join('cli.safetensors');
    const i = await runCli([
      'direction',
      'import',
      '--format',
      'pt',
      join(GOLDENS, 'mo_directions.pt'),
      '--out',
      out,
    ]);
    expect(i.stderr).toBe('');
    expect(i.code).toBe(0);
    expect(i.stdout).toContain('found a list of 4 tensors [8] (F32), element i = layer i');
    expect(i.stdout).toContain(`wrote ${out}: 4 layers (blocks 0-3), d_model 8`);
    expect((await loadDirections(out)).meta.extra?.pt_layout).toBe('list');
    const again = await runCli([
      'direction',
      'import',
      '--format',
      'pt',
      join(GOLDENS, 'stacked.pt'),
      '--out',
      out,
    ]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists; pass --overwrite/);
    const pt = tmp.join('cli.pt');
    const e = await runCli([
      'direction',
      'export',
      '--format',
      'pt',
      out,
      '--out',
      pt,
      '--layout',
      'stacked',
    ]);
    expect(e.code).toBe(0);
    expect(e.stdout).toContain(`wrote ${pt}: 4 layers (blocks 0-3) (layout stacked, F32), d_model 8`);
    const t = (await readTorchPt(pt)) as TorchTensor;
    expect(t.shape).toEqual([4, 8]);
    const bad = tmp.join('bad.pt');
    await writeFile(bad, 'not a torch file');
    const b = await runCli([
      'direction',
      'import',
      '--format',
      'pt',
      bad,
      '--out',
      tmp.join('b.safetensors'),
    ]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/is not a torch\.save file/);
    await saveDirections(tmp.join('keep.safetensors'), (await importPt(pt)).set);
  });
});
