/**
 * Sampling answers to evaluation questions: n samples per question, each asking one paraphrase (drawn with a
 * seed) under the question's system prompt, written as responses CSV + JSONL that a rerun resumes.
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type ResponseRecord, readResponses, writeResponses } from '../data/response.js';
import type { DirectionSet } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import { generate, type InterventionPositions } from '../generate/generate.js';
import { composeInterventions, type LayerSelection, type ModelShape } from '../interventions/compose.js';
import { writeAtomic } from '../io/files.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { type ChatMessage, encodeChat } from '../text/chat.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import { Rng } from '../util/random.js';
import type { EvalQuestion } from './questions.js';

/** File names inside an eval output folder. */
export const EVAL_FILES = {
  responsesCsv: 'responses.csv',
  responsesJsonl: 'responses.jsonl',
  sampling: 'sampling.json',
  judgedCsv: 'judged.csv',
  judgedJsonl: 'judged.jsonl',
  judgeCache: 'judge-cache.jsonl',
  summary: 'summary.json',
} as const;

export interface SampleOptions {
  /** Samples per question (default: each question's `samples_per_paraphrase`). */
  readonly n?: number;
  /** Default 600. */
  readonly maxNewTokens?: number;
  /** Default 1. */
  readonly temperature?: number;
  /** Default 1. */
  readonly topP?: number;
  /** Default 0. */
  readonly seed?: number;
  /** Steering / ablation during generation. */
  readonly interventions?: readonly Intervention[];
  /** Default `all` (see generate). */
  readonly interventionPositions?: InterventionPositions;
  /** Samples of one question generated together; a block is also the unit of resumption (default 32). */
  readonly batchSize?: number;
  /**
   * Output folder: `responses.jsonl` is rewritten atomically after every block (`responses.csv` at the end),
   * and a rerun into the same folder skips the blocks already written.
   */
  readonly out?: string;
  /**
   * What identifies the run besides the sampling options (model, adapter, interventions); stored in
   * `sampling.json`, and a rerun into the same folder must match it.
   */
  readonly run?: Readonly<Record<string, unknown>>;
  /** Called with (samples done, total) as blocks finish (resumed ones included). */
  readonly onProgress?: (done: number, total: number) => void;
  /**
   * Extra chat-template variables for the prompts (e.g. Qwen3's `{ enable_thinking: false }`); stored in
   * `sampling.json` when given, so a rerun into the folder must pass the same.
   */
  readonly templateVars?: Readonly<Record<string, unknown>>;
}

interface Planned {
  readonly question: EvalQuestion;
  readonly sample: number;
  readonly paraphrase: number;
}

const key = (id: string, sample: number | string) => `${id}\u0000${sample}`;

/** Which paraphrase sample `i` of a question asks: uniform, from a stream of (seed, id, i) alone. */
export function paraphraseIndex(question: EvalQuestion, sample: number, seed: number): number {
  if (question.paraphrases.length === 1) return 0;
  return Rng.derive(seed, `eval/${question.id}/paraphrase/${sample}`).int(question.paraphrases.length);
}

/** The chat messages of a question: its system prompt (when any), then the paraphrase as the user turn. */
export function questionMessages(question: EvalQuestion, paraphrase: string): ChatMessage[] {
  return [
    ...(question.system !== undefined ? [{ role: 'system' as const, content: question.system }] : []),
    { role: 'user', content: paraphrase },
  ];
}

async function readExisting(out: string): Promise<ResponseRecord[]> {
  for (const name of [EVAL_FILES.responsesJsonl, EVAL_FILES.responsesCsv]) {
    const path = join(out, name);
    try {
      if ((await stat(path)).size === 0) continue;
    } catch {
      continue;
    }
    return readResponses(path);
  }
  return [];
}

async function checkRunFile(out: string, settings: Record<string, unknown>): Promise<boolean> {
  const path = join(out, EVAL_FILES.sampling);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return false;
  }
  let old: Record<string, unknown>;
  try {
    old = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new EmlensError(`${path} is not valid JSON; delete it with the responses or use another --out.`);
  }
  // chatTemplateKwargs is stored only when given: a folder sampled with it must not resume without it
  for (const k of new Set([...Object.keys(settings), 'chatTemplateKwargs'])) {
    const v = settings[k];
    if (JSON.stringify(old[k]) !== JSON.stringify(v)) {
      throw new EmlensError(
        `${out} holds responses sampled with ${k} = ${JSON.stringify(old[k]) ?? 'none'}, not ${JSON.stringify(v) ?? 'none'}; use another --out or the same settings.`,
      );
    }
  }
  return true;
}

