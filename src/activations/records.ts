import type { ResponseRecord } from '../eval/responses.js';
import { type AnswerSpan, answerTokens } from '../text/answerMask.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import type { CollectRecord } from './collect.js';

/**
 * Turns responses into records to collect: the chat-rendered conversation and the mask of its answer tokens
 * (by default every token after the user turn, as the public EM code averages).
 */
export function responsesToRecords(
  tokenizer: TextTokenizer,
  responses: readonly ResponseRecord[],
  span: AnswerSpan = 'after-user',
  label?: string,
): CollectRecord[] {
  return responses.map((r, i) => {
    const t = answerTokens(tokenizer, { system: r.system, question: r.question, answer: r.answer }, { span });
    return {
      id: `${r.questionId}#${i}`,
      ids: t.ids,
      mask: t.answerMask,
      meta: { question_id: r.questionId, ...(label ? { label } : {}), ...r.scores },
    };
  });
}
