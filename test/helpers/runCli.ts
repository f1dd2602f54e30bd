import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { vi } from 'vitest';
import { main } from '../../src/cli/main.js';

export interface CliRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs the CLI in-process and captures what it prints (console.log and stdout to `stdout`). A call of
 * process.exit fails the test: commands must return exit codes through `main`.
 */
export async function runCli(args: readonly string[]): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const spies = [
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
      stdout += String(s);
      return true;
    }),
    vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
      stderr += String(s);
      return true;
    }),
    vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
      stdout += `${a.join(' ')}\n`;
    }),
    vi.spyOn(process, 'exit').mockImplementation((code) => {
      throw new Error(`process.exit(${code}) called`);
    }),
  ];
  try {
    return { code: await main([...args]), stdout, stderr };
  } finally {
    for (const s of spies) s.mockRestore();
  }
}

/**
 * Writes `dir/emlens.mts`, an entry that runs this checkout's CLI, for tests that start the CLI as a child
 * process (as `tsx <entry> args...`); returns its path.
 */
export async function writeCliEntry(dir: string): Promise<string> {
  const entry = join(dir, 'emlens.mts');
  const main = join(import.meta.dirname, '..', '..', 'src', 'cli', 'main.ts');
  await writeFile(
    entry,
    `import { main } from ${JSON.stringify(main)};\nprocess.exitCode = await main(process.argv.slice(2));\n`,
  );
  return entry;
}
