/** emlens: the public API. */

export { EmlensError } from './errors.js';
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
} from './model/lora.js';
export {
  type ForwardOptions,
  type ForwardResult,
  type KVCache,
  type LoadModelOptions,
  type LoadStats,
  loadModel,
  Model,
} from './model/model.js';
export { ropeInvFreq, ropeTables } from './model/rope.js';
export { CUDA_INSTALL_COMMAND, cudaAvailable, type Device } from './model/session.js';
export { type Family, type ModelSpec, parameterCount, SUPPORTED_ARCHITECTURES } from './model/spec.js';
export type { Float32Tensor } from './model/tensor.js';
export { makeTinyModel, QWEN25_05B_SHAPE, type TinyModelOptions } from './model/tiny.js';
export { type Trace, traceTokens, writeTrace } from './model/trace.js';
export { loadTokenizer, type TextTokenizer } from './text/tokenizer.js';
