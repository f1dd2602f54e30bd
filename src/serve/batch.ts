/**
 * The server's generation loop: one batch of requests, each with its own sampling parameters, seed, token
 * budget, stop strings and logprobs, sharing one left-padded KV-cached decode.
 *
 * Each row computes what `generate(model, [prompt], { n, seed, temperature, topP, topK, maxNewTokens, stopStrings,
 * interventions, interventionPositions })` computes for it: the same sampling streams (`sampleRng(seed, 0,
 * sample)`), the same stop rules and the same intervention positions. `generate` takes one set of sampling
 * parameters and one budget for all rows, and cannot drop a row whose client went away; both run on
 * `decodeLoop`, which owns the prefill, the KV cache and where the interventions act.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { projectionHooks } from '../directions/projection.js';
import { decodeLoop, firstStop } from '../generate/decodeLoop.js';
import type { FinishReason } from '../generate/generate.js';
import { checkSamplingParams, sampleRng, sampleToken, topKIndices } from '../generate/sampling.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import type { Rng } from '../util/random.js';
import type { FinishEvent, JobSpec, TokenEvent } from './messages.js';
import { projectRow } from './monitor.js';
import type { LogprobEntry, PositionsPolicy, TopLogprob } from './protocol.js';

/** Decodes as the server reports text: special tokens kept, no clean-up of spaces (so text only grows). */
export function serverDecoder(tokenizer: TextTokenizer): { decode(ids: readonly number[]): string } {
  return { decode: (ids) => tokenizer.decode(ids, { cleanUpTokenizationSpaces: false }) };
}

/** GPT-2's byte-level alphabet: the character standing for each byte -> the byte. */
function byteLevelTable(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + extra++);
    }
  }
  return new Map(bs.map((b, i) => [String.fromCodePoint(cs[i]!), b])); // cs has one code point per byte of bs
}

/**
 * The exact bytes of each token (OpenAI's logprob `bytes`): byte-level BPE pieces mapped back through GPT-2's
 * alphabet, `<0xNN>` byte-fallback pieces as their byte, added tokens and other pieces as UTF-8.
 */
export async function tokenBytesOf(
  dir: string,
  tokenizer: TextTokenizer,
): Promise<(id: number) => readonly number[]> {
  let byteLevel = false;
  const added = new Map<number, string>();
  try {
    const json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as {
      decoder?: unknown;
      added_tokens?: { id: number; content: string }[];
    };
    byteLevel = JSON.stringify(json.decoder ?? null).includes('"ByteLevel"');
    for (const t of json.added_tokens ?? []) added.set(t.id, t.content);
  } catch {
    // loadTokenizer already read this file; fall back to decoding pieces
  }
  const table = byteLevelTable();
  const cache = new Map<number, readonly number[]>();
  const utf8 = (s: string) => [...Buffer.from(s, 'utf8')];
  return (id) => {
    let bytes = cache.get(id);
    if (bytes) return bytes;
    const piece = added.get(id) ?? tokenizer.idToToken(id);
    if (piece === undefined) bytes = utf8(tokenizer.decode([id], { cleanUpTokenizationSpaces: false }));
    else if (added.has(id)) bytes = utf8(piece);
    // Every character was just checked to be in the table.
    else if (byteLevel && [...piece].every((c) => table.has(c))) bytes = [...piece].map((c) => table.get(c)!);
    else if (/^<0x[0-9A-Fa-f]{2}>$/.test(piece)) bytes = [Number.parseInt(piece.slice(3, 5), 16)];
    else bytes = utf8(piece.replaceAll('\u2581', ' '));
    cache.set(id, bytes);
    return bytes;
  };
}

/** The log-probability of `token` under the softmax of `logits` (float64), and the `k` most likely tokens. */
export function logprobEntry(
  logits: Float32Array,
  token: number,
  k: number,
  bytesOf: (id: number) => readonly number[],
): LogprobEntry {
  // i < logits.length, and every id read is the sampled token or a top-k index of these logits: in range.
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  const entry = (id: number): TopLogprob => {
    const bytes = [...bytesOf(id)];
    return { token: Buffer.from(bytes).toString('utf8'), logprob: logits[id]! - lse, bytes };
  };
  const top = k > 0 ? [...topKIndices(logits, k)].map(entry) : [];
  return { ...entry(token), top_logprobs: top };
}

interface Row {
  readonly job: JobSpec;
  readonly sample: number;
  readonly rng: Rng | null;
  readonly sampling: { temperature: number; topK: number; topP: number };
  readonly tokens: number[];
  /** Text sent so far. */
  printed: string;
  done: boolean;
  /**
   * A monitored row's last token, held until the next call has fed it and its residual is known; and the
   * row's finish, held with it (the row is fed its last token once more before it ends).
   */
  pending: TokenEvent | null;
  finishing: FinishEvent | null;
}

export interface BatchHooks {
  /** Jobs whose client went away (checked before every step). */
  readonly cancelled: (job: number) => boolean;
  /** The tokens and finished rows of one step. */
  readonly onStep: (tokens: TokenEvent[], finished: FinishEvent[]) => void;
  /** Awaited between steps, so cancellations (messages) can arrive. */
  readonly yieldNow: () => Promise<void>;
}

