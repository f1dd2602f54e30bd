/**
 * One evaluation run end to end: sample answers (resumable), judge them, summarise. What `emlens eval` does.
 */
import { basename, join, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { claimResumableFolder } from '../io/outputs.js';
import { readConfig } from '../model/config.js';
import type { Intervention } from '../model/interventions.js';
import { type LoadModelOptions, loadModel } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import {
  createJudge,
  type Judge,
  judgeResponses,
  type LocalJudgeOptions,
  OpenAIJudge,
} from './judge/index.js';
import { type EvalSummary, summarize } from './metrics.js';
import {
  checkMetrics,
  type EvalQuestion,
  filterQuestions,
  judgePromptWarnings,
  loadQuestions,
  type QuestionFilter,
} from './questions.js';
import { questionSlice } from './report.js';
import { EVAL_FILES, type SampleOptions, sampleAnswers, writeResponseFiles } from './sample.js';

export interface RunEvalOptions {
  /** The evaluated model folder. */
  readonly model: string;
  /** How to load it (`adapter`, device, threads, cacheDir, ...). */
  readonly load?: LoadModelOptions;
  /** A question file, or questions already loaded. */
  readonly questions: string | readonly EvalQuestion[];
  readonly filter?: QuestionFilter;
  /** Evaluate only slice `index` of `count` of the (filtered) questions; join the slices with mergeEvalFolders. */
  readonly shard?: { readonly index: number; readonly count: number };
  /** `local:DIR`, the base URL of an OpenAI-compatible endpoint, or a Judge. */
  readonly judge: string | Judge;
  /** Model name for a URL judge (default: the question file's `judge`). */
  readonly judgeModel?: string;
  /** Environment variable holding a URL judge's API key. */
  readonly apiKeyEnv?: string;
  /** Loading options of a local judge. */
  readonly judgeLoad?: LocalJudgeOptions;
  /** Output folder: responses, judged responses, judge cache, summary.json. */
  readonly out: string;
  /** Name of the condition in reports (default: the adapter's or the model's folder name). */
  readonly condition?: string;
  /** Sampling options (n, maxNewTokens, seed, temperature, topP, batchSize). */
  readonly sampling?: Omit<SampleOptions, 'out' | 'run' | 'onProgress' | 'interventions'>;
  readonly interventions?: readonly Intervention[];
  /** Describes the interventions (file, layers, scale) for summary.json and the resume check. */
  readonly interventionInfo?: Readonly<Record<string, unknown>>;
  /** Judge only these metrics (default: every metric of each question's judge_prompts). */
  readonly metrics?: readonly string[];
  /** Judge calls in flight at once (default 8 for a URL judge; judgeResponses' 32 bounds the rest). */
  readonly judgeConcurrency?: number;
  /**
   * Check a URL judge with one cheap call before sampling (key, reachability, model, logprobs; see
   * OpenAIJudge.probe). Default true.
   */
  readonly checkJudge?: boolean;
  /** Warnings found before any call (judge prompts that cannot give a 0..100 score, no aligned metric). */
  readonly onWarning?: (message: string) => void;
  /** Progress of each phase. */
  readonly onProgress?: (phase: 'sample' | 'judge', done: number, total: number) => void;
}

/**
 * The URL judges of a question set: one per judge model name (`judgeModel`, else each question's `judge`),
 * sharing one cache file. A question without a judge model (and no `judgeModel`) is an error.
 */
export async function urlJudges(
  spec: string,
  questions: readonly EvalQuestion[],
  opts: {
    readonly judgeModel?: string;
    readonly apiKeyEnv?: string;
    readonly cachePath: string;
    readonly concurrency?: number;
  },
): Promise<{ judges: Judge[]; judgeFor: (q: EvalQuestion) => Judge }> {
  const nameOf = (q: EvalQuestion): string => {
    const name = opts.judgeModel ?? q.judge;
    if (name === undefined) {
      throw new EmlensError(
        `Question '${q.id}' names no judge model; add judge: to the question file or pass --judge-model.`,
      );
    }
    return name;
  };
  const byName = new Map<string, Judge>();
  for (const name of new Set(questions.map(nameOf))) {
    byName.set(
      name,
      await createJudge(spec, {
        model: name,
        apiKeyEnv: opts.apiKeyEnv,
        cachePath: opts.cachePath,
        ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
      }),
    );
  }
  return {
    judges: [...byName.values()],
    judgeFor: (q) => {
      const j = byName.get(nameOf(q));
      if (j === undefined) throw new EmlensError(`No judge for question '${q.id}'.`);
      return j;
    },
  };
}

/**
 * The default condition name: the adapter's (or model's) folder name, then the intervention and the direction
 * file it used, and `(random control)` when that file is a random control: `general + ablation general-dir`,
 * `base + steering random-0 (random control)`.
 */
export function defaultCondition(modelOrAdapter: string, info?: Readonly<Record<string, unknown>>): string {
  const base = basename(resolve(modelOrAdapter));
  if (!info?.kind) return base;
  const file =
    typeof info.file === 'string' ? ` ${basename(info.file).replace(/\.(safetensors|gguf)$/i, '')}` : '';
  return `${base} + ${String(info.kind)}${file}${info.randomControl === true ? ' (random control)' : ''}`;
}

/**
 * Samples answers to the questions with the model (see sampleAnswers), judges every answer on every metric of
 * its question, and writes `responses.{csv,jsonl}`, `judged.{csv,jsonl}` and `summary.json` into `out`.
 * A URL judge keeps `judge-cache.jsonl` there, so a rerun pays for nothing twice.
 *
 * @example
 * const s = await runEval({ model: 'base', load: { adapter: 'adapters/general' }, questions: 'q.yaml',
 *   judge: 'local:judge', out: 'eval/general', sampling: { n: 20 } });
 * s.emRate.value;
 */
export async function runEval(opts: RunEvalOptions): Promise<EvalSummary> {
  // A rerun into its own folder resumes by design; any other non-empty folder is the user's and is refused.
  await claimResumableFolder(opts.out, Object.values(EVAL_FILES), { what: 'an emlens eval folder' });
  const all = typeof opts.questions === 'string' ? await loadQuestions(opts.questions) : opts.questions;
  const filtered = filterQuestions(all, opts.filter);
  const questions = opts.shard ? questionSlice(filtered, opts.shard.index, opts.shard.count) : filtered;
  if (opts.metrics !== undefined) checkMetrics(questions, opts.metrics);
  for (const w of judgePromptWarnings(questions, opts.metrics)) opts.onWarning?.(w);
  const adapter = opts.load?.adapter;
  const condition = opts.condition ?? defaultCondition(adapter ?? opts.model, opts.interventionInfo);
  const runInfo = {
    model: resolve(opts.model),
    adapter: adapter === undefined ? null : resolve(adapter),
    interventions: opts.interventionInfo ?? null,
  };

  // URL judges are set up (URL, API key) before sampling, so a bad judge spec fails before the slow part; a
  // local judge model is loaded after the evaluated model is released.
  const judges: Judge[] = [];
  let judgeFor: Judge | ((q: EvalQuestion) => Judge) | undefined;
  const local = typeof opts.judge === 'string' && opts.judge.startsWith('local:');
  if (typeof opts.judge !== 'string') {
    judgeFor = opts.judge;
  } else if (local) {
    await readConfig(opts.judge.slice('local:'.length) || '.');
  } else {
    // One judge per model name: --judge-model, else the model each question names.
    const u = await urlJudges(opts.judge, questions, {
      judgeModel: opts.judgeModel,
      apiKeyEnv: opts.apiKeyEnv,
      cachePath: join(opts.out, EVAL_FILES.judgeCache),
      concurrency: opts.judgeConcurrency,
    });
    judges.push(...u.judges);
    // Before the model is loaded and anything sampled: a bad key or a server without logprobs fails now.
    if (opts.checkJudge ?? true) {
      for (const j of u.judges) if (j instanceof OpenAIJudge) await j.probe();
    }
    judgeFor = u.judgeFor;
  }

  const tokenizer = await loadTokenizer(opts.model);
  const model = await loadModel(opts.model, opts.load);
  let responses: Awaited<ReturnType<typeof sampleAnswers>>;
  try {
    responses = await sampleAnswers(model, tokenizer, questions, {
      ...opts.sampling,
      interventions: opts.interventions,
      out: opts.out,
      run: runInfo,
      onProgress: (d, t) => opts.onProgress?.('sample', d, t),
    });
  } finally {
    await model.dispose();
  }

  if (judgeFor === undefined) {
    const j = await createJudge(opts.judge as string, { local: opts.judgeLoad });
    judges.push(j);
    judgeFor = j;
  }
  let judged: Awaited<ReturnType<typeof judgeResponses>>;
  try {
    judged = await judgeResponses(responses, questions, judgeFor, {
      ...(opts.metrics !== undefined ? { metrics: opts.metrics } : {}),
      ...(opts.judgeConcurrency !== undefined ? { concurrency: opts.judgeConcurrency } : {}),
      onProgress: (d, t) => opts.onProgress?.('judge', d, t),
    });
  } finally {
    for (const j of judges) await j.close?.();
  }
  await writeResponseFiles(opts.out, judged, 'judged');

  const judgeName =
    typeof opts.judge === 'string' && !opts.judge.startsWith('local:')
      ? { url: opts.judge, models: judges.map((j) => j.name) }
      : { name: typeof opts.judge === 'string' ? opts.judge : opts.judge.name };
  const summary = summarize(judged, condition, {
    run: {
      ...runInfo,
      questions: typeof opts.questions === 'string' ? resolve(opts.questions) : null,
      questionIds: questions.map((q) => q.id),
      judge: judgeName,
      sampling: {
        n: opts.sampling?.n ?? null,
        maxNewTokens: opts.sampling?.maxNewTokens ?? 600,
        temperature: opts.sampling?.temperature ?? 1,
        topP: opts.sampling?.topP ?? 1,
        seed: opts.sampling?.seed ?? 0,
        ...(opts.sampling?.templateVars !== undefined
          ? { chatTemplateKwargs: opts.sampling.templateVars }
          : {}),
      },
    },
  });
  await writeAtomic(join(opts.out, EVAL_FILES.summary), `${JSON.stringify(summary, null, 2)}\n`);
  return summary;
}
