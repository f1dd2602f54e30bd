/**
 * Which direction files a request may name, over real HTTP on 127.0.0.1: a path that leaves --directions-dir
 * (by `..`, an absolute path, or a symlinked subfolder) gets the same 403 whether or not its target exists, so
 * the server never tells what exists outside the folder; a missing file really inside it gets 400. And
 * `serve --directions-dir FILE` does not start.
 */
import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { directionSet, saveDirections } from '../../src/directions/direction.js';
import { type RunningServer, startServer } from '../../src/serve/server.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tiny = useTinyModel('emlens-serve-dirs-', {
  family: 'qwen2',
  seed: 7,
  numLayers: 2,
  dModel: 16,
  name: 'tiny',
  load: false,
});
let directionsDir: string;
let outside: string;
let server: RunningServer;

const META = {
  model: 'tiny',
  hook: 'hook_resid_post',
  method: 'test',
  positions: 'answer_mean',
  nPos: 0,
  nNeg: 0,
  sourcePos: '',
  sourceNeg: '',
};

beforeAll(async () => {
  directionsDir = tiny.at('directions');
  outside = tiny.at('elsewhere');
  const set = directionSet([[1, new Float32Array(16).fill(0.5)]], META);
  await saveDirections(join(directionsDir, 'steer.safetensors'), set);
  await saveDirections(join(directionsDir, 'sub', 'inner.safetensors'), set);
  await saveDirections(join(outside, 'secret.safetensors'), set);
  await mkdir(join(outside, 'deeper'));
  await symlink(outside, join(directionsDir, 'linked'), 'dir');
  await symlink(join(directionsDir, 'sub'), join(directionsDir, 'alias'), 'dir');
  await symlink(join(outside, 'gone.safetensors'), join(directionsDir, 'dangling.safetensors'));
  server = await startServer({
    model: tiny.dir,
    cacheDir: tiny.cacheDir,
    threads: 1,
    port: 0,
    host: '127.0.0.1',
    directionsDir,
  });
});

afterAll(async () => {
  await server?.close();
});

async function steerWith(direction: string): Promise<{ status: number; error: Record<string, unknown> }> {
  const r = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi.' }],
      max_tokens: 1,
      emlens: { steer: [{ direction, layers: [1] }] },
    }),
  });
  const body = (await r.json()) as { error?: Record<string, unknown> };
  return { status: r.status, error: body.error ?? {} };
}

describe('direction paths a request may name', () => {
  it('answers the same 403 for every path outside the folder, whether or not its target exists', async () => {
    const answers = [];
    for (const path of [
      'linked/secret.safetensors', // exists, through a symlinked subfolder
      'linked/missing.safetensors', // missing, through the same subfolder
      'linked/deeper/missing.safetensors',
      'linked/nowhere/missing.safetensors',
      'dangling.safetensors', // a symlink to a missing file outside
      '../elsewhere/secret.safetensors',
      '../elsewhere/missing.safetensors',
      join(outside, 'secret.safetensors'),
      join(outside, 'missing.safetensors'),
      tiny.at('no-such-folder', 'missing.safetensors'),
    ]) {
      answers.push({ path, ...(await steerWith(path)) });
    }
    for (const a of answers) {
      expect(a, a.path).toMatchObject({
        status: 403,
        error: { type: 'permission_error', code: 'direction_not_allowed' },
      });
    }
    // Not even the message differs: it repeats the request's own path and nothing else.
    expect(new Set(answers.map((a) => String(a.error.message).replace(a.path, 'P'))).size).toBe(1);
  });

  it('answers 400 for a missing file inside the folder, symlinked subfolders inside it included', async () => {
    for (const path of [
      'missing.safetensors',
      'sub/missing.safetensors',
      'alias/missing.safetensors',
      'new-folder/missing.safetensors',
      join(directionsDir, 'missing.safetensors'),
    ]) {
      const a = await steerWith(path);
      expect(a, path).toMatchObject({ status: 400, error: { code: 'direction_not_found' } });
    }
  });

  it('still serves files inside the folder, through inside symlinks too', async () => {
    for (const path of ['steer.safetensors', 'alias/inner.safetensors', 'linked/../steer.safetensors']) {
      expect((await steerWith(path)).status, path).toBe(200);
    }
  });
});

describe('serve --directions-dir', () => {
  it('refuses a file instead of a folder before listening (one line, exit code 2)', async () => {
    const file = join(directionsDir, 'steer.safetensors');
    await expect(
      startServer({ model: tiny.dir, cacheDir: tiny.cacheDir, threads: 1, port: 0, directionsDir: file }),
    ).rejects.toThrow(/--directions-dir .* is a file, not a folder/);
    const r = await runCli([
      'serve',
      '--model',
      tiny.dir,
      '--cache-dir',
      tiny.cacheDir,
      '--port',
      '0',
      '--directions-dir',
      file,
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^emlens: .*is a file, not a folder/);
    expect(r.stderr).not.toMatch(/serving/);
  });
});
