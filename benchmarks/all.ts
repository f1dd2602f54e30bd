/**
 * `npm run bench` = `tsx benchmarks/all.ts [--summary-only] [--only forward,generate,collect,directions]`: runs
 * every benchmark script in sequence, each as its own child process (`npx tsx benchmarks/X.ts`, so each gets a
 * fresh process), then writes benchmarks/results/summary.md (benchmarks/lib/summary.ts): every figure beside
 * its hardware bound from the same run and the goal of its issue. `--summary-only` (or BENCH_SUMMARY_ONLY=1)
 * runs nothing and only summarises the JSON already in benchmarks/results/. Exits 1 when a script failed.
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type BenchName, benchSummary, type ScriptRun } from './lib/summary.js';

const SCRIPTS: Record<BenchName, string> = {
  forward: 'benchmarks/forward.ts',
  generate: 'benchmarks/generate.ts',
  collect: 'benchmarks/collect.ts',
  directions: 'benchmarks/narrow-vs-general/run.ts',
};

const root = join(import.meta.dirname, '..');
const results = join(import.meta.dirname, 'results');
const log = (m: string) => process.stderr.write(`bench: ${m}\n`);

function runScript(name: BenchName): Promise<ScriptRun> {
  const args = ['tsx', SCRIPTS[name]];
  const command = `npx ${args.join(' ')}`;
  log(`${name}: ${command}`);
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn('npx', args, { cwd: root, stdio: 'inherit' });
    const done = (exitCode: number | null) =>
      resolve({ name, command, exitCode, seconds: (performance.now() - t0) / 1000 });
    child.on('error', (e) => {
      log(`${name}: could not start (${e.message})`);
      done(null);
    });
    child.on('close', (code) => done(code));
  });
}

const { values } = parseArgs({
  options: { 'summary-only': { type: 'boolean', default: false }, only: { type: 'string' } },
  strict: true,
});
const summaryOnly = values['summary-only'] || /^(1|true|yes)$/i.test(process.env.BENCH_SUMMARY_ONLY ?? '');
const names = (values.only?.split(',').map((s) => s.trim()) ?? Object.keys(SCRIPTS)) as BenchName[];
const unknown = names.find((n) => !(n in SCRIPTS));
if (unknown !== undefined) {
  log(`unknown benchmark '${unknown}'; pick from ${Object.keys(SCRIPTS).join(', ')}.`);
  process.exit(2);
}

const runs: ScriptRun[] = [];
if (!summaryOnly) {
  for (const name of names) {
    const r = await runScript(name);
    runs.push(r);
    log(`${name}: ${r.exitCode === 0 ? 'ok' : `FAILED (exit ${r.exitCode})`} in ${r.seconds.toFixed(0)} s`);
  }
}
const summary = await benchSummary(results, runs);
const file = join(results, 'summary.md');
await writeFile(file, summary);
process.stdout.write(summary);
log(`wrote ${file}`);
if (runs.some((r) => r.exitCode !== 0)) process.exit(1);
