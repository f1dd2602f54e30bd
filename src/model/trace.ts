import { EmlensError } from '../errors.js';
import { claimOutputFile } from '../io/outputs.js';
import { writeSafetensors } from '../io/safetensors.js';
import { type ChatMessage, encodeChat } from '../text/chat.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import type { HookName, HookSelector } from './hooks.js';
import type { ForwardIntervention } from './interventions.js';
import type { ForwardResult, Model } from './model.js';
import type { Float32Tensor } from './tensor.js';
import { tensorView, type View } from './views.js';

/** One sequence: a conversation (rendered with the model's chat template), raw text, or token ids. */
export type TraceSequence = string | readonly ChatMessage[] | readonly number[];
/** One sequence or a batch of them (rows may mix kinds and lengths: they are left-padded). */
export type TraceInput = TraceSequence | readonly TraceSequence[];

/** How `trace` and `toTokens` turn text into token ids. */
export interface EncodeOptions {
  /**
   * Conversations: append the header that opens the assistant's turn (transformers' `add_generation_prompt`);
   * default false, so the conversation is traced as written.
   */
  readonly addGenerationPrompt?: boolean;
  /** Conversations: extra chat-template variables (e.g. `{ enable_thinking: false }`). */
  readonly templateVars?: Readonly<Record<string, unknown>>;
  /** Raw text: add BOS etc. as the tokenizer's post-processor says (default true, as transformers). */
  readonly addSpecialTokens?: boolean;
}

export interface TraceOptions extends EncodeOptions {
  /** Hook names or patterns to cache (`blocks.*.hook_resid_post`); none by default. */
  readonly hooks?: readonly HookSelector[];
  /** Steering, ablation and activation patches (`[batch, seq]` positions include left padding). */
  readonly interventions?: readonly ForwardIntervention[];
  /** `last` (default): logits `[batch, vocab]`; `all`: `[batch, pos, vocab]`. */
  readonly logits?: 'last' | 'all';
}

/** What `model.trace` returns. */
export interface TraceResult {
  /** Token ids of each row as run (unpadded). */
  readonly tokens: readonly (readonly number[])[];
  /** Left padding of each row: hook views and `logits: 'all'` have `padding[b]` leading pad positions. */
  readonly padding: readonly number[];
  /** `[batch, vocab]` (last position) or `[batch, pos, vocab]`, a view of the forward pass's buffer. */
  readonly logits: View;
  /** The cached hooks, each a `[batch, pos, d_model]` view. */
  readonly cache: ActivationCache;
  /** The underlying forward result (`Float32Tensor`s over the same buffers). */
  readonly result: ForwardResult;
}

/**
 * Hook values of one traced batch by hook name, as TransformerLens' `ActivationCache`: `get` gives a
 * `[batch, pos, d_model]` ndarray view over the buffer onnxruntime returned (no copy), so
 * `cache.get(h).pick(b, p)` is one token's residual vector.
 */
export class ActivationCache implements Iterable<[HookName, View]> {
  private readonly views = new Map<HookName, View>();

  constructor(private readonly tensors: ReadonlyMap<HookName, Float32Tensor>) {}

  /** The `[batch, pos, d_model]` view of a cached hook; an uncached name is an error naming the cached ones. */
  get(hook: HookName): View {
    let v = this.views.get(hook);
    if (v) return v;
    const t = this.tensors.get(hook);
    if (!t) {
      const held = [...this.tensors.keys()];
      throw new EmlensError(
        held.length === 0
          ? `The trace cached no hooks, so it has no '${hook}'; pass hooks: ['${hook}'] to trace.`
          : `The trace did not cache '${hook}'; it holds ${held.join(', ')} (pass the hooks you need to trace).`,
      );
    }
    v = tensorView(t);
    this.views.set(hook, v);
    return v;
  }

  /** The hook as a dense `Float32Tensor` (the same buffer as its view). */
  tensor(hook: HookName): Float32Tensor {
    this.get(hook);
    return this.tensors.get(hook)!; // get() stored it, or threw
  }

  has(hook: HookName): boolean {
    return this.tensors.has(hook);
  }

  /** Cached hook names, in model order. */
  keys(): HookName[] {
    return [...this.tensors.keys()];
  }

  get size(): number {
    return this.tensors.size;
  }

  *[Symbol.iterator](): Iterator<[HookName, View]> {
    for (const k of this.tensors.keys()) yield [k, this.get(k)];
  }
}

function isSequence(x: unknown): x is TraceSequence {
  if (typeof x === 'string') return true;
  if (!Array.isArray(x) || x.length === 0) return false;
  const first = x[0];
  return typeof first === 'number' || (typeof first === 'object' && first !== null && !Array.isArray(first));
}

/** The rows of an input: one sequence, or each sequence of a batch. */
function rowsOf(input: TraceInput): TraceSequence[] {
  if (Array.isArray(input) && input.length === 0) {
    throw new EmlensError(
      'trace was given an empty list; pass text, chat messages, token ids or a batch of them.',
    );
  }
  if (isSequence(input)) return [input];
  const rows = input as readonly unknown[];
  rows.forEach((r, i) => {
    if (!isSequence(r)) {
      throw new EmlensError(
        `Row ${i} of the batch is ${Array.isArray(r) ? 'an empty list' : typeof r}; give each row as text, chat messages or token ids.`,
      );
    }
  });
  return rows as TraceSequence[];
}

/** Token ids of every row of `input`, encoding text with the model's tokenizer only when some row is text. */
export async function encodeInput(
  input: TraceInput,
  tokenizer: () => Promise<TextTokenizer>,
  opts: EncodeOptions = {},
): Promise<number[][]> {
  const rows = rowsOf(input);
  const needs = rows.some((r) => typeof r === 'string' || typeof r[0] === 'object');
  const tok = needs ? await tokenizer() : null;
  // tok! below: text and chat rows are exactly the rows that set `needs`
  return rows.map((r) => {
    if (typeof r === 'string') return tok!.encode(r, { addSpecialTokens: opts.addSpecialTokens ?? true });
    if (typeof r[0] === 'number') return [...(r as readonly number[])];
    // The template writes BOS where the model expects it: encode without adding another (as transformers).
    return encodeChat(tok!, r as readonly ChatMessage[], {
      addGenerationPrompt: opts.addGenerationPrompt ?? false,
      templateVars: opts.templateVars,
    });
  });
}

/** `model.trace`: encodes the input, runs it once and wraps the hooks as views. */
export async function traceModel(
  model: Model,
  input: TraceInput,
  opts: TraceOptions = {},
): Promise<TraceResult> {
  const tokens = await model.toTokens(input, opts);
  const result = await model.forward(tokens, {
    hooks: opts.hooks,
    interventions: opts.interventions,
    logits: opts.logits,
  });
  return {
    tokens,
    padding: result.padding,
    logits: tensorView(result.logits),
    cache: new ActivationCache(result.hooks),
    result,
  };
}

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
