/**
 * An OpenAI-compatible HTTP server over a loaded model: `POST /v1/chat/completions` (JSON or SSE streaming,
 * logprobs, the `emlens` steering/ablation extension), `GET /v1/models`, `GET /health`.
 *
 * The model lives in a worker thread, so the event loop keeps answering (`/health`, new requests, client
 * disconnects) while a batch generates. Requests wait in a bounded queue and compatible ones are generated
 * together; a full queue answers 503 with `Retry-After`.
 */
import { createHash, randomInt, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import type { FinishReason } from '../generate/generate.js';
import type { Device } from '../model/session.js';
import { encodeChat } from '../text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.js';
import { ApiError, toApiError } from './apiError.js';
import { Engine, type EngineStats, type JobHandle } from './engine.js';
import { buildInterventions, DirectionResolver, interventionKey } from './interventions.js';
import type { FinishEvent, TokenEvent } from './messages.js';
import {
  type ChatChoice,
  type ChatCompletionChunk,
  type ChatRequest,
  type ChunkChoice,
  chatMessages,
  type LogprobEntry,
  modelList,
  modelObject,
  type OpenAIFinishReason,
  type PositionsPolicy,
  parseChatRequest,
  type RequestAblate,
  type RequestSteer,
  stopStrings,
  type Usage,
} from './protocol.js';

export interface ServeOptions {
  /** The Hugging Face model folder. */
  readonly model: string;
  /** A PEFT LoRA adapter folder merged at load. */
  readonly adapter?: string;
  readonly device?: Device;
  readonly profile?: 'fp32' | 'fp16';
  readonly threads?: number;
  readonly cacheDir?: string;
  /** Longest sequence the graph accepts (see `loadModel`). */
  readonly maxPositions?: number;
  /** The id clients name in `model` (default: the model folder's name). */
  readonly servedModelName?: string;
  /** Default 127.0.0.1 (loopback only). */
  readonly host?: string;
  /** Default 8000; 0 picks a free port. */
  readonly port?: number;
  /** When set, `/v1/*` requests need `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Steering applied to every request (files here may also be named by requests). */
  readonly steer?: readonly RequestSteer[];
  /** Ablation applied to every request (files here may also be named by requests). */
  readonly ablate?: readonly RequestAblate[];
  /** Where interventions act unless a request says otherwise (default `all`). */
  readonly positions?: PositionsPolicy;
  /** Requests may name any direction file under this folder (relative paths resolve against it). */
  readonly directionsDir?: string;
  /** Requests may name these direction files (besides those of `steer`/`ablate`). */
  readonly directionFiles?: readonly string[];
  /** Rows (requests x n) generated together at most (default 8). */
  readonly maxBatch?: number;
  /** Requests waiting at most; more get 503 with Retry-After (default 64). */
  readonly maxQueue?: number;
  /** Prompt + max_tokens at most (default and ceiling: the model's maxPositions). */
  readonly maxTokensLimit?: number;
  /** A request still unanswered after this long is cancelled and answered 504 (default 600000). */
  readonly timeoutMs?: number;
  /** Request bodies over this get 413 (default 1 MiB). */
  readonly maxBodyBytes?: number;
  /** Progress and warnings, one line each (default: none). */
  readonly onLog?: (line: string) => void;
}

export interface RunningServer {
  /** `http://host:port` (no trailing slash); the OpenAI base URL is `${url}/v1`. */
  readonly url: string;
  /** The id served at `/v1/models`. */
  readonly modelId: string;
  /** Queue and generation counters (as `/health` reports them). */
  stats(): EngineStats;
  /** Stops listening, fails what is queued or running with 503 and stops the model worker. */
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
const DRAIN_CAP = 64 * 1024 * 1024;

function positiveInt(name: string, v: number | undefined, fallback: number): number {
  const x = v ?? fallback;
  if (!Number.isInteger(x) || x < 1) throw new EmlensError(`${name} must be a positive integer, not ${x}.`);
  return x;
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendError(res: ServerResponse, e: ApiError): void {
  sendJson(res, e.status, e.body(), { ...e.headers });
}

/** The body, or a 413 once it passes `limit` bytes (read to the end first, so the client sees the answer). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolvePromise, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const tooLarge = () =>
      new ApiError(
        413,
        `The request body is over ${limit} bytes; send a smaller request (fewer or shorter messages, shorter inline vectors).`,
        'invalid_request_error',
        'request_too_large',
      );
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c);
      else if (size > DRAIN_CAP) {
        reject(tooLarge());
        req.destroy();
      }
    });
    req.on('end', () => (size > limit ? reject(tooLarge()) : resolvePromise(Buffer.concat(chunks))));
    req.on('error', reject);
  });
}

function finishReason(r: FinishReason): OpenAIFinishReason {
  return r === 'length' ? 'length' : 'stop';
}

/** Starts the server: loads the model in a worker thread, then listens. */
export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 8000;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new EmlensError(`port must be an integer in 0..65535, not ${port}.`);
  }
  const maxBatch = positiveInt('maxBatch', options.maxBatch, 8);
  const maxQueue = positiveInt('maxQueue', options.maxQueue, 64);
  const timeoutMs = positiveInt('timeoutMs', options.timeoutMs, 600_000);
  const maxBodyBytes = positiveInt('maxBodyBytes', options.maxBodyBytes, 1024 * 1024);
  if (options.maxTokensLimit !== undefined) positiveInt('maxTokensLimit', options.maxTokensLimit, 1);
  if (options.apiKey !== undefined && options.apiKey.length === 0) {
    throw new EmlensError('The API key is empty; set it to a non-empty secret or run without one.');
  }
  const log = options.onLog ?? (() => {});
  const dir = resolve(options.model);
  const modelId = options.servedModelName ?? basename(dir);
  const resolver = await DirectionResolver.create({
    directionsDir: options.directionsDir,
    files: [
      ...(options.directionFiles ?? []),
      ...[...(options.steer ?? []), ...(options.ablate ?? [])]
        .map((s) => s.direction)
        .filter((d): d is string => typeof d === 'string'),
    ],
  });
  const tokenizer: TextTokenizer = await loadTokenizer(dir);
  const engine = await Engine.start({
    init: {
      dir,
      load: {
        device: options.device,
        profile: options.profile,
        threads: options.threads,
        cacheDir: options.cacheDir,
        adapter: options.adapter,
        maxPositions: options.maxPositions,
      },
    },
    maxBatch,
    maxQueue,
    onProgress: log,
  });
  const { info } = engine;
  const tokenLimit = Math.min(info.maxPositions, options.maxTokensLimit ?? Number.POSITIVE_INFINITY);
  const defaultPositions = options.positions ?? 'all';
  let serverInterventions: Awaited<ReturnType<typeof buildInterventions>>;
  try {
    serverInterventions = await buildInterventions(
      { steer: options.steer, ablate: options.ablate },
      info,
      resolver,
      'server',
    );
  } catch (e) {
    await engine.close();
    throw e instanceof ApiError ? new EmlensError(e.message) : e;
  }
  const created = Math.floor(Date.now() / 1000);
  const keyDigest =
    options.apiKey === undefined ? null : createHash('sha256').update(options.apiKey).digest();

  const authorized = (req: IncomingMessage): boolean => {
    if (keyDigest === null) return true;
    const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
    if (!m) return false;
    return timingSafeEqual(createHash('sha256').update(m[1].trim()).digest(), keyDigest);
  };

  const chat = async (req: IncomingMessage, res: ServerResponse, arrived: number): Promise<void> => {
    const raw = await readBody(req, maxBodyBytes);
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
    let prompt: number[];
    try {
      prompt = encodeChat(tokenizer, chatMessages(r), { addGenerationPrompt: true });
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
    const own = await buildInterventions(ext, info, resolver, 'emlens');
    const interventions = [...serverInterventions, ...own];
    const positions = ext.positions ?? defaultPositions;
    const topLogprobs = r.logprobs === true ? (r.top_logprobs ?? 0) : null;
    const stream = r.stream === true;
    const includeUsage = stream && r.stream_options?.include_usage === true;
    const id = `chatcmpl-${randomUUID().replaceAll('-', '')}`;
    const createdAt = Math.floor(Date.now() / 1000);
    const head = <T extends string>(object: T) => ({
      id,
      object,
      created: createdAt,
      model: modelId,
      system_fingerprint: 'emlens',
    });

    // Per choice: its logprobs, text and finish reason.
    const choices = Array.from({ length: n }, () => ({
      logprobs: [] as LogprobEntry[],
      text: '',
      finish: null as OpenAIFinishReason | null,
    }));
    let completionTokens = 0;
    let left = n;
    const usage = (): Usage => ({
      prompt_tokens: prompt.length,
      completion_tokens: completionTokens,
      total_tokens: prompt.length + completionTokens,
    });
    const chunk = (c: ChunkChoice[], extra: Partial<ChatCompletionChunk> = {}): void => {
      const body: ChatCompletionChunk = {
        ...head('chat.completion.chunk'),
        choices: c,
        ...(includeUsage ? { usage: null } : {}),
        ...extra,
      };
      res.write(`data: ${JSON.stringify(body)}\n\n`);
    };

    let handle: JobHandle | null = null;
    let settled = false;
    const timer = setTimeout(
      () => {
        fail(
          new ApiError(
            504,
            `The request took longer than ${timeoutMs} ms; lower max_tokens or retry when the server is less busy.`,
            'timeout_error',
            'timeout',
          ),
        );
      },
      Math.max(1, timeoutMs - (performance.now() - arrived)),
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
      if (!res.headersSent) sendError(res, e);
      else if (!res.writableEnded) {
        res.write(`data: ${JSON.stringify(e.body())}\n\n`);
        res.end();
      }
    }
    res.on('close', () => {
      // The client went away before the answer was complete: stop its generation.
      if (!res.writableFinished && settle()) handle?.cancel();
    });

    const onToken = (t: TokenEvent): void => {
      if (settled) return;
      if (t.logprob) choices[t.sample].logprobs.push(t.logprob);
      if (stream && (t.delta !== '' || t.logprob)) {
        chunk([
          {
            index: t.sample,
            delta: t.delta !== '' ? { content: t.delta } : {},
            logprobs: t.logprob ? { content: [t.logprob], refusal: null } : null,
            finish_reason: null,
          },
        ]);
      }
    };
    const onFinish = (f: FinishEvent): void => {
      if (settled) return;
      const c = choices[f.sample];
      c.text = f.text;
      c.finish = finishReason(f.finishReason);
      completionTokens += f.tokens;
      if (stream) {
        chunk([
          {
            index: f.sample,
            delta: f.delta !== '' ? { content: f.delta } : {},
            logprobs: null,
            finish_reason: c.finish,
          },
        ]);
      }
      if (--left > 0) return;
      if (!settle()) return;
      if (stream) {
        if (includeUsage) chunk([], { usage: usage() });
        res.end('data: [DONE]\n\n');
        return;
      }
      const out: ChatChoice[] = choices.map((ch, index) => ({
        index,
        message: { role: 'assistant', content: ch.text, refusal: null },
        logprobs: topLogprobs === null ? null : { content: ch.logprobs, refusal: null },
        finish_reason: ch.finish!,
      }));
      sendJson(res, 200, { ...head('chat.completion'), choices: out, usage: usage() });
    };

    if (res.destroyed) {
      settle();
      return;
    }
    const submit = (): JobHandle => {
      try {
        return engine.submit(job, { onToken, onFinish, onError: fail });
      } catch (e) {
        settle();
        throw e;
      }
    };
    const job = {
      prompt,
      n,
      maxTokens,
      temperature: r.temperature ?? 1,
      topP: r.top_p ?? 1,
      topK: r.top_k == null || r.top_k < 0 ? 0 : r.top_k,
      seed: r.seed ?? randomInt(2 ** 31),
      stop: stopStrings(r),
      ignoreEos: r.ignore_eos === true,
      topLogprobs,
      key: interventionKey(interventions, positions),
      interventions,
      positions,
    };
    handle = submit();
    if (stream) {
      res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
        'X-Accel-Buffering': 'no',
      });
      chunk(
        choices.map((_, index) => ({
          index,
          delta: { role: 'assistant', content: '' },
          logprobs: null,
          finish_reason: null,
        })),
      );
    }
  };

  type Route = {
    methods: string[];
    handle: (req: IncomingMessage, res: ServerResponse) => Promise<void> | void;
  };
  const health = (_req: IncomingMessage, res: ServerResponse) =>
    sendJson(res, engine.healthy ? 200 : 503, {
      status: engine.healthy ? 'ok' : 'unavailable',
      model: modelId,
      ...engine.stats,
    });
  const routes = (path: string): Route | null => {
    if (path === '/health') return { methods: ['GET'], handle: health };
    if (path === '/v1/models')
      return { methods: ['GET'], handle: (_q, s) => sendJson(s, 200, modelList(modelId, created)) };
    const m = /^\/v1\/models\/(.+)$/.exec(path);
    if (m) {
      return {
        methods: ['GET'],
        handle: (_q, s) => {
          const wanted = decodeURIComponent(m[1]);
          if (wanted !== modelId) {
            throw new ApiError(
              404,
              `The model '${wanted}' does not exist on this server; use '${modelId}'.`,
              'invalid_request_error',
              'model_not_found',
              'model',
            );
          }
          sendJson(s, 200, modelObject(modelId, created));
        },
      };
    }
    if (path === '/v1/chat/completions') {
      return { methods: ['POST'], handle: (q, s) => chat(q, s, performance.now()) };
    }
    return null;
  };

  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/(.)\/+$/, '$1');
    const handle = async () => {
      const route = routes(path);
      if (!route) {
        throw new ApiError(
          404,
          `Unknown request URL: ${method} ${path}; use POST /v1/chat/completions, GET /v1/models or GET /health.`,
          'invalid_request_error',
          'unknown_url',
        );
      }
      if (!route.methods.includes(method)) {
        throw new ApiError(
          405,
          `${method} is not allowed on ${path}; use ${route.methods.join(' or ')}.`,
          'invalid_request_error',
          'method_not_allowed',
          null,
          { Allow: route.methods.join(', ') },
        );
      }
      if (path.startsWith('/v1/') && !authorized(req)) {
        throw new ApiError(
          401,
          'The API key is missing or wrong; send the server key as "Authorization: Bearer <key>".',
          'authentication_error',
          'invalid_api_key',
          null,
          { 'WWW-Authenticate': 'Bearer' },
        );
      }
      await route.handle(req, res);
    };
    handle().catch((e: unknown) => {
      const err = toApiError(e);
      if (err.status >= 500) log(`error: ${method} ${path}: ${(e as Error)?.stack ?? e}`);
      if (!res.headersSent) sendError(res, err);
      else res.end();
      // An error before the body was read (404, 405, 401): drain the body, so the answer reaches the client.
      if (!req.complete) req.resume();
    });
  });

  await new Promise<void>((resolvePromise, reject) => {
    server.once('error', (e) => {
      reject(
        new EmlensError(
          `Cannot listen on ${host}:${port} (${(e as Error).message}); pick another --port or --host.`,
        ),
      );
    });
    server.listen(port, host, () => resolvePromise());
  }).catch(async (e) => {
    await engine.close();
    throw e;
  });
  const address = server.address() as AddressInfo;
  const shownHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${shownHost}:${address.port}`;
  if (!LOOPBACK.has(host) && keyDigest === null) {
    log(`warning: listening on ${host} without an API key; anyone who can reach it can use the model`);
  }

  let closing: Promise<void> | null = null;
  return {
    url,
    modelId,
    stats: () => engine.stats,
    close: () => {
      closing ??= (async () => {
        const stopped = new Promise<void>((r) => server.close(() => r()));
        await engine.close();
        server.closeAllConnections();
        await stopped;
      })();
      return closing;
    },
  };
}
