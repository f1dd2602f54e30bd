/**
 * `emlens/serve`: the OpenAI-compatible server (chat completions with streaming and logprobs, the `emlens`
 * request field for steering, ablation and per-token monitoring, the playground page at `/`), its request schema
 * and response types.
 */
export { ApiError, type ApiErrorType } from './apiError.js';
export type { DirectionListing } from './directionList.js';
export {
  type ChatChoice,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatRequest,
  type ChunkChoice,
  chatRequestSchema,
  type DirectionSpec,
  type EmlensExtension,
  emlensExtensionSchema,
  type LogprobEntry,
  type MonitorEntry,
  type MonitorOutput,
  parseChatRequest,
  type RequestMonitor,
  type TopLogprob,
  type Usage,
} from './protocol.js';
export { type RunningServer, type ServeOptions, startServer } from './server.js';
