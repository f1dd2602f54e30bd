/**
 * A user's input files (responses, questions, neutral texts, GGUF control vectors) are read only from regular
 * files: a FIFO would block the read forever, so it is refused at once, and a directory or a missing path is
 * named. Each reader is bounded by a timeout, so a regression fails instead of hanging.
 */
import { execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { readResponses } from '../../src/data/response.js';
import { importGguf } from '../../src/directions/gguf.js';
import { EmlensError } from '../../src/errors.js';
import { loadQuestions } from '../../src/eval/questions.js';
import { readNeutralTexts } from '../../src/interventions/scoring.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-user-inputs-');

/** Rejects with an EmlensError within 3 s (a blocked FIFO read would never settle). */
async function refusedQuickly(p: Promise<unknown>): Promise<string> {
  const timeout = new Promise<never>((_, reject) =>
    setTimeout(() => reject(new Error('the read did not settle within 3 s')), 3000),
  );
  const e = await Promise.race([
    p.then(
      () => null,
      (err: unknown) => err,
    ),
    timeout,
  ]);
  expect(e).toBeInstanceOf(EmlensError);
  return (e as Error).message;
}

const READERS = [
  { what: 'Responses file', ext: 'csv', read: (p: string) => readResponses(p) },
  { what: 'Question file', ext: 'yaml', read: (p: string) => loadQuestions(p) },
  { what: 'Neutral text file', ext: 'txt', read: (p: string) => readNeutralTexts(p) },
  { what: 'GGUF file', ext: 'gguf', read: (p: string) => importGguf(p) },
] as const;

describe('user input files', () => {
  for (const r of READERS) {
    it(`${r.what}: a FIFO, a directory and a missing path each get one clear line`, async () => {
      const fifo = tmp.join(`fifo-${r.ext}.${r.ext}`);
      execFileSync('mkfifo', [fifo]);
      expect(await refusedQuickly(r.read(fifo))).toMatch(/named pipe \(FIFO\), not a regular file/);
      const dir = tmp.join(`dir.${r.ext}`);
      await mkdir(dir, { recursive: true });
      expect(await refusedQuickly(r.read(dir))).toBe(
        `${r.what} ${dir} is a directory; name the file itself.`,
      );
      const missing = tmp.join(`missing.${r.ext}`);
      expect(await refusedQuickly(r.read(missing))).toBe(
        `${r.what} ${missing} does not exist; check the path.`,
      );
    });
  }

  it('collect --data FIFO exits 2 with one line instead of hanging', async () => {
    const fifo = tmp.join('data.csv');
    execFileSync('mkfifo', [fifo]);
    const r = await Promise.race([
      runCli(['collect', '--model', tmp.join('no-model'), '--data', fifo, '--out', tmp.join('store')]),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('collect hung on a FIFO')), 5000)),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});
