/**
 * Judges: a model that reads a filled judge prompt and answers with a number from 0 to 100. The score is read
 * off the next-token distribution, as the public EM code does: the top-20 alternatives that are integer
 * strings 0..100 are renormalised over themselves and averaged; when their total probability is below 0.25
 * (the judge said CODE, REFUSAL or something else) there is no score.
 *
 * Two implementations: {@link OpenAIJudge} (any OpenAI-compatible chat completions endpoint with logprobs) and
 * {@link LocalJudge} (a model loaded by emlens, scored over its own vocabulary).
 */
import { createHash } from 'node:crypto';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EmlensError } from '../errors.js';
import { topKIndices } from '../generate/sampling.js';
import { type LoadModelOptions, loadModel, type Model } from '../model/model.js';
import { encodeChat } from '../text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.js';
import { type EvalQuestion, fillJudgePrompt } from './questions.js';
import type { ResponseRecord } from './responses.js';

/** A judge scores one filled judge prompt: a number in [0, 100], or null when it gave no number. */
export interface Judge {
  /** Identifies the judge (model name, or `local:DIR`); part of cache keys and reports. */
  readonly name: string;
  score(prompt: string): Promise<number | null>;
  /** Releases what the judge holds (a loaded model); optional. */
  close?(): Promise<void>;
}

/** One next-token alternative with its log probability. */
export interface TokenLogprob {
  readonly token: string;
  readonly logprob: number;
}

/** Number of next-token alternatives the rule reads. */
export const JUDGE_TOP_LOGPROBS = 20;
/** Below this total probability on integer tokens there is no score. */
export const JUDGE_MIN_MASS = 0.25;

/** The integer 0..100 a token stands for (after trimming whitespace), or null. */
export function scoreToken(token: string): number | null {
  const t = token.trim();
  if (!/^\d{1,3}$/.test(t)) return null;
  const k = Number(t);
  return k <= 100 ? k : null;
}

/**
 * The logprob-weighted score: the alternatives that are integers 0..100 (after trimming whitespace; `' 7'` is
 * 7), their probabilities renormalised over themselves, and the score `sum p*k / sum p`. Null when their total
 * probability is below `minMass` (0.25).
 *
 * @example
 * scoreFromLogprobs([{ token: '90', logprob: Math.log(0.6) }, { token: '80', logprob: Math.log(0.2) }]); // 87.5
 */
export function scoreFromLogprobs(
  alternatives: readonly TokenLogprob[],
  minMass = JUDGE_MIN_MASS,
): number | null {
  let mass = 0;
  let weighted = 0;
  for (const a of alternatives) {
    const k = scoreToken(a.token);
    if (k === null || !Number.isFinite(a.logprob)) continue;
    const p = Math.exp(a.logprob);
    mass += p;
    weighted += p * k;
  }
  return mass < minMass ? null : weighted / mass;
}

// ---------------------------------------------------------------------------------------------------------
// Cache

interface CacheLine {
  readonly key: string;
  readonly model: string;
  readonly score: number | null;
  readonly top?: readonly TokenLogprob[];
}

/**
 * A persistent judge cache: a JSONL file of `{key, model, score, top}` lines, keyed by the sha256 of the judge
 * model and the prompt, appended as results arrive, so a rerun does not pay for a prompt twice. A torn last
 * line (an interrupted write) is ignored.
 */
export class JudgeCache {
  private readonly entries = new Map<string, CacheLine>();
  private writes: Promise<void> = Promise.resolve();

  private constructor(readonly path: string) {}

  static key(model: string, prompt: string): string {
    return createHash('sha256').update(model).update('\u0000').update(prompt).digest('hex');
  }

  /** Opens (or starts) the cache at `path`. */
  static async open(path: string): Promise<JudgeCache> {
    const cache = new JudgeCache(path);
    let text = '';
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new EmlensError(
          `Cannot read the judge cache ${path} (${(e as Error).message}); fix or delete it.`,
        );
      }
    }
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const v = JSON.parse(line) as CacheLine;
        if (typeof v.key === 'string' && (v.score === null || typeof v.score === 'number'))
          cache.entries.set(v.key, v);
      } catch {
        // a torn line from an interrupted run: that prompt is simply judged again
      }
    }
    return cache;
  }

  get size(): number {
    return this.entries.size;
  }

  get(model: string, prompt: string): CacheLine | undefined {
    return this.entries.get(JudgeCache.key(model, prompt));
  }

  /** Records a result; the line is appended in order with the other writes. */
  put(model: string, prompt: string, score: number | null, top?: readonly TokenLogprob[]): Promise<void> {
    const line: CacheLine = { key: JudgeCache.key(model, prompt), model, score, ...(top ? { top } : {}) };
    this.entries.set(line.key, line);
    this.writes = this.writes.then(async () => {
      await mkdir(dirname(this.path), { recursive: true });
      await appendFile(this.path, `${JSON.stringify(line)}\n`);
    });
    return this.writes;
  }

  /** Waits for pending appends. */
  flush(): Promise<void> {
    return this.writes;
  }
}

