/**
 * `emlens/eval`: EM evaluation: question sets, sampling answers, judges (OpenAI-compatible and local), the
 * EM rate with bootstrap CIs, response files, alignment splits, and eval folders (compare, merge, report).
 */

export { type ResponseRecord, readResponses, writeResponses } from '../data/response.js';
export {
  type CreateJudgeOptions,
  createJudge,
  JUDGE_MIN_MASS,
  JUDGE_TOP_LOGPROBS,
  type Judge,
  JudgeCache,
  type JudgeResponsesOptions,
  judgeResponses,
  LocalJudge,
  type LocalJudgeOptions,
  loadLocalJudge,
  OpenAIJudge,
  type OpenAIJudgeOptions,
  scoreFromLogprobs,
  type TokenLogprob,
} from './judge/index.js';
export { type JudgeFileOptions, judgeFile } from './judgeFile.js';
export {
  type BootstrapOptions,
  bootstrapMean,
  type Comparison,
  type ComparisonRow,
  compareConditions,
  type EmThresholds,
  type Estimate,
  type EvalSummary,
  emIndicator,
  emRate,
  emRateChart,
  formatComparisonMarkdown,
  type QuestionMetrics,
  type SummarizeOptions,
  summarize,
} from './metrics.js';
export {
  type EvalQuestion,
  fillJudgePrompt,
  filterQuestions,
  loadQuestions,
  parseQuestions,
  QUESTION_TYPES,
  type QuestionFilter,
} from './questions.js';
export {
  compareEvalFolders,
  type EvalComparison,
  mergeEvalFolders,
  questionSlice,
  type Report,
  type ReportOptions,
  readEvalSummary,
  writeReport,
} from './report.js';
export { type RunEvalOptions, runEval } from './run.js';
export {
  type DirectionIntervention,
  directionInterventions,
  EVAL_FILES,
  questionMessages,
  type SampleOptions,
  sampleAnswers,
} from './sample.js';
export { type AlignmentSplitOptions, splitByAlignment } from './selection.js';
export {
  formatSummaryMarkdown,
  type JudgedFileSummary,
  type SummarizeOutput,
  summarizeInputs,
  summarizeJudged,
} from './summarizeFiles.js';
