import { claimOutputFile } from '../io/outputs.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { HookName, HookSelector } from './hooks.js';
import type { Model } from './model.js';
import type { Float32Tensor } from './tensor.js';

/** One sequence's hook values per token, its ids and its last-position logits. */
export interface Trace {
  readonly ids: readonly number[];
  /** Each `[pos, d_model]`. */
  readonly hooks: ReadonlyMap<HookName, Float32Tensor>;
  readonly logits: Float32Tensor; // [vocab]
}

/** Runs one token sequence and keeps the requested hooks per token. */
export async function traceTokens(
  model: Model,
  ids: readonly number[],
  hooks: readonly HookSelector[],
): Promise<Trace> {
  const r = await model.forward([ids], { hooks });
  const perToken = new Map<HookName, Float32Tensor>();
  for (const [name, t] of r.hooks)
    perToken.set(name, { data: t.data, dims: [ids.length, model.spec.dModel] });
  return { ids, hooks: perToken, logits: { data: r.logits.data, dims: [model.spec.vocabSize] } };
}

/**
 * Writes a trace as safetensors that Python's `safetensors.torch.load_file` reads: one F32 tensor per hook
 * (named by hook), `input_ids` (I64 `[pos]`) and `logits` (F32 `[vocab]`, last position). Refuses an
 * existing file unless `overwrite`; the write is atomic (temp file + rename), so even replacing the weights of
 * the model just traced never leaves a half-written file.
 */
export async function writeTrace(
  path: string,
  trace: Trace,
  metadata: Record<string, string>,
  opts: { readonly overwrite?: boolean } = {},
): Promise<void> {
  await claimOutputFile(path, { overwrite: opts.overwrite });
  const tensors: Record<string, { dtype: 'F32' | 'I64'; shape: readonly number[]; data: ArrayBufferView }> = {
    input_ids: { dtype: 'I64', shape: [trace.ids.length], data: BigInt64Array.from(trace.ids.map(BigInt)) },
    logits: { dtype: 'F32', shape: trace.logits.dims, data: trace.logits.data },
  };
  for (const [name, t] of trace.hooks) tensors[name] = { dtype: 'F32', shape: t.dims, data: t.data };
  await writeSafetensors(path, tensors, metadata);
}
