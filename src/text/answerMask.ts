/**
 * Which tokens of a chat-formatted (system?, question, answer) record are "the answer": the positions whose
 * activations are averaged into an answer's mean activation.
 *
 * Spans:
 * - 'after-user' (default), as the public emergent-misalignment code (Soligo & Turner's model-organisms repo)
 *   does: every token after the rendered user turn, so the assistant header, the answer and the end-of-turn
 *   token(s). The prompt is the chat template's rendering of [system?, user] without a generation prompt, the
 *   full text its rendering of [system?, user, assistant]; the span is what the full text adds.
 * - 'content': only the answer text as the template writes it (Llama's and Gemma's templates trim it), found by
 *   rendering the conversation once more with a sentinel in place of the answer. A template that splits a
 *   reasoning block off the answer (Qwen3 takes `<think>...</think>` out of the content and writes it back as
 *   `<think>\n{reasoning}\n</think>\n\n`, and writes an empty one when the answer has none) does not put the
 *   sentinel where the answer was; then the answer's text up to its last `</think>` is kept and only what
 *   follows is replaced, so the span is the answer after its think block, never the block itself.
 *
 * Per template (tested token by token against transformers, test/goldens/make_chat_goldens.py):
 * - Llama 3.1: 'after-user' = `<|start_header_id|>assistant<|end_header_id|>\n\n{answer|trim}<|eot_id|>`;
 *   'content' = `{answer|trim}`.
 * - Gemma 3 (the system prompt is folded into the first user turn, `{system}\n\n{question|trim}`):
 *   'after-user' = `<start_of_turn>model\n{answer|trim}<end_of_turn>\n`; 'content' = `{answer|trim}`.
 * - Qwen3, both values of `enable_thinking` (it changes only the generation prompt, which then ends with the
 *   empty `<think>\n\n</think>\n\n`; the full conversation renders the same either way):
 *   'after-user' = `<|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{content}<|im_end|>\n`, the
 *   think block (empty for an answer without one) included; 'content' = `{content}`, the answer after its
 *   `</think>` with leading newlines dropped, i.e. exactly the tokens a thinking-off generation writes after
 *   its prompt.
 *
 * Token ids are those of the full rendered text (encoded without added special tokens, as
 * `apply_chat_template` does) whenever each piece boundary (prompt | header | content | end of turn) is also a
 * token boundary, i.e. when the ids of the text up to each boundary are a prefix of the full ids. Chat
 * templates put a special token or a newline at these boundaries, so this holds for the real families; when a
 * template lets tokens merge across a boundary, the pieces are encoded separately and concatenated instead
 * (`boundaryMerged` says so), which keeps the span exact at the price of ids that differ slightly from the
 * full text's.
 */
import { EmlensError } from '../errors.js';
import { type ChatMessage, renderChat } from './chat.js';
import type { TextTokenizer } from './tokenizer.js';

/** One question-answer record (the system prompt is optional; templates may add a default one). */
export interface QaRecord {
  readonly system?: string;
  readonly question: string;
  readonly answer: string;
}

export type AnswerSpan = 'after-user' | 'content';

export interface AnswerMaskOptions {
  /** default 'after-user' */
  readonly span?: AnswerSpan;
  /** Extra chat-template variables (see RenderChatOptions.templateVars). */
  readonly templateVars?: Readonly<Record<string, unknown>>;
}

export interface AnswerTokens {
  readonly ids: number[];
  /** 1 on the answer span's tokens, 0 elsewhere; as long as `ids`. */
  readonly answerMask: Uint8Array;
  /**
   * Tokens before the answer span: the rendered system + user turns for 'after-user'; those plus the
   * assistant header for 'content'. `answerMask[promptLength]` is the span's first token.
   */
  readonly promptLength: number;
  /** True when tokens merged across a piece boundary and the pieces were encoded separately (see above). */
  readonly boundaryMerged: boolean;
}

const SENTINEL = 'EmlensAnswerSentinel';
const THINK_END = '</think>';

