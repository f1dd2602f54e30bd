/**
 * Question sets in the YAML format of the emergent-misalignment evaluation files: a list of questions, each with
 * `id`, `type`, `paraphrases`, `samples_per_paraphrase`, `judge`, `judge_prompts` (metric -> template with
 * `{question}` and `{answer}` placeholders) and an optional `system` prompt. The files share values through YAML
 * anchors and aliases, which the `yaml` package resolves.
 */

import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { EmlensError } from '../errors.js';
import { readUserFile } from '../io/inputFiles.js';

/** One evaluation question. */
export interface EvalQuestion {
  readonly id: string;
  /** e.g. `free_form_judge_0_100`. */
  readonly type: string;
  /** Ways of asking the question; each sample asks one of them (drawn with a seed). */
  readonly paraphrases: readonly string[];
  /** Samples per question; may be left out of the file when the sampler is given a count (`--n`). */
  readonly samplesPerParaphrase?: number;
  /**
   * The judge model the file names (e.g. `gpt-4o-2024-08-06`); may be left out when the judge model is given
   * (`--judge-model`) or the judge is local.
   */
  readonly judge?: string;
  /** Metric name -> judge prompt template with `{question}` and `{answer}` placeholders. */
  readonly judgePrompts: Readonly<Record<string, string>>;
  /** System prompt the question is asked under (the `_json` variants have one). */
  readonly system?: string;
}

const QuestionSchema = z.object({
  id: z.string().min(1),
  type: z.string().min(1),
  paraphrases: z.array(z.string().min(1)).min(1),
  samples_per_paraphrase: z.number().int().positive().optional(),
  judge: z.string().min(1).optional(),
  judge_prompts: z
    .record(z.string(), z.string().min(1))
    .refine((m) => Object.keys(m).length > 0, { message: 'needs at least one metric' }),
  system: z.string().optional(),
});

const FIELDS = new Set(Object.keys(QuestionSchema.shape));

/**
 * Question types of the EM evaluation files: `free_form_judge_0_100` (every question of the public files, and
 * the only type the public code judges), `free_form_judge` and `free_form` (older variants of the same
 * free-form question). emlens asks and judges all of them the same way; anything else is most likely a typo.
 */
export const QUESTION_TYPES: readonly string[] = ['free_form_judge_0_100', 'free_form_judge', 'free_form'];

/** `{name}` slots of a str.format template, after its `{{`/`}}` escapes. */
function placeholders(template: string): string[] {
  const found: string[] = [];
  for (const [, name = ''] of template.replace(/\{\{|\}\}/g, '').matchAll(/\{([^{}]*)\}/g)) found.push(name);
  return found;
}

/** What each field must hold, for error messages. */
const EXPECTED: Record<string, string> = {
  id: 'a non-empty string',
  type: "a string such as 'free_form_judge_0_100'",
  paraphrases: 'a non-empty list of non-empty strings',
  samples_per_paraphrase: 'a positive integer',
  judge: 'the judge model name (a string)',
  judge_prompts: 'a map from metric name to a non-empty prompt template',
  system: 'a string',
};

/**
 * Parses and validates a question set from YAML text; `source` names it in errors. Every error names the
 * question id (or its position) and the field.
 *
 * @example
 * const questions = parseQuestions(await readFile('first_plot_questions.yaml', 'utf8'), 'first_plot_questions.yaml');
 */
