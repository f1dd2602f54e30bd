/**
 * Text generation on a loaded model: batched left-padded prefill, then one token per row per step through the
 * KV cache, with seeded sampling, stop conditions and in-graph interventions.
 */
import { EmlensError } from '../errors.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import type { Rng } from '../util/random.js';
import { type DecodeStats, decodeLoop, firstStop, type InterventionPositions } from './decodeLoop.js';
import { checkSamplingParams, sampleRng, sampleToken } from './sampling.js';

export type { DecodeStats, InterventionPositions } from './decodeLoop.js';

export type FinishReason = 'eos' | 'stop' | 'length';

export interface GenerateOptions {
  /** New tokens per sequence at most. */
  readonly maxNewTokens: number;
  /** 0: greedy. Default 1. */
  readonly temperature?: number;
  /** Nucleus sampling (1: off). Default 1. */
  readonly topP?: number;
  /** Keep the k most likely tokens (0: off). Default 0. */
  readonly topK?: number;
  /** Seed of the sampling streams, one per (prompt, sample). Default 0. */
  readonly seed?: number;
  /** Samples per prompt. Default 1. */
  readonly n?: number;
  /** A sequence ends when it emits one of these (kept as its last token). Default: the model's eos ids. */
  readonly eosTokenIds?: readonly number[];
  /** A sequence ends once its generated text contains one of these (needs `tokenizer`). */
  readonly stopStrings?: readonly string[];
  /** Decodes the generated tokens into `text` (and finds the stop strings). */
  readonly tokenizer?: { decode(ids: readonly number[]): string };
  /**
   * Steering and ablation during generation; their `positions` must be unset (or `all`): `interventionPositions`
   * decides where they act.
   */
  readonly interventions?: readonly Intervention[];
  /** Default `all`; see {@link InterventionPositions}. */
  readonly interventionPositions?: InterventionPositions;
  /** Sequences run together (prompts x n are split into batches of this size). Default 32. */
  readonly batchSize?: number;
  /**
   * Called for each new token as it is sampled. `row` is the index of the sequence in the result
   * (`prompt * n + sample`).
   */
  readonly onToken?: (row: number, tokenId: number) => void;
  /** Called once per sequence when it finishes, with its final result. */
  readonly onFinish?: (row: number, result: Generation) => void;
  /**
   * Called after each batch of sequences with the bytes its decode copied to host memory (see
   * {@link DecodeStats}): on webgpu the KV cache stays on the device and a step copies only the logits.
   */
  readonly onStats?: (stats: DecodeStats, batch: { readonly start: number; readonly rows: number }) => void;
}

export interface Generation {
  /** Index into the prompts. */
  readonly prompt: number;
  /** Which of the prompt's `n` samples. */
  readonly sample: number;
  /** The generated tokens (prompt excluded); ends with the eos token when `finishReason` is `eos`. */
  readonly tokens: number[];
  /** The decoded tokens (with a tokenizer): without the final eos token, and cut before a stop string. */
  readonly text?: string;
  readonly finishReason: FinishReason;
}

interface RowState {
  readonly index: number;
  readonly prompt: number;
  readonly sample: number;
  readonly rng: Rng | null;
  readonly tokens: number[];
  done: Generation | null;
}

function positiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v <= 0) throw new EmlensError(`${name} must be a positive integer, not ${v}.`);
}

/**
 * Generates continuations of token-id prompts. Each (prompt, sample) row draws from its own seeded stream and
 * every row computes what it would alone, so results do not depend on `batchSize` or on the other prompts.
 * Results come back in order: prompt 0 samples 0..n-1, prompt 1, ...
 *
 * @example
 * const out = await generate(model, [tokenizer.encode('Hello')], { maxNewTokens: 20, temperature: 0, tokenizer });
 * out[0].text;
 */
