/**
 * The comparison report across eval output folders: a markdown table, its JSON, and a chart of the EM rate
 * with confidence intervals per condition.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { type ResponseRecord, readResponses } from '../data/response.js';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { inputExists } from '../io/inputFiles.js';
import { claimOutputFiles } from '../io/outputs.js';
import { renderVegaLite } from '../plot/render.js';
import {
  type Comparison,
  compareConditions,
  type EvalSummary,
  emRateChart,
  formatComparisonMarkdown,
  summarize,
} from './metrics.js';
import { loadQuestions } from './questions.js';
import { EVAL_FILES, writeResponseFiles } from './sample.js';

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
    const file = join(dir, name);
    if (await inputExists(file)) return summarize(await readResponses(file), basename(resolve(dir)));
  }
  throw new EmlensError(
    `${dir} has neither ${EVAL_FILES.summary} nor judged responses; run emlens eval --out ${dir} first.`,
  );
}

export interface ReportOptions {
  /** Condition the changes are measured against (default: the first folder's). */
  readonly baseline?: string;
  readonly title?: string;
  /** Replace the report files of an earlier run in `out` (default: refuse). */
  readonly overwrite?: boolean;
}

export interface Report {
  readonly comparison: Comparison;
  readonly markdown: string;
  readonly files: readonly string[];
}

/** The comparison of eval folders: what {@link writeReport} writes, without writing it. */
export interface EvalComparison {
  readonly comparison: Comparison;
  /** The report's markdown: a title, the comparison table and the EM rate per question. */
  readonly markdown: string;
  /** One summary per folder, conditions disambiguated by folder name where two share a name. */
  readonly summaries: readonly EvalSummary[];
}

/** Reads eval folders and compares their conditions (see {@link writeReport}). */
export async function compareEvalFolders(
  dirs: readonly string[],
  opts: ReportOptions = {},
): Promise<EvalComparison> {
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
  return { comparison, markdown, summaries: named };
}

/**
 * Compares eval folders and writes `report.md`, `report.json`, `em-rate.svg` and `em-rate.png` into `out`
 * (refused if any is there already, unless `overwrite`). Two folders with the same condition name are told apart by their folder names.
 *
 * @example
 * await writeReport(['eval/base', 'eval/finetune', 'eval/finetune-ablated'], 'report');
 */
export async function writeReport(
  dirs: readonly string[],
  out: string,
  opts: ReportOptions = {},
): Promise<Report> {
  const { comparison, markdown, summaries } = await compareEvalFolders(dirs, opts);
  await claimOutputFiles(out, ['report.md', 'report.json', 'em-rate.svg', 'em-rate.png'], opts);
  await mkdir(out, { recursive: true });
  const md = join(out, 'report.md');
  const json = join(out, 'report.json');
  await writeAtomic(md, markdown);
  await writeAtomic(json, `${JSON.stringify({ ...comparison, sources: dirs, summaries }, null, 2)}\n`);
  const chart = await renderVegaLite(emRateChart(comparison, opts.title), join(out, 'em-rate'));
  return { comparison, markdown, files: [md, json, chart.svg, chart.png] };
}

// ---------------------------------------------------------------------------------------------------------
// Sharded evaluation: question slices, and joining the slices' folders

/**
 * Slice `index` of `count` of a question list: contiguous, in file order, sizes differing by at most one.
 * Sample `i` of a question draws its paraphrase and its block seed from (seed, question id, i) alone, so
 * evaluating each slice (`emlens eval --include <its ids>`) gives exactly the answers of the unsliced run.
 *
 * @example
 * questionSlice(await loadQuestions('q.yaml'), 0, 3).map((q) => q.id).join(','); // for --include
 */
export function questionSlice<T extends { readonly id: string }>(
  questions: readonly T[],
  index: number,
  count: number,
): T[] {
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(index) || index < 0 || index >= count) {
    throw new EmlensError(`Slice ${index}/${count} is not valid; use i/N with 0 <= i < N.`);
  }
  const n = questions.length;
  if (count > n) {
    throw new EmlensError(
      `Cannot cut ${n} questions into ${count} slices; use at most ${n} shards or fewer machines.`,
    );
  }
  return questions.slice(Math.floor((index * n) / count), Math.floor(((index + 1) * n) / count));
}

async function readJsonFile(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new EmlensError(`${path} is missing; ${what}.`);
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new EmlensError(`${path} is not valid JSON; rerun emlens eval into ${dirname(path)}.`);
  }
}

/**
 * Joins eval folders of one run split by question (each `emlens eval --include` a slice of the questions,
 * same model, adapter, interventions, judge and sampling settings) into one folder at `out`, as if it had been
 * evaluated in one go: responses and judged responses in question-file order (when the question file is still
 * where the run recorded it; else in the order the folders are given), `sampling.json`, and `summary.json`
 * recomputed over all answers, so its confidence intervals are those of the unsharded run.
 *
 * @example
 * await mergeEvalFolders(['eval/base-0', 'eval/base-1', 'eval/base-2'], 'eval/base');
 */
