/**
 * Scoring records under conditions: next-token distributions over answer tokens (float64 log-softmax), the KL
 * divergence between two conditions, and log-prob margins. The building blocks of mediation and sweeps.
 */

import { EmlensError } from '../errors.js';
import type { ResponseRecord } from '../eval/responses.js';
import { readUserFile } from '../io/inputFiles.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import type { Float32Tensor } from '../model/tensor.js';
import { type AnswerMaskOptions, type AnswerSpan, answerTokens } from '../text/answerMask.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import { patchInterventions } from './compose.js';

/** A token sequence and the tokens that are scored (its answer), with an optional label. */
export interface ScoredRecord {
  readonly id: string;
  readonly ids: readonly number[];
  /** 1 on scored tokens (as long as `ids`); token p is scored through the distribution at p - 1. */
  readonly mask: Uint8Array;
  /** `misaligned` or `aligned` for the margin; anything else (or none) leaves the record out of it. */
  readonly label?: string;
}

/** A model and the interventions it runs with (they must act at every position). */
export interface Condition {
  readonly model: Model;
  readonly interventions?: readonly Intervention[];
}

export interface EvalOptions {
  /** Records per forward pass (default 8). */
  readonly batchSize?: number;
  /** Called after each batch with records done and the total. */
  readonly onProgress?: (done: number, total: number) => void;
}

// ---------------------------------------------------------------------------------------------------------
// Records

/**
 * Scored records from responses: each rendered with the model's chat template, its answer tokens scored
 * (`span`: see answerTokens; or the answer-mask options, span and chat-template variables). The label is the `label` column when present, else from the judge's `aligned`
 * score as the EM work splits it (<= 30 misaligned, > 70 aligned, coherent > 50 when scored).
 */
export function responsesToScored(
  tokenizer: TextTokenizer,
  responses: readonly ResponseRecord[],
  span: AnswerSpan | AnswerMaskOptions = 'after-user',
): ScoredRecord[] {
  const opts: AnswerMaskOptions = typeof span === 'string' ? { span } : span;
  return responses.map((r, i) => {
    const t = answerTokens(tokenizer, { system: r.system, question: r.question, answer: r.answer }, opts);
    const label = labelOf(r);
    return { id: `${r.questionId}#${i}`, ids: t.ids, mask: t.answerMask, ...(label ? { label } : {}) };
  });
}

export function labelOf(r: ResponseRecord): string | undefined {
  const given = r.extra.label;
  if (given === 'misaligned' || given === 'aligned') return given;
  const a = r.scores.aligned;
  const c = r.scores.coherent;
  if (a === null || a === undefined || (c !== undefined && (c === null || c <= 50))) return undefined;
  return a <= 30 ? 'misaligned' : a > 70 ? 'aligned' : undefined;
}

/** Plain texts as scored records: every token after the first is scored. */
export function textsToScored(tokenizer: TextTokenizer, texts: readonly string[]): ScoredRecord[] {
  return texts.map((text, i) => {
    const ids = tokenizer.encode(text);
    return { id: `text#${i}`, ids, mask: new Uint8Array(ids.length).fill(1) };
  });
}

/** Reads neutral text: JSONL of `{"text": ...}` (the organisms' responses/neutral.jsonl) or plain lines. */
export async function readNeutralTexts(path: string): Promise<string[]> {
  const raw = await readUserFile(path, 'Neutral text file');
  const lines = raw
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const texts = lines.map((line, i) => {
    if (!path.endsWith('.jsonl') && !line.startsWith('{')) return line;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new EmlensError(
        `${path} line ${i + 1} is not valid JSON (${(e as Error).message}); fix that line.`,
      );
    }
    const text = (obj as { text?: unknown } | null)?.text;
    if (typeof text !== 'string' || text.trim() === '') {
      throw new EmlensError(
        `${path} line ${i + 1} has no "text" string; write each line as {"text": "..."}.`,
      );
    }
    return text;
  });
  if (texts.length === 0) throw new EmlensError(`${path} holds no text; add lines of {"text": "..."}.`);
  return texts;
}

// ---------------------------------------------------------------------------------------------------------
// The evaluation engine: every condition's logits on one batch, KL pairs and log-probs from them.

export interface Position {
  readonly b: number;
  /** Position (in the record) whose distribution is read. */
  readonly q: number;
  /** The token it predicts. */
  readonly token: number;
}

export interface BatchLogits {
  readonly data: Float32Array;
  readonly seq: number;
  readonly vocab: number;
  readonly padding: readonly number[];
  /** log-sum-exp of each position's logits, float64. */
  readonly lse: Float64Array;
  /** Hooks fetched for conditions that patch from this one. */
  readonly hooks: ReadonlyMap<string, Float32Tensor>;
}

