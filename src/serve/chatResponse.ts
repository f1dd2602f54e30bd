/**
 * What the two ways of answering a chat completion share: the completion's id and head fields, token usage,
 * the OpenAI finish reason, and how a failure is written (an error answer, or an error event once a stream
 * has begun). {@link SseChatResponse} streams the answer; {@link JsonChatResponse} sends it whole.
 */

import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { FinishReason } from '../generate/generate.js';
import type { ApiError } from './apiError.js';
import { sendError } from './http.js';
import type { FinishEvent, TokenEvent } from './messages.js';
import type { OpenAIFinishReason, Usage } from './protocol.js';

export interface ChatResponseOptions {
  /** The served model id the answer names. */
  readonly modelId: string;
  /** Choices in the answer (the request's `n`). */
  readonly n: number;
  readonly promptTokens: number;
  /** The monitored layers (`emlens.monitor`), or null. */
  readonly monitorLayers: readonly number[] | null;
}

export function finishReason(r: FinishReason): OpenAIFinishReason {
  return r === 'length' ? 'length' : 'stop';
}

/** Writes one request's answer as the engine reports its tokens. */
export abstract class ChatResponse<O extends ChatResponseOptions = ChatResponseOptions> {
  private readonly id = `chatcmpl-${randomUUID().replaceAll('-', '')}`;
  private readonly created = Math.floor(Date.now() / 1000);
  private completionTokens = 0;

  constructor(
    protected readonly res: ServerResponse,
    protected readonly opts: O,
  ) {}

  /** The job was submitted. */
  abstract open(): void;
  /** A row produced a token. */
  abstract token(t: TokenEvent): void;
  /** Every choice finished: complete the answer. */
  abstract end(): void;

  /** A row finished; returns its OpenAI finish reason. */
  finish(f: FinishEvent): OpenAIFinishReason {
    this.completionTokens += f.tokens;
    return finishReason(f.finishReason);
  }

  /** The request failed: an error answer, or an error event ending a stream that has begun. */
  fail(e: ApiError): void {
    if (!this.res.headersSent) sendError(this.res, e);
    else if (!this.res.writableEnded) {
      this.res.write(`data: ${JSON.stringify(e.body())}\n\n`);
      this.res.end();
    }
  }

  protected head<T extends string>(object: T) {
    return {
      id: this.id,
      object,
      created: this.created,
      model: this.opts.modelId,
      system_fingerprint: 'emlens',
    };
  }

  protected usage(): Usage {
    const prompt = this.opts.promptTokens;
    return {
      prompt_tokens: prompt,
      completion_tokens: this.completionTokens,
      total_tokens: prompt + this.completionTokens,
    };
  }
}