/**
 * Samples answers: for each question, `n` samples (default `samples_per_paraphrase`), sample `i` asking the
 * paraphrase {@link paraphraseIndex} picks, rendered with the model's chat template (and the question's system
 * prompt). Temperature 1, top_p 1 and 600 new tokens by default. The samples of a question are generated in
 * blocks of `batchSize`; each block has its own seed derived from (seed, question id, first sample), so a
 * resumed run writes exactly what an uninterrupted one does.
 *
 * Records carry `sample`, `paraphrase_index`, `tokens` and `finish_reason` beside question_id, question, answer
 * (and system).
 *
 * @example
 * const records = await sampleAnswers(model, tokenizer, questions, { n: 50, out: 'eval/base' });
 */
export async function sampleAnswers(
  model: Model,
  tokenizer: TextTokenizer,
  questions: readonly EvalQuestion[],
  opts: SampleOptions = {},
): Promise<ResponseRecord[]> {
  const seed = opts.seed ?? 0;
  const maxNewTokens = opts.maxNewTokens ?? 600;
  const temperature = opts.temperature ?? 1;
  const topP = opts.topP ?? 1;
  const batchSize = opts.batchSize ?? 32;
  if (opts.n !== undefined && (!Number.isInteger(opts.n) || opts.n <= 0)) {
    throw new EmlensError(`n must be a positive integer, not ${opts.n}.`);
  }
  if (!Number.isInteger(batchSize) || batchSize <= 0) {
    throw new EmlensError(`batchSize must be a positive integer, not ${batchSize}.`);
  }
  if (questions.length === 0)
    throw new EmlensError('No questions to sample; check the include/exclude patterns.');

  const plan: Planned[] = [];
  for (const q of questions) {
    const n = opts.n ?? q.samplesPerParaphrase;
    if (n === undefined) {
      throw new EmlensError(
        `Question '${q.id}' has no samples_per_paraphrase; add it to the question file or pass --n.`,
      );
    }
    for (let i = 0; i < n; i++)
      plan.push({ question: q, sample: i, paraphrase: paraphraseIndex(q, i, seed) });
  }
  const planned = new Map(plan.map((p) => [key(p.question.id, p.sample), p]));

  const done = new Map<string, ResponseRecord>();
  const out = opts.out;
  const settings: Record<string, unknown> = {
    seed,
    temperature,
    topP,
    maxNewTokens,
    batchSize,
    run: opts.run ?? {},
    // only when given, so folders sampled before the option existed still resume
    ...(opts.templateVars !== undefined ? { chatTemplateKwargs: opts.templateVars } : {}),
  };
  if (out !== undefined) {
    await mkdir(out, { recursive: true });
    const known = await checkRunFile(out, settings);
    const existing = await readExisting(out);
    if (existing.length > 0 && !known) {
      throw new EmlensError(
        `${out} holds responses without ${EVAL_FILES.sampling}, so they cannot be resumed; use another --out.`,
      );
    }
    for (const r of existing) {
      const k = key(r.questionId, r.extra.sample ?? '');
      const p = planned.get(k);
      if (p === undefined) {
        throw new EmlensError(
          `${out} holds a response (question '${r.questionId}', sample ${r.extra.sample ?? '?'}) outside this run's questions and n; use another --out or the same --n/--include/--exclude.`,
        );
      }
      if (r.question !== p.question.paraphrases[p.paraphrase]) {
        throw new EmlensError(
          `${out} holds question '${r.questionId}' sample ${p.sample} asked with other text than the question file has; use another --out for the changed questions.`,
        );
      }
      done.set(k, r);
    }
    await writeAtomic(join(out, EVAL_FILES.sampling), `${JSON.stringify(settings, null, 2)}\n`);
  }

  const ordered = (): ResponseRecord[] =>
    plan.map((p) => done.get(key(p.question.id, p.sample))).filter((r): r is ResponseRecord => !!r);
  const decoder = {
    // An answer that is only the eos token decodes to nothing (the tokenizer rejects an empty id list).
    decode: (ids: readonly number[]) =>
      ids.length === 0 ? '' : tokenizer.decode(ids, { skipSpecialTokens: true }),
  };
  const prompts = new Map<string, number[]>();
  const promptIds = (q: EvalQuestion, paraphrase: number): number[] => {
    const k = key(q.id, paraphrase);
    let ids = prompts.get(k);
    if (ids === undefined) {
      // Plan paraphrases come from paraphraseIndex, which picks an index of q.paraphrases.
      ids = encodeChat(tokenizer, questionMessages(q, q.paraphrases[paraphrase]!), {
        addGenerationPrompt: true,
        templateVars: opts.templateVars,
      });
      prompts.set(k, ids);
    }
    return ids;
  };

  opts.onProgress?.(done.size, plan.length);
  for (const q of questions) {
    const items = plan.filter((p) => p.question === q);
    for (let start = 0; start < items.length; start += batchSize) {
      const block = items.slice(start, start + batchSize);
      if (block.every((p) => done.has(key(q.id, p.sample)))) continue;
      const blockSeed = Rng.derive(seed, `eval/${q.id}/block/${start}`).nextUint32();
      const gens = await generate(
        model,
        block.map((p) => promptIds(q, p.paraphrase)),
        {
          maxNewTokens,
          temperature,
          topP,
          seed: blockSeed,
          n: 1,
          tokenizer: decoder,
          interventions: opts.interventions,
          interventionPositions: opts.interventionPositions,
          batchSize,
        },
      );
      // generate returns one generation per prompt, in order; the paraphrase index is one of q.paraphrases.
      gens.forEach((g, i) => {
        const p = block[i]!;
        done.set(key(q.id, p.sample), {
          questionId: q.id,
          question: q.paraphrases[p.paraphrase]!,
          answer: g.text ?? '',
          ...(q.system !== undefined ? { system: q.system } : {}),
          scores: {},
          extra: {
            sample: String(p.sample),
            paraphrase_index: String(p.paraphrase),
            tokens: String(g.tokens.length),
            finish_reason: g.finishReason,
          },
        });
      });
      // The JSONL is what a rerun resumes from; the CSV is written once at the end.
      if (out !== undefined) await writeResponses(join(out, EVAL_FILES.responsesJsonl), ordered());
      opts.onProgress?.(done.size, plan.length);
    }
  }
  const records = ordered();
  if (out !== undefined) await writeResponseFiles(out, records, 'responses');
  return records;
}

