/** The persistent on-disk judge cache (JSONL, keyed by judge model and prompt). */
import { createHash } from 'node:crypto';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EmlensError } from '../../errors.js';
import type { TokenLogprob } from './scoreRule.js';

interface CacheLine {
  readonly key: string;
  readonly model: string;
  readonly score: number | null;
  readonly top?: readonly TokenLogprob[];
}

/**
 * A persistent judge cache: a JSONL file of `{key, model, score, top}` lines, keyed by the sha256 of the judge
 * model and the prompt, appended as results arrive, so a rerun does not pay for a prompt twice. A torn last
 * line (an interrupted write) is ignored.
 */
export class JudgeCache {
  private readonly entries = new Map<string, CacheLine>();
  private writes: Promise<void> = Promise.resolve();

  private constructor(readonly path: string) {}

  static key(model: string, prompt: string): string {
    return createHash('sha256').update(model).update('\u0000').update(prompt).digest('hex');
  }

  /** Opens (or starts) the cache at `path`. */
  static async open(path: string): Promise<JudgeCache> {
    const cache = new JudgeCache(path);
    let text = '';
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new EmlensError(
          `Cannot read the judge cache ${path} (${(e as Error).message}); fix or delete it.`,
        );
      }
    }
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const v = JSON.parse(line) as CacheLine;
        if (typeof v.key === 'string' && (v.score === null || typeof v.score === 'number'))
          cache.entries.set(v.key, v);
      } catch {
        // a torn line from an interrupted run: that prompt is simply judged again
      }
    }
    return cache;
  }

  get size(): number {
    return this.entries.size;
  }

  get(model: string, prompt: string): CacheLine | undefined {
    return this.entries.get(JudgeCache.key(model, prompt));
  }

  /** Records a result; the line is appended in order with the other writes. */
  put(model: string, prompt: string, score: number | null, top?: readonly TokenLogprob[]): Promise<void> {
    const line: CacheLine = { key: JudgeCache.key(model, prompt), model, score, ...(top ? { top } : {}) };
    this.entries.set(line.key, line);
    this.writes = this.writes.then(async () => {
      await mkdir(dirname(this.path), { recursive: true });
      await appendFile(this.path, `${JSON.stringify(line)}\n`);
    });
    return this.writes;
  }

  /** Waits for pending appends. */
  flush(): Promise<void> {
    return this.writes;
  }
}
