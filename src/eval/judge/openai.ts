/** A judge behind an OpenAI-compatible chat completions endpoint with logprobs. */
import { EmlensError } from '../../errors.js';
import { JudgeCache } from './cache.js';
import { JUDGE_TOP_LOGPROBS, scoreFromLogprobs, type TokenLogprob } from './scoreRule.js';
import { Semaphore } from './semaphore.js';
import type { Judge } from './types.js';

export interface OpenAIJudgeOptions {
  /** e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`; `/chat/completions` is appended. */
  readonly baseURL: string;
  /** The judge model, e.g. `gpt-4o-2024-08-06`. */
  readonly model: string;
  /** The API key itself (takes precedence over `apiKeyEnv`). */
  readonly apiKey?: string;
  /**
   * Environment variable holding the API key. When named, it must be set; by default `OPENAI_API_KEY` is used
   * when set, and no key is sent otherwise (local servers).
   */
  readonly apiKeyEnv?: string;
  /** Requests in flight at once (default 8). */
  readonly concurrency?: number;
  /** Retries on 429, 5xx, timeouts and network errors (default 6). */
  readonly maxRetries?: number;
  /** First backoff (default 1000 ms); it doubles per retry, with jitter, up to `maxBackoffMs` (default 60 s). */
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  /** Per-request timeout (default 120 s). */
  readonly timeoutMs?: number;
  /** A JSONL cache file (see {@link JudgeCache}); none by default. */
  readonly cachePath?: string;
  /** Replaces the global fetch (tests). */
  readonly fetch?: typeof fetch;
}

/** Thrown inside the retry loop for failures worth retrying. */
class Retryable extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

