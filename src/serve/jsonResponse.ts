/** A chat completion sent whole as one JSON body once every choice has finished. */
import { ChatResponse, type ChatResponseOptions } from './chatResponse.js';
import { sendJson } from './http.js';
import type { FinishEvent, TokenEvent } from './messages.js';
import type { ChatChoice, LogprobEntry, MonitorEntry, OpenAIFinishReason } from './protocol.js';

export interface JsonChatResponseOptions extends ChatResponseOptions {
  /** null: the answer has no logprobs. */
  readonly topLogprobs: number | null;
}

export class JsonChatResponse extends ChatResponse<JsonChatResponseOptions> {
  /** Per choice: its logprobs, text and finish reason. */
  private readonly choices = Array.from({ length: this.opts.n }, () => ({
    logprobs: [] as LogprobEntry[],
    monitor: [] as MonitorEntry[],
    text: '',
    finish: null as OpenAIFinishReason | null,
  }));

  /** Nothing is sent before the answer is complete. */
  open(): void {}

  token(t: TokenEvent): void {
    // Samples are numbered 0..n-1, one choice each.
    const c = this.choices[t.sample]!;
    if (t.logprob) c.logprobs.push(t.logprob);
    if (t.monitor) c.monitor.push(t.monitor);
  }

  override finish(f: FinishEvent): OpenAIFinishReason {
    const c = this.choices[f.sample]!; // samples are numbered 0..n-1, one choice each
    c.text = f.text;
    c.finish = super.finish(f);
    return c.finish;
  }

  end(): void {
    const layers = this.opts.monitorLayers;
    const choices: ChatChoice[] = this.choices.map((ch, index) => ({
      index,
      message: { role: 'assistant', content: ch.text, refusal: null },
      logprobs: this.opts.topLogprobs === null ? null : { content: ch.logprobs, refusal: null },
      finish_reason: ch.finish!, // end() comes after every sample's finish()
      ...(layers ? { emlens: { monitor: { layers: [...layers], content: ch.monitor } } } : {}),
    }));
    sendJson(this.res, 200, { ...this.head('chat.completion'), choices, usage: this.usage() });
  }
}