export async function generate(
  model: Model,
  prompts: readonly (readonly number[])[],
  opts: GenerateOptions,
): Promise<Generation[]> {
  const sampling = checkSamplingParams(opts);
  const n = opts.n ?? 1;
  const batchSize = opts.batchSize ?? 32;
  const seed = opts.seed ?? 0;
  const maxNew = opts.maxNewTokens;
  if (!Number.isInteger(maxNew) || maxNew < 0) {
    throw new EmlensError(`maxNewTokens must be a non-negative integer, not ${maxNew}.`);
  }
  positiveInt('n', n);
  positiveInt('batchSize', batchSize);
  if (!Number.isFinite(seed)) throw new EmlensError(`seed must be a finite number, not ${seed}.`);
  if (prompts.length === 0) throw new EmlensError('No prompts were given; pass at least one token sequence.');
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new EmlensError(`Prompt ${i} is empty; pass at least one token id per prompt.`);
  });
  const stopStrings = (opts.stopStrings ?? []).filter((s) => s.length > 0);
  if (stopStrings.length > 0 && !opts.tokenizer) {
    throw new EmlensError('Stop strings need a tokenizer to decode the generated text; pass `tokenizer`.');
  }
  const policy = opts.interventionPositions ?? 'all';
  if (!['all', 'prompt', 'generated'].includes(policy)) {
    throw new EmlensError(`interventionPositions must be 'all', 'prompt' or 'generated', not '${policy}'.`);
  }
  const interventions = opts.interventions ?? [];
  for (const iv of interventions) {
    if (iv.positions !== undefined && iv.positions !== 'all') {
      throw new EmlensError(
        'Interventions passed to generate must not set positions; choose them with interventionPositions.',
      );
    }
  }
  const longest = Math.max(...prompts.map((p) => p.length));
  if (longest + Math.max(maxNew - 1, 0) > model.maxPositions) {
    throw new EmlensError(
      `A prompt of ${longest} tokens plus ${maxNew} new tokens needs ${longest + maxNew - 1} positions but the graph was built for ${model.maxPositions}; lower maxNewTokens or load the model with a larger maxPositions.`,
    );
  }

  const eos = new Set(opts.eosTokenIds ?? model.spec.eosTokenIds);
  const rows: RowState[] = [];
  prompts.forEach((_, p) => {
    for (let s = 0; s < n; s++) {
      rows.push({
        index: rows.length,
        prompt: p,
        sample: s,
        rng: sampling.temperature > 0 ? sampleRng(seed, p, s) : null,
        tokens: [],
        done: null,
      });
    }
  });

  const finish = (row: RowState, reason: FinishReason, cut?: number): void => {
    let text: string | undefined;
    if (opts.tokenizer) {
      const ids = reason === 'eos' ? row.tokens.slice(0, -1) : row.tokens;
      text = opts.tokenizer.decode(ids);
      if (cut !== undefined) text = text.slice(0, cut);
    }
    row.done = {
      prompt: row.prompt,
      sample: row.sample,
      tokens: row.tokens,
      ...(text !== undefined ? { text } : {}),
      finishReason: reason,
    };
    opts.onFinish?.(row.index, row.done);
  };

  /** Appends a sampled token and finishes the row if it ends it. */
  const push = (row: RowState, token: number): void => {
    row.tokens.push(token);
    opts.onToken?.(row.index, token);
    if (eos.has(token)) {
      finish(row, 'eos');
      return;
    }
    if (stopStrings.length > 0) {
      // stop strings need a tokenizer, checked when the options were read
      const cut = firstStop(opts.tokenizer!.decode(row.tokens), stopStrings);
      if (cut >= 0) {
        finish(row, 'stop', cut);
        return;
      }
    }
    if (row.tokens.length >= maxNew) finish(row, 'length');
  };

  const { vocabSize } = model.spec;
  for (let start = 0; start < rows.length; start += batchSize) {
    const chunk = rows.slice(start, start + batchSize);
    if (maxNew === 0) {
      for (const row of chunk) finish(row, 'length');
      continue;
    }
    const ids = chunk.map((r) => prompts[r.prompt]!); // every row was made from prompts[r.prompt]
    const stats = await decodeLoop(
      model,
      ids,
      interventions,
      policy,
      async (logits) => {
        chunk.forEach((row, b) => {
          if (!row.done)
            push(row, sampleToken(logits.subarray(b * vocabSize, (b + 1) * vocabSize), sampling, row.rng));
        });
        return {
          // a row not done was pushed a token just above
          next: chunk.map((row) => (row.done ? null : row.tokens[row.tokens.length - 1]!)),
          done: chunk.every((row) => row.done),
        };
      },
      { maxNewTokens: maxNew },
    );
    opts.onStats?.(stats, { start, rows: chunk.length });
  }
  return rows.map((row) => row.done!); // every row is finished: by eos, a stop string or maxNewTokens
}

/**
 * Turns a growing token sequence into printable text deltas: each `push` returns the new text since the last
 * call, holding back an incomplete multi-byte character (decoded as U+FFFD) until its last byte arrives.
 */
export class TextStreamer {
  private readonly ids: number[] = [];
  private printed = '';

  constructor(private readonly tokenizer: { decode(ids: readonly number[]): string }) {}

  /** Adds a token; returns the text to print now (often empty). */
  push(id: number): string {
    this.ids.push(id);
    return this.delta(false);
  }

  /** The text not printed yet, incomplete characters included. */
  flush(): string {
    return this.delta(true);
  }

  private delta(final: boolean): string {
    let text = this.tokenizer.decode(this.ids);
    if (!final) text = text.replace(/\uFFFD+$/, '');
    if (!text.startsWith(this.printed) || text.length <= this.printed.length) return '';
    const out = text.slice(this.printed.length);
    this.printed = text;
    return out;
  }
}
