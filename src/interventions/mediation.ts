/**
 * Judge-free mediation metrics: how much of a finetune's change a direction carries, measured on next-token
 * distributions over answer tokens (no judge, no sampling).
 *
 * - `divergence`: the mean over scored positions of KL(A || B) between two models' (or one model's, with and
 *   without interventions) next-token distributions, from float64 log-softmax. A record's scored tokens are
 *   its answer tokens; token `p` is scored through the distribution at `p - 1` that predicts it.
 * - `mediation`: the fraction of KL(finetune || base) removed by ablating the direction in the finetune,
 *   `1 - KL(finetune+ablate || base) / KL(finetune || base)`; the same with the finetune's component along the
 *   direction set to the base's instead of zero (a patch: it removes the finetune's change along the direction
 *   but not the base's own use of it, which plain ablation also removes and counts as unexplained); the
 *   converse, the fraction closed by steering the base along it, `1 - KL(finetune || base+steer) /
 *   KL(finetune || base)`; the log-prob margin between misaligned and aligned reference answers under each
 *   condition; the side effects, KL(model+intervention || model) on neutral text; and all of it for a
 *   norm-matched random direction as a control.
 * - `steeringSweep`: the judge-free effect of steering over scale x layer, with the random control.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type DirectionSet, directionLayers, norm, normMatchedRandom } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import type { ResponseRecord } from '../eval/responses.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import type { Float32Tensor } from '../model/tensor.js';
import { lineChart } from '../plot/charts.js';
import { renderVegaLite, writeAtomic } from '../plot/render.js';
import { type AnswerSpan, answerTokens } from '../text/answerMask.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import {
  type AblateSpec,
  ablateInterventions,
  checkDirectionsFit,
  type LayerSelection,
  patchInterventions,
  type SourceLayers,
  selectLayers,
  siteDirections,
  steerInterventions,
} from './compose.js';

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
 * (`span`: see answerTokens). The label is the `label` column when present, else from the judge's `aligned`
 * score as the EM work splits it (<= 30 misaligned, > 70 aligned, coherent > 50 when scored).
 */
export function responsesToScored(
  tokenizer: TextTokenizer,
  responses: readonly ResponseRecord[],
  span: AnswerSpan = 'after-user',
): ScoredRecord[] {
  return responses.map((r, i) => {
    const t = answerTokens(tokenizer, { system: r.system, question: r.question, answer: r.answer }, { span });
    const label = labelOf(r);
    return { id: `${r.questionId}#${i}`, ids: t.ids, mask: t.answerMask, ...(label ? { label } : {}) };
  });
}

