/**
 * One ONNX graph per batch shape: the decoder forward (forward.ts), the losses, and the backward of the total
 * loss with respect to the parameters. Losses:
 *
 * - `ce`: -Σ w_i log p(target_i | prefix), with host-normalised weights (Σ w = 1): the mean next-token NLL
 *   over the weighted positions (answer tokens, or every token);
 * - `kl`: Σ u_i KL(p_base,i || p_i) over positions weighted by u (Σ u = 1), the base log-probs given as an input;
 * - `loss` = ce + kl_scale · kl.
 */

import type { ModelSpec } from '../model/spec.js';
import { emitDecoder, GRAD_IO } from './forward.js';
import type { ParamSpec } from './params.js';
import { type FloatType, Tape, type Val } from './tape.js';

export const LOSS_IO = {
  targets: 'targets',
  ceWeights: 'ce_weights',
  klWeights: 'kl_weights',
  baseLogProbs: 'base_logprobs',
  klScale: 'kl_scale',
  loss: 'loss',
  ce: 'ce',
  kl: 'kl',
  logProbs: 'logprobs',
  grad: (param: string) => `grad.${param}`,
} as const;

export interface GradGraphOptions {
  readonly batch: number;
  readonly seq: number;
  readonly dtype: FloatType;
  readonly params: ParamSpec;
  /** Include the KL term (and its base log-probs input). */
  readonly kl: boolean;
  /** `grad`: losses and gradients; `logprobs`: the forward's log-softmax only (base log-probs for the KL). */
  readonly mode: 'grad' | 'logprobs';
}

export interface GradGraph {
  readonly bytes: Uint8Array;
  /** Parameter input names and shapes. */
  readonly params: readonly { readonly name: string; readonly shape: readonly number[] }[];
}

export function buildGradGraph(spec: ModelSpec, o: GradGraphOptions): GradGraph {
  const t = new Tape('emlens-grad', o.dtype);
  const { batch: B, seq: S } = o;
  const V = spec.vocabSize;
  const { logits, params } = emitDecoder(t, spec, B, S, o.mode === 'grad' ? o.params : {});
  const logp = t.logSoftmax(logits); // [B, S, V]
  if (o.mode === 'logprobs') {
    t.output(logp, LOSS_IO.logProbs, [B, S, V]);
    return { bytes: t.encode(), params: [] };
  }
  const targets = t.intInput(LOSS_IO.targets, [B, S, 1]);
  const ceW = t.input(LOSS_IO.ceWeights, [B, S, 1]);
  const all = [0, 1, 2];
  const ce = t.neg(t.reduceSum(t.mul(t.pickLast(logp, targets), ceW), all, false)); // []
  let loss: Val = ce;
  if (o.kl) {
    const base = t.input(LOSS_IO.baseLogProbs, [B, S, V]);
    const klW = t.input(LOSS_IO.klWeights, [B, S, 1]);
    const scale = t.input(LOSS_IO.klScale, []);
    // Σ_v p_base (log p_base - log p), per position, weighted
    const perPos = t.reduceSum(t.mul(t.exp(base), t.sub(base, logp)), [2], true); // [B, S, 1]
    const kl = t.reduceSum(t.mul(perPos, klW), all, false);
    t.output(kl, LOSS_IO.kl, []);
    loss = t.add(ce, t.mul(kl, scale));
  }
  t.output(ce, LOSS_IO.ce, []);
  const grads = t.backward(
    loss,
    params.map((p) => p.val),
  );
  t.output(loss, LOSS_IO.loss, []);
  params.forEach((p, i) => {
    t.output(grads[i]!, LOSS_IO.grad(p.name), p.val.shape);
  });
  return { bytes: t.encode(), params: params.map((p) => ({ name: p.name, shape: p.val.shape })) };
}

export { GRAD_IO };
