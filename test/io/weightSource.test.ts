import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { f32ToBf16 } from '../../src/io/halfFloat.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { WeightSource } from '../../src/io/weightSource.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-ws-');

async function newDir(): Promise<string> {
  return mkdtemp(tmp.join('m-'));
}

const vec = (...xs: number[]) => ({ dtype: 'F32' as const, shape: [xs.length], data: new Float32Array(xs) });

async function writeIndex(dir: string, weightMap: Record<string, unknown>): Promise<void> {
  await writeFile(
    join(dir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
  );
}

/** Three shards of two tensors each, with an index. */
async function sharded(): Promise<string> {
  const dir = await newDir();
  const map: Record<string, string> = {};
  for (let s = 0; s < 3; s++) {
    const file = `model-0000${s + 1}-of-00003.safetensors`;
    await writeSafetensors(join(dir, file), {
      [`layer.${2 * s}.w`]: vec(2 * s),
      [`layer.${2 * s + 1}.w`]: vec(2 * s + 1, 0.5),
    });
    map[`layer.${2 * s}.w`] = file;
    map[`layer.${2 * s + 1}.w`] = file;
  }
  await writeIndex(dir, map);
  return dir;
}

async function openError(dir: string): Promise<Error> {
  const err = await WeightSource.open(dir).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EmlensError);
  return err as Error;
}

describe('WeightSource', () => {
  it('opens a single model.safetensors', async () => {
    const dir = await newDir();
    await writeSafetensors(join(dir, 'model.safetensors'), {
      'model.norm.weight': vec(1, 2, 3),
      'model.embed_tokens.weight': {
        dtype: 'BF16',
        shape: [2],
        data: f32ToBf16(new Float32Array([-2.5, 4])),
      },
    });
    const ws = await WeightSource.open(dir);
    expect(ws.dir).toBe(dir);
    expect(ws.files).toEqual([join(dir, 'model.safetensors')]);
    expect(ws.names().sort()).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    expect(ws.has('model.norm.weight')).toBe(true);
    expect(ws.has('lm_head.weight')).toBe(false);
    const info = ws.info('model.embed_tokens.weight');
    expect(info).toMatchObject({
      dtype: 'BF16',
      shape: [2],
      byteLength: 4,
      file: join(dir, 'model.safetensors'),
    });
    expect([...(await ws.readFloat32('model.norm.weight'))]).toEqual([1, 2, 3]);
    expect([...(await ws.readFloat32('model.embed_tokens.weight'))]).toEqual([-2.5, 4]);
    expect(() => ws.info('model.norm.weights')).toThrow(
      /Weight 'model.norm.weights' is not in .*did you mean 'model.norm.weight'/,
    );
    await ws.close();
  });

  it('prefers model.safetensors when an index is also present', async () => {
    const dir = await newDir();
    await writeSafetensors(join(dir, 'model.safetensors'), { a: vec(1) });
    await writeIndex(dir, { a: 'missing.safetensors' });
    const ws = await WeightSource.open(dir);
    expect(ws.names()).toEqual(['a']);
    await ws.close();
  });

  it('opens a 3-shard model through its index', async () => {
    const dir = await sharded();
    const ws = await WeightSource.open(dir);
    expect(ws.files).toEqual([1, 2, 3].map((i) => join(dir, `model-0000${i}-of-00003.safetensors`)));
    expect(ws.names()).toEqual([
      'layer.0.w',
      'layer.1.w',
      'layer.2.w',
      'layer.3.w',
      'layer.4.w',
      'layer.5.w',
    ]);
    expect(ws.info('layer.4.w').file).toBe(join(dir, 'model-00003-of-00003.safetensors'));
    expect([...(await ws.readFloat32('layer.3.w'))]).toEqual([3, 0.5]);
    expect([...(await ws.readFloat32('layer.4.w'))]).toEqual([4]);
    await ws.close();
  });

  it('follows symlinked shards, as in the Hugging Face cache', async () => {
    const blobs = await newDir();
    await writeSafetensors(join(blobs, 'abc123'), { a: vec(7) });
    const dir = await newDir();
    await symlink(join(blobs, 'abc123'), join(dir, 'model.safetensors'));
    const ws = await WeightSource.open(dir);
    expect([...(await ws.readFloat32('a'))]).toEqual([7]);
    await ws.close();
  });

  it('rejects a folder without weights', async () => {
    const dir = await newDir();
    await writeFile(join(dir, 'config.json'), '{}');
    expect((await openError(dir)).message).toBe(
      `No model.safetensors or model.safetensors.index.json in ${dir}; point --model at a Hugging Face model folder.`,
    );
  });

  it('rejects a missing folder', async () => {
    expect((await openError(tmp.join('nope'))).message).toMatch(/Model folder .*nope does not exist/);
  });

  it('rejects a folder with only PyTorch .bin checkpoints', async () => {
    const dir = await newDir();
    await writeFile(join(dir, 'pytorch_model.bin'), 'x');
    expect((await openError(dir)).message).toMatch(
      /PyTorch \.bin checkpoints.*not supported.*convert them to safetensors/,
    );
  });

  it('rejects a missing shard', async () => {
    const dir = await sharded();
    await rm(join(dir, 'model-00002-of-00003.safetensors'));
    expect((await openError(dir)).message).toMatch(
      /Shard model-00002-of-00003.safetensors listed in .* is missing/,
    );
  });

  it('rejects a mapped name that is not in its shard', async () => {
    const dir = await sharded();
    await writeIndex(dir, { 'layer.0.w': 'model-00002-of-00003.safetensors' });
    expect((await openError(dir)).message).toMatch(
      /says tensor 'layer.0.w' is in model-00002-of-00003.safetensors, but that shard does not hold it/,
    );
  });

  it('rejects shard paths that leave the folder', async () => {
    const dir = await sharded();
    const outside = tmp.join('outside.safetensors');
    await writeSafetensors(outside, { 'layer.0.w': vec(0) });
    for (const shard of ['../outside.safetensors', outside, 'sub/../../outside.safetensors']) {
      await writeIndex(dir, { 'layer.0.w': shard });
      expect((await openError(dir)).message).toMatch(/which is outside the model folder/);
    }
  });

  it('accepts shards in a subfolder of the model folder', async () => {
    const dir = await newDir();
    await mkdir(join(dir, 'weights'));
    await writeSafetensors(join(dir, 'weights', 's.safetensors'), { a: vec(1) });
    await writeIndex(dir, { a: 'weights/s.safetensors' });
    const ws = await WeightSource.open(dir);
    expect(ws.files).toEqual([join(dir, 'weights', 's.safetensors')]);
    await ws.close();
  });

  it('rejects a malformed index', async () => {
    const dir = await newDir();
    await writeFile(join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
    expect((await openError(dir)).message).toMatch(/index.json is not valid JSON/);
    await writeFile(join(dir, 'model.safetensors.index.json'), '{"metadata": {}}');
    expect((await openError(dir)).message).toMatch(/has no "weight_map" object/);
    await writeIndex(dir, { a: 3 });
    expect((await openError(dir)).message).toMatch(/maps 'a' to 3, not a file name/);
  });

  it('passes through a malformed shard error that names the shard', async () => {
    const dir = await sharded();
    await writeFile(join(dir, 'model-00003-of-00003.safetensors'), 'short');
    expect((await openError(dir)).message).toMatch(/model-00003-of-00003.safetensors is 5 bytes long/);
  });
});