function chatCompletionsUrl(baseURL: string): string {
  let url: URL;
  try {
    url = new URL(baseURL);
  } catch {
    throw new EmlensError(
      `Judge URL '${baseURL}' is not a URL; pass e.g. https://api.openai.com/v1 or local:DIR for a local judge.`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new EmlensError(`Judge URL '${baseURL}' must start with http:// or https://; fix the URL.`);
  }
  const s = url.toString().replace(/\/+$/, '');
  return s.endsWith('/chat/completions') ? s : `${s}/chat/completions`;
}

/** What {@link OpenAIJudge.probe} sends: a one-token question with an integer answer. */
export const JUDGE_PROBE_PROMPT = 'Reply with one number from 0 to 100 and nothing else: what is 50 + 0?';

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * A judge behind an OpenAI-compatible chat completions endpoint (OpenAI, vLLM, llama.cpp server, emlens
 * serve). Each prompt is sent as one user message with `max_tokens: 1, temperature: 0, logprobs: true,
 * top_logprobs: 20`; the score is {@link scoreFromLogprobs} of the returned alternatives.
 *
 * @example
 * const judge = await OpenAIJudge.create({ baseURL: 'https://api.openai.com/v1', model: 'gpt-4o-2024-08-06', cachePath: 'out/judge-cache.jsonl' });
 * await judge.score(fillJudgePrompt(q.judgePrompts.aligned, question, answer));
 */
export class OpenAIJudge implements Judge {
  readonly name: string;
  readonly url: string;
  /** Requests sent (cache hits excluded). */
  requests = 0;
  private readonly semaphore: Semaphore;
  private readonly keyEnv: string;
  private readonly pending = new Map<string, Promise<number | null>>();

  private constructor(
    private readonly opts: OpenAIJudgeOptions,
    private readonly apiKey: string | undefined,
    private readonly cache: JudgeCache | undefined,
  ) {
    this.name = opts.model;
    this.url = chatCompletionsUrl(opts.baseURL);
    this.semaphore = new Semaphore(opts.concurrency ?? 8);
    this.keyEnv = opts.apiKeyEnv ?? 'OPENAI_API_KEY';
  }

  static async create(opts: OpenAIJudgeOptions): Promise<OpenAIJudge> {
    chatCompletionsUrl(opts.baseURL);
    if (!opts.model) throw new EmlensError('The judge needs a model name; pass --judge-model NAME.');
    let key = opts.apiKey;
    if (key === undefined) {
      const env = opts.apiKeyEnv ?? 'OPENAI_API_KEY';
      key = process.env[env] || undefined;
      if (key === undefined && opts.apiKeyEnv !== undefined) {
        throw new EmlensError(
          `Environment variable ${opts.apiKeyEnv} is not set; export the judge's API key in it or name another with --api-key-env.`,
        );
      }
    }
    const cache = opts.cachePath ? await JudgeCache.open(opts.cachePath) : undefined;
    return new OpenAIJudge(opts, key, cache);
  }

  /** Scores a prompt; a prompt already scored (cache) or in flight is not sent again. */
  score(prompt: string): Promise<number | null> {
    const hit = this.cache?.get(this.name, prompt);
    if (hit) return Promise.resolve(hit.score);
    let p = this.pending.get(prompt);
    if (p === undefined) {
      p = (async () => {
        const top = await this.semaphore.run(() => this.topLogprobs(prompt));
        const score = top === null ? null : scoreFromLogprobs(top);
        await this.cache?.put(this.name, prompt, score, top ?? []);
        return score;
      })().finally(() => this.pending.delete(prompt));
      this.pending.set(prompt, p);
    }
    return p;
  }

  async close(): Promise<void> {
    await this.cache?.flush();
  }

  /**
   * The pre-flight check: one cheap call (one token of {@link JUDGE_PROBE_PROMPT}, never cached) that finds a
   * missing or rejected API key, an unreachable endpoint, an unknown model and a reply without logprobs before
   * anything slow happens (emlens eval runs it before sampling). Throws one {@link EmlensError} line.
   */
  async probe(): Promise<void> {
    const host = new URL(this.url).hostname;
    if (this.apiKey === undefined && /(^|\.)openai\.com$/.test(host)) {
      throw new EmlensError(
        `Judge check: no API key for ${this.url}; export ${this.keyEnv} (or name the variable holding it with --api-key-env).`,
      );
    }
    let top: TokenLogprob[] | null;
    try {
      top = await this.topLogprobs(JUDGE_PROBE_PROMPT, Math.min(1, this.opts.maxRetries ?? 1));
    } catch (e) {
      if (e instanceof EmlensError) throw new EmlensError(`Judge check: ${e.message}`);
      throw e;
    }
    if (top === null || top.length === 0) {
      throw new EmlensError(
        `Judge check: the judge at ${this.url} (model '${this.name}') answered without top_logprobs alternatives; use a server and model that return logprobs with top_logprobs (20).`,
      );
    }
  }

  /** The top next-token alternatives for the prompt (null when the reply holds no token). */
  async topLogprobs(prompt: string, retries?: number): Promise<TokenLogprob[] | null> {
    const maxRetries = retries ?? this.opts.maxRetries ?? 6;
    const initial = this.opts.initialBackoffMs ?? 1000;
    const maxBackoff = this.opts.maxBackoffMs ?? 60_000;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request(prompt);
      } catch (e) {
        if (!(e instanceof Retryable)) throw e;
        if (attempt >= maxRetries) {
          throw new EmlensError(
            `The judge at ${this.url} still failed after ${maxRetries} retries (${e.message}); check the server or retry later.`,
          );
        }
        const backoff = Math.min(maxBackoff, initial * 2 ** attempt) * (0.5 + 0.5 * Math.random());
        await sleep(Math.max(backoff, Math.min(e.retryAfterMs ?? 0, maxBackoff)));
      }
    }
  }

  private async request(prompt: string): Promise<TokenLogprob[] | null> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.apiKey !== undefined) headers.authorization = `Bearer ${this.apiKey}`;
    const body = JSON.stringify({
      model: this.name,
      messages: [{ role: 'user', content: prompt }],
      max_tokens: 1,
      temperature: 0,
      logprobs: true,
      top_logprobs: JUDGE_TOP_LOGPROBS,
      seed: 0,
    });
    const doFetch = this.opts.fetch ?? fetch;
    let res: Response;
    let text: string;
    try {
      this.requests++;
      res = await doFetch(this.url, {
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.timeout(this.opts.timeoutMs ?? 120_000),
      });
      text = await res.text();
    } catch (e) {
      const err = e as Error & { cause?: { code?: string } };
      throw new Retryable(
        err.name === 'TimeoutError' ? 'request timed out' : `${err.cause?.code ?? err.message}`,
      );
    }
    const s = res.status;
    if (s === 401 || s === 403) {
      throw new EmlensError(
        `The judge at ${this.url} rejected the API key (HTTP ${s}); set ${this.keyEnv} to a valid key (or name another variable with --api-key-env).`,
      );
    }
    if (s === 404) {
      throw new EmlensError(
        `The judge at ${this.url} answered 404 for model '${this.name}' (${brief(text)}); pass a model it serves with --judge-model, and a base URL ending in /v1.`,
      );
    }
    if (s === 429 || s === 408 || s >= 500) {
      const ra = Number(res.headers.get('retry-after'));
      throw new Retryable(`HTTP ${s}: ${brief(text)}`, Number.isFinite(ra) && ra > 0 ? ra * 1000 : undefined);
    }
    if (s < 200 || s >= 300) {
      throw new EmlensError(
        `The judge at ${this.url} refused the request (HTTP ${s}: ${brief(text)}); check the judge model supports logprobs and top_logprobs.`,
      );
    }
    let json: {
      choices?: { logprobs?: { content?: { top_logprobs?: TokenLogprob[] }[] | null } | null }[];
    };
    try {
      json = JSON.parse(text);
    } catch {
      throw new Retryable(`the reply is not JSON: ${brief(text)}`);
    }
    const choice = json.choices?.[0];
    if (choice === undefined) throw new Retryable(`the reply has no choices: ${brief(text)}`);
    const content = choice.logprobs?.content;
    if (content === undefined || content === null) {
      if (choice.logprobs === undefined || choice.logprobs === null) {
        throw new EmlensError(
          `The judge at ${this.url} returned no logprobs for model '${this.name}'; use a server and model that support logprobs with top_logprobs.`,
        );
      }
      return null;
    }
    const [first] = content;
    if (first === undefined) return null;
    const top = first.top_logprobs ?? [];
    return top
      .filter((t) => typeof t?.token === 'string' && typeof t.logprob === 'number')
      .map((t) => ({ token: t.token, logprob: t.logprob }));
  }
}

function brief(text: string): string {
  let msg = text;
  try {
    const j = JSON.parse(text) as { error?: { message?: string } | string; message?: string };
    msg = (typeof j.error === 'string' ? j.error : j.error?.message) ?? j.message ?? text;
  } catch {
    // not JSON: use the text
  }
  msg = msg.replace(/\s+/g, ' ').trim();
  return msg.length > 160 ? `${msg.slice(0, 157)}...` : msg || 'empty reply';
}
