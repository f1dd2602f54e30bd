/**
 * Output paths that a command claims: nothing the user already had is replaced unless they said so with
 * `--overwrite`, and a replacement is atomic (the old file or folder stays whole until the new one is complete).
 *
 * - {@link claimOutputFile}: before writing one file. It refuses an existing path unless `overwrite`, and
 *   refuses anything that is not a regular file (a folder, a FIFO, a device) even then.
 * - {@link claimOutputFiles}: before writing named files into a folder that may hold other things (compare,
 *   mediate, sweep, report): it refuses if any of those names exists, unless `overwrite`; the rest of the
 *   folder is never touched.
 * - {@link writeFolderAtomic}: builds a whole output folder (a model, the organisms) in a temp sibling and
 *   renames it into place; with `overwrite` the old folder is swapped out only after the new one is complete.
 * Write the file itself with {@link writeAtomic} / {@link writeStreamAtomic} (temp file + rename).
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { EmlensError } from '../errors.js';

export interface ClaimOptions {
  /** Replace what is there (the user passed `--overwrite`). */
  readonly overwrite?: boolean;
  /** The flag that named the path, for the message (default `--out`). */
  readonly flag?: string;
  /** The writer creates a missing parent folder itself, so {@link claimOutputFile} need not insist on one. */
  readonly createParent?: boolean;
}

/** What is at `path`: nothing, a regular file, a folder, or something else (FIFO, socket, device, link). */
export async function pathKind(path: string): Promise<'none' | 'file' | 'dir' | 'other'> {
  try {
    const s = await lstat(path);
    if (s.isSymbolicLink()) return 'other';
    if (s.isFile()) return 'file';
    if (s.isDirectory()) return 'dir';
    return 'other';
  } catch (e) {
    // ENOTDIR: a part of the path is a file, so nothing can be there (the caller names the file part).
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return 'none';
    throw e;
  }
}

/** Whether `dir` is the working folder or one above it (renaming it away would strand the process). */
function holdsCwd(dir: string): boolean {
  const target = resolve(dir);
  const cwd = process.cwd();
  return cwd === target || cwd.startsWith(target.endsWith(sep) ? target : target + sep);
}

function overwriteHint(flag: string): string {
  return `pass --overwrite to replace it, or choose another ${flag}`;
}

/**
 * Checks that a command may write the file `path`: it does not exist, or it is a regular file and
 * `overwrite` is set. Its folder must exist. Throws one {@link EmlensError} line otherwise.
 */
export async function claimOutputFile(path: string, opts: ClaimOptions = {}): Promise<void> {
  const flag = opts.flag ?? '--out';
  const kind = await pathKind(path);
  if (kind === 'dir') {
    throw new EmlensError(`${flag} ${path} is a folder, not a file; name a file path instead.`);
  }
  if (kind === 'other') {
    throw new EmlensError(
      `${flag} ${path} exists and is not a regular file (a link, FIFO or device); name a new file path instead.`,
    );
  }
  if (kind === 'file' && !opts.overwrite) {
    throw new EmlensError(`${flag} ${path} already exists; ${overwriteHint(flag)}.`);
  }
  const parent = dirname(resolve(path));
  const parentKind = await pathKind(parent);
  if (parentKind === 'none' && opts.createParent) return;
  if (parentKind !== 'dir') {
    throw new EmlensError(
      parentKind === 'none'
        ? `The folder of ${flag} ${path} does not exist; create ${parent} first.`
        : `The folder of ${flag} ${path} is not a folder (${parent}); name a path inside a folder.`,
    );
  }
}

/**
 * Checks that a command may create the folder `dir`: it does not exist, or it is an empty folder, or
 * `overwrite` is set and it is a folder. Throws one {@link EmlensError} line otherwise.
 */
export async function claimOutputFolder(dir: string, opts: ClaimOptions = {}): Promise<void> {
  const flag = opts.flag ?? '--out';
  const kind = await pathKind(dir);
  if (kind === 'none') return;
  if (kind !== 'dir') {
    throw new EmlensError(`${flag} ${dir} exists and is not a folder; name a new folder instead.`);
  }
  if (opts.overwrite) {
    // Replacing the working folder or one above it would delete far more than the command wrote (and
    // `--out .` is an easy slip), so --overwrite does not reach that far.
    if (holdsCwd(dir)) {
      throw new EmlensError(
        `${flag} ${dir} is the current folder or one above it, which --overwrite will not replace; name a subfolder instead.`,
      );
    }
    return;
  }
  if ((await readdir(dir)).length > 0) {
    throw new EmlensError(`${flag} ${dir} already exists and is not empty; ${overwriteHint(flag)}.`);
  }
}

