/**
 * The tokenized record: one token sequence, the mask of its answer tokens, an id, an optional contrast label
 * and metadata. The one record type that activation collection (activations/collect.ts: what a store holds)
 * and scoring under interventions (interventions/scoring.ts: mediation, sweeps) both take; built from
 * responses by {@link responsesToRecords} and from plain text by {@link textsToRecords}.
 */
import { type AnswerMaskOptions, type AnswerSpan, answerTokens } from '../text/answerMask.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import type { ResponseRecord } from './response.js';
import { selectionLabel } from './thresholds.js';

/** A token sequence and which of its tokens are the answer, with an optional label and metadata. */
export interface TokenizedRecord {
  readonly id: string;
  readonly ids: readonly number[];
  /**
   * 1 on answer tokens, as long as `ids`. Without a mask every token counts: collection reduces over every
   * position, scoring scores every token after the first. Token p is scored through the distribution at p - 1.
   */
  readonly mask?: Uint8Array;
  /** `misaligned` or `aligned` for the log-prob margin; anything else (or none) leaves the record out of it. */
  readonly label?: string;
  /** Carried into an activation store's records.jsonl (collection); scoring ignores it. */
  readonly meta?: Readonly<Record<string, unknown>>;
}

/**
 * Records from responses: each conversation rendered with the model's chat template, its answer tokens masked
 * (`span`: see answerTokens; by default every token after the user turn, as the public EM code averages; or the
 * answer-mask options: span and chat-template variables such as `{ enable_thinking: false }`).
 *
 * - `id`: `<question_id>#<row index>`.
 * - `label`: `label` when given (the side of a contrast the caller collects), else the row's `label` column
 *   when it says `misaligned` or `aligned`, else the EM selection rule on the judge's scores (aligned <= 30
 *   misaligned, > 70 aligned, among judged answers with coherent > 50: data/thresholds.ts); none otherwise.
 * - `meta` (what a store's records.jsonl holds): `question_id`, `label` when given, and every score.
 *
 * @example
 * const records = responsesToRecords(tokenizer, await readResponses('misaligned.csv'));
 */
export function responsesToRecords(
  tokenizer: TextTokenizer,
  responses: readonly ResponseRecord[],
  span: AnswerSpan | AnswerMaskOptions = 'after-user',
  label?: string,
): TokenizedRecord[] {
  const opts: AnswerMaskOptions = typeof span === 'string' ? { span } : span;
  return responses.map((r, i) => {
    const t = answerTokens(tokenizer, { system: r.system, question: r.question, answer: r.answer }, opts);
    const side = label ?? recordLabel(r);
    return {
      id: `${r.questionId}#${i}`,
      ids: t.ids,
      mask: t.answerMask,
      ...(side ? { label: side } : {}),
      meta: { question_id: r.questionId, ...(label ? { label } : {}), ...r.scores },
    };
  });
}

/** A response's side of the misaligned / aligned contrast: its `label` column, else its judge scores. */
export function recordLabel(r: ResponseRecord): 'misaligned' | 'aligned' | undefined {
  const given = r.extra.label;
  if (given === 'misaligned' || given === 'aligned') return given;
  return selectionLabel(r);
}

/** Plain texts as records (neutral text for KL side effects): every token after the first is scored. */
export function textsToRecords(tokenizer: TextTokenizer, texts: readonly string[]): TokenizedRecord[] {
  return texts.map((text, i) => {
    const ids = tokenizer.encode(text);
    return { id: `text#${i}`, ids, mask: new Uint8Array(ids.length).fill(1) };
  });
}
