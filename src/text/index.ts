/**
 * `emlens/text`: tokenizers, chat templates and answer masks. `tok.encodeChat(messages)` is the chat road;
 * `encodeChat`/`renderChat` are the same as functions of a tokenizer, and `answerTokens` marks the answer span.
 */
export {
  type AnswerBatch,
  type AnswerMaskOptions,
  type AnswerSpan,
  type AnswerTokens,
  answerTokens,
  batchAnswerMasks,
  type QaRecord,
} from './answerMask.js';
export { type ChatMessage, encodeChat, type RenderChatOptions, renderChat, TEMPLATE_LIMITS } from './chat.js';
export {
  type ChatTemplateOptions,
  configChatTemplate,
  type EncodeOptions,
  loadTokenizer,
  type SpecialTokens,
  specialTokensOf,
  type TextTokenizer,
} from './tokenizer.js';
