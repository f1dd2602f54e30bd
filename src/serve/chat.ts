/**
 * `POST /v1/chat/completions`: the request translated into a job ({@link chatJob}), submitted to the engine,
 * and its tokens written as a stream or one JSON answer. The request is cancelled when it times out (504) or
 * the client goes away.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from './apiError.js';
import { type ChatJobContext, chatJob } from './chatJob.js';
import type { ChatResponse } from './chatResponse.js';
import type { Engine, JobHandle } from './engine.js';
import { readBody } from './http.js';
import { JsonChatResponse } from './jsonResponse.js';
import type { FinishEvent, TokenEvent } from './messages.js';
import { SseChatResponse } from './sseResponse.js';

export interface ChatContext extends ChatJobContext {
  readonly engine: Engine;
  /** A request still unanswered this long after it arrived is cancelled and answered 504. */
  readonly timeoutMs: number;
  /** Request bodies over this get 413. */
  readonly maxBodyBytes: number;
}

/** Answers one chat completions request; `arrived` (performance.now()) starts its timeout. */
export async function handleChat(
  req: IncomingMessage,
  res: ServerResponse,
  arrived: number,
  ctx: ChatContext,
): Promise<void> {
  const raw = await readBody(req, ctx.maxBodyBytes);
  const { job, stream, includeUsage } = await chatJob(raw, ctx);
  const head = {
    modelId: ctx.modelId,
    n: job.n,
    promptTokens: job.prompt.length,
    monitorLayers: job.monitor?.layers ?? null,
  };
  const answer: ChatResponse = stream
    ? new SseChatResponse(res, { ...head, includeUsage })
    : new JsonChatResponse(res, { ...head, topLogprobs: job.topLogprobs });

  let handle: JobHandle | null = null;
  let settled = false;
  let left = job.n;
  const timer = setTimeout(
    () => {
      fail(
        new ApiError(
          504,
          `The request took longer than ${ctx.timeoutMs} ms; lower max_tokens or retry when the server is less busy.`,
          'timeout_error',
          'timeout',
        ),
      );
    },
    Math.max(1, ctx.timeoutMs - (performance.now() - arrived)),
  );
  const settle = (): boolean => {
    if (settled) return false;
    settled = true;
    clearTimeout(timer);
    return true;
  };
  function fail(e: ApiError): void {
    if (!settle()) return;
    handle?.cancel();
    answer.fail(e);
  }
  res.on('close', () => {
    // The client went away before the answer was complete: stop its generation.
    if (!res.writableFinished && settle()) handle?.cancel();
  });

  const onToken = (t: TokenEvent): void => {
    if (!settled) answer.token(t);
  };
  const onFinish = (f: FinishEvent): void => {
    if (settled) return;
    answer.finish(f);
    if (--left > 0) return;
    if (settle()) answer.end();
  };

  if (res.destroyed) {
    settle();
    return;
  }
  try {
    handle = ctx.engine.submit(job, { onToken, onFinish, onError: fail });
  } catch (e) {
    settle();
    throw e;
  }
  answer.open();
}
