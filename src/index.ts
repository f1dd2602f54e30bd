/** emlens: the public API. */

export { storeLayerMeans, type Weighting } from './activations/aggregate.js';
export {
  type CollectOptions,
  type CollectRecord,
  collectToStore,
  sliceRange,
} from './activations/collect.js';
export type { ShardEntry, StoreInputs, StoreManifest } from './activations/manifest.js';
export { responsesToRecords } from './activations/records.js';
export { REDUCTIONS, type Reduction } from './activations/reduce.js';
export { ActivationStore, type MergeOptions, mergeStores, verifyStore } from './activations/store.js';
export { type DemoOptions, runDemo } from './demo/em.js';
export {
  compareDirections,
  cosineHeatmap,
  formatCompareTable,
  writeComparison,
} from './directions/compare.js';
export {
  cosine,
  type DirectionMeta,
  type DirectionSet,
  type LayerMeans,
  loadDirections,
  meanDiff,
  normalize,
  saveDirections,
} from './directions/direction.js';
export { directionFromStores } from './directions/fromStores.js';
export { exportGguf, importGguf } from './directions/gguf.js';
export {
  type ControlSpread,
  controlPaths,
  controlSpread,
  directionSha256,
  formatSpread,
  isRandomControl,
  RANDOM_CONTROL_METHOD,
  type RandomControlOptions,
  randomControl,
  randomControls,
} from './directions/randomControl.js';
export { EmlensError } from './errors.js';
export {
  createJudge,
  type Judge,
  JudgeCache,
  judgeResponses,
  LocalJudge,
  loadLocalJudge,
  OpenAIJudge,
  scoreFromLogprobs,
} from './eval/judge/index.js';
export {
  bootstrapMean,
  compareConditions,
  type Estimate,
  type EvalSummary,
  emRate,
  emRateChart,
  formatComparisonMarkdown,
  summarize,
} from './eval/metrics.js';
export {
  type EvalQuestion,
  fillJudgePrompt,
  filterQuestions,
  loadQuestions,
  parseQuestions,
} from './eval/questions.js';
export {
  compareEvalFolders,
  type EvalComparison,
  mergeEvalFolders,
  questionSlice,
  readEvalSummary,
  writeReport,
} from './eval/report.js';
export { type ResponseRecord, readResponses, writeResponses } from './eval/responses.js';
export { runEval } from './eval/run.js';
export { directionInterventions, type SampleOptions, sampleAnswers } from './eval/sample.js';
export { type AlignmentSplitOptions, splitByAlignment } from './eval/selection.js';
export { type DecodeLoopOptions, type DecodeStep, decodeLoop } from './generate/decodeLoop.js';
export {
  type FinishReason,
  type GenerateOptions,
  type Generation,
  generate,
  type InterventionPositions,
  TextStreamer,
} from './generate/generate.js';
export { type SamplingParams, sampleToken } from './generate/sampling.js';
export {
  type AblateRequest,
  type AblateSpec,
  ablateInterventions,
  checkDirectionsFit,
  composeInterventions,
  constantDirectionSet,
  type InterventionRequest,
  type LayerSelection,
  loadDirectionsFor,
  parseLayerList,
  patchInterventions,
  residHook,
  type SteerRequest,
  type SteerSpec,
  selectLayers,
  siteDirections,
  steerInterventions,
} from './interventions/compose.js';
export { type MediationOptions, type MediationReport, mediation } from './interventions/mediation.js';
export { formatMediation, writeMediation } from './interventions/mediationFormat.js';
export {
  type OrthogonalizeOptions,
  orthogonalizeModel,
  residualWriters,
} from './interventions/orthogonalize.js';
export {
  divergence,
  logprobMargin,
  readNeutralTexts,
  responsesToScored,
  type ScoredRecord,
  textsToScored,
} from './interventions/scoring.js';
export { type SweepOptions, type SweepResult, steeringSweep, writeSweep } from './interventions/sweep.js';
export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './io/halfFloat.js';
export {
  encodeSafetensors,
  type SafetensorsDtype,
  SafetensorsFile,
  type TensorInfo,
  type TensorToWrite,
  writeSafetensors,
} from './io/safetensors.js';
export { WeightSource } from './io/weightSource.js';
export { parseConfig, readConfig } from './model/config.js';
export { describeModel, type ModelDescription } from './model/describe.js';
export {
  adapterFingerprint,
  cachedSha256,
  sha256File,
  tokenizerFingerprint,
  weightsFingerprint,
} from './model/fingerprint.js';
export type { Profile } from './model/graph/transformer.js';
export { allHookNames, BLOCK_HOOKS, type BlockHook, hookName, resolveHooks, siteOf } from './model/hooks.js';
export {
  type Ablate,
  type Intervention,
  orthonormalize,
  type PositionWeights,
  type Steer,
} from './model/interventions.js';
export {
  LoraAdapter,
  type LoraConfig,
  type LoraFactors,
  LoraMergedWeights,
  type LoraModule,
  type LoraReplacement,
  loadAdapter,
  loraScaling,
  mergeLora,
  type PeftAdapterOptions,
  parseLoraConfig,
  targetsModule,
  writePeftAdapter,
} from './model/lora/index.js';
export {
  type ForwardOptions,
  type ForwardResult,
  type KVCache,
  type LoadModelOptions,
  type LoadStats,
  loadModel,
  Model,
} from './model/model.js';
export { DecodeBuffers, type KvArray, type OutputBuffers } from './model/outputBuffers.js';
export { ropeInvFreq, ropeTables } from './model/rope.js';
export { CUDA_INSTALL_COMMAND, cudaAvailable, type Device } from './model/session.js';
export { type Family, type ModelSpec, parameterCount, SUPPORTED_ARCHITECTURES } from './model/spec.js';
export type { Float32Tensor } from './model/tensor.js';
export { makeTinyModel, QWEN25_05B_SHAPE, type TinyModelOptions } from './model/tiny.js';
export { type Trace, traceTokens, writeTrace } from './model/trace.js';
export { makeOrganisms, type OrganismManifest, type OrganismOptions } from './organisms/make.js';
export { renderVegaLite } from './plot/render.js';
export { emlensVersion, type HtmlReport, type HtmlReportOptions, writeHtmlReport } from './report/build.js';
export { type Detected, detectInput } from './report/detect.js';
export type { InputKind, ReportPage, ReportSection } from './report/model.js';
export { ApiError } from './serve/apiError.js';
export type { EmlensExtension } from './serve/protocol.js';
export { type RunningServer, type ServeOptions, startServer } from './serve/server.js';
export type { AnswerMaskOptions, AnswerSpan, AnswerTokens, QaRecord } from './text/answerMask.js';
export { answerTokens, batchAnswerMasks } from './text/answerMask.js';
export { type ChatMessage, encodeChat, renderChat } from './text/chat.js';
export { loadTokenizer, type TextTokenizer } from './text/tokenizer.js';
