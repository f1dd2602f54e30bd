/**
 * A chat completions request translated into a generation job: the body parsed and checked against the
 * served model and the server's limits, the messages encoded with the chat template, and the request's own
 * interventions built after the server's.
 */
import { randomInt } from 'node:crypto';
import { EmlensError } from '../errors.js';
import type { Intervention } from '../model/interventions.js';
import { encodeChat, templateVarsProblem } from '../text/chat.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import { ApiError } from './apiError.js';
import type { JobRequest } from './engine.js';
import { buildInterventions, type DirectionResolver, interventionKey } from './interventions.js';
import type { ModelInfo } from './messages.js';
import { buildMonitor } from './monitor.js';
import {
  type ChatRequest,
  chatMessages,
  type PositionsPolicy,
  parseChatRequest,
  stopStrings,
} from './protocol.js';

/** What the translation needs to know about the server. */
export interface ChatJobContext {
  /** The id requests must name in `model`. */
  readonly modelId: string;
  readonly tokenizer: TextTokenizer;
  readonly info: ModelInfo;
  readonly resolver: DirectionResolver;
  /** Rows generated together at most (bounds `n`). */
  readonly maxBatch: number;
  /** Prompt + max_tokens at most. */
  readonly tokenLimit: number;
  /** The server's own interventions, applied before the request's. */
  readonly serverInterventions: readonly Intervention[];
  /** Where interventions act unless the request says otherwise. */
  readonly defaultPositions: PositionsPolicy;
  /** The server's chat-template variables; a request's `chat_template_kwargs` add to and override them. */
  readonly templateVars?: Readonly<Record<string, unknown>>;
}

/** A checked request: the job for the engine and how its answer is to be written. */
export interface ChatJob {
  readonly job: JobRequest;
  /** Whether the answer is streamed (SSE). */
  readonly stream: boolean;
  /** Whether a stream ends with a usage chunk. */
  readonly includeUsage: boolean;
}

/** Parses and checks a request body; a problem with the request is an {@link ApiError} naming the field. */
export async function chatJob(raw: Buffer, ctx: ChatJobContext): Promise<ChatJob> {
  const { modelId, maxBatch, tokenLimit } = ctx;
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (e) {
    throw new ApiError(
      400,
      `The request body is not valid JSON (${(e as Error).message}); send a JSON object.`,
      'invalid_request_error',
      'invalid_json',
    );
  }
  const r: ChatRequest = parseChatRequest(body);
  if (r.model !== modelId) {
    throw new ApiError(
      404,
      `The model '${r.model}' does not exist on this server; use '${modelId}' (GET /v1/models lists it).`,
      'invalid_request_error',
      'model_not_found',
      'model',
    );
  }
  const n = r.n ?? 1;
  if (n > maxBatch) {
    throw new ApiError(
      400,
      `n is ${n} but this server generates at most ${maxBatch} rows together; lower n or raise --max-batch.`,
      'invalid_request_error',
      'invalid_value',
      'n',
    );
  }
  const asks = r.chat_template_kwargs ?? undefined;
  const problem = asks === undefined ? null : templateVarsProblem(asks);
  if (problem !== null) {
    throw new ApiError(
      400,
      `chat_template_kwargs ${problem}; send an object such as {"enable_thinking": false}.`,
      'invalid_request_error',
      'invalid_value',
      'chat_template_kwargs',
    );
  }
  const templateVars = asks === undefined ? ctx.templateVars : { ...ctx.templateVars, ...asks };
  let prompt: number[];
  try {
    prompt = encodeChat(ctx.tokenizer, chatMessages(r), { addGenerationPrompt: true, templateVars });
  } catch (e) {
    throw e instanceof EmlensError
      ? new ApiError(400, e.message, 'invalid_request_error', 'invalid_value', 'messages')
      : e;
  }
  if (prompt.length >= tokenLimit) {
    throw new ApiError(
      400,
      `The messages have ${prompt.length} tokens but this server allows ${tokenLimit} tokens in all (prompt + max_tokens); shorten the messages.`,
      'invalid_request_error',
      'context_length_exceeded',
      'messages',
    );
  }
  const asked = r.max_completion_tokens ?? r.max_tokens ?? null;
  if (asked !== null && prompt.length + asked > tokenLimit) {
    throw new ApiError(
      400,
      `The messages (${prompt.length} tokens) plus max_tokens (${asked}) exceed this server's limit of ${tokenLimit} tokens; lower max_tokens to at most ${tokenLimit - prompt.length}.`,
      'invalid_request_error',
      'context_length_exceeded',
      r.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
    );
  }
  const maxTokens = asked ?? tokenLimit - prompt.length;
  const ext = r.emlens ?? {};
  const own = await buildInterventions(ext, ctx.info, ctx.resolver, 'emlens');
  const interventions = [...ctx.serverInterventions, ...own];
  const positions = ext.positions ?? ctx.defaultPositions;
  const monitor = ext.monitor === undefined ? null : await buildMonitor(ext.monitor, ctx.info, ctx.resolver);
  const stream = r.stream === true;
  return {
    stream,
    includeUsage: stream && r.stream_options?.include_usage === true,
    job: {
      prompt,
      n,
      maxTokens,
      temperature: r.temperature ?? 1,
      topP: r.top_p ?? 1,
      topK: r.top_k == null || r.top_k < 0 ? 0 : r.top_k,
      seed: r.seed ?? randomInt(2 ** 31),
      stop: stopStrings(r),
      ignoreEos: r.ignore_eos === true,
      topLogprobs: r.logprobs === true ? (r.top_logprobs ?? 0) : null,
      monitor,
      key: interventionKey(interventions, positions),
      interventions,
      positions,
    },
  };
}