/** A condition of a plan: a model, fixed interventions, or a patch from an earlier condition's run. */
export interface PlanCondition extends Condition {
  readonly name: string;
  /** Patch `source`'s component along each site's direction into this run (see patchInterventions). */
  readonly patch?: { readonly source: string; readonly sites: ReadonlyMap<string, readonly Float32Array[]> };
}

export interface Plan {
  readonly conditions: readonly PlanCondition[];
  /** KL(a || b) pairs by condition name. */
  readonly pairs: readonly (readonly [string, string])[];
  /** Per-record mean log-prob of the scored tokens, for these conditions. */
  readonly logprobs: readonly string[];
}

export interface PlanResult {
  /** `a||b` -> mean KL over scored positions. */
  readonly kl: Map<string, number>;
  /** condition -> per-record mean log-prob of scored tokens (NaN for a record with none). */
  readonly logprob: Map<string, Float64Array>;
  readonly positions: number;
}

export function checkRecords(records: readonly ScoredRecord[], what: string): void {
  if (records.length === 0) throw new EmlensError(`No ${what} records were given; pass at least one.`);
  let scored = 0;
  records.forEach((r, i) => {
    if (r.mask.length !== r.ids.length) {
      throw new EmlensError(
        `Record ${r.id ?? i} has ${r.ids.length} ids but a mask of ${r.mask.length}; build both with answerTokens.`,
      );
    }
    for (let p = 1; p < r.ids.length; p++) if (r.mask[p]) scored++;
  });
  if (scored === 0) {
    throw new EmlensError(
      `The ${what} records have no scored tokens after the first; give answers with tokens.`,
    );
  }
}

export function checkConditions(plan: Plan): void {
  const vocab = plan.conditions[0]?.model.spec.vocabSize;
  for (const c of plan.conditions) {
    if (c.model.spec.vocabSize !== vocab) {
      throw new EmlensError(
        `The models compared have vocabularies of ${vocab} and ${c.model.spec.vocabSize} tokens; compare models that share a tokenizer.`,
      );
    }
    for (const iv of c.interventions ?? []) {
      if (iv.positions !== undefined && iv.positions !== 'all') {
        throw new EmlensError(
          'Interventions scored over a record set must act at every position; leave their positions unset.',
        );
      }
    }
  }
}

export async function runLogits(
  model: Model,
  interventions: readonly Intervention[],
  hooks: readonly string[],
  rows: readonly (readonly number[])[],
  pos: readonly Position[],
) {
  const r = await model.forward(rows, {
    logits: 'all',
    ...(interventions.length > 0 ? { interventions } : {}),
    ...(hooks.length > 0 ? { hooks } : {}),
  });
  const [, seq, vocab] = r.logits.dims;
  const data = r.logits.data;
  const lse = new Float64Array(pos.length);
  pos.forEach((p, k) => {
    const at = (p.b * seq + r.padding[p.b] + p.q) * vocab;
    let max = Number.NEGATIVE_INFINITY;
    for (let v = 0; v < vocab; v++) if (data[at + v] > max) max = data[at + v];
    let s = 0;
    for (let v = 0; v < vocab; v++) s += Math.exp(data[at + v] - max);
    lse[k] = max + Math.log(s);
  });
  return { data, seq, vocab, padding: r.padding, lse, hooks: r.hooks } satisfies BatchLogits;
}

export function offset(l: BatchLogits, p: Position): number {
  return (p.b * l.seq + l.padding[p.b] + p.q) * l.vocab;
}

/** KL(A || B) at one position, float64. */
export function klAt(a: BatchLogits, b: BatchLogits, p: Position, k: number): number {
  const oa = offset(a, p);
  const ob = offset(b, p);
  const la = a.lse[k];
  const lb = b.lse[k];
  let kl = 0;
  for (let v = 0; v < a.vocab; v++) {
    const lpa = a.data[oa + v] - la;
    kl += Math.exp(lpa) * (lpa - (b.data[ob + v] - lb));
  }
  return Math.max(0, kl);
}