/** Runs one batch to the end (or until every row is finished or cancelled). */
export async function runBatch(
  model: Model,
  decoder: { decode(ids: readonly number[]): string },
  bytesOf: (id: number) => readonly number[],
  jobs: readonly JobSpec[],
  interventions: readonly Intervention[],
  policy: PositionsPolicy,
  hooks: BatchHooks,
): Promise<void> {
  const rows: Row[] = [];
  for (const job of jobs) {
    const sampling = checkSamplingParams({ temperature: job.temperature, topK: job.topK, topP: job.topP });
    for (let s = 0; s < job.n; s++) {
      rows.push({
        job,
        sample: s,
        rng: sampling.temperature > 0 ? sampleRng(job.seed, 0, s) : null,
        sampling,
        tokens: [],
        printed: '',
        done: false,
        pending: null,
        finishing: null,
      });
    }
  }
  if (rows.length === 0) return;
  const eos = new Set(model.spec.eosTokenIds);
  const vocab = model.spec.vocabSize;

  const finish = (row: Row, reason: FinishReason, text: string, out: FinishEvent[]): void => {
    row.done = true;
    const delta = text.startsWith(row.printed) ? text.slice(row.printed.length) : '';
    out.push({
      job: row.job.id,
      sample: row.sample,
      text,
      delta,
      finishReason: reason,
      tokens: row.tokens.length,
    });
  };

  /** Appends a token and finishes the row if it ends it (the rules of `generate`). */
  const push = (row: Row, token: number, logprob: LogprobEntry | undefined, step: Step): void => {
    row.tokens.push(token);
    const { stop, maxTokens, ignoreEos } = row.job;
    if (!ignoreEos && eos.has(token)) {
      step.tokens.push({ job: row.job.id, sample: row.sample, delta: '', logprob });
      finish(row, 'eos', decoder.decode(row.tokens.slice(0, -1)), step.finished);
      return;
    }
    const text = decoder.decode(row.tokens);
    const cut = firstStop(text, stop);
    step.tokens.push({ job: row.job.id, sample: row.sample, delta: '', logprob });
    if (cut >= 0 || row.tokens.length >= maxTokens) {
      finish(row, cut >= 0 ? 'stop' : 'length', cut >= 0 ? text.slice(0, cut) : text, step.finished);
      return;
    }
    // Show what cannot change any more: no trailing partial character, nothing that may start a stop string.
    let visible = text.replace(/\uFFFD+$/, '');
    const hold = Math.max(0, ...stop.map((s) => s.length - 1));
    if (hold > 0) visible = visible.slice(0, Math.max(0, visible.length - hold));
    if (visible.length > row.printed.length && visible.startsWith(row.printed)) {
      const last = step.tokens[step.tokens.length - 1]!; // the event pushed above
      step.tokens[step.tokens.length - 1] = { ...last, delta: visible.slice(row.printed.length) };
      row.printed = visible;
    }
  };

  const monitored = jobs.filter((j) => j.monitor !== null);
  const hookNames = [...new Set(monitored.flatMap((j) => projectionHooks(j.monitor!)))]; // filtered on non-null
  await decodeLoop(
    model,
    rows.map((r) => r.job.prompt),
    interventions,
    policy,
    async (logits, hookValues) => {
      const step: Step = { tokens: [], finished: [] };
      rows.forEach((row, b) => {
        if (row.done) return;
        if (hooks.cancelled(row.job.id)) {
          row.done = true;
          return;
        }
        const { monitor } = row.job;
        if (monitor !== null && row.pending !== null) {
          // This call was fed the row's last token (seq 1): its residual is the token's own.
          const token = row.tokens[row.tokens.length - 1]!; // pending is set only after a push
          const text = Buffer.from([...bytesOf(token)]).toString('utf8');
          step.tokens.push({
            ...row.pending,
            monitor: { token: text, projections: projectRow(monitor, hookValues, b, 0) },
          });
          row.pending = null;
          if (row.finishing !== null) {
            step.finished.push(row.finishing);
            row.done = true;
            return;
          }
        }
        const l = logits.subarray(b * vocab, (b + 1) * vocab);
        const token = sampleToken(l, row.sampling, row.rng);
        const lp =
          row.job.topLogprobs === null ? undefined : logprobEntry(l, token, row.job.topLogprobs, bytesOf);
        if (monitor === null) {
          push(row, token, lp, step);
          return;
        }
        const held: Step = { tokens: [], finished: [] };
        push(row, token, lp, held);
        row.pending = held.tokens[0]!; // push adds exactly one token event
        row.finishing = held.finished[0] ?? null;
        row.done = false; // a finished row is fed its last token once more, for that token's residual
      });
      if (step.tokens.length > 0 || step.finished.length > 0) hooks.onStep(step.tokens, step.finished);
      await hooks.yieldNow();
      for (const row of rows) if (!row.done && hooks.cancelled(row.job.id)) row.done = true;
      return {
        // A row not done got a token pushed in this step.
        next: rows.map((row) => (row.done ? null : row.tokens[row.tokens.length - 1]!)),
        done: rows.every((row) => row.done),
      };
    },
    {
      // A monitored row's last token is fed once more, for its residual.
      maxNewTokens: Math.max(...rows.map((r) => r.job.maxTokens)) + (monitored.length > 0 ? 1 : 0),
      hooks: hookNames,
    },
  );
}

interface Step {
  tokens: TokenEvent[];
  finished: FinishEvent[];
}
