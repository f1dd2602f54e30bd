/**
 * `npm run bench`'s summary: every benchmark's committed JSON (benchmarks/results/*.json) read back, each figure
 * beside the hardware bound measured in the same run (the MatMul ceiling for prefill, copy bandwidth for
 * decode) and the goal its issue stated, with a met / not met column, as markdown.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pct } from '../../src/util/format.js';

/** One figure of the summary table. */
export interface SummaryRow {
  readonly benchmark: string;
  readonly figure: string;
  readonly measured: string;
  /** The hardware bound (or reference) measured in the same run; empty where there is none. */
  readonly bound: string;
  /** measured / bound, where that is the figure's meaning. */
  readonly ratio: string;
  readonly goal: string;
  /** null: no goal, or the figure is missing. */
  readonly met: boolean | null;
}

/** Where each benchmark writes its JSON, relative to the results folder. */
export const BENCH_RESULTS = {
  forward: 'forward.json',
  generate: 'generate.json',
  collect: 'collect.json',
  directions: 'narrow-vs-general/narrow-vs-general.json',
} as const;

export type BenchName = keyof typeof BENCH_RESULTS;

// biome-ignore lint/suspicious/noExplicitAny: the JSONs are read loosely; every field is checked before use
type Json = any;

const num = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
const f = (x: unknown, d = 1) => (num(x) ? x.toFixed(d) : 'n/a');
const atLeast = (x: unknown, goal: number) => (num(x) ? x >= goal : null);
const atMost = (x: unknown, goal: number) => (num(x) ? x <= goal : null);

/** forward.json: prefill GFLOP/s against the MatMul ceiling, and the hook overhead. */
export function forwardRows(j: Json): SummaryRow[] {
  const rows: SummaryRow[] = [];
  for (const p of j?.prefill ?? []) {
    const goal = p.tokens === 512;
    rows.push({
      benchmark: 'forward',
      figure: `prefill, ${p.tokens} tokens (fp32, ${j.machine?.cpus ?? '?'} cores)`,
      measured: `${f(p.gflops)} GFLOP/s (${f(p.bestMs ?? p.medianMs, 0)} ms)`,
      bound: `MatMul ceiling ${f(p.ceilingGflops)} GFLOP/s`,
      ratio: f(p.ratioToCeiling, 3),
      goal: goal ? '>= 0.9 of the ceiling' : '',
      met: goal ? atLeast(p.ratioToCeiling, 0.9) : null,
    });
  }
  const at512 = (j?.prefill ?? []).find((p: Json) => p.tokens === 512);
  rows.push({
    benchmark: 'forward',
    figure: `all ${j?.model?.layers ?? ''} resid_post hooks fetched, 512 tokens`,
    measured: `${pct(at512?.hookOverhead)} time overhead (${f(at512?.bestMsAllResidPostHooks ?? at512?.medianMsAllResidPostHooks, 0)} ms)`,
    bound: `no hooks: ${f(at512?.bestMs ?? at512?.medianMs, 0)} ms`,
    ratio: f(num(at512?.hookOverhead) ? 1 + at512.hookOverhead : null, 3),
    goal: '<= 5% overhead',
    met: atMost(at512?.hookOverhead, 0.05),
  });
  return rows;
}