function checkRecord(record: QaRecord): void {
  if (typeof record !== 'object' || record === null) {
    throw new EmlensError('The record is not an object; give {system?, question, answer}.');
  }
  if (typeof record.question !== 'string' || record.question.trim() === '') {
    throw new EmlensError('The record has an empty question; give every record a non-empty question.');
  }
  if (typeof record.answer !== 'string' || record.answer.trim() === '') {
    throw new EmlensError('The record has an empty answer; give every record a non-empty answer.');
  }
  if (record.system !== undefined && typeof record.system !== 'string') {
    throw new EmlensError(
      'The record has a system prompt that is not text; give it as a string or leave it out.',
    );
  }
}

function isPrefix(p: readonly number[], full: readonly number[]): boolean {
  if (p.length > full.length) return false;
  for (let i = 0; i < p.length; i++) if (p[i] !== full[i]) return false;
  return true;
}

/**
 * Ids of `pieces.join('')` and the first token of each piece: the full text's ids when every cumulative
 * prefix encodes to a prefix of them, else the pieces encoded one by one and concatenated.
 */
function encodePieces(
  tokenizer: TextTokenizer,
  pieces: readonly string[],
): { ids: number[]; starts: number[]; merged: boolean } {
  const enc = (text: string) => tokenizer.encode(text, { addSpecialTokens: false });
  const full = enc(pieces.join(''));
  const starts = [0];
  let text = '';
  for (let k = 0; k < pieces.length - 1; k++) {
    text += pieces[k];
    const p = enc(text);
    if (!isPrefix(p, full) || p.length < (starts.at(-1) ?? 0)) break; // starts is never empty
    starts.push(p.length);
  }
  if (starts.length === pieces.length) return { ids: full, starts, merged: false };
  const ids: number[] = [];
  const sepStarts: number[] = [];
  for (const piece of pieces) {
    sepStarts.push(ids.length);
    ids.push(...enc(piece));
  }
  return { ids, starts: sepStarts, merged: true };
}

/** The record's token ids and its answer mask (see the module comment for the spans). */
export function answerTokens(
  tokenizer: TextTokenizer,
  record: QaRecord,
  opts: AnswerMaskOptions = {},
): AnswerTokens {
  checkRecord(record);
  const span = opts.span ?? 'after-user';
  if (span !== 'after-user' && span !== 'content') {
    throw new EmlensError(`Unknown answer span '${span}'; use 'after-user' or 'content'.`);
  }
  const render = (messages: ChatMessage[]) =>
    renderChat(tokenizer, messages, { addGenerationPrompt: false, templateVars: opts.templateVars });
  const head: ChatMessage[] = [];
  if (record.system !== undefined) head.push({ role: 'system', content: record.system });
  head.push({ role: 'user', content: record.question });
  const withAnswer = (content: string): ChatMessage[] => [...head, { role: 'assistant', content }];

  const prompt = render(head);
  const full = render(withAnswer(record.answer));
  if (!full.startsWith(prompt)) {
    throw new EmlensError(
      'The chat template renders the system and user turns differently once an answer follows, so the answer span cannot be found; use a template whose rendering of the first turns is a prefix of the whole conversation.',
    );
  }

  let pieces: string[];
  let spanPiece: number;
  if (span === 'after-user') {
    pieces = [prompt, full.slice(prompt.length)];
    spanPiece = 1;
  } else {
    let sentinel = SENTINEL;
    const inRecord = (s: string) =>
      record.question.includes(s) || record.answer.includes(s) || (record.system ?? '').includes(s);
    while (inRecord(sentinel)) sentinel += 'X';
    // The answer's content as the template writes it: render the sentinel in its place and find what the
    // full rendering holds between the text before and after it. A template that splits off a reasoning
    // block (Qwen3 moves `<think>...</think>` out of the content and writes it back as its own block) does
    // not write the sentinel where the answer goes; then the think block is kept and only what follows the
    // last `</think>` is replaced, so the content span is the answer after its think block.
    const locate = (thinkBlock: string) => {
      const marked = render(withAnswer(thinkBlock + sentinel));
      const at = marked.indexOf(sentinel);
      const before = marked.slice(0, at);
      const after = marked.slice(at + sentinel.length);
      const ok =
        at >= prompt.length &&
        marked.indexOf(sentinel, at + 1) === -1 &&
        before.startsWith(prompt) &&
        full.startsWith(before) &&
        full.endsWith(after) &&
        full.length - after.length >= before.length;
      return ok ? { before, after } : null;
    };
    const thinkEnd = record.answer.lastIndexOf(THINK_END);
    const found =
      locate('') ?? (thinkEnd === -1 ? null : locate(record.answer.slice(0, thinkEnd + THINK_END.length)));
    if (found === null) {
      throw new EmlensError(
        "The chat template rewrites the answer, so its content tokens cannot be located; use span 'after-user'.",
      );
    }
    const { before, after } = found;
    if (full.length - after.length === before.length) {
      throw new EmlensError(
        "The answer has no content after its think block; give an answer after </think> or use span 'after-user'.",
      );
    }
    pieces = [
      prompt,
      before.slice(prompt.length),
      full.slice(before.length, full.length - after.length),
      after,
    ];
    spanPiece = 2;
  }

  const { ids, starts, merged } = encodePieces(tokenizer, pieces);
  const from = starts[spanPiece];
  // encodePieces returns one start per piece, and spanPiece indexes pieces
  if (from === undefined) throw new Error(`answerTokens: no start for piece ${spanPiece}`);
  const to = starts[spanPiece + 1] ?? ids.length;
  if (to <= from) {
    throw new EmlensError(
      'The answer encodes to no tokens between the prompt and the end of the turn; give a non-empty answer.',
    );
  }
  const answerMask = new Uint8Array(ids.length);
  answerMask.fill(1, from, to);
  return { ids, answerMask, promptLength: from, boundaryMerged: merged };
}

