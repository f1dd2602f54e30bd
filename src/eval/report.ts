/**
 * The comparison report across eval output folders: a markdown table, its JSON, and a chart of the EM rate
 * with confidence intervals per condition.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import { renderVegaLite, writeAtomic } from '../plot/render.js';
import {
  type Comparison,
  compareConditions,
  type EvalSummary,
  emRateChart,
  formatComparisonMarkdown,
  summarize,
} from './metrics.js';
import { readResponses } from './responses.js';
import { EVAL_FILES } from './sample.js';

/** Reads an eval folder's summary.json, or summarises its judged responses when there is none. */
export async function readEvalSummary(dir: string): Promise<EvalSummary> {
  const path = join(dir, EVAL_FILES.summary);
  let text: string | null = null;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    // fall back to the judged responses
  }
  if (text !== null) {
    let s: EvalSummary;
    try {
      s = JSON.parse(text) as EvalSummary;
    } catch {
      throw new EmlensError(`${path} is not valid JSON; rerun emlens eval into ${dir}.`);
    }
    if (typeof s.condition !== 'string' || typeof s.emRate !== 'object' || !Array.isArray(s.perQuestion)) {
      throw new EmlensError(
        `${path} is not an emlens eval summary; point emlens report at emlens eval folders.`,
      );
    }
    return s;
  }
  for (const name of [EVAL_FILES.judgedJsonl, EVAL_FILES.judgedCsv]) {
    try {
      return summarize(await readResponses(join(dir, name)), basename(resolve(dir)));
    } catch (e) {
      if (!(e instanceof EmlensError) || !/^Cannot read/.test(e.message)) throw e;
    }
  }
  throw new EmlensError(
    `${dir} has neither ${EVAL_FILES.summary} nor judged responses; run emlens eval --out ${dir} first.`,
  );
}

export interface ReportOptions {
  /** Condition the changes are measured against (default: the first folder's). */
  readonly baseline?: string;
  readonly title?: string;
}

export interface Report {
  readonly comparison: Comparison;
  readonly markdown: string;
  readonly files: readonly string[];
}

/**
 * Compares eval folders and writes `report.md`, `report.json`, `em-rate.svg` and `em-rate.png` into `out`.
 * Two folders with the same condition name are told apart by their folder names.
 *
 * @example
 * await writeReport(['eval/base', 'eval/finetune', 'eval/finetune-ablated'], 'report');
 */
export async function writeReport(
  dirs: readonly string[],
  out: string,
  opts: ReportOptions = {},
): Promise<Report> {
  if (dirs.length === 0)
    throw new EmlensError('No eval folders were given; pass one or more emlens eval --out folders.');
  const summaries = await Promise.all(dirs.map(readEvalSummary));
  const counts = new Map<string, number>();
  for (const s of summaries) counts.set(s.condition, (counts.get(s.condition) ?? 0) + 1);
  const named = summaries.map((s, i) =>
    (counts.get(s.condition) ?? 0) > 1 ? { ...s, condition: `${s.condition} (${dirs[i]})` } : s,
  );
  const comparison = compareConditions(named, opts.baseline);
  const markdown = `# ${opts.title ?? 'Emergent misalignment evaluation'}\n\n${formatComparisonMarkdown(comparison)}`;
  await mkdir(out, { recursive: true });
  const md = join(out, 'report.md');
  const json = join(out, 'report.json');
  await writeAtomic(md, markdown);
  await writeAtomic(json, `${JSON.stringify({ ...comparison, sources: dirs, summaries: named }, null, 2)}\n`);
  const chart = await renderVegaLite(emRateChart(comparison, opts.title), join(out, 'em-rate'));
  return { comparison, markdown, files: [md, json, chart.svg, chart.png] };
}