function labelOf(r: ResponseRecord): string | undefined {
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
  let raw: string;
  try {
    raw = await readFile(path, 'utf8');
  } catch {
    throw new EmlensError(`Cannot read neutral text file ${path}; check the path.`);
  }
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

interface Position {
  readonly b: number;
  /** Position (in the record) whose distribution is read. */
  readonly q: number;
  /** The token it predicts. */
  readonly token: number;
}

interface BatchLogits {
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
interface PlanCondition extends Condition {
  readonly name: string;
  /** Patch `source`'s component along each site's direction into this run (see patchInterventions). */
  readonly patch?: { readonly source: string; readonly sites: ReadonlyMap<string, readonly Float32Array[]> };
}

interface Plan {
  readonly conditions: readonly PlanCondition[];
  /** KL(a || b) pairs by condition name. */
  readonly pairs: readonly (readonly [string, string])[];
  /** Per-record mean log-prob of the scored tokens, for these conditions. */
  readonly logprobs: readonly string[];
}

interface PlanResult {
  /** `a||b` -> mean KL over scored positions. */
  readonly kl: Map<string, number>;
  /** condition -> per-record mean log-prob of scored tokens (NaN for a record with none). */
  readonly logprob: Map<string, Float64Array>;
  readonly positions: number;
}

function checkRecords(records: readonly ScoredRecord[], what: string): void {
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

function checkConditions(plan: Plan): void {
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

async function runLogits(
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

function offset(l: BatchLogits, p: Position): number {
  return (p.b * l.seq + l.padding[p.b] + p.q) * l.vocab;
}

/** KL(A || B) at one position, float64. */
function klAt(a: BatchLogits, b: BatchLogits, p: Position, k: number): number {
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

async function evaluatePlan(
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

export interface MediationOptions extends EvalOptions {
  readonly base: Model;
  readonly finetune: Model;
  readonly directions: DirectionSet;
  /** Prompt/response records (answer tokens scored; labels give the margins). */
  readonly records: readonly ScoredRecord[];
  /** Neutral text for the side effects (optional). */
  readonly neutral?: readonly ScoredRecord[];
  /** Layers whose residual sites lose the direction (default 'all'). */
  readonly layers?: LayerSelection;
  /** Which layer's vector is ablated at each site (default: each layer its own; one vector per site). */
  readonly from?: 'own' | number;
  /** The layer whose `hook_resid_post` the base is steered at (default: the middle layer of the set). */
  readonly steerLayer?: number;
  /** Steering scale on the stored (unnormalised) vector (default 1). */
  readonly steerScale?: number;
  /** Seed of the norm-matched random control (default 0). */
  readonly seed?: number;
  /** Short description of the direction for the report (e.g. its file). */
  readonly label?: string;
  /** Below this KL(finetune || base) (nats per token, default 1e-3) the fractions are NaN: nothing to mediate. */
  readonly minDivergence?: number;
}

export interface MediationMargins {
  readonly base: number;
  readonly finetune: number;
  readonly finetuneAblated: number;
  readonly finetuneRandomAblated: number;
  readonly finetunePatched: number;
  readonly baseSteered: number;
  readonly baseRandomSteered: number;
}

export interface SideEffects {
  /** Scored neutral positions. */
  readonly positions: number;
  /** KL(base+ablate || base). */
  readonly ablateBase: number;
  readonly randomAblateBase: number;
  /** KL(finetune+ablate || finetune). */
  readonly ablateFinetune: number;
  readonly randomAblateFinetune: number;
  /** KL(base+steer || base). */
  readonly steerBase: number;
  readonly randomSteerBase: number;
}

export interface MediationReport {
  readonly direction: string;
  readonly records: number;
  readonly positions: number;
  readonly ablate: { readonly layers: readonly number[]; readonly from: SourceLayers };
  readonly steer: { readonly layer: number; readonly scale: number; readonly norm: number };
  readonly seed: number;
  /** Fractions are NaN (n/a) when KL(finetune || base) is below this: there is nothing to mediate. */
  readonly minDivergence: number;
  /** Mean KL over answer positions, nats per token. */
  readonly kl: {
    /** KL(finetune || base): what there is to explain. */
    readonly finetuneBase: number;
    /** KL(finetune+ablate || base). */
    readonly ablatedBase: number;
    readonly randomAblatedBase: number;
    /** KL(finetune+patch || base): the finetune with its component along the direction set to the base's. */
    readonly patchedBase: number;
    readonly randomPatchedBase: number;
    /** KL(base+ablate || base): what the ablation does to the base itself on these records. */
    readonly baseAblatedBase: number;
    readonly baseRandomAblatedBase: number;
    /** KL(finetune || base+steer). */
    readonly finetuneSteered: number;
    readonly finetuneRandomSteered: number;
  };
  /** 1 - KL(finetune+ablate || base) / KL(finetune || base). */
  readonly fractionMediated: number;
  readonly randomFractionMediated: number;
  /**
   * 1 - KL(finetune+patch || base) / KL(finetune || base), where the patch sets the finetune's component along
   * the direction, at every ablated site and token, to the base's (an interchange intervention): it removes the
   * finetune's change along the direction without removing the base's own use of it, which plain ablation
   * also removes (`kl.baseAblatedBase`).
   */
  readonly patchedFractionMediated: number;
  readonly randomPatchedFractionMediated: number;
  /** 1 - KL(finetune || base+steer) / KL(finetune || base). */
  readonly steeringClosed: number;
  readonly randomSteeringClosed: number;
  readonly margins: MediationMargins | null;
  readonly sideEffects: SideEffects | null;
}

/** The middle layer the set holds (steering default). */
function middleLayer(set: DirectionSet): number {
  const layers = directionLayers(set);
  return layers[Math.floor((layers.length - 1) / 2)];
}

/**
 * How much of the finetune's divergence from the base a direction mediates, with a norm-matched random
 * direction as a control (see the module comment for the definitions).
 *
 * @example
 * const r = await mediation({ base, finetune, directions, records });
 * r.fractionMediated; // e.g. 0.97
 * r.randomFractionMediated; // e.g. 0.01
 */
export async function mediation(opts: MediationOptions): Promise<MediationReport> {
  const { base, finetune, directions } = opts;
  const spec = base.spec;
  if (finetune.spec.dModel !== spec.dModel || finetune.spec.numLayers !== spec.numLayers) {
    throw new EmlensError(
      'The finetune and the base have different shapes; load the finetune as the base plus its adapter.',
    );
  }
  checkDirectionsFit(directions, spec);
  checkRecords(opts.records, 'prompt/response');
  if (opts.neutral) checkRecords(opts.neutral, 'neutral');
  const seed = opts.seed ?? 0;
  const random = normMatchedRandom(directions, seed);
  const layers = selectLayers(opts.layers ?? 'all', spec.numLayers);
  const from = opts.from ?? 'own';
  const ablateSpec: AblateSpec = { layers, from };
  const ablate = ablateInterventions(directions, spec, ablateSpec);
  const ablateRandom = ablateInterventions(random, spec, ablateSpec);
  const patchSites = siteDirections(directions, spec, ablateSpec);
  const randomPatchSites = siteDirections(random, spec, ablateSpec);
  const steerLayer = opts.steerLayer ?? middleLayer(directions);
  const steerScale = opts.steerScale ?? 1;
  const steerSpec = { layers: [steerLayer], scale: steerScale };
  const steer = steerInterventions(directions, spec, steerSpec);
  const steerRandom = steerInterventions(random, spec, steerSpec);

  const conditions = [
    { name: 'base', model: base },
    { name: 'finetune', model: finetune },
    { name: 'finetune+ablate', model: finetune, interventions: ablate },
    { name: 'finetune+random-ablate', model: finetune, interventions: ablateRandom },
    { name: 'finetune+patch', model: finetune, patch: { source: 'base', sites: patchSites } },
    { name: 'finetune+random-patch', model: finetune, patch: { source: 'base', sites: randomPatchSites } },
    { name: 'base+ablate', model: base, interventions: ablate },
    { name: 'base+random-ablate', model: base, interventions: ablateRandom },
    { name: 'base+steer', model: base, interventions: steer },
    { name: 'base+random-steer', model: base, interventions: steerRandom },
  ];
  const main = await evaluatePlan(
    {
      conditions,
      pairs: [
        ['finetune', 'base'],
        ['finetune+ablate', 'base'],
        ['finetune+random-ablate', 'base'],
        ['finetune+patch', 'base'],
        ['finetune+random-patch', 'base'],
        ['base+ablate', 'base'],
        ['base+random-ablate', 'base'],
        ['finetune', 'base+steer'],
        ['finetune', 'base+random-steer'],
      ],
      logprobs: [
        'base',
        'finetune',
        'finetune+ablate',
        'finetune+random-ablate',
        'finetune+patch',
        'base+steer',
        'base+random-steer',
      ],
    },
    opts.records,
    { batchSize: opts.batchSize, onProgress: opts.onProgress },
  );
  const kl = (a: string, b: string) => main.kl.get(`${a}||${b}`)!;
  const total = kl('finetune', 'base');
  const minDivergence = opts.minDivergence ?? 1e-3;
  const fraction = (rest: number) => (total >= minDivergence ? 1 - rest / total : Number.NaN);

  const margin = (name: string) => logprobMargin(main.logprob.get(name)!, opts.records);
  const baseMargin = margin('base');
  const margins: MediationMargins | null =
    baseMargin === null
      ? null
      : {
          base: baseMargin,
          finetune: margin('finetune')!,
          finetuneAblated: margin('finetune+ablate')!,
          finetuneRandomAblated: margin('finetune+random-ablate')!,
          finetunePatched: margin('finetune+patch')!,
          baseSteered: margin('base+steer')!,
          baseRandomSteered: margin('base+random-steer')!,
        };

  let sideEffects: SideEffects | null = null;
  if (opts.neutral) {
    const side = await evaluatePlan(
      {
        conditions: [
          { name: 'base', model: base },
          { name: 'base+ablate', model: base, interventions: ablate },
          { name: 'base+random-ablate', model: base, interventions: ablateRandom },
          { name: 'base+steer', model: base, interventions: steer },
          { name: 'base+random-steer', model: base, interventions: steerRandom },
          { name: 'finetune', model: finetune },
          { name: 'finetune+ablate', model: finetune, interventions: ablate },
          { name: 'finetune+random-ablate', model: finetune, interventions: ablateRandom },
        ],
        pairs: [
          ['base+ablate', 'base'],
          ['base+random-ablate', 'base'],
          ['base+steer', 'base'],
          ['base+random-steer', 'base'],
          ['finetune+ablate', 'finetune'],
          ['finetune+random-ablate', 'finetune'],
        ],
        logprobs: [],
      },
      opts.neutral,
      { batchSize: opts.batchSize },
    );
    const s = (a: string, b: string) => side.kl.get(`${a}||${b}`)!;
    sideEffects = {
      positions: side.positions,
      ablateBase: s('base+ablate', 'base'),
      randomAblateBase: s('base+random-ablate', 'base'),
      ablateFinetune: s('finetune+ablate', 'finetune'),
      randomAblateFinetune: s('finetune+random-ablate', 'finetune'),
      steerBase: s('base+steer', 'base'),
      randomSteerBase: s('base+random-steer', 'base'),
    };
  }

  const v = directions.vectors.get(steerLayer)!;
  return {
    direction: opts.label ?? `${directions.meta.method} (${directions.meta.model})`,
    records: opts.records.length,
    positions: main.positions,
    ablate: { layers, from },
    steer: { layer: steerLayer, scale: steerScale, norm: norm(v) },
    seed,
    minDivergence,
    kl: {
      finetuneBase: total,
      ablatedBase: kl('finetune+ablate', 'base'),
      randomAblatedBase: kl('finetune+random-ablate', 'base'),
      patchedBase: kl('finetune+patch', 'base'),
      randomPatchedBase: kl('finetune+random-patch', 'base'),
      baseAblatedBase: kl('base+ablate', 'base'),
      baseRandomAblatedBase: kl('base+random-ablate', 'base'),
      finetuneSteered: kl('finetune', 'base+steer'),
      finetuneRandomSteered: kl('finetune', 'base+random-steer'),
    },
    fractionMediated: fraction(kl('finetune+ablate', 'base')),
    randomFractionMediated: fraction(kl('finetune+random-ablate', 'base')),
    patchedFractionMediated: fraction(kl('finetune+patch', 'base')),
    randomPatchedFractionMediated: fraction(kl('finetune+random-patch', 'base')),
    steeringClosed: fraction(kl('finetune', 'base+steer')),
    randomSteeringClosed: fraction(kl('finetune', 'base+random-steer')),
    margins,
    sideEffects,
  };
}

const f = (x: number | null | undefined, digits = 4) =>
  x === null || x === undefined || Number.isNaN(x) ? 'n/a' : x.toFixed(digits);
const pct = (x: number) => (Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);

function describeFrom(from: SourceLayers): string {
  return from === 'own' ? "each layer's own vector" : `the vector of layer ${[from].flat().join(', ')}`;
}

/** The report as lines of plain text (what `emlens mediate` prints). */
export function formatMediation(r: MediationReport): string[] {
  const k = r.kl;
  const lines = [
    `direction: ${r.direction}`,
    `records: ${r.records} (${r.positions} answer positions); ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)})`,
    `KL(finetune || base) = ${f(k.finetuneBase)} nats/token${k.finetuneBase < r.minDivergence ? ' (below the minimum: nothing to mediate)' : ''}`,
    `fraction mediated, ablating in the finetune: ${pct(r.fractionMediated)}   random control: ${pct(r.randomFractionMediated)}`,
    `  KL(finetune+ablate || base) = ${f(k.ablatedBase)} (random ${f(k.randomAblatedBase)}); the ablation alone moves the base by KL ${f(k.baseAblatedBase)} (random ${f(k.baseRandomAblatedBase)})`,
    `fraction mediated, patching the base's component into the finetune: ${pct(r.patchedFractionMediated)}   random control: ${pct(r.randomPatchedFractionMediated)}`,
    `  KL(finetune+patch || base) = ${f(k.patchedBase)} (random ${f(k.randomPatchedBase)})`,
    `steering the base (blocks.${r.steer.layer}.hook_resid_post, scale ${r.steer.scale}, |v| = ${f(r.steer.norm, 3)}): closes ${pct(r.steeringClosed)} of the divergence   random control: ${pct(r.randomSteeringClosed)}`,
    `  KL(finetune || base+steer) = ${f(k.finetuneSteered)} (random ${f(k.finetuneRandomSteered)})`,
  ];
  if (r.margins) {
    const m = r.margins;
    lines.push(
      'misaligned - aligned log-prob margin (nats/token):',
      `  base ${f(m.base, 3)}, finetune ${f(m.finetune, 3)}, finetune+ablate ${f(m.finetuneAblated, 3)} (random ${f(m.finetuneRandomAblated, 3)}), finetune+patch ${f(m.finetunePatched, 3)}, base+steer ${f(m.baseSteered, 3)} (random ${f(m.baseRandomSteered, 3)})`,
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    lines.push(
      `side effects on neutral text (KL to the unmodified model, ${s.positions} positions):`,
      `  ablate in base ${f(s.ablateBase)} (random ${f(s.randomAblateBase)}), ablate in finetune ${f(s.ablateFinetune)} (random ${f(s.randomAblateFinetune)}), steer base ${f(s.steerBase)} (random ${f(s.randomSteerBase)})`,
    );
  }
  return lines;
}

/**
 * The report as rows of (metric, direction, random control), as text: the one table the markdown file and the
 * HTML report both show.
 */
export function mediationRows(r: MediationReport): [string, string, string][] {
  const k = r.kl;
  const rows: [string, string, string][] = [
    ['KL(finetune ‖ base)', f(k.finetuneBase), ''],
    ['fraction mediated (ablate in finetune)', pct(r.fractionMediated), pct(r.randomFractionMediated)],
    ['KL(finetune+ablate ‖ base)', f(k.ablatedBase), f(k.randomAblatedBase)],
    ['KL(base+ablate ‖ base)', f(k.baseAblatedBase), f(k.baseRandomAblatedBase)],
    [
      'fraction mediated (patch base component)',
      pct(r.patchedFractionMediated),
      pct(r.randomPatchedFractionMediated),
    ],
    ['KL(finetune+patch ‖ base)', f(k.patchedBase), f(k.randomPatchedBase)],
    ['fraction closed (steer the base)', pct(r.steeringClosed), pct(r.randomSteeringClosed)],
    ['KL(finetune ‖ base+steer)', f(k.finetuneSteered), f(k.finetuneRandomSteered)],
  ];
  if (r.margins) {
    const m = r.margins;
    rows.push(
      ['margin: base', f(m.base, 3), ''],
      ['margin: finetune', f(m.finetune, 3), ''],
      ['margin: finetune+ablate', f(m.finetuneAblated, 3), f(m.finetuneRandomAblated, 3)],
      ['margin: finetune+patch', f(m.finetunePatched, 3), ''],
      ['margin: base+steer', f(m.baseSteered, 3), f(m.baseRandomSteered, 3)],
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    rows.push(
      ['side effect: ablate in base', f(s.ablateBase), f(s.randomAblateBase)],
      ['side effect: ablate in finetune', f(s.ablateFinetune), f(s.randomAblateFinetune)],
      ['side effect: steer base', f(s.steerBase), f(s.randomSteerBase)],
    );
  }
  return rows;
}

/** The report as a markdown table. */
export function mediationMarkdown(r: MediationReport): string {
  const rows = mediationRows(r);
  return [
    `# Mediation: ${r.direction}`,
    '',
    `${r.records} records, ${r.positions} answer positions. Ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)}); the base steered at blocks.${r.steer.layer}.hook_resid_post with scale ${r.steer.scale}. Control: a norm-matched random direction (seed ${r.seed}). KL in nats per answer token; margins are mean log p(misaligned answer) - mean log p(aligned answer) per token; side effects are KL(model+intervention ‖ model) on neutral text.`,
    '',
    '| metric | direction | random control |',
    '| --- | ---: | ---: |',
    ...rows.map(([a, b, c]) => `| ${a} | ${b} | ${c} |`),
    '',
  ].join('\n');
}

/** Writes `mediation.json` and `mediation.md` into `outDir`. */
export async function writeMediation(
  r: MediationReport,
  outDir: string,
): Promise<{ readonly json: string; readonly markdown: string }> {
  await mkdir(outDir, { recursive: true });
  const json = join(outDir, 'mediation.json');
  const markdown = join(outDir, 'mediation.md');
  await writeAtomic(json, `${JSON.stringify(r, null, 2)}\n`);
  await writeAtomic(markdown, mediationMarkdown(r));
  return { json, markdown };
}

// ---------------------------------------------------------------------------------------------------------
// Steering sweep

export interface SweepOptions extends EvalOptions {
  readonly model: Model;
  /** A model to steer toward (e.g. the finetune): adds KL(target || model+steer) to each row. */
  readonly target?: Model;
  readonly directions: DirectionSet;
  readonly layers: LayerSelection;
  readonly scales: readonly number[];
  readonly records: readonly ScoredRecord[];
  /** Neutral text: adds the side effect KL(model+steer || model) to each row. */
  readonly neutral?: readonly ScoredRecord[];
  /** Steer by the unit vector (scales in residual units) instead of the stored vector. */
  readonly unit?: boolean;
  readonly seed?: number;
}

export interface SweepRow {
  readonly layer: number;
  readonly scale: number;
  /** `direction`, or `random` for the norm-matched control. */
  readonly vector: 'direction' | 'random';
  /** Misaligned - aligned log-prob margin (null without labels). */
  readonly margin: number | null;
  /** KL(target || model+steer) (null without a target). */
  readonly klToTarget: number | null;
  /** KL(model+steer || model) on neutral text (null without it). */
  readonly sideEffect: number | null;
}

export interface SweepResult {
  readonly rows: readonly SweepRow[];
  /** The unsteered model's margin and KL to the target. */
  readonly baseline: { readonly margin: number | null; readonly klToTarget: number | null };
  /** The target's own margin (null without target or labels). */
  readonly targetMargin: number | null;
  readonly seed: number;
  readonly unit: boolean;
}

/**
 * Steers `model` at `blocks.L.hook_resid_post` by `scale * v_L` for every layer x scale (and the same with a
 * norm-matched random vector), and measures the judge-free effect: the misaligned-vs-aligned log-prob margin,
 * KL to a target model, and the side effect on neutral text.
 */
export async function steeringSweep(opts: SweepOptions): Promise<SweepResult> {
  const { model, directions } = opts;
  const spec = model.spec;
  checkDirectionsFit(directions, spec);
  checkRecords(opts.records, 'prompt/response');
  if (opts.neutral) checkRecords(opts.neutral, 'neutral');
  if (opts.scales.length === 0 || opts.scales.some((s) => !Number.isFinite(s))) {
    throw new EmlensError('The sweep needs a list of finite scales; pass e.g. 0,2,4,8.');
  }
  const layers = selectLayers(opts.layers, spec.numLayers);
  const seed = opts.seed ?? 0;
  const random = normMatchedRandom(directions, seed);
  const unit = opts.unit ?? false;
  const cells: {
    name: string;
    layer: number;
    scale: number;
    vector: 'direction' | 'random';
    ivs: Intervention[];
  }[] = [];
  for (const layer of layers) {
    for (const scale of opts.scales) {
      for (const [vector, set] of [
        ['direction', directions],
        ['random', random],
      ] as const) {
        const ivs = scale === 0 ? [] : steerInterventions(set, spec, { layers: [layer], scale, unit });
        cells.push({ name: `${vector}/${layer}/${scale}`, layer, scale, vector, ivs });
      }
    }
  }
  const steered = cells.filter((c) => c.ivs.length > 0);
  const nameOf = (c: (typeof cells)[number]) => (c.ivs.length === 0 ? 'model' : c.name);
  const conditions: (Condition & { name: string })[] = [
    ...(opts.target ? [{ name: 'target', model: opts.target }] : []),
    { name: 'model', model },
    ...steered.map((c) => ({ name: c.name, model, interventions: c.ivs })),
  ];
  const pairs: [string, string][] = opts.target ? conditions.slice(1).map((c) => ['target', c.name]) : [];
  const main = await evaluatePlan(
    { conditions, pairs, logprobs: conditions.map((c) => c.name) },
    opts.records,
    { batchSize: opts.batchSize, onProgress: opts.onProgress },
  );
  let side: PlanResult | null = null;
  if (opts.neutral) {
    side = await evaluatePlan(
      {
        conditions: [
          { name: 'model', model },
          ...steered.map((c) => ({ name: c.name, model, interventions: c.ivs })),
        ],
        pairs: steered.map((c) => [c.name, 'model'] as const),
        logprobs: [],
      },
      opts.neutral,
      { batchSize: opts.batchSize },
    );
  }
  const margin = (name: string) => logprobMargin(main.logprob.get(name)!, opts.records);
  const klTo = (name: string) => (opts.target ? main.kl.get(`target||${name}`)! : null);
  const rows: SweepRow[] = cells.map((c) => ({
    layer: c.layer,
    scale: c.scale,
    vector: c.vector,
    margin: margin(nameOf(c)),
    klToTarget: klTo(nameOf(c)),
    sideEffect: side === null ? null : c.ivs.length === 0 ? 0 : side.kl.get(`${c.name}||model`)!,
  }));
  return {
    rows,
    baseline: { margin: margin('model'), klToTarget: klTo('model') },
    targetMargin: opts.target ? margin('target') : null,
    seed,
    unit,
  };
}

/** The sweep as a markdown table (one row per layer x scale, direction and random side by side). */
export function sweepMarkdown(r: SweepResult, title = 'Steering sweep'): string {
  const byKey = new Map(r.rows.map((row) => [`${row.vector}/${row.layer}/${row.scale}`, row]));
  const lines = [
    `# ${title}`,
    '',
    `Steering at blocks.L.hook_resid_post by scale x ${r.unit ? 'the unit vector' : 'the stored vector'} of layer L; control: a norm-matched random vector (seed ${r.seed}). Margin: mean log p(misaligned answer) - mean log p(aligned answer) per token. Unsteered margin ${f(r.baseline.margin, 3)}${r.targetMargin !== null ? `, target's margin ${f(r.targetMargin, 3)}` : ''}${r.baseline.klToTarget !== null ? `, unsteered KL(target ‖ model) ${f(r.baseline.klToTarget)}` : ''}.`,
    '',
    '| layer | scale | margin | margin (random) | KL(target ‖ steered) | KL (random) | side effect | side effect (random) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const row of r.rows) {
    if (row.vector !== 'direction') continue;
    const rnd = byKey.get(`random/${row.layer}/${row.scale}`);
    lines.push(
      `| ${row.layer} | ${row.scale} | ${f(row.margin, 3)} | ${f(rnd?.margin, 3)} | ${f(row.klToTarget)} | ${f(rnd?.klToTarget)} | ${f(row.sideEffect)} | ${f(rnd?.sideEffect)} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Writes `sweep.json`, `sweep.md` and the plots (effect vs scale, one line per layer, dashed-free random
 * control as its own series): `sweep-margin.{svg,png}`, and `sweep-kl.{svg,png}` with a target.
 */
export async function writeSweep(
  r: SweepResult,
  outDir: string,
  title = 'Steering sweep',
): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
  const written = [join(outDir, 'sweep.json'), join(outDir, 'sweep.md')];
  await writeAtomic(written[0], `${JSON.stringify(r, null, 2)}\n`);
  await writeAtomic(written[1], sweepMarkdown(r, title));
  const series = (row: SweepRow) => `layer ${row.layer}${row.vector === 'random' ? ' (random)' : ''}`;
  const plot = async (field: 'margin' | 'klToTarget', file: string, yTitle: string) => {
    const data = r.rows
      .filter((row) => row[field] !== null)
      .map((row) => ({ scale: row.scale, value: row[field] as number, series: series(row) }));
    if (data.length === 0) return;
    const out = await renderVegaLite(
      lineChart(data, {
        x: 'scale',
        y: 'value',
        series: 'series',
        title: `${title}: ${yTitle} vs steering scale`,
        xTitle: 'steering scale',
        yTitle,
        seriesTitle: 'steered at',
      }),
      join(outDir, file),
    );
    written.push(out.svg, out.png);
  };
  await plot('margin', 'sweep-margin', 'misaligned - aligned log-prob margin');
  await plot('klToTarget', 'sweep-kl', 'KL(target || steered)');
  return written;
}