/** A padded batch of records with their answer masks, row-major [batch, seq]. */
export interface AnswerBatch {
  readonly batch: number;
  readonly seq: number;
  readonly padding: 'left' | 'right';
  readonly inputIds: BigInt64Array;
  /** 1 on real tokens, 0 on padding (HF attention_mask) */
  readonly attentionMask: BigInt64Array;
  /** positions counting real tokens only; padding gets 1, as HF derives them (`cumsum(mask) - 1`) */
  readonly positionIds: BigInt64Array;
  /** 1 on answer tokens, aligned with the padding */
  readonly answerMask: Uint8Array;
  /** Index of each row's first real token (its left padding; 0 when padding right). */
  readonly offsets: readonly number[];
  /** Real tokens per row. */
  readonly lengths: readonly number[];
}

/** Pads records (from `answerTokens`) to one length, on the left or the right, carrying the answer masks along. */
export function batchAnswerMasks(
  records: readonly Pick<AnswerTokens, 'ids' | 'answerMask'>[],
  padding: 'left' | 'right',
  padId: number,
): AnswerBatch {
  if (padding !== 'left' && padding !== 'right') {
    throw new EmlensError(`Unknown padding side '${padding}'; use 'left' or 'right'.`);
  }
  if (!Number.isInteger(padId) || padId < 0) {
    throw new EmlensError(
      `Pad id ${padId} is not a token id; pass a non-negative integer (the tokenizer's pad token).`,
    );
  }
  if (records.length === 0) throw new EmlensError('The batch has no records; pass at least one.');
  records.forEach((r, b) => {
    if (r.ids.length === 0)
      throw new EmlensError(`Record ${b} of the batch has no tokens; drop it or fix it.`);
    if (r.answerMask.length !== r.ids.length) {
      throw new EmlensError(
        `Record ${b} has ${r.ids.length} ids but an answer mask of ${r.answerMask.length}; build both with answerTokens.`,
      );
    }
  });
  const batch = records.length;
  const seq = Math.max(...records.map((r) => r.ids.length));
  const inputIds = new BigInt64Array(batch * seq).fill(BigInt(padId));
  const attentionMask = new BigInt64Array(batch * seq);
  const positionIds = new BigInt64Array(batch * seq).fill(1n);
  const answerMask = new Uint8Array(batch * seq);
  const offsets: number[] = [];
  const lengths: number[] = [];
  records.forEach((r, b) => {
    const n = r.ids.length;
    const offset = padding === 'left' ? seq - n : 0;
    offsets.push(offset);
    lengths.push(n);
    const row = b * seq + offset;
    for (let i = 0; i < n; i++) {
      inputIds[row + i] = BigInt(r.ids[i]!); // i < n = r.ids.length
      attentionMask[row + i] = 1n;
      positionIds[row + i] = BigInt(i);
    }
    answerMask.set(r.answerMask, row);
  });
  return { batch, seq, padding, inputIds, attentionMask, positionIds, answerMask, offsets, lengths };
}