/**
 * Checks that a command may write the files `names` (relative paths, e.g. `sweep.json` or `plots`) into the
 * folder `dir`: `dir` is absent or a folder, and none of the names exists there unless `overwrite` (a name
 * that is a folder, like a report's `plots`, counts too). Other entries of `dir` are the user's and are
 * never looked at. Throws one {@link EmlensError} line naming the existing outputs otherwise.
 */
export async function claimOutputFiles(
  dir: string,
  names: readonly string[],
  opts: ClaimOptions = {},
): Promise<void> {
  const flag = opts.flag ?? '--out';
  const kind = await pathKind(dir);
  if (kind === 'none') return;
  if (kind !== 'dir') {
    throw new EmlensError(`${flag} ${dir} exists and is not a folder; name a folder instead.`);
  }
  const present: string[] = [];
  for (const name of names) {
    const k = await pathKind(join(dir, name));
    if (k === 'other') {
      throw new EmlensError(
        `${join(dir, name)} exists and is not a regular file or folder (a link, FIFO or device); remove it or choose another ${flag}.`,
      );
    }
    if (k !== 'none') present.push(name);
  }
  if (present.length > 0 && !opts.overwrite) {
    const listed = present.length > 3 ? `${present.slice(0, 3).join(', ')}, ...` : present.join(', ');
    throw new EmlensError(
      `${flag} ${dir} already holds ${listed} from an earlier run; ${overwriteHint(flag)}.`,
    );
  }
}

/**
 * Checks that a command may write into (and resume) the folder `dir`: it is absent, empty, or already holds
 * at least one of `own` (the files that command writes, e.g. an eval's sampling.json), so a rerun resumes its
 * own earlier run but never scribbles into a folder of something else. Throws one {@link EmlensError} line
 * otherwise.
 */
export async function claimResumableFolder(
  dir: string,
  own: readonly string[],
  opts: { readonly flag?: string; readonly what: string },
): Promise<void> {
  const flag = opts.flag ?? '--out';
  const kind = await pathKind(dir);
  if (kind === 'none') return;
  if (kind !== 'dir') {
    throw new EmlensError(`${flag} ${dir} exists and is not a folder; name a new folder instead.`);
  }
  const entries = await readdir(dir);
  if (entries.length === 0 || own.some((f) => entries.includes(f))) return;
  throw new EmlensError(
    `${flag} ${dir} is not empty and is not ${opts.what} (it has none of ${own.join(', ')}); choose a new ${flag}, or the folder of the run to resume.`,
  );
}

/**
 * Builds the output folder `dir` atomically: `build` fills a fresh temp folder beside `dir`, which then
 * replaces `dir` by rename. A failure removes the temp folder and leaves `dir` as it was. The claim
 * ({@link claimOutputFolder}) is checked first, so an existing non-empty folder is kept unless `overwrite`.
 *
 * @example
 * await writeFolderAtomic(out, { overwrite: flags.overwrite }, async (tmp) => {
 *   await writeFile(join(tmp, 'config.json'), json);
 * });
 */
export async function writeFolderAtomic<T>(
  dir: string,
  opts: ClaimOptions,
  build: (tmpDir: string) => Promise<T>,
): Promise<T> {
  await claimOutputFolder(dir, opts);
  const parent = dirname(resolve(dir));
  await mkdir(parent, { recursive: true });
  const tag = `${process.pid}.${randomBytes(6).toString('hex')}`;
  const tmp = join(parent, `.${basename(dir)}.${tag}.tmp`);
  await mkdir(tmp);
  let result: T;
  try {
    result = await build(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  const kind = await pathKind(dir);
  if (kind === 'none') {
    await rename(tmp, dir);
    return result;
  }
  if (holdsCwd(dir)) {
    // `--out .` into an empty working folder (the claim refused anything else): the folder itself must stay,
    // so the new entries move into it one by one; there was nothing in it to lose.
    for (const entry of await readdir(tmp)) await rename(join(tmp, entry), join(dir, entry));
    await rm(tmp, { recursive: true, force: true });
    return result;
  }
  // Swap: move the old folder aside, move the new one in, then delete the old one. Between the two renames
  // `dir` is briefly absent, never half-written.
  const old = join(parent, `.${basename(dir)}.${tag}.old`);
  await rename(dir, old);
  try {
    await rename(tmp, dir);
  } catch (e) {
    await rename(old, dir).catch(() => {});
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  await rm(old, { recursive: true, force: true });
  return result;
}