/** At most `limit` tasks at once; the rest wait in order. */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {
    if (!Number.isInteger(limit) || limit <= 0) {
      throw new EmlensError(`Concurrency must be a positive integer, not ${limit}.`);
    }
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// OpenAI-compatible judge

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

  /** The top next-token alternatives for the prompt (null when the reply holds no token). */
  async topLogprobs(prompt: string): Promise<TokenLogprob[] | null> {
    const maxRetries = this.opts.maxRetries ?? 6;
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
    if (content.length === 0) return null;
    const top = content[0].top_logprobs ?? [];
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

// ---------------------------------------------------------------------------------------------------------
// Local judge

export interface LocalJudgeOptions extends LoadModelOptions {
  /** Prompts scored in one forward pass (default 8). */
  readonly batchSize?: number;
}

/**
 * A judge that is a model loaded by emlens: the prompt is rendered with the model's chat template (with the
 * generation prompt), one forward pass gives the next-token logits, and the score is
 * {@link scoreFromLogprobs} over the 20 most likely tokens of its vocabulary, each decoded on its own.
 * Concurrent `score` calls are batched into one forward pass.
 *
 * @example
 * const judge = await loadLocalJudge('models/Qwen2.5-7B-Instruct');
 * await judge.score(prompt);
 * await judge.close();
 */
export class LocalJudge implements Judge {
  readonly name: string;
  private readonly queue: {
    ids: number[];
    resolve: (v: TokenLogprob[]) => void;
    reject: (e: unknown) => void;
  }[] = [];
  private running = false;
  private readonly batchSize: number;

  constructor(
    readonly model: Model,
    readonly tokenizer: TextTokenizer,
    opts: { readonly name?: string; readonly batchSize?: number } = {},
  ) {
    this.name = opts.name ?? `local:${model.dir}`;
    this.batchSize = opts.batchSize ?? 8;
    if (!Number.isInteger(this.batchSize) || this.batchSize <= 0) {
      throw new EmlensError(`The judge batch size must be a positive integer, not ${this.batchSize}.`);
    }
  }

  async score(prompt: string): Promise<number | null> {
    return scoreFromLogprobs(await this.topLogprobs(prompt));
  }

  /** The 20 most likely next tokens (decoded) with their log probabilities, best first. */
  topLogprobs(prompt: string): Promise<TokenLogprob[]> {
    const ids = encodeChat(this.tokenizer, [{ role: 'user', content: prompt }], {
      addGenerationPrompt: true,
    });
    return new Promise((resolve, reject) => {
      this.queue.push({ ids, resolve, reject });
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.drain());
      }
    });
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.batchSize);
        try {
          const r = await this.model.forward(batch.map((b) => b.ids));
          const vocab = this.model.spec.vocabSize;
          batch.forEach((b, i) => {
            b.resolve(this.top(r.logits.data.subarray(i * vocab, (i + 1) * vocab)));
          });
        } catch (e) {
          for (const b of batch) b.reject(e);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** Softmax (float64) of one row of logits, then the top tokens decoded. */
  private top(logits: Float32Array): TokenLogprob[] {
    let max = Number.NEGATIVE_INFINITY;
    for (const x of logits) if (x > max) max = x;
    let z = 0;
    for (const x of logits) z += Math.exp(x - max);
    const logZ = max + Math.log(z);
    return [...topKIndices(logits, JUDGE_TOP_LOGPROBS)].map((id) => ({
      token: this.tokenizer.decode([id], { skipSpecialTokens: false, cleanUpTokenizationSpaces: false }),
      logprob: logits[id] - logZ,
    }));
  }

  async close(): Promise<void> {
    await this.model.dispose();
  }
}

/** Loads a model folder (plus an optional adapter) as a {@link LocalJudge}. */
export async function loadLocalJudge(dir: string, opts: LocalJudgeOptions = {}): Promise<LocalJudge> {
  const tokenizer = await loadTokenizer(dir);
  if (tokenizer.chatTemplate === null) {
    throw new EmlensError(
      `The local judge ${dir} has no chat template; use an instruct model (with chat_template) as the judge.`,
    );
  }
  const model = await loadModel(dir, opts);
  return new LocalJudge(model, tokenizer, {
    name: `local:${dir}${opts.adapter ? `+${opts.adapter}` : ''}`,
    batchSize: opts.batchSize,
  });
}

export interface CreateJudgeOptions extends Omit<OpenAIJudgeOptions, 'baseURL' | 'model'> {
  /** The judge model for a URL judge (default: the question file's `judge`). */
  readonly model?: string;
  /** Model loading options for a `local:DIR` judge. */
  readonly local?: LocalJudgeOptions;
}

/**
 * A judge from a command-line spec: `local:DIR` loads a local judge, anything else is the base URL of an
 * OpenAI-compatible endpoint.
 */
export async function createJudge(spec: string, opts: CreateJudgeOptions = {}): Promise<Judge> {
  if (spec.startsWith('local:')) {
    const dir = spec.slice('local:'.length);
    if (!dir) throw new EmlensError('A local judge needs a folder: write --judge local:DIR.');
    return loadLocalJudge(dir, opts.local);
  }
  if (!opts.model) {
    throw new EmlensError(`The judge at ${spec} needs a model name; pass --judge-model NAME.`);
  }
  return OpenAIJudge.create({ ...opts, baseURL: spec, model: opts.model });
}

// ---------------------------------------------------------------------------------------------------------
// Judging responses

export interface JudgeResponsesOptions {
  /** Metrics to score (default: every metric of each question's judge_prompts). */
  readonly metrics?: readonly string[];
  /** score() calls in flight at once (default 32; the judge may limit further). */
  readonly concurrency?: number;
  /** Called after each score with (done, total). */
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Scores every response on every metric of its question: the metric's template filled with the question as it
 * was asked and the answer. Returns the records with one score column per metric (null: no score).
 */
export async function judgeResponses(
  records: readonly ResponseRecord[],
  questions: readonly EvalQuestion[],
  judge: Judge | ((question: EvalQuestion) => Judge),
  opts: JudgeResponsesOptions = {},
): Promise<ResponseRecord[]> {
  const byId = new Map(questions.map((q) => [q.id, q]));
  const jobs: { row: number; metric: string; prompt: string; judge: Judge }[] = [];
  records.forEach((r, row) => {
    const q = byId.get(r.questionId);
    if (q === undefined) {
      throw new EmlensError(
        `The responses hold question id '${r.questionId}', which the question set lacks; judge with the question file they were sampled from.`,
      );
    }
    const metrics = opts.metrics ?? Object.keys(q.judgePrompts);
    for (const metric of metrics) {
      const template = q.judgePrompts[metric];
      if (template === undefined) {
        throw new EmlensError(
          `Question '${q.id}' has no judge prompt for metric '${metric}' (it has ${Object.keys(q.judgePrompts).join(', ')}); pick metrics it defines.`,
        );
      }
      const j = typeof judge === 'function' ? judge(q) : judge;
      jobs.push({ row, metric, prompt: fillJudgePrompt(template, r.question, r.answer), judge: j });
    }
  });
  // Metric columns in template order, whatever order the scores arrive in.
  const scores = records.map(() => ({}) as Record<string, number | null>);
  for (const job of jobs) scores[job.row][job.metric] = null;
  let done = 0;
  let next = 0;
  let failed = false;
  opts.onProgress?.(0, jobs.length);
  const worker = async () => {
    while (next < jobs.length && !failed) {
      const job = jobs[next++];
      try {
        scores[job.row][job.metric] = await job.judge.score(job.prompt);
      } catch (e) {
        failed = true;
        throw e;
      }
      opts.onProgress?.(++done, jobs.length);
    }
  };
  const width = Math.min(opts.concurrency ?? 32, Math.max(jobs.length, 1));
  await Promise.all(Array.from({ length: width }, worker));
  return records.map((r, i) => ({ ...r, scores: { ...r.scores, ...scores[i] } }));
}
