/**
 * Judges: a model that reads a filled judge prompt and answers with a number from 0 to 100. The score is read
 * off the next-token distribution, as the public EM code does: the top-20 alternatives that are integer
 * strings 0..100 are renormalised over themselves and averaged; when their total probability is below 0.25
 * (the judge said CODE, REFUSAL or something else) there is no score.
 *
 * Two implementations: {@link OpenAIJudge} (any OpenAI-compatible chat completions endpoint with logprobs) and
 * {@link LocalJudge} (a model loaded by emlens, scored over its own vocabulary).
 */
export { JudgeCache } from './cache.js';
export { type CreateJudgeOptions, createJudge } from './createJudge.js';
export { type JudgeResponsesOptions, judgeResponses } from './judgeResponses.js';
export { LocalJudge, type LocalJudgeOptions, loadLocalJudge } from './local.js';
export { OpenAIJudge, type OpenAIJudgeOptions } from './openai.js';
export {
  JUDGE_MIN_MASS,
  JUDGE_TOP_LOGPROBS,
  scoreFromLogprobs,
  scoreToken,
  type TokenLogprob,
} from './scoreRule.js';
export { Semaphore } from './semaphore.js';
export type { Judge } from './types.js';
