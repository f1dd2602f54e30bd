/**
 * `emlens/generate`: generation and its parts: the decode loop (prefill, then one token per row through the
 * KV cache), sampling, and the output buffers a loop reuses from step to step.
 */
export { DecodeBuffers, type KvArray, type OutputBuffers } from '../model/outputBuffers.js';
export {
  type DecodeLoopOptions,
  type DecodeStats,
  type DecodeStep,
  decodeLoop,
  type InterventionPositions,
} from './decodeLoop.js';
export {
  type FinishReason,
  type GenerateOptions,
  type Generation,
  generate,
  TextStreamer,
} from './generate.js';
export { argmax, checkSamplingParams, type SamplingParams, sampleToken, topKIndices } from './sampling.js';
