/**
 * emlens: the core API, what a researcher needs for the emergent-misalignment loop: load a model and its
 * tokenizer, run it with typed hook names, steer and ablate, generate, collect activations into a store,
 * compute and compare directions, measure mediation, and judge answers.
 *
 * Everything else lives under a subpath, one per area, each holding that area's whole public surface (the
 * core names of the area included): `emlens/model`, `emlens/text`, `emlens/generate`, `emlens/interventions`,
 * `emlens/data`, `emlens/activations`, `emlens/directions`, `emlens/eval`, `emlens/io`, `emlens/organisms`,
 * `emlens/demo`, `emlens/report`, `emlens/serve`, `emlens/studies` and `emlens/grad` (the benchmarks' measurement helpers
 * live in benchmarks/lib, outside the API).
 */

// Activations: responses -> answer-token records -> an on-disk activation store.
export { type CollectOptions, collectToStore } from './activations/collect.js';
export type { Reduction } from './activations/reduce.js';
export { ActivationStore } from './activations/store.js';
// Data: the response record (the public EM code's columns) and the tokenized record with its answer mask.
export { responsesToRecords, type TokenizedRecord, textsToRecords } from './data/record.js';
export { type ResponseRecord, readResponses } from './data/response.js';
// Directions: mean differences per layer, saved as safetensors, compared, with norm-matched random controls.
export { compareDirections } from './directions/compare.js';
export {
  cosine,
  type DirectionMeta,
  type DirectionSet,
  LayerMeanAccumulator,
  type LayerMeans,
  loadDirections,
  meanDiff,
  saveDirections,
} from './directions/direction.js';
export { directionFromStores } from './directions/fromStores.js';
export { randomControl } from './directions/randomControl.js';
// Errors: every bad input is an EmlensError whose message says what to do.
export { EmlensError } from './errors.js';
// Judges: EM question sets, logprob-weighted 0..100 scores, OpenAI-compatible or local.
export { createJudge, type Judge, judgeResponses, scoreFromLogprobs } from './eval/judge/index.js';
export { type EvalQuestion, loadQuestions } from './eval/questions.js';
export { splitByAlignment } from './eval/selection.js';
// Generation: seeded, batched, KV-cached sampling, with interventions.
export {
  type GenerateOptions,
  type Generation,
  generate,
  type InterventionPositions,
  TextStreamer,
} from './generate/generate.js';
// Interventions: steer and ablate directions in the residual stream; composeInterventions is the one road.
export {
  type AblateRequest,
  type AblateSpec,
  ablateInterventions,
  composeInterventions,
  type InterventionRequest,
  type LayerSelection,
  loadDirectionsFor,
  type SteerRequest,
  type SteerSpec,
  steerInterventions,
} from './interventions/compose.js';
// Mediation: how much of a finetune's divergence from the base a direction carries.
export { type MediationOptions, type MediationReport, mediation } from './interventions/mediation.js';
export { divergence } from './interventions/scoring.js';
// Hook names: typed (a misspelt literal does not compile); parseHookPatterns is the door for run-time strings.
export {
  type BlockHook,
  type HookName,
  type HookPattern,
  type HookSelector,
  hookName,
  parseHookPatterns,
  type ResidualHookName,
  type ResidualHookSelector,
} from './model/hooks.js';
export {
  type Ablate,
  type ForwardIntervention,
  type Intervention,
  type Patch,
  type PositionWeights,
  positionWeights,
  type Steer,
} from './model/interventions.js';
// Model: load a Hugging Face folder and run it (batched, left-padded, KV cache, hooks, interventions).
export {
  type ForwardOptions,
  type ForwardResult,
  type KVCache,
  type LoadModelOptions,
  loadModel,
  Model,
} from './model/model.js';
// Activation patching as TransformerLens users do it: a clean run's values into a corrupted run, swept.
export { logitDiff, type PatchingSweepResult, patchingSweep } from './model/patching.js';
export type { ModelSpec } from './model/spec.js';
export type { Float32Tensor } from './model/tensor.js';
export {
  ActivationCache,
  type Trace,
  type TraceInput,
  type TraceResult,
  traceTokens,
} from './model/trace.js';
export { tensorView, type View } from './model/views.js';
// Tokenizer and chat: `tok.encodeChat(messages)` is the chat road (BOS exactly once).
export type { ChatMessage } from './text/chat.js';
export {
  type ChatTemplateOptions,
  type EncodeOptions,
  loadTokenizer,
  type TextTokenizer,
} from './text/tokenizer.js';
