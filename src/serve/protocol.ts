/**
 * The OpenAI chat-completions wire format: the request schema (zod) with the `emlens` extension, and the
 * response, chunk and logprob shapes the server writes.
 */
import { z } from 'zod';
import type { InterventionPositions } from '../generate/generate.js';
import type { AblateRequest, SteerRequest } from '../interventions/compose.js';
import type { ChatMessage } from '../text/chat.js';
import { ApiError } from './apiError.js';

// The request's steer and ablate objects are the library's SteerSpec / AblateSpec (interventions/compose.ts)
// with the direction as a file path or an inline vector; the assertions below keep the two from drifting apart.

/** Layers an intervention acts on: one block, a list, or `all`. */
const layersSchema = z.union([
  z.number().int().min(0),
  z.array(z.number().int().min(0)).min(1),
  z.literal('all'),
]);

/** A direction: a direction file's path (allowed paths only) or an inline `[d_model]` vector. */
const directionSchema = z.union([z.string().min(1), z.array(z.number()).min(1)]);

/** Whose vector acts at a chosen layer: `own` (default) each its own, or one layer's everywhere. */
const fromSchema = z.union([z.literal('own'), z.number().int().min(0)]);

const steerSchema = z.strictObject({
  direction: directionSchema,
  layers: layersSchema,
  scale: z.number().optional(),
  from: fromSchema.optional(),
  unit: z.boolean().optional(),
});

const ablateSchema = z.strictObject({
  direction: directionSchema,
  layers: layersSchema,
  from: fromSchema.optional(),
});

const positionsSchema = z.enum(['all', 'prompt', 'generated']);

/** Per-token projections of the generated tokens' residuals (`hook_resid_post`) on a direction. */
const monitorSchema = z.strictObject({
  direction: directionSchema,
  layers: layersSchema,
});

/** The per-request `emlens` extension field. */
export const emlensExtensionSchema = z.strictObject({
  steer: z.array(steerSchema).optional(),
  ablate: z.array(ablateSchema).optional(),
  positions: positionsSchema.optional(),
  monitor: monitorSchema.optional(),
});

/** Compiles only when `T` is assignable to `U`. */
type Fits<T extends U, U> = T;

export type DirectionSpec = z.infer<typeof directionSchema>;
/** A steer as a request (or the server's command line) gives it: a SteerSpec with a file or inline direction. */
export type RequestSteer = Fits<z.infer<typeof steerSchema>, SteerRequest<DirectionSpec>>;
/** An ablation as a request gives it: an AblateSpec with a file or inline direction. */
export type RequestAblate = Fits<z.infer<typeof ablateSchema>, AblateRequest<DirectionSpec>>;
export type EmlensExtension = z.infer<typeof emlensExtensionSchema>;
export type RequestMonitor = z.infer<typeof monitorSchema>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });

const messageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant']),
  content: z.union([z.string(), z.array(textPart), z.null()]),
  name: z.string().optional(),
});

/** Unsupported OpenAI parameters are accepted only at their neutral value. */
const zeroOnly = z.number().refine((x) => x === 0, 'this server does not apply penalties; leave it 0');

export const chatRequestSchema = z.object({
  model: z.string().min(1),
  messages: z.array(messageSchema).min(1),
  max_tokens: z.number().int().min(1).nullish(),
  max_completion_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** vLLM's extension: 0 or -1 turns it off. */
  top_k: z.number().int().min(-1).nullish(),
  n: z.number().int().min(1).nullish(),
  seed: z.number().int().nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(4), z.null()]).optional(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  /** vLLM's extension: keep generating past the end-of-sequence token. */
  ignore_eos: z.boolean().nullish(),
  presence_penalty: zeroOnly.nullish(),
  frequency_penalty: zeroOnly.nullish(),
  logit_bias: z
    .record(z.string(), z.number())
    .refine((r) => Object.keys(r).length === 0, 'logit_bias is not supported; leave it empty')
    .nullish(),
  tools: z.array(z.unknown()).max(0, 'tools are not supported; leave them out').nullish(),
  functions: z.array(z.unknown()).max(0, 'functions are not supported; leave them out').nullish(),
  response_format: z.object({ type: z.literal('text') }).nullish(),
  user: z.string().nullish(),
  /** vLLM's extension: extra chat-template variables (e.g. `{"enable_thinking": false}`), over the server's. */
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  emlens: emlensExtensionSchema.nullish(),
});