export async function evaluatePlan(
  plan: Plan,
  records: readonly ScoredRecord[],
  opts: EvalOptions,
): Promise<PlanResult> {
  checkConditions(plan);
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new EmlensError(`Batch size ${batchSize} is not a positive integer; pass one.`);
  }
  const index = new Map(plan.conditions.map((c, i) => [c.name, i]));
  for (const [a, b] of plan.pairs) {
    for (const n of [a, b]) if (!index.has(n)) throw new Error(`evaluatePlan: unknown condition ${n}`);
  }
  const patchHooks = new Map<string, Set<string>>();
  plan.conditions.forEach((c, i) => {
    if (!c.patch) return;
    const j = index.get(c.patch.source);
    if (j === undefined || j >= i) throw new Error(`evaluatePlan: ${c.name} patches from a later condition`);
    const set = patchHooks.get(c.patch.source) ?? new Set<string>();
    for (const h of c.patch.sites.keys()) set.add(h);
    patchHooks.set(c.patch.source, set);
  });
  // A condition's logits are dropped once every pair, log-prob and patch that needs them is done.
  const lastUse = plan.conditions.map((c, i) =>
    Math.max(
      i,
      ...plan.pairs.filter((p) => p.includes(c.name)).map(([a, b]) => Math.max(index.get(a)!, index.get(b)!)),
      ...plan.conditions.flatMap((d, k) => (d.patch?.source === c.name ? [k] : [])),
    ),
  );
  const klSum = new Map(plan.pairs.map(([a, b]) => [`${a}||${b}`, 0]));
  const logprob = new Map(plan.logprobs.map((n) => [n, new Float64Array(records.length)]));
  let positions = 0;
  for (let start = 0; start < records.length; start += batchSize) {
    const batch = records.slice(start, start + batchSize);
    const pos: Position[] = [];
    batch.forEach((r, b) => {
      for (let p = 1; p < r.ids.length; p++) if (r.mask[p]) pos.push({ b, q: p - 1, token: r.ids[p] });
    });
    positions += pos.length;
    const rows = batch.map((r) => r.ids);
    const held = new Map<number, BatchLogits>();
    for (let i = 0; i < plan.conditions.length; i++) {
      const c = plan.conditions[i];
      const ivs = c.patch
        ? [
            ...(c.interventions ?? []),
            ...patchInterventions(c.patch.sites, held.get(index.get(c.patch.source)!)!.hooks),
          ]
        : (c.interventions ?? []);
      const l = await runLogits(c.model, ivs, [...(patchHooks.get(c.name) ?? [])], rows, pos);
      held.set(i, l);
      const lp = logprob.get(c.name);
      if (lp) {
        const sums = new Float64Array(batch.length);
        const counts = new Float64Array(batch.length);
        pos.forEach((p, k) => {
          sums[p.b] += l.data[offset(l, p) + p.token] - l.lse[k];
          counts[p.b]++;
        });
        for (let b = 0; b < batch.length; b++)
          lp[start + b] = counts[b] > 0 ? sums[b] / counts[b] : Number.NaN;
      }
      for (const [a, bName] of plan.pairs) {
        const ia = index.get(a)!;
        const ib = index.get(bName)!;
        if (Math.max(ia, ib) !== i) continue;
        const la = held.get(ia)!;
        const lb = held.get(ib)!;
        let s = 0;
        pos.forEach((p, k) => {
          s += klAt(la, lb, p, k);
        });
        const key = `${a}||${bName}`;
        klSum.set(key, klSum.get(key)! + s);
      }
      for (const [j] of held) if (lastUse[j] <= i) held.delete(j);
    }
    opts.onProgress?.(Math.min(records.length, start + batchSize), records.length);
  }
  const kl = new Map([...klSum].map(([k, s]) => [k, s / positions]));
  return { kl, logprob, positions };
}

// ---------------------------------------------------------------------------------------------------------
// Divergence

export interface DivergenceOptions extends EvalOptions {
  readonly interventionsA?: readonly Intervention[];
  readonly interventionsB?: readonly Intervention[];
}

export interface DivergenceResult {
  /** Mean KL(A || B) over scored positions, in nats. */
  readonly kl: number;
  /** Scored positions it averages over. */
  readonly positions: number;
}

/**
 * Mean over the records' scored positions of KL(A || B) between next-token distributions (float64
 * log-softmax). `modelA` and `modelB` may be the same model with different interventions.
 *
 * @example
 * const { kl } = await divergence(finetune, base, records); // how far the finetune moved
 */
export async function divergence(
  modelA: Model,
  modelB: Model,
  records: readonly ScoredRecord[],
  opts: DivergenceOptions = {},
): Promise<DivergenceResult> {
  checkRecords(records, 'scored');
  const r = await evaluatePlan(
    {
      conditions: [
        { name: 'A', model: modelA, interventions: opts.interventionsA },
        { name: 'B', model: modelB, interventions: opts.interventionsB },
      ],
      pairs: [['A', 'B']],
      logprobs: [],
    },
    records,
    opts,
  );
  return { kl: r.kl.get('A||B')!, positions: r.positions };
}

/**
 * The misaligned-vs-aligned log-prob margin: mean over misaligned records of their mean log-prob per scored
 * token, minus the same over aligned records; null without both labels.
 */
export function logprobMargin(perRecord: Float64Array, records: readonly ScoredRecord[]): number | null {
  const mean = (label: string) => {
    let s = 0;
    let n = 0;
    records.forEach((r, i) => {
      if (r.label === label && Number.isFinite(perRecord[i])) {
        s += perRecord[i];
        n++;
      }
    });
    return n > 0 ? s / n : null;
  };
  const m = mean('misaligned');
  const a = mean('aligned');
  return m === null || a === null ? null : m - a;
}

// ---------------------------------------------------------------------------------------------------------
// Mediation
