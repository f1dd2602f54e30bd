/**
 * The command line, run in-process through `main`: tiny-model -> info -> trace, and the errors a user sees.
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/model/model.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-cli-');
let modelDir: string;
let cacheDir: string;

const run = runCli;

beforeAll(async () => {
  modelDir = tmp.join('tiny');
  cacheDir = tmp.join('cache');
  const r = await run([
    'tiny-model',
    '--family',
    'llama',
    '--out',
    modelDir,
    '--layers',
    '2',
    '--d-model',
    '32',
  ]);
  expect(r.code).toBe(0);
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('emlens info', () => {
  it('shows family, shape, parameters, dtype and hooks', async () => {
    const r = await run(['info', '--model', modelDir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/family\s+llama \(LlamaForCausalLM\)/);
    expect(r.stdout).toMatch(/layers\s+2/);
    expect(r.stdout).toMatch(/d_model\s+32/);
    expect(r.stdout).toMatch(/stored: F32/);
    expect(r.stdout).toMatch(/hooks\s+10 /);
  });

  it('--json gives the spec and every hook name', async () => {
    const r = await run(['info', '--model', modelDir, '--json']);
    const info = JSON.parse(r.stdout);
    expect(info.spec.numLayers).toBe(2);
    expect(info.hooks).toContain('blocks.1.hook_resid_post');
    expect(info.parameters).toBeGreaterThan(0);
  });
});

describe('emlens trace', () => {
  it('writes per-token hooks, ids and last logits equal to the library forward pass', async () => {
    const out = tmp.join('trace.safetensors');
    const r = await run([
      'trace',
      '--model',
      modelDir,
      '--ids',
      '5,9,2,7',
      '--hooks',
      'blocks.*.hook_resid_post,blocks.0.hook_resid_pre',
      '--out',
      out,
      '--cache-dir',
      cacheDir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const f = await SafetensorsFile.open(out);
    try {
      expect([...f.tensors.keys()].sort()).toEqual([
        'blocks.0.hook_resid_post',
        'blocks.0.hook_resid_pre',
        'blocks.1.hook_resid_post',
        'input_ids',
        'logits',
      ]);
      expect(f.info('blocks.1.hook_resid_post').shape).toEqual([4, 32]);
      expect(f.info('input_ids').dtype).toBe('I64');
      expect(Array.from(await f.readTyped('input_ids'), Number)).toEqual([5, 9, 2, 7]);
      const m = await loadModel(modelDir, { cacheDir });
      const ref = await m.forward([[5, 9, 2, 7]], { hooks: ['blocks.1.hook_resid_post'] });
      expect(await f.readFloat32('blocks.1.hook_resid_post')).toEqual(
        ref.hooks.get('blocks.1.hook_resid_post')!.data,
      );
      expect(await f.readFloat32('logits')).toEqual(ref.logits.data);
      await m.dispose();
    } finally {
      await f.close();
    }
  });

  it('tokenizes --text with the model folder tokenizer', async () => {
    const out = tmp.join('trace-text.safetensors');
    const r = await run([
      'trace',
      '--model',
      modelDir,
      '--text',
      'hello world',
      '--out',
      out,
      '--cache-dir',
      cacheDir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const f = await SafetensorsFile.open(out);
    expect(f.metadata.text).toBe('hello world');
    expect(f.info('input_ids').shape[0]).toBeGreaterThan(1);
    await f.close();
  });

  it('a misspelt hook exits 2 with the nearest name', async () => {
    const r = await run([
      'trace',
      '--model',
      modelDir,
      '--ids',
      '1,2',
      '--hooks',
      'blocks.*.hook_resid_psot',
      '--out',
      tmp.join('x.safetensors'),
      '--cache-dir',
      cacheDir,
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("did you mean 'blocks.*.hook_resid_post'");
  });

  it('needs exactly one of --text and --ids, and well-formed ids', async () => {
    const base = ['trace', '--model', modelDir, '--out', tmp.join('y.safetensors'), '--cache-dir', cacheDir];
    expect((await run(base)).stderr).toContain('exactly one of --text or --ids');
    expect((await run([...base, '--ids', '1,x'])).stderr).toContain('comma-separated list of token ids');
  });

  it('a folder that is not a model gets one clear line', async () => {
    const r = await run(['info', '--model', tmp.join('nope')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/config\.json/);
  });
});
