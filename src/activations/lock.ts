/**
 * The write lock of an activation store: a lock file created exclusively (a hard link, which fails if the name
 * exists, as O_EXCL does) that names the writer's pid and host.
 * Two writers on one store (two `collect --resume` at once) interleave record lines and shards; with the lock
 * the second one stops before it touches anything.
 *
 * The lock is released on success, on error (the caller's `finally`) and on SIGINT/SIGTERM, when the handler
 * also deletes the temp files the writer left, then re-raises the signal so the process still dies of it. A
 * writer killed with SIGKILL leaves its lock behind; the next writer on the same host sees that the pid is dead
 * and prints the `rm` that clears it, rather than clearing it itself: a pid can be reused, and a lock from
 * another host cannot be checked at all.
 */

import { randomBytes } from 'node:crypto';
import { readdirSync, rmSync, unlinkSync } from 'node:fs';
import { link, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';

export const LOCK_FILE = 'emlens.lock';

interface LockInfo {
  readonly pid: number;
  readonly host: string;
}

/** Shell-quotes a path for a command the user can paste. */
export function shellQuote(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists but belongs to someone else
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The error for a store whose lock file is already there. */
async function lockedError(dir: string, path: string): Promise<EmlensError> {
  let info: LockInfo | undefined;
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as Partial<LockInfo>;
    if (Number.isInteger(parsed.pid) && typeof parsed.host === 'string') info = parsed as LockInfo;
  } catch {}
  const rmCmd = `rm ${shellQuote(path)}`;
  if (!info) {
    return new EmlensError(
      `Store ${dir} has a lock file ${path} that cannot be read; if no emlens run is writing the store, remove it with \`${rmCmd}\` and run again.`,
    );
  }
  if (info.host === hostname() && !pidAlive(info.pid)) {
    return new EmlensError(
      `Store ${dir} has a stale lock from pid ${info.pid} on host ${info.host}, which is no longer running; remove it with \`${rmCmd}\` and run again.`,
    );
  }
  const other = info.host === hostname() ? '' : ` (if that run is dead, remove the lock with \`${rmCmd}\`)`;
  return new EmlensError(
    `Store ${dir} is being written by pid ${info.pid} on host ${info.host}; wait for it to finish${other}.`,
  );
}

/**
 * Throws the error {@link StoreLock.acquire} would if `dir` is locked now; a check before expensive work (the
 * lock itself is taken later).
 */
export async function assertUnlocked(dir: string): Promise<void> {
  const path = join(dir, LOCK_FILE);
  try {
    await readFile(path);
  } catch {
    return;
  }
  throw await lockedError(dir, path);
}

/** Temp files a writer in `dir` leaves when it dies mid-write (`.NAME.PID.RAND.tmp`, see io/files.ts). */
function isTemp(name: string): boolean {
  return name.startsWith('.') && name.endsWith('.tmp');
}

/** A held store lock; {@link StoreLock.release} is idempotent. */
export class StoreLock {
  private released = false;
  private readonly onSignal: (signal: NodeJS.Signals) => void;

  private constructor(
    readonly dir: string,
    readonly path: string,
    private readonly extraCleanup: () => void,
  ) {
    this.onSignal = (signal) => {
      this.releaseSync();
      // Without listeners the default action ends the process with the signal, as the user asked.
      process.kill(process.pid, signal);
    };
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  /**
   * Takes the lock of store folder `dir` (which must exist), or throws the {@link EmlensError} that says who
   * holds it. `onSignal` runs (synchronously) when SIGINT/SIGTERM arrives while the lock is held, to remove
   * what the writer built outside `dir`.
   */
  static async acquire(dir: string, onSignal: () => void = () => {}): Promise<StoreLock> {
    const path = join(dir, LOCK_FILE);
    // The lock appears with its content whole: written to a temp file, then hard-linked to its name, which
    // fails with EEXIST when it exists, as O_EXCL does. (Created empty and then written, a reader could find
    // it empty and call it unreadable.)
    const tmp = join(dir, `.${LOCK_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
    await writeFile(tmp, `${JSON.stringify({ pid: process.pid, host: hostname() })}\n`, { flag: 'wx' });
    try {
      await link(tmp, path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw await lockedError(dir, path);
      // A file system without hard links: O_EXCL itself, with the short empty window that brings.
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV') throw e;
      await writeFile(path, await readFile(tmp), { flag: 'wx' }).catch(async (e2: NodeJS.ErrnoException) => {
        throw e2.code === 'EEXIST' ? await lockedError(dir, path) : e2;
      });
    } finally {
      await unlink(tmp).catch(() => {});
    }
    // Temp files of a writer that died mid-write (SIGKILL, power loss) are garbage now that we own the store.
    for (const f of await readdir(dir))
      if (isTemp(f)) await rm(join(dir, f), { force: true, recursive: true });
    return new StoreLock(dir, path, onSignal);
  }

  private detach(): void {
    this.released = true;
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
  }

  /** Removes the lock file. */
  async release(): Promise<void> {
    if (this.released) return;
    this.detach();
    await unlink(this.path).catch((e: NodeJS.ErrnoException) => {
      // gone with its folder (a replaced store)
      if (e.code !== 'ENOENT') throw e;
    });
  }

  private releaseSync(): void {
    if (this.released) return;
    this.detach();
    try {
      for (const f of readdirSync(this.dir))
        if (isTemp(f)) rmSync(join(this.dir, f), { force: true, recursive: true });
    } catch {}
    try {
      this.extraCleanup();
    } catch {}
    try {
      unlinkSync(this.path);
    } catch {}
  }
}