export async function mergeEvalFolders(dirs: readonly string[], out: string): Promise<EvalSummary> {
  if (dirs.length === 0) throw new EmlensError('Nothing to merge; pass the eval folders of the shards.');
  const parts = [];
  for (const dir of dirs) {
    const need = `merge folders emlens eval wrote completely (rerun emlens eval --out ${dir} to finish it)`;
    const sampling = await readJsonFile(join(dir, EVAL_FILES.sampling), need);
    const summary = (await readJsonFile(join(dir, EVAL_FILES.summary), need)) as unknown as EvalSummary;
    if (typeof summary.condition !== 'string' || !Array.isArray(summary.perQuestion)) {
      throw new EmlensError(`${join(dir, EVAL_FILES.summary)} is not an emlens eval summary; ${need}.`);
    }
    let judged: ResponseRecord[];
    let responses: ResponseRecord[];
    try {
      judged = await readResponses(join(dir, EVAL_FILES.judgedJsonl));
      responses = await readResponses(join(dir, EVAL_FILES.responsesJsonl));
    } catch (e) {
      if (e instanceof EmlensError && /^Cannot read/.test(e.message)) {
        throw new EmlensError(`${dir} has no judged.jsonl or responses.jsonl; ${need}.`);
      }
      throw e;
    }
    parts.push({ dir, sampling, summary, judged, responses });
  }
  const first = parts[0];
  if (first === undefined) throw new Error('mergeEvalFolders: no folder was read'); // dirs is not empty
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const seen = new Map<string, string>();
  for (const p of parts) {
    for (const k of new Set([...Object.keys(first.sampling), ...Object.keys(p.sampling)])) {
      if (!same(p.sampling[k], first.sampling[k])) {
        throw new EmlensError(
          `${p.dir} was sampled with ${k} = ${JSON.stringify(p.sampling[k])} but ${first.dir} with ${JSON.stringify(first.sampling[k])}; merge shards of one run only.`,
        );
      }
    }
    const run = p.summary.run ?? {};
    const run0 = first.summary.run ?? {};
    for (const k of ['model', 'adapter', 'interventions', 'judge', 'sampling', 'questions']) {
      if (!same(run[k], run0[k])) {
        throw new EmlensError(
          `${p.dir} differs from ${first.dir} in its ${k}; merge shards of one run only.`,
        );
      }
    }
    for (const k of ['condition', 'thresholds', 'bootstrap'] as const) {
      if (!same(p.summary[k], first.summary[k])) {
        throw new EmlensError(`${p.dir} has another ${k} than ${first.dir}; merge shards of one run only.`);
      }
    }
    for (const id of new Set(p.judged.map((r) => r.questionId))) {
      const other = seen.get(id);
      if (other !== undefined) {
        throw new EmlensError(
          `Question '${id}' is in both ${other} and ${p.dir}; merge shards with disjoint questions.`,
        );
      }
      seen.set(id, p.dir);
    }
  }
  // Question-file order where the file is still there; else the order of the folders as given.
  let order: string[] = parts.flatMap((p) => [...new Set(p.judged.map((r) => r.questionId))]);
  const file = first.summary.run?.questions;
  if (typeof file === 'string') {
    try {
      const ids = (await loadQuestions(file)).map((q) => q.id).filter((id) => seen.has(id));
      if (ids.length === seen.size) order = ids;
    } catch {
      // keep the given order
    }
  }
  const rank = new Map(order.map((id, i) => [id, i]));
  const byQuestion = (rs: ResponseRecord[]) =>
    rs
      .map((r, i) => ({ r, i }))
      // order holds every question of every part, so rank has them all.
      .sort((a, b) => rank.get(a.r.questionId)! - rank.get(b.r.questionId)! || a.i - b.i)
      .map((x) => x.r);
  const judged = byQuestion(parts.flatMap((p) => p.judged));
  const responses = byQuestion(parts.flatMap((p) => p.responses));

  await mkdir(out, { recursive: true });
  for (const f of [EVAL_FILES.summary, EVAL_FILES.responsesJsonl, EVAL_FILES.judgedJsonl]) {
    try {
      await readFile(join(out, f));
    } catch {
      continue;
    }
    throw new EmlensError(`${out} already holds an eval (${f}); merge into a new folder.`);
  }
  await writeAtomic(join(out, EVAL_FILES.sampling), `${JSON.stringify(first.sampling, null, 2)}\n`);
  await writeResponseFiles(out, responses, 'responses');
  await writeResponseFiles(out, judged, 'judged');
  const s = first.summary;
  const summary = summarize(judged, s.condition, {
    ...s.bootstrap,
    thresholds: s.thresholds,
    run: {
      ...s.run,
      questionIds: order,
      shards: parts.map((p) => resolve(p.dir)),
    },
  });
  await writeAtomic(join(out, EVAL_FILES.summary), `${JSON.stringify(summary, null, 2)}\n`);
  return summary;
}
