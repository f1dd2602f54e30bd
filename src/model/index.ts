/**
 * `emlens/model`: the model layer in full. Loading and the forward pass, hook names and patterns, the
 * intervention types, model specs and configs, LoRA adapters, tiny random models, RoPE tables, devices, and
 * the output buffers a decode loop reuses.
 */

export { parseConfig, readConfig } from './config.js';
export { describeModel, type ModelDescription } from './describe.js';
export {
  type NodeAssignment,
  nodeAssignment,
  type ProviderNodes,
  readAssignment,
  SWIFTSHADER_ICD,
  type VulkanDriver,
  type WebGpuAdapterInfo,
  webgpuAdapterInfo,
} from './deviceCheck.js';
export {
  adapterFingerprint,
  cachedSha256,
  sha256File,
  tokenizerFingerprint,
  weightsFingerprint,
} from './fingerprint.js';
export type { Profile } from './graph/transformer.js';
export {
  allHookNames,
  BLOCK_HOOKS,
  type BlockHook,
  type HookName,
  type HookPattern,
  type HookSelector,
  hookName,
  isHookName,
  isHookSelector,
  parseHookPatterns,
  type ResidualHook,
  type ResidualHookName,
  type ResidualHookPattern,
  type ResidualHookSelector,
  resolveHooks,
  type ShortBlockHook,
  siteCount,
  siteOf,
} from './hooks.js';
export {
  type Ablate,
  type ForwardIntervention,
  type Intervention,
  orthonormalize,
  type Patch,
  type PositionWeights,
  patchSiteOf,
  positionWeights,
  type Steer,
} from './interventions.js';
export { isMultimodal, textModelName } from './layout.js';
export {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  type Checkpoint,
  findCheckpoints,
  LoraAdapter,
  type LoraConfig,
  type LoraFactors,
  LoraMergedWeights,
  type LoraModule,
  type LoraReplacement,
  type LoraTrajectory,
  loadAdapter,
  loraScaling,
  loraTrajectory,
  type ModuleTrajectory,
  mergeLora,
  type PeftAdapterOptions,
  parseLoraConfig,
  targetsModule,
  trajectoryPca,
  writePeftAdapter,
} from './lora/index.js';
export {
  type ForwardOptions,
  type ForwardResult,
  type KVCache,
  type LoadModelOptions,
  type LoadStats,
  loadModel,
  Model,
  releaseCache,
} from './model.js';
export { DecodeBuffers, type KvArray, type OutputBuffers } from './outputBuffers.js';
export {
  logitDiff,
  type PatchingMetric,
  type PatchingSweepOptions,
  type PatchingSweepResult,
  patchingSweep,
} from './patching.js';
export { ropeFor, ropeInvFreq, ropeTables } from './rope.js';
export { CUDA_INSTALL_COMMAND, cudaAvailable, DEVICES, type Device, WEBGPU_ADAPTER_HELP } from './session.js';
export {
  type Family,
  isGemma,
  type LayerType,
  type LinearRopeScaling,
  type Llama3RopeScaling,
  type ModelSpec,
  parameterCount,
  type RopeScaling,
  type RopeSpec,
  SUPPORTED_ARCHITECTURES,
  weightNames,
  weightShape,
} from './spec.js';
export type { Float32Tensor } from './tensor.js';
export {
  makeTinyModel,
  QWEN25_05B_SHAPE,
  TINY_FAMILIES,
  type TinyDtype,
  type TinyFamily,
  type TinyModelOptions,
} from './tiny.js';
export {
  ActivationCache,
  type Trace,
  type TraceInput,
  type TraceOptions,
  type TraceResult,
  type TraceSequence,
  traceTokens,
  writeTrace,
} from './trace.js';
export { tensorView, type View, viewOf } from './views.js';