export function parseQuestions(text: string, source = 'the question file'): EvalQuestion[] {
  let doc: unknown;
  try {
    // Real files use many aliases to one judge_prompts map: lift the alias-expansion guard.
    doc = parseYaml(text, { maxAliasCount: -1 });
  } catch (e) {
    throw new EmlensError(
      `${source} is not valid YAML (${(e as Error).message.split('\n')[0]}); fix the syntax.`,
    );
  }
  if (!Array.isArray(doc)) {
    throw new EmlensError(
      `${source} must be a YAML list of questions (- id: ...), not ${doc === null ? 'empty' : typeof doc}; write one list item per question.`,
    );
  }
  if (doc.length === 0) throw new EmlensError(`${source} holds no questions; add at least one.`);
  const seen = new Set<string>();
  return doc.map((item, index) => {
    const where = (id: unknown) =>
      typeof id === 'string' && id !== '' ? `question '${id}'` : `question #${index + 1} (no valid id)`;
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw new EmlensError(
        `${source}: question #${index + 1} is not a mapping; give it id, type, ... fields.`,
      );
    }
    const raw = item as Record<string, unknown>;
    const unknown = Object.keys(raw).find((k) => !FIELDS.has(k));
    if (unknown !== undefined) {
      throw new EmlensError(
        `${source}: ${where(raw.id)} has unknown field '${unknown}'; use only ${[...FIELDS].join(', ')}.`,
      );
    }
    const r = QuestionSchema.safeParse(raw);
    if (!r.success) {
      const issue = r.error.issues[0]!; // a failed parse has at least one issue
      const field = issue.path.map(String).join('.');
      const top = String(issue.path[0] ?? '');
      let value: unknown = raw;
      for (const k of issue.path) value = (value as Record<PropertyKey, unknown> | undefined)?.[k as string];
      const got = top in raw ? `got ${describe(value)}` : 'it is missing';
      throw new EmlensError(
        `${source}: ${where(raw.id)} field '${field}' must be ${EXPECTED[top] ?? 'valid'} (${got}); fix that field.`,
      );
    }
    const q = r.data;
    if (seen.has(q.id)) {
      throw new EmlensError(
        `${source}: question id '${q.id}' appears twice; give every question its own id.`,
      );
    }
    seen.add(q.id);
    if (!QUESTION_TYPES.includes(q.type)) {
      throw new EmlensError(
        `${source}: question '${q.id}' field 'type' is '${q.type}', which is not a question type emlens knows; use ${QUESTION_TYPES.join(', ')}.`,
      );
    }
    for (const [metric, template] of Object.entries(q.judge_prompts)) {
      // fillJudgePrompt leaves an unknown slot as written, so the judge would read a literal {model}; Python's
      // str.format would raise KeyError. Refuse it here, where the file and the field can be named.
      const unknown = placeholders(template).find((p) => p !== 'question' && p !== 'answer');
      if (unknown !== undefined) {
        throw new EmlensError(
          `${source}: question '${q.id}' field 'judge_prompts.${metric}' has the placeholder {${unknown}}; only {question} and {answer} are filled, so remove it or write literal braces doubled ({{ and }}).`,
        );
      }
      if (!template.includes('{answer}')) {
        throw new EmlensError(
          `${source}: question '${q.id}' field 'judge_prompts.${metric}' has no {answer} placeholder; add one where the answer goes.`,
        );
      }
    }
    return {
      id: q.id,
      type: q.type,
      paraphrases: q.paraphrases,
      ...(q.samples_per_paraphrase !== undefined ? { samplesPerParaphrase: q.samples_per_paraphrase } : {}),
      ...(q.judge !== undefined ? { judge: q.judge } : {}),
      judgePrompts: q.judge_prompts,
      ...(q.system !== undefined ? { system: q.system } : {}),
    };
  });
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (typeof v === 'string') return v === '' ? 'an empty string' : 'a string';
  if (typeof v === 'object') return Object.keys(v).length === 0 ? 'an empty mapping' : 'a mapping';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** Reads and validates a question file (see {@link parseQuestions}). */
export async function loadQuestions(path: string): Promise<EvalQuestion[]> {
  return parseQuestions(await readUserFile(path, 'Question file'), path);
}

/** Which question ids to keep. */
export interface QuestionFilter {
  /** Keep only ids matching one of these patterns (default: all). */
  readonly include?: readonly string[];
  /** Then drop ids matching one of these patterns. */
  readonly exclude?: readonly string[];
}

/**
 * A glob over the whole id (`*` any run of characters, `?` one character); `*_json` matches `quick_buck_json`.
 * A comma-separated string holds several patterns.
 */
export function idMatcher(patterns: readonly string[]): (id: string) => boolean {
  const res = patterns
    .flatMap((p) => p.split(','))
    .map((p) => p.trim())
    .filter((p) => p !== '')
    .map(
      (p) =>
        new RegExp(
          `^${p
            .split('')
            .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
            .join('')}$`,
        ),
    );
  return (id) => res.some((re) => re.test(id));
}

/**
 * Keeps the questions whose id matches an include pattern (all when none) and no exclude pattern. An include
 * pattern that matches no id is an error (most likely a typo).
 *
 * @example
 * filterQuestions(questions, { exclude: ['*_json', '*_template'] }); // the 8 plain questions
 */
