/**
 * `emlens judge`: judging responses made elsewhere (another sampler, the public EM code's generations) with the
 * judge of `emlens eval`, resumable through the same judge cache.
 */
import { basename, extname, join, resolve } from 'node:path';
import { type ResponseRecord, readResponses } from '../data/response.js';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { claimResumableFolder } from '../io/outputs.js';
import { createJudge, type Judge, judgeResponses, type LocalJudgeOptions } from './judge/index.js';
import { type EvalSummary, summarize } from './metrics.js';
import { checkMetrics, type EvalQuestion, judgePromptWarnings, loadQuestions } from './questions.js';
import { urlJudges } from './run.js';
import { EVAL_FILES, writeResponseFiles } from './sample.js';

/** The files `judgeFile` writes into its folder. */
export const JUDGE_FILES = [
  EVAL_FILES.judgedCsv,
  EVAL_FILES.judgedJsonl,
  EVAL_FILES.judgeCache,
  EVAL_FILES.summary,
] as const;

export interface JudgeFileOptions {
  /** A responses file (.csv or .jsonl: question_id, question, response or answer). */
  readonly responses: string;
  /** The question file whose judge prompts are used, or questions already loaded. */
  readonly questions: string | readonly EvalQuestion[];
  /** `local:DIR`, or the base URL of an OpenAI-compatible endpoint. */
  readonly judge: string;
  /** The judge model of a URL judge (default: each question's `judge`). */
  readonly judgeModel?: string;
  readonly apiKeyEnv?: string;
  readonly judgeLoad?: LocalJudgeOptions;
  /** Output folder: judged.csv, judged.jsonl, summary.json and (URL judge) judge-cache.jsonl. */
  readonly out: string;
  /** Judge only these metrics (default: every judge prompt of each question). */
  readonly metrics?: readonly string[];
  /** Judge calls in flight at once. */
  readonly concurrency?: number;
  /** Condition name in summary.json (default: the responses file's name without extension). */
  readonly condition?: string;
  readonly onWarning?: (message: string) => void;
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Each response's question: by `question_id`, else (a file without ids) the question one of whose paraphrases
 * is the response's question text. The record then carries that question's id.
 */
export function matchQuestions(
  records: readonly ResponseRecord[],
  questions: readonly EvalQuestion[],
  file: string,
): ResponseRecord[] {
  const byId = new Map(questions.map((q) => [q.id, q]));
  const byText = new Map<string, EvalQuestion>();
  for (const q of questions) for (const p of q.paraphrases) if (!byText.has(p)) byText.set(p, q);
  return records.map((r, i) => {
    if (byId.has(r.questionId)) return r;
    const q = byText.get(r.question);
    if (q === undefined) {
      throw new EmlensError(
        `${file} row ${i + 1} has question id '${r.questionId}' and a question text that no question of the question file has; judge with the question file the responses were sampled from.`,
      );
    }
    return { ...r, questionId: q.id };
  });
}

/**
 * Judges every response of a file on every metric of its question (or `metrics`), and writes judged.csv,
 * judged.jsonl and summary.json into `out`. A URL judge keeps `judge-cache.jsonl` in `out`, so a rerun (after
 * an interruption, or with more metrics) sends only what was not answered yet.
 *
 * @example
 * await judgeFile({ responses: 'gen/responses.csv', questions: 'first_plot_questions.yaml',
 *   judge: 'https://api.openai.com/v1', judgeModel: 'gpt-4o-2024-08-06', out: 'judged/finetune' });
 */
export async function judgeFile(opts: JudgeFileOptions): Promise<EvalSummary> {
  await claimResumableFolder(opts.out, JUDGE_FILES, { what: 'an emlens judge folder' });
  const questions = typeof opts.questions === 'string' ? await loadQuestions(opts.questions) : opts.questions;
  const records = matchQuestions(await readResponses(opts.responses), questions, opts.responses);
  const used = questions.filter((q) => records.some((r) => r.questionId === q.id));
  if (opts.metrics !== undefined) checkMetrics(used, opts.metrics);
  for (const w of judgePromptWarnings(used, opts.metrics)) opts.onWarning?.(w);

  let judges: Judge[];
  let judgeFor: Judge | ((q: EvalQuestion) => Judge);
  if (opts.judge.startsWith('local:')) {
    const j = await createJudge(opts.judge, { local: opts.judgeLoad });
    judges = [j];
    judgeFor = j;
  } else {
    const u = await urlJudges(opts.judge, used, {
      judgeModel: opts.judgeModel,
      apiKeyEnv: opts.apiKeyEnv,
      cachePath: join(opts.out, EVAL_FILES.judgeCache),
      concurrency: opts.concurrency,
    });
    judges = u.judges;
    judgeFor = u.judgeFor;
  }
  let judged: ResponseRecord[];
  try {
    judged = await judgeResponses(records, questions, judgeFor, {
      ...(opts.metrics !== undefined ? { metrics: opts.metrics } : {}),
      ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    });
  } finally {
    for (const j of judges) await j.close?.();
  }
  await writeResponseFiles(opts.out, judged, 'judged');
  const summary = summarize(judged, opts.condition ?? basename(opts.responses, extname(opts.responses)), {
    run: {
      responses: resolve(opts.responses),
      questions: typeof opts.questions === 'string' ? resolve(opts.questions) : null,
      questionIds: used.map((q) => q.id),
      judge: opts.judge.startsWith('local:')
        ? { name: opts.judge }
        : { url: opts.judge, models: judges.map((j) => j.name) },
      metrics: opts.metrics ?? null,
    },
  });
  await writeAtomic(join(opts.out, EVAL_FILES.summary), `${JSON.stringify(summary, null, 2)}\n`);
  return summary;
}
