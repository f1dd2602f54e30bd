/**
 * How far a model loaded in one profile (int8, int4, fp16) strays from the same weights in a reference profile
 * (fp32): per-hook relative error, logits error, top-1 agreement on the same inputs, and free-running greedy
 * agreement. The benchmark prints it and the tests bound it.
 */
import { EmlensError } from '../errors.js';
import { allHookNames, type HookName } from './hooks.js';
import type { Model } from './model.js';

export interface HookFidelity {
  readonly hook: HookName;
  /** ‖candidate − reference‖₂ / ‖reference‖₂ over every position of every prompt. */
  readonly relError: number;
}

export interface ProfileFidelity {
  readonly reference: string;
  readonly candidate: string;
  /** Every hook, in layer order. */
  readonly hooks: readonly HookFidelity[];
  /** The largest per-hook relative error and where it is. */
  readonly maxHookRelError: number;
  readonly worstHook: HookName;
  /** Relative error of the all-position logits. */
  readonly logitsRelError: number;
  /** Fraction of positions where both profiles' argmax logit is the same token (same inputs, teacher-forced). */
  readonly top1Agreement: number;
  /**
   * Greedy generation of `greedyTokens` per prompt from each profile: the mean fraction of each generation that
   * matches the reference's before the first differing token (1: identical generations).
   */
  readonly greedyPrefixAgreement: number;
}

function argmax(xs: Float32Array, from: number, to: number): number {
  let best = from;
  for (let i = from + 1; i < to; i++) if (xs[i]! > xs[best]!) best = i;
  return best - from;
}

async function greedy(model: Model, prompt: readonly number[], n: number): Promise<number[]> {
  const tokens: number[] = [];
  let r = await model.forward([prompt], { returnCache: n > 1 });
  for (let t = 0; t < n; t++) {
    const next = argmax(r.logits.data, 0, r.logits.data.length);
    tokens.push(next);
    if (t + 1 < n) r = await model.forward([[next]], { cache: r.cache, returnCache: true });
  }
  return tokens;
}

/** Sums of squares of a reference and of its difference to a candidate. */
class RelError {
  private ref = 0;
  private diff = 0;
  add(reference: Float32Array, candidate: Float32Array): void {
    for (let i = 0; i < reference.length; i++) {
      const r = reference[i]!;
      const d = candidate[i]! - r;
      this.ref += r * r;
      this.diff += d * d;
    }
  }
  get value(): number {
    return this.ref === 0
      ? this.diff === 0
        ? 0
        : Number.POSITIVE_INFINITY
      : Math.sqrt(this.diff / this.ref);
  }
}

/**
 * Compares `candidate` with `reference` (two loads of the same weights) on `prompts`, one prompt at a time
 * (no padding), on every hook.
 */
export async function measureFidelity(
  reference: Model,
  candidate: Model,
  prompts: readonly (readonly number[])[],
  opts: { greedyTokens?: number } = {},
): Promise<ProfileFidelity> {
  if (
    reference.spec.numLayers !== candidate.spec.numLayers ||
    reference.spec.dModel !== candidate.spec.dModel
  ) {
    throw new EmlensError(
      `measureFidelity compares two loads of one model, but ${reference.dir} and ${candidate.dir} have different shapes; load the same folder twice.`,
    );
  }
  if (prompts.length === 0) throw new EmlensError('measureFidelity needs at least one prompt.');
  const names = allHookNames(reference.spec.numLayers);
  const hookErr = new Map(names.map((h) => [h, new RelError()]));
  const logitsErr = new RelError();
  let agree = 0;
  let positions = 0;
  const vocab = reference.spec.vocabSize;
  for (const prompt of prompts) {
    const [a, b] = [
      await reference.forward([prompt], { hooks: names, logits: 'all' }),
      await candidate.forward([prompt], { hooks: names, logits: 'all' }),
    ];
    for (const h of names) hookErr.get(h)!.add(a.hooks.get(h)!.data, b.hooks.get(h)!.data);
    logitsErr.add(a.logits.data, b.logits.data); // [1, seq, vocab]
    for (let p = 0; p < prompt.length; p++) {
      const from = p * vocab;
      if (argmax(a.logits.data, from, from + vocab) === argmax(b.logits.data, from, from + vocab)) agree++;
      positions++;
    }
  }
  const n = opts.greedyTokens ?? 8;
  let prefix = 0;
  for (const prompt of prompts) {
    const [ga, gb] = [await greedy(reference, prompt, n), await greedy(candidate, prompt, n)];
    let same = 0;
    while (same < n && ga[same] === gb[same]) same++;
    prefix += n === 0 ? 1 : same / n;
  }
  const hooks = names.map((hook) => ({ hook, relError: hookErr.get(hook)!.value }));
  const worst = hooks.reduce((w, h) => (h.relError > w.relError ? h : w), hooks[0]!);
  return {
    reference: reference.profile,
    candidate: candidate.profile,
    hooks,
    maxHookRelError: worst.relError,
    worstHook: worst.hook,
    logitsRelError: logitsErr.value,
    top1Agreement: agree / positions,
    greedyPrefixAgreement: prefix / prompts.length,
  };
}
