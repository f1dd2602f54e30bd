/**
 * Opening input files (a model folder's config, weights, tokenizer and adapter; a user's responses, questions,
 * neutral texts, GGUF files and configs) for reading, refusing anything that is not a regular file with one clear
 * sentence: a directory, a FIFO (whose open blocks until a writer appears, so reading one would hang forever), a
 * socket or device, a symlink loop, a dangling symlink.
 */
import { constants, type Stats } from 'node:fs';
import { type FileHandle, lstat, open, readlink, stat } from 'node:fs/promises';
import { EmlensError } from '../errors.js';

const REPLACE = 'replace it with the file itself';

function kindOf(s: Stats): string {
  if (s.isDirectory()) return 'a directory';
  if (s.isFIFO()) return 'a named pipe (FIFO)';
  if (s.isSocket()) return 'a socket';
  if (s.isCharacterDevice()) return 'a character device';
  if (s.isBlockDevice()) return 'a block device';
  return 'a special file';
}

/** What to say when a path holds a directory or nothing; callers know the fix for their kind of file. */
export interface InputMessages {
  readonly missing: () => EmlensError;
  readonly directory?: () => EmlensError;
}

function directoryError(path: string, messages: InputMessages): EmlensError {
  return (
    messages.directory?.() ??
    new EmlensError(`${path} is a directory, not a file; ${REPLACE} (re-download it if unsure).`)
  );
}

function notRegular(path: string, s: Stats, messages: InputMessages): EmlensError {
  const kind = kindOf(s);
  if (s.isDirectory()) return directoryError(path, messages);
  return new EmlensError(
    `${path} is ${kind}, not a regular file; emlens reads its inputs only from regular files, so ${REPLACE}.`,
  );
}

/**
 * Why `path` cannot be opened, as an EmlensError, for an fs error `e`; `messages.missing` is used for a plain
 * ENOENT (a dangling symlink gets its own message, naming the target).
 */
async function openError(path: string, e: unknown, messages: InputMessages): Promise<EmlensError> {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
    case 'ENOTDIR': {
      const target = await danglingTarget(path);
      if (target !== null) {
        return new EmlensError(
          `${path} is a symlink to ${target}, which does not exist; restore the file it points to (an interrupted download leaves such links: re-download the model).`,
        );
      }
      return messages.missing();
    }
    case 'ELOOP':
      return new EmlensError(
        `${path} is a symlink loop (following its links never reaches a file); point the symlink at the real file.`,
      );
    case 'EISDIR':
      return directoryError(path, messages);
    case 'EACCES':
    case 'EPERM':
      return new EmlensError(`Cannot read ${path} (permission denied); check the file's permissions.`);
    default:
      return new EmlensError(
        `Cannot read ${path} (${(e as Error).message.replace(/\s+/g, ' ')}); check the file and the disk.`,
      );
  }
}

/** The target of `path` when it is a symlink whose target is missing, else null. */
async function danglingTarget(path: string): Promise<string | null> {
  try {
    if (!(await lstat(path)).isSymbolicLink()) return null;
    return await readlink(path);
  } catch {
    return null;
  }
}

/**
 * Whether something exists at `path` (false only when nothing is there). A symlink loop or a dangling
 * symlink throws, so that it is not reported as a missing file; what kind of thing exists is checked when it
 * is opened.
 */
export async function inputExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    let absent = false;
    const err = await openError(path, e, {
      missing: () => {
        absent = true;
        return new EmlensError(`${path} does not exist.`);
      },
    });
    if (absent) return false;
    throw err;
  }
}

/**
 * Opens a regular file for reading. The open is non-blocking, so a FIFO is refused after `fstat` instead of
 * blocking until a writer appears (and checking the opened handle, not the path, leaves no window in which
 * the file could be swapped).
 */
export async function openInputFile(path: string, messages: InputMessages): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    // O_NONBLOCK is undefined on Windows, where opening a pipe by path does not block this way anyway.
    fh = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw await openError(path, e, messages);
  }
  try {
    const s = await fh.stat();
    if (!s.isFile()) throw notRegular(path, s, messages);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** A regular file's text (UTF-8), or null when nothing exists at `path`. */
export async function readInputText(path: string): Promise<string | null> {
  let absent = false;
  let fh: FileHandle;
  try {
    fh = await openInputFile(path, {
      missing: () => {
        absent = true;
        return new EmlensError(`${path} does not exist.`);
      },
    });
  } catch (e) {
    if (absent) return null;
    throw e;
  }
  try {
    return await fh.readFile('utf8');
  } catch (e) {
    throw await openError(path, e, {
      missing: () => new EmlensError(`${path} disappeared while it was read; try again.`),
    });
  } finally {
    await fh.close();
  }
}

/**
 * A user's input file (responses, questions, texts, configs), read whole: UTF-8 text, or bytes with
 * `encoding: null`. `what` names it in messages ("Responses file"): a missing path, a directory, a FIFO and the
 * other non-regular files each get one line.
 */
export async function readUserFile(path: string, what: string): Promise<string>;
export async function readUserFile(path: string, what: string, encoding: null): Promise<Buffer>;
export async function readUserFile(
  path: string,
  what: string,
  encoding: 'utf8' | null = 'utf8',
): Promise<string | Buffer> {
  const fh = await openInputFile(path, {
    missing: () => new EmlensError(`${what} ${path} does not exist; check the path.`),
    directory: () => new EmlensError(`${what} ${path} is a directory; name the file itself.`),
  });
  try {
    return encoding === null ? await fh.readFile() : await fh.readFile(encoding);
  } catch (e) {
    throw new EmlensError(
      `Cannot read ${what.toLowerCase()} ${path} (${(e as Error).message.replace(/\s+/g, ' ')}); check the file.`,
    );
  } finally {
    await fh.close();
  }
}
