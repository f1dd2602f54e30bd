/** Judging a set of responses: every response on every metric of its question, with bounded concurrency. */

import type { ResponseRecord } from '../../data/response.js';
import { EmlensError } from '../../errors.js';
import { type EvalQuestion, fillJudgePrompt } from '../questions.js';
import type { Judge } from './types.js';

export interface JudgeResponsesOptions {
  /** Metrics to score (default: every metric of each question's judge_prompts). */
  readonly metrics?: readonly string[];
  /** score() calls in flight at once (default 32; the judge may limit further). */
  readonly concurrency?: number;
  /** Called after each score with (done, total). */
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Scores every response on every metric of its question: the metric's template filled with the question as it
 * was asked and the answer. Returns the records with one score column per metric (null: no score).
 */
export async function judgeResponses(
  records: readonly ResponseRecord[],
  questions: readonly EvalQuestion[],
  judge: Judge | ((question: EvalQuestion) => Judge),
  opts: JudgeResponsesOptions = {},
): Promise<ResponseRecord[]> {
  const byId = new Map(questions.map((q) => [q.id, q]));
  const jobs: { row: number; metric: string; prompt: string; judge: Judge }[] = [];
  records.forEach((r, row) => {
    const q = byId.get(r.questionId);
    if (q === undefined) {
      throw new EmlensError(
        `The responses hold question id '${r.questionId}', which the question set lacks; judge with the question file they were sampled from.`,
      );
    }
    const metrics = opts.metrics ?? Object.keys(q.judgePrompts);
    for (const metric of metrics) {
      const template = q.judgePrompts[metric];
      if (template === undefined) {
        throw new EmlensError(
          `Question '${q.id}' has no judge prompt for metric '${metric}' (it has ${Object.keys(q.judgePrompts).join(', ')}); pick metrics it defines.`,
        );
      }
      const j = typeof judge === 'function' ? judge(q) : judge;
      jobs.push({ row, metric, prompt: fillJudgePrompt(template, r.question, r.answer), judge: j });
    }
  });
  // Metric columns in template order, whatever order the scores arrive in.
  const scores = records.map(() => ({}) as Record<string, number | null>);
  // A job's row indexes records, and scores has one entry per record.
  for (const job of jobs) scores[job.row]![job.metric] = null;
  let done = 0;
  let next = 0;
  let failed = false;
  opts.onProgress?.(0, jobs.length);
  const worker = async () => {
    while (next < jobs.length && !failed) {
      const job = jobs[next++]!; // next < jobs.length, checked just above with no await between
      try {
        scores[job.row]![job.metric] = await job.judge.score(job.prompt);
      } catch (e) {
        failed = true;
        throw e;
      }
      opts.onProgress?.(++done, jobs.length);
    }
  };
  const width = Math.min(opts.concurrency ?? 32, Math.max(jobs.length, 1));
  await Promise.all(Array.from({ length: width }, worker));
  return records.map((r, i) => ({ ...r, scores: { ...r.scores, ...scores[i] } }));
}