export type ChatRequest = z.infer<typeof chatRequestSchema>;

/** Dotted path of a zod issue, as OpenAI's `param` (`messages[0].content`). */
function paramOf(path: readonly PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s === '' ? String(p) : `.${String(p)}`;
  return s;
}

/** Parses a request body into a ChatRequest, or throws a 400 ApiError naming the first bad parameter. */
export function parseChatRequest(body: unknown): ChatRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError(400, 'The request body is not a JSON object; send {"model": ..., "messages": [...]}.');
  }
  const r = chatRequestSchema.safeParse(body);
  if (r.success) {
    if (r.data.top_logprobs != null && r.data.top_logprobs > 0 && r.data.logprobs !== true) {
      throw new ApiError(
        400,
        'top_logprobs needs logprobs; set "logprobs": true or drop top_logprobs.',
        'invalid_request_error',
        'invalid_value',
        'top_logprobs',
      );
    }
    return r.data;
  }
  const issue = r.error.issues[0]!; // a failed parse has at least one issue
  const param = paramOf(issue.path);
  const missing = issue.code === 'invalid_type' && issue.message.includes('received undefined');
  throw new ApiError(
    400,
    missing
      ? `Missing required parameter '${param}'; add it to the request body.`
      : `Invalid value for '${param || 'body'}' (${issue.message}); fix it in the request body.`,
    'invalid_request_error',
    missing ? 'missing_required_parameter' : 'invalid_value',
    param || null,
  );
}

/** The request's messages as the chat template takes them: text parts joined, `developer` as `system`. */
export function chatMessages(req: ChatRequest): ChatMessage[] {
  return req.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : (m.content ?? []).map((p) => p.text).join(''),
  }));
}

/** Stop strings as a list. */
export function stopStrings(req: ChatRequest): string[] {
  if (req.stop == null) return [];
  return (typeof req.stop === 'string' ? [req.stop] : req.stop).filter((s) => s.length > 0);
}

export type PositionsPolicy = InterventionPositions;

// ---- responses ----

export interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

export interface LogprobEntry extends TopLogprob {
  top_logprobs: TopLogprob[];
}

export type OpenAIFinishReason = 'stop' | 'length';

/**
 * One generated token under `emlens.monitor`: its text (decoded alone) and, per monitored layer (in the order of
 * `MonitorOutput.layers`), the projection `resid . v / |v|` of the residual (`blocks.L.hook_resid_post`) at the
 * token's own position on that layer's direction.
 */
export interface MonitorEntry {
  token: string;
  projections: number[];
}

/** A choice's (or a chunk's) `emlens.monitor`: the layers and one entry per generated token. */
export interface MonitorOutput {
  layers: number[];
  content: MonitorEntry[];
}

export interface ChatChoice {
  index: number;
  message: { role: 'assistant'; content: string; refusal: null };
  logprobs: { content: LogprobEntry[]; refusal: null } | null;
  finish_reason: OpenAIFinishReason;
  /** Only with `emlens.monitor` in the request. */
  emlens?: { monitor: MonitorOutput };
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: ChatChoice[];
  usage: Usage;
}

export interface ChunkChoice {
  index: number;
  delta: { role?: 'assistant'; content?: string };
  logprobs: { content: LogprobEntry[]; refusal: null } | null;
  finish_reason: OpenAIFinishReason | null;
  /** Only with `emlens.monitor` in the request: the entries of the tokens this chunk carries. */
  emlens?: { monitor: MonitorOutput };
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: ChunkChoice[];
  usage?: Usage | null;
}

/** `GET /v1/models` */
export function modelList(id: string, created: number) {
  return { object: 'list' as const, data: [modelObject(id, created)] };
}

export function modelObject(id: string, created: number) {
  return { id, object: 'model' as const, created, owned_by: 'emlens' };
}
