/**
 * Gradients over emlens's own graphs (onnxruntime has no training API): a reverse-mode tape that emits the
 * backward pass as more ONNX nodes, the decoder forward in tape ops, the CE and KL losses, and what is built on
 * them: `gradient` (what `emlens grad` writes).
 */
export { type GradRow, MASKED, type PackedBatch, packBatch } from './batch.js';
export { type DecoderOutputs, emitDecoder, GRAD_IO, layerKinds } from './forward.js';
export { type GradientOptions, type GradientResult, gradient } from './gradient.js';
export {
  type FloatArray,
  GradModel,
  type GradModelOptions,
  type RunOptions,
  type RunResult,
} from './gradModel.js';
export { buildGradGraph, type GradGraph, type GradGraphOptions, LOSS_IO } from './graph.js';
export {
  checkParams,
  LORA_MODULES,
  type LoraModuleName,
  type LoraParamSpec,
  moduleDims,
  moduleWeight,
  PARAM,
  type ParamSpec,
  residualSite,
  type SteerParamSpec,
  steerShape,
} from './params.js';
export { broadcastShape, type FloatType, TAPE_OPSET, Tape, type Val } from './tape.js';
export {
  CHECKPOINT_FORMAT,
  type StepLosses,
  type TrainVectorOptions,
  type TrainVectorResult,
  trainSteeringVector,
} from './train.js';
export { TRAIN_FILES, type TrainProvenance, trainedDirection, writeTrainOutput } from './trainOutput.js';
export { type FrozenWeights, frozenWeightsFrom, loadFrozenWeights } from './weights.js';