/** generate.json: single-stream decode against the copy-bandwidth bound, and batch-32 throughput. */
export function generateRows(j: Json): SummaryRow[] {
  const mb = j?.memoryBound;
  const s = j?.singleStream;
  const bw = num(mb?.copyGbPerSAllThreads)
    ? Math.max(mb.copyGbPerSAllThreads, mb.copyGbPerS1Thread ?? 0)
    : mb?.copyGbPerS1Thread;
  const rows: SummaryRow[] = [
    {
      benchmark: 'generate',
      figure: `single-stream decode (${j?.promptTokens ?? '?'}-token prompt, ${j?.newTokens ?? '?'} new)`,
      measured: `${f(s?.decodeTokensPerS, 2)} tok/s`,
      bound: `copy bandwidth ${f(bw)} GB/s / ${f(num(mb?.weightBytesPerToken) ? mb.weightBytesPerToken / 1e9 : null, 2)} GB per token = ${f(mb?.boundTokensPerS, 2)} tok/s`,
      ratio: f(s?.ratioToBandwidthBound, 3),
      goal: '>= 0.8 of the bandwidth bound',
      met: atLeast(s?.ratioToBandwidthBound, 0.8),
    },
  ];
  const gemv = j?.gemvCeiling;
  if (num(gemv?.tokensPerS)) {
    rows.push({
      benchmark: 'generate',
      figure: "context: onnxruntime running only the model's MatMuls, 1 token",
      measured: `${f(gemv.tokensPerS, 2)} tok/s (${f(gemv.weightGbPerS)} GB/s of weights)`,
      bound: `the same bound, ${f(mb?.boundTokensPerS, 2)} tok/s`,
      ratio: f(num(mb?.boundTokensPerS) ? gemv.tokensPerS / mb.boundTokensPerS : null, 3),
      goal: '',
      met: null,
    });
  }
  for (const b of j?.batches ?? []) {
    const goal = b.batch === 32;
    rows.push({
      benchmark: 'generate',
      figure: `batch ${b.batch} decode, ${b.sampling}`,
      measured: `${f(b.decodeTokensPerS, 2)} tok/s`,
      bound: `single stream ${f(s?.decodeTokensPerS, 2)} tok/s`,
      ratio: `${f(b.speedupOverSingle, 2)}x`,
      goal: goal ? '>= 8x single-stream tokens/s' : '',
      met: goal ? atLeast(b.speedupOverSingle, 8) : null,
    });
  }
  const kb = j?.batchKernelCeiling;
  if (num(kb?.speedupOverOneToken)) {
    rows.push({
      benchmark: 'generate',
      figure: `context: the same MatMuls alone, ${kb.tokens} tokens vs 1 (best of each)`,
      measured: `${f(kb.medianMs, 0)} ms vs ${f(gemv?.medianMs, 0)} ms (medians)`,
      bound: '1 token',
      ratio: `${f(kb.speedupOverOneToken, 2)}x`,
      goal: '',
      met: null,
    });
  }
  return rows;
}

/** collect.json: collection throughput against forward-only prefill, and memory against the record count. */
export function collectRows(j: Json): SummaryRow[] {
  const s = j?.sample;
  const rss = j?.rssMiB ?? {};
  const lastKey = Object.keys(rss).find((k) => k !== 'after1k');
  const first = rss.after1k;
  const last = lastKey ? rss[lastKey] : undefined;
  const grows = num(first) && num(last) ? last > first * 1.05 : null;
  return [
    {
      benchmark: 'collect',
      figure: `collect ${j?.hooks ?? ''}, ${s?.records ?? '?'} records`,
      measured: `${f(s?.collectTokPerS)} tok/s`,
      bound: `forward-only prefill ${f(s?.forwardOnlyTokPerS)} tok/s (no MatMul ceiling in this run)`,
      ratio: f(s?.ratio, 3),
      goal: '>= 0.9 of forward-only',
      met: atLeast(s?.ratio, 0.9),
    },
    {
      benchmark: 'collect',
      figure: `resident memory, ${lastKey?.replace('after', '') ?? '?'} vs 1024 records`,
      measured: `${f(last, 0)} MiB`,
      bound: `after 1024 records ${f(first, 0)} MiB`,
      ratio: f(num(first) && num(last) ? last / first : null, 3),
      goal: 'does not grow with record count (<= +5%)',
      met: grows === null ? null : !grows,
    },
  ];
}

