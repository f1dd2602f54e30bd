/** A chat completion streamed as server-sent events: a chunk per token, `data: [DONE]` at the end. */
import { ChatResponse, type ChatResponseOptions } from './chatResponse.js';
import type { FinishEvent, TokenEvent } from './messages.js';
import type { ChatCompletionChunk, ChunkChoice, OpenAIFinishReason } from './protocol.js';

export interface SseChatResponseOptions extends ChatResponseOptions {
  /** Each chunk carries `usage: null` and a last chunk the usage (`stream_options.include_usage`). */
  readonly includeUsage: boolean;
}

export class SseChatResponse extends ChatResponse<SseChatResponseOptions> {
  /** Sends the headers and a first chunk with each choice's role. */
  open(): void {
    this.res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    this.chunk(
      Array.from({ length: this.opts.n }, (_, index) => ({
        index,
        delta: { role: 'assistant', content: '' },
        logprobs: null,
        finish_reason: null,
      })),
    );
  }

  token(t: TokenEvent): void {
    if (t.delta === '' && !t.logprob && !t.monitor) return;
    const layers = this.opts.monitorLayers;
    this.chunk([
      {
        index: t.sample,
        delta: t.delta !== '' ? { content: t.delta } : {},
        logprobs: t.logprob ? { content: [t.logprob], refusal: null } : null,
        finish_reason: null,
        ...(t.monitor && layers
          ? { emlens: { monitor: { layers: [...layers], content: [t.monitor] } } }
          : {}),
      },
    ]);
  }

  override finish(f: FinishEvent): OpenAIFinishReason {
    const reason = super.finish(f);
    this.chunk([
      {
        index: f.sample,
        delta: f.delta !== '' ? { content: f.delta } : {},
        logprobs: null,
        finish_reason: reason,
      },
    ]);
    return reason;
  }

  end(): void {
    if (this.opts.includeUsage) this.chunk([], { usage: this.usage() });
    this.res.end('data: [DONE]\n\n');
  }

  private chunk(choices: ChunkChoice[], extra: Partial<ChatCompletionChunk> = {}): void {
    const body: ChatCompletionChunk = {
      ...this.head('chat.completion.chunk'),
      choices,
      ...(this.opts.includeUsage ? { usage: null } : {}),
      ...extra,
    };
    this.res.write(`data: ${JSON.stringify(body)}\n\n`);
  }
}
