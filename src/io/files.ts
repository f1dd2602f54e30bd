/** File-system helpers every writer shares: existence checks and atomic (temp file + rename) writes. */
import { randomBytes } from 'node:crypto';
import { access, type FileHandle, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Whether anything (file or folder) exists at `path`. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** fs refuses single writes of 2 GiB or more; large tensors are written in pieces of this size. */
const WRITE_CHUNK = 1 << 30;

/** Writes all of `bytes` at the file's current position. */
export async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await fh.write(bytes, done, Math.min(WRITE_CHUNK, bytes.length - done));
    done += bytesWritten;
  }
}

/**
 * Writes a file atomically: `write` fills a fresh temp file beside `path`, which is fsynced and renamed over
 * `path`. Readers never see a half-written file, and a failure leaves `path` as it was (the temp file is
 * removed).
 */
export async function writeStreamAtomic(
  path: string,
  write: (fh: FileHandle) => Promise<void>,
): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx');
  try {
    try {
      await write(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

/** {@link writeStreamAtomic} of a string (UTF-8) or bytes. */
export async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  await writeStreamAtomic(path, (fh) => writeAll(fh, bytes));
}
