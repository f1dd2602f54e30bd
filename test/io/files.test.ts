/** The shared file helpers: existence checks and atomic writes that never leave a half-written file. */
import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { pathExists, writeAtomic, writeStreamAtomic } from '../../src/io/files.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-files-');

it('tells files and folders that exist from paths that do not', async () => {
  await writeFile(tmp.join('f'), 'x');
  expect(await pathExists(tmp.join('f'))).toBe(true);
  expect(await pathExists(tmp.path)).toBe(true);
  expect(await pathExists(tmp.join('missing'))).toBe(false);
});

it('replaces a file atomically and leaves no temp file', async () => {
  const sub = await mkdtemp(tmp.join('w-'));
  const p = join(sub, 'out.txt');
  await writeAtomic(p, 'first');
  await writeAtomic(p, new Uint8Array([104, 105]));
  expect(await readFile(p, 'utf8')).toBe('hi');
  expect(await readdir(sub)).toEqual(['out.txt']);
});

it('keeps the old file and removes the temp file when the write or the rename fails', async () => {
  const sub = await mkdtemp(tmp.join('fail-'));
  const p = join(sub, 'out.txt');
  await writeAtomic(p, 'kept');
  await expect(
    writeStreamAtomic(p, async (fh) => {
      await fh.write('partial');
      throw new Error('producer failed');
    }),
  ).rejects.toThrow('producer failed');
  expect(await readFile(p, 'utf8')).toBe('kept');
  const target = join(sub, 'a-folder');
  await mkdir(target);
  await writeFile(join(target, 'keep'), 'x');
  await expect(writeAtomic(target, 'y')).rejects.toThrow();
  expect((await readdir(sub)).sort()).toEqual(['a-folder', 'out.txt']);
});
