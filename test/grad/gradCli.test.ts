/** `emlens grad`: the file it writes matches the library, and bad inputs exit 2 with one sentence. */
import { writeFile } from 'node:fs/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { gradient } from '../../src/grad/gradient.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

describe('emlens grad', () => {
  const tmp = useTempDir('emlens-grad-cli-');
  let model: string;
  beforeAll(async () => {
    model = tmp.join('model');
    await makeTinyModel(model, { family: 'qwen2', dModel: 32, numLayers: 2, intermediateSize: 48 });
  });
  const site = 'blocks.1.hook_resid_mid';

  it('writes grad [d_model] and loss [1], equal to gradient(), and refuses to overwrite', async () => {
    const out = tmp.join('g.safetensors');
    const r = await runCli([
      'grad',
      '--model',
      model,
      '--ids',
      '5,17,42,99',
      '--site',
      site,
      '--out',
      out,
      '--threads',
      '1',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const file = await SafetensorsFile.open(out);
    try {
      const grad = await file.readFloat32('grad');
      const loss = await file.readFloat32('loss');
      expect(grad.length).toBe(32);
      const lib = await gradient(model, [5, 17, 42, 99], { site, threads: 1 });
      expect([...grad]).toEqual([...lib.grad]);
      expect(loss[0]).toBeCloseTo(lib.loss, 6);
      expect(Math.hypot(...grad)).toBeGreaterThan(1e-4);
    } finally {
      await file.close();
    }
    const again = await runCli(['grad', '--model', model, '--ids', '5,17', '--site', site, '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists; pass --overwrite/);
  });

  const bad: [string, string[], RegExp][] = [
    ['a malformed --ids', ['--ids', '5,x'], /not a comma-separated list of token ids/],
    ['one token', ['--ids', '5'], /at least two tokens/],
    ['an id outside the vocabulary', ['--ids', '5,99999'], /outside the vocabulary/],
    ['a site that is not residual', ['--site', 'blocks.0.hook_attn_out'], /not a residual site/],
    ['a layer past the last block', ['--site', 'blocks.9.hook_resid_post'], /names block 9/],
  ];
  for (const [what, args, message] of bad) {
    it(`exits 2 on ${what}`, async () => {
      const base = {
        '--ids': '5,17,42',
        '--site': site,
        '--out': tmp.join(`bad-${what.length}.safetensors`),
      };
      const flags = { ...base, ...Object.fromEntries([[args[0]!, args[1]!]]) };
      const r = await runCli(['grad', '--model', model, ...Object.entries(flags).flat()]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });
  }

  it('exits 2 on a model folder without config.json', async () => {
    await writeFile(tmp.join('empty.txt'), '');
    const r = await runCli([
      'grad',
      '--model',
      tmp.path,
      '--ids',
      '1,2',
      '--site',
      site,
      '--out',
      tmp.join('x.safetensors'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});
