import type { ResponseRecord } from '../eval/responses.js';
import { type AnswerMaskOptions, type AnswerSpan, answerTokens } from '../text/answerMask.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import type { CollectRecord } from './collect.js';

/**
 * Turns responses into records to collect: the chat-rendered conversation and the mask of its answer tokens
 * (by default every token after the user turn, as the public EM code averages). `span` is the answer span, or
 * the answer-mask options (span and chat-template variables such as `{ enable_thinking: false }`).
 */
export function responsesToRecords(
  tokenizer: TextTokenizer,
  responses: readonly ResponseRecord[],
  span: AnswerSpan | AnswerMaskOptions = 'after-user',
  label?: string,
): CollectRecord[] {
  const opts: AnswerMaskOptions = typeof span === 'string' ? { span } : span;
  return responses.map((r, i) => {
    const t = answerTokens(tokenizer, { system: r.system, question: r.question, answer: r.answer }, opts);
    return {
      id: `${r.questionId}#${i}`,
      ids: t.ids,
      mask: t.answerMask,
      meta: { question_id: r.questionId, ...(label ? { label } : {}), ...r.scores },
    };
  });
}
