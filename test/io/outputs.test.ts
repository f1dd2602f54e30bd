/**
 * src/io/outputs.ts: what a command may claim as its output (a file, a folder, named files in a folder) and
 * the atomic folder build, on real files.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import {
  claimOutputFile,
  claimOutputFiles,
  claimOutputFolder,
  pathKind,
  writeFolderAtomic,
} from '../../src/io/outputs.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-outputs-');
let n = 0;
const fresh = async () => {
  const d = tmp.join(`case-${n++}`);
  await mkdir(d);
  return d;
};

/** The EmlensError `p` rejects with (fails the test on any other outcome). */
async function refusal(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(EmlensError);
  const message = (e as Error).message;
  expect(message.split('\n')).toHaveLength(1);
  return message;
}

describe('pathKind', () => {
  it('tells nothing, files, folders and links apart', async () => {
    const d = await fresh();
    await writeFile(join(d, 'f'), 'x');
    await symlink(join(d, 'f'), join(d, 'l'));
    expect(await pathKind(join(d, 'none'))).toBe('none');
    expect(await pathKind(join(d, 'f'))).toBe('file');
    expect(await pathKind(d)).toBe('dir');
    expect(await pathKind(join(d, 'l'))).toBe('other');
  });
});

describe('claimOutputFile', () => {
  it('takes a new path, refuses an existing file unless overwrite, and never takes a folder or a link', async () => {
    const d = await fresh();
    await claimOutputFile(join(d, 'new.safetensors'));
    const f = join(d, 'old.safetensors');
    await writeFile(f, 'mine');
    expect(await refusal(claimOutputFile(f))).toMatch(/already exists; pass --overwrite to replace it/);
    expect(await refusal(claimOutputFile(f, { flag: '--random-control' }))).toMatch(
      /^--random-control .* or choose another --random-control\.$/,
    );
    await claimOutputFile(f, { overwrite: true });
    expect(await refusal(claimOutputFile(d, { overwrite: true }))).toMatch(/is a folder, not a file/);
    await symlink(f, join(d, 'link'));
    expect(await refusal(claimOutputFile(join(d, 'link'), { overwrite: true }))).toMatch(
      /not a regular file/,
    );
    expect(await readFile(f, 'utf8')).toBe('mine');
  });

  it('wants the folder to exist unless the writer creates it, and the folder to be a folder', async () => {
    const d = await fresh();
    expect(await refusal(claimOutputFile(join(d, 'sub', 'x.bin')))).toMatch(
      /does not exist; create .* first/,
    );
    await claimOutputFile(join(d, 'sub', 'x.bin'), { createParent: true });
    await writeFile(join(d, 'file'), 'x');
    expect(await refusal(claimOutputFile(join(d, 'file', 'x.bin'), { createParent: true }))).toMatch(
      /is not a folder/,
    );
  });

  it('refuses a FIFO even with overwrite', async () => {
    const d = await fresh();
    const fifo = join(d, 'pipe');
    execFileSync('mkfifo', [fifo]);
    expect(await refusal(claimOutputFile(fifo, { overwrite: true }))).toMatch(/not a regular file/);
  });
});

describe('claimOutputFolder', () => {
  it('takes a new or empty folder, refuses a non-empty one unless overwrite, and never a file', async () => {
    const d = await fresh();
    await claimOutputFolder(join(d, 'new'));
    await mkdir(join(d, 'empty'));
    await claimOutputFolder(join(d, 'empty'));
    await mkdir(join(d, 'full'));
    await writeFile(join(d, 'full', 'notes.txt'), 'mine');
    expect(await refusal(claimOutputFolder(join(d, 'full')))).toMatch(
      /already exists and is not empty; pass --overwrite/,
    );
    await claimOutputFolder(join(d, 'full'), { overwrite: true });
    await writeFile(join(d, 'file'), 'x');
    expect(await refusal(claimOutputFolder(join(d, 'file'), { overwrite: true }))).toMatch(/is not a folder/);
  });

  it('will not replace the current folder or one above it, even with overwrite', async () => {
    const d = await fresh();
    await mkdir(join(d, 'inner'));
    const cwd = process.cwd();
    process.chdir(join(d, 'inner'));
    try {
      expect(await refusal(claimOutputFolder('.', { overwrite: true }))).toMatch(/current folder/);
      expect(await refusal(claimOutputFolder(d, { overwrite: true }))).toMatch(/current folder/);
    } finally {
      process.chdir(cwd);
    }
  });
});

describe('claimOutputFiles', () => {
  it('refuses only when one of its own names is there, and names it', async () => {
    const d = await fresh();
    const names = ['sweep.json', 'sweep.md', 'plots'];
    await claimOutputFiles(join(d, 'absent'), names);
    await writeFile(join(d, 'README.md'), 'mine');
    await claimOutputFiles(d, names); // other files are the user's business
    await mkdir(join(d, 'plots'));
    await writeFile(join(d, 'sweep.md'), 'old');
    expect(await refusal(claimOutputFiles(d, names))).toMatch(
      /already holds sweep\.md, plots from an earlier run; pass --overwrite/,
    );
    await claimOutputFiles(d, names, { overwrite: true });
    await writeFile(join(d, 'f'), 'x');
    expect(await refusal(claimOutputFiles(join(d, 'f'), names))).toMatch(/is not a folder/);
  });
});

describe('writeFolderAtomic', () => {
  it('fills an empty working folder in place instead of renaming it away', async () => {
    const d = await fresh();
    const cwd = process.cwd();
    process.chdir(d);
    try {
      await writeFolderAtomic('.', {}, async (tmp) => writeFile(join(tmp, 'config.json'), '{}'));
      expect(await readdir('.')).toEqual(['config.json']);
      expect(process.cwd()).toBe(d);
    } finally {
      process.chdir(cwd);
    }
    expect(await readdir(d)).toEqual(['config.json']);
    expect(await readdir(tmp.path)).not.toContain(expect.stringMatching(/\.tmp$/));
  });

  it('builds a new folder, refuses a non-empty one, and with overwrite swaps it only once complete', async () => {
    const d = await fresh();
    const out = join(d, 'model');
    await writeFolderAtomic(out, {}, async (tmp) => writeFile(join(tmp, 'a'), '1'));
    expect(await readdir(out)).toEqual(['a']);
    expect(await refusal(writeFolderAtomic(out, {}, async () => {}))).toMatch(/not empty/);

    // A failing build leaves the old folder whole and no temp folder behind.
    await expect(
      writeFolderAtomic(out, { overwrite: true }, async (tmp) => {
        await writeFile(join(tmp, 'b'), 'half');
        throw new Error('disk full');
      }),
    ).rejects.toThrow('disk full');
    expect(await readdir(out)).toEqual(['a']);
    expect(await readdir(d)).toEqual(['model']);

    await writeFolderAtomic(out, { overwrite: true }, async (tmp) => writeFile(join(tmp, 'b'), '2'));
    expect(await readdir(out)).toEqual(['b']);
    expect(await readdir(d)).toEqual(['model']);
  });
});