/** narrow-vs-general.json: runtime, and on the synthetic organisms the ground truth the run must reproduce. */
export function directionsRows(j: Json): SummaryRow[] {
  const rows: SummaryRow[] = [
    {
      benchmark: 'directions',
      figure: `default run (${j?.source ?? '?'}), ${j?.machine?.cpus ?? '?'} cores`,
      measured: `${f(j?.seconds)} s`,
      bound: '',
      ratio: '',
      goal: j?.source === 'synthetic' ? '<= 180 s' : '',
      met: j?.source === 'synthetic' ? atMost(j?.seconds, 180) : null,
    },
  ];
  const cells: Json[] = j?.crossMediation ?? [];
  const cell = (x: string, y: string, prompts = 'in') =>
    cells.find((c) => c.direction === x && c.finetune === y && c.prompts === prompts);
  const dirs: Json[] = j?.directions ?? [];
  const synthetic = j?.source === 'synthetic';
  for (const g of dirs.filter((d) => d.kind === 'general')) {
    const c = cell(g.name, g.name);
    rows.push({
      benchmark: 'directions',
      figure: `${g.name} direction ablated in its own finetune (in-domain)`,
      measured: `${pct(c?.ablated)} mediated`,
      bound: `random control ${pct(c?.randomAblated)}`,
      ratio: '',
      goal: synthetic ? '>= 95% (planted)' : '',
      met: synthetic ? atLeast(c?.ablated, 0.95) : null,
    });
  }
  const cross = cells.filter((c) => c.direction !== c.finetune && c.prompts === 'in' && num(c.patched));
  if (cross.length > 0) {
    const worst = Math.max(...cross.map((c) => Math.abs(c.patched)));
    rows.push({
      benchmark: 'directions',
      figure: 'any direction patched in another finetune (in-domain), largest |fraction|',
      measured: pct(worst),
      bound: `random controls up to ${pct(Math.max(...cells.filter((c) => num(c.randomPatched)).map((c) => Math.abs(c.randomPatched))))}`,
      ratio: '',
      goal: synthetic ? '<= 5% (orthogonal planted directions)' : '',
      met: synthetic ? worst <= 0.05 : null,
    });
  }
  return rows;
}

const ROWS: Record<BenchName, (j: Json) => SummaryRow[]> = {
  forward: forwardRows,
  generate: generateRows,
  collect: collectRows,
  directions: directionsRows,
};

/** A benchmark script's run in this invocation (absent when only summarising). */
export interface ScriptRun {
  readonly name: BenchName;
  readonly command: string;
  readonly exitCode: number | null;
  readonly seconds: number;
}

/** Reads every benchmark's JSON under `resultsDir` (missing ones noted) and writes the summary markdown. */
export async function benchSummary(resultsDir: string, runs: readonly ScriptRun[] = []): Promise<string> {
  const rows: SummaryRow[] = [];
  const sources: string[] = [];
  for (const [name, file] of Object.entries(BENCH_RESULTS) as [BenchName, string][]) {
    let j: Json;
    try {
      j = JSON.parse(await readFile(join(resultsDir, file), 'utf8'));
    } catch {
      sources.push(`- ${name}: no ${file} (not run)`);
      rows.push({
        benchmark: name,
        figure: 'not run',
        measured: '',
        bound: '',
        ratio: '',
        goal: '',
        met: null,
      });
      continue;
    }
    sources.push(
      `- ${name}: ${file}, ${j.date ?? 'undated'}, ${j.machine?.cpus ?? '?'} × ${j.machine?.cpuModel ?? '?'}, Node ${j.machine?.node ?? '?'}`,
    );
    rows.push(...ROWS[name](j));
  }
  const met = (m: boolean | null) => (m === null ? '' : m ? 'met' : 'not met');
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    '# Benchmark summary',
    '',
    'Each figure beside the hardware bound measured in the same run (the MatMul ceiling for prefill, copy bandwidth for decode) and the goal of its issue. Regenerate with `npm run bench` (runs every benchmark, ~15 min) or `BENCH_SUMMARY_ONLY=1 npm run bench` (summarises the committed JSON).',
    '',
    '| benchmark | figure | measured | bound (same run) | ratio | goal | met |',
    '| --- | --- | ---: | --- | ---: | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.benchmark} | ${cell(r.figure)} | ${cell(r.measured)} | ${cell(r.bound)} | ${r.ratio} | ${cell(r.goal)} | ${met(r.met)} |`,
    ),
    '',
    'Sources:',
    '',
    ...sources,
    '',
  ];
  if (runs.length > 0) {
    lines.push(
      'Scripts run by this invocation:',
      '',
      ...runs.map(
        (r) =>
          `- ${r.name}: \`${r.command}\` ${r.exitCode === 0 ? 'ok' : `FAILED (exit ${r.exitCode})`} in ${r.seconds.toFixed(0)} s`,
      ),
      '',
    );
  }
  const goals = rows.filter((r) => r.met !== null);
  lines.push(`Goals met: ${goals.filter((r) => r.met).length} of ${goals.length}.`, '');
  return lines.join('\n');
}