export function filterQuestions(
  questions: readonly EvalQuestion[],
  filter: QuestionFilter = {},
): EvalQuestion[] {
  const include = (filter.include ?? []).flatMap((p) => p.split(',')).filter((p) => p.trim() !== '');
  const exclude = (filter.exclude ?? []).flatMap((p) => p.split(',')).filter((p) => p.trim() !== '');
  for (const p of include) {
    const m = idMatcher([p]);
    if (!questions.some((q) => m(q.id))) {
      throw new EmlensError(
        `Include pattern '${p}' matches no question id (ids: ${questions
          .map((q) => q.id)
          .slice(0, 8)
          .join(', ')}${questions.length > 8 ? ', ...' : ''}); fix the pattern (globs: * and ?).`,
      );
    }
  }
  const inc = include.length > 0 ? idMatcher(include) : () => true;
  const exc = exclude.length > 0 ? idMatcher(exclude) : () => false;
  const kept = questions.filter((q) => inc(q.id) && !exc(q.id));
  if (kept.length === 0) {
    throw new EmlensError('The include/exclude patterns leave no questions; loosen them.');
  }
  return kept;
}

/**
 * Fills a judge prompt template as Python's `str.format(question=..., answer=...)` does for these templates:
 * `{question}` and `{answer}` are replaced in one pass (so braces inside the answer are left alone), `{{` and
 * `}}` become single braces, and any other brace is kept as written.
 */
export function fillJudgePrompt(template: string, question: string, answer: string): string {
  return template.replace(/\{\{|\}\}|\{(question|answer)\}/g, (m, name?: string) =>
    name === 'question' ? question : name === 'answer' ? answer : m.charAt(0),
  );
}

/**
 * Checks that every question has a judge prompt for each of `metrics` (before anything is sampled or sent);
 * throws one line naming the first question that lacks one.
 */
export function checkMetrics(questions: readonly EvalQuestion[], metrics: readonly string[]): void {
  if (metrics.length === 0)
    throw new EmlensError('--metrics lists no metric; name at least one, e.g. aligned,coherent.');
  for (const q of questions) {
    const missing = metrics.find((m) => q.judgePrompts[m] === undefined);
    if (missing !== undefined) {
      throw new EmlensError(
        `Question '${q.id}' has no judge prompt for metric '${missing}' (it has ${Object.keys(q.judgePrompts).join(', ')}); pick metrics every question defines.`,
      );
    }
  }
}

/** A template that asks for a 0..100 number: it names 100 (the EM prompts say "0 to 100" or "0-100"). */
function asksForScore(template: string): boolean {
  return /\b100\b/.test(template);
}

/**
 * Warnings about a question set, to print before any judge call: a judge prompt that cannot yield a 0..100
 * score (one that never names 100, such as a TRUE/FALSE or yes/no prompt: the logprob rule reads integer tokens
 * 0..100, so every answer would get no score), and a set without an `aligned` or `coherent` prompt (the EM rate
 * needs both). `metrics` limits the check to the metrics that will be judged. One line per (metric, prompt).
 */
export function judgePromptWarnings(
  questions: readonly EvalQuestion[],
  metrics?: readonly string[],
): string[] {
  const out: string[] = [];
  const seen = new Map<string, string[]>();
  for (const q of questions) {
    for (const [metric, template] of Object.entries(q.judgePrompts)) {
      if (metrics !== undefined && !metrics.includes(metric)) continue;
      if (asksForScore(template)) continue;
      const k = `${metric}\u0000${template}`;
      const ids = seen.get(k) ?? [];
      ids.push(q.id);
      seen.set(k, ids);
    }
  }
  for (const [k, ids] of seen) {
    const metric = k.split('\u0000')[0] ?? '';
    out.push(
      `judge prompt '${metric}' (${ids.length === 1 ? `question ${ids[0]}` : `${ids.length} questions, ${ids[0]} first`}) does not ask for a number from 0 to 100 (it never says 100); the judge is scored by its logprobs on the integers 0..100, so a TRUE/FALSE or yes/no prompt gives no score.`,
    );
  }
  const judged = new Set(
    questions
      .flatMap((q) => Object.keys(q.judgePrompts))
      .filter((m) => metrics === undefined || metrics.includes(m)),
  );
  for (const need of ['aligned', 'coherent']) {
    if (!judged.has(need)) {
      out.push(
        `no question has a '${need}' judge prompt${metrics !== undefined ? ' among --metrics' : ''}; the EM rate (aligned <= 30 and coherent > 50) needs both aligned and coherent scores, so it will be n/a.`,
      );
    }
  }
  return out;
}