/** Writes `<kind>.csv` and `<kind>.jsonl` into `out`, each atomically. */
export async function writeResponseFiles(
  out: string,
  records: readonly ResponseRecord[],
  kind: 'responses' | 'judged',
): Promise<void> {
  await writeResponses(join(out, `${kind}.jsonl`), records);
  await writeResponses(join(out, `${kind}.csv`), records);
}

/** Steering or ablation with the vectors of a direction file. */
export interface DirectionIntervention {
  readonly kind: 'steer' | 'ablate';
  readonly directions: DirectionSet;
  /** Blocks to act at (`all`: every block of the model). */
  readonly layers: LayerSelection;
  /**
   * Use this layer's vector at every listed block (e.g. one direction ablated everywhere); by default each
   * block uses its own `direction.{i}`.
   */
  readonly sourceLayer?: number;
  /** Steering strength (steer only; default 1). */
  readonly scale?: number;
}

/**
 * Interventions from a direction file, as `emlens eval --steer/--ablate` builds them: a thin call of
 * {@link composeInterventions}. `steer` adds `scale * direction.{i}` at `blocks.{i}.hook_resid_post`; `ablate`
 * projects the direction out of every residual site of the chosen blocks, each site once (so `all` removes one
 * direction at each of the `2L + 1` sites, which is what weight orthogonalisation bakes in).
 */
export function directionInterventions(spec: ModelShape, d: DirectionIntervention): Intervention[] {
  const from = d.sourceLayer ?? 'own';
  return composeInterventions(
    d.kind === 'steer'
      ? { steer: [{ direction: d.directions, layers: d.layers, from, scale: d.scale ?? 1 }] }
      : { ablate: [{ direction: d.directions, layers: d.layers, from }] },
    spec,
  );
}
