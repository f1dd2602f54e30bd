/**
 * The batched decode that `generate` and the server share: a left-padded prefill through the KV cache, then
 * one token per row per call, with the interventions placed by an {@link InterventionPositions} policy. What to
 * sample, and when a row ends, is the caller's.
 */
import { EmlensError } from '../errors.js';
import type { HookName, HookSelector } from '../model/hooks.js';
import type { Intervention, PositionWeights } from '../model/interventions.js';
import { type Model, releaseCache } from '../model/model.js';
import { DecodeBuffers } from '../model/outputBuffers.js';
import type { Float32Tensor } from '../model/tensor.js';

/**
 * Which tokens the interventions act on.
 *
 * - `all`: every position of every call (prompt and generated tokens).
 * - `prompt`: the prompt's tokens only (the prefill); decode steps run without interventions. The generated
 *   tokens still see the intervened prompt through the KV cache.
 * - `generated`: the positions holding generated tokens only, i.e. every token fed back in a decode step; the
 *   prefill runs without interventions. As with Hugging Face forward hooks that act only when one new token is
 *   fed, the first new token (read off the prompt's last position) is therefore not affected; from the second
 *   on, every token is produced by a forward pass on an intervened position.
 *
 * `prompt` and `generated` partition `all`: applying both equals `all`.
 */
export type InterventionPositions = 'all' | 'prompt' | 'generated';

/**
 * Called with each call's last-position logits (`[batch, vocab]`, overwritten by the next call: copy what you
 * keep) and the hooks asked for in {@link DecodeLoopOptions.hooks} (`[batch, seq, d_model]`: the whole padded
 * prompt for the prefill, `seq` 1 for a decode step, whose position holds the token each row was fed): returns
 * the token each row feeds next, or `null` for a row that has finished (it is fed padding from then on, so the
 * batch stays rectangular and its output frozen); `done` ends the loop.
 */
export type DecodeStep = (
  logits: Float32Array,
  hooks: ReadonlyMap<HookName, Float32Tensor>,
) => Promise<{ readonly next: readonly (number | null)[]; readonly done: boolean }>;

export interface DecodeLoopOptions {
  /** The most tokens `step` will ask for: lets the loop size its cache buffers once. */
  readonly maxNewTokens?: number;
  /** Hooks every call returns to `step` (none by default): the server's per-token monitor reads them. */
  readonly hooks?: readonly HookSelector[];
}

/**
 * Runs `prompts` (token ids, one row each) through prefill and decode steps until `step` says done. The logits
 * and the KV cache go into buffers reused from step to step (see {@link DecodeBuffers}).
 */
export async function decodeLoop(
  model: Model,
  prompts: readonly (readonly number[])[],
  interventions: readonly Intervention[],
  policy: InterventionPositions,
  step: DecodeStep,
  opts: DecodeLoopOptions = {},
): Promise<DecodeStats> {
  for (const iv of interventions) {
    if ((iv as { kind: string }).kind === 'patch') {
      throw new EmlensError(
        'Activation patches apply to forward and trace, not to generation (a patch needs values for tokens not yet generated); run the patched prompt with forward({ returnCache: true }) and continue from its cache.',
      );
    }
  }
  const at = (positions: PositionWeights): Intervention[] =>
    interventions.map((iv) => ({ ...iv, positions }));
  const on = interventions.length > 0;
  const seq = Math.max(...prompts.map((p) => p.length)); // left-padded prompt length
  let prefill: Intervention[] | undefined;
  if (on && policy === 'all') prefill = at('all');
  if (on && policy === 'prompt') {
    const mask = new Float32Array(prompts.length * seq); // [batch, seq]: 1 on real prompt tokens
    prompts.forEach((p, b) => {
      mask.fill(1, b * seq + seq - p.length, (b + 1) * seq);
    });
    prefill = at(mask);
  }
  const decode = on && policy !== 'prompt' ? at('all') : undefined;
  const pad = model.spec.padTokenId ?? model.spec.eosTokenIds[0] ?? 0;

  const capacity = opts.maxNewTokens === undefined ? undefined : seq + opts.maxNewTokens;
  const buffers = new DecodeBuffers(
    model.spec,
    model.profile === 'fp16',
    prompts.length,
    capacity,
    model.maxPositions,
    !model.deviceCache,
  );
  const hooks = opts.hooks !== undefined && opts.hooks.length > 0 ? opts.hooks : undefined;
  let r = await model.forward(prompts, {
    hooks,
    returnCache: true,
    interventions: prefill,
    into: buffers.next(seq),
  });
  const prefillHostBytes = r.hostBytes;
  let steps = 0;
  let stepHostBytes = 0;
  let maxStepHostBytes = 0;
  for (;;) {
    const { next, done } = await step(r.logits.data, r.hooks);
    if (done) {
      if (model.deviceCache) releaseCache(r.cache!);
      return { prefillHostBytes, steps, stepHostBytes, maxStepHostBytes };
    }
    const cache = r.cache!; // every forward here passes returnCache: true
    r = await model.forward(
      next.map((t) => [t ?? pad]),
      { cache, hooks, returnCache: true, interventions: decode, into: buffers.next(cache.length + 1) },
    );
    // the device buffers of a step's input cache are not read again: free them now rather than at collection
    if (model.deviceCache) releaseCache(cache);
    steps++;
    stepHostBytes += r.hostBytes;
    maxStepHostBytes = Math.max(maxStepHostBytes, r.hostBytes);
  }
}

/**
 * Bytes a decode loop's calls copied into host memory (logits, hooks asked for, and the KV cache unless it stays
 * on the device: see `ForwardResult.hostBytes`).
 */
export interface DecodeStats {
  /** The prefill's. */
  readonly prefillHostBytes: number;
  /** Decode steps run (calls after the prefill). */
  readonly steps: number;
  /** Summed over the decode steps. */
  readonly stepHostBytes: number;
  /** The largest of one decode step. */
  readonly maxStepHostBytes: number;
}

/** Where the first of `stops` begins in `text` (the earliest), or -1. */
export function firstStop(text: string, stops: readonly string[]): number {
  let cut = -1;
  for (const s of stops) {
    const at = text.indexOf(s);
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  return cut;
}
