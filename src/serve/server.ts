/**
 * An OpenAI-compatible HTTP server over a loaded model: `POST /v1/chat/completions` (JSON or SSE streaming,
 * logprobs, the `emlens` steering/ablation/monitor extension), `GET /v1/models`, `GET /health`,
 * `GET /v1/emlens/directions`, and the steering playground page at `GET /`.
 *
 * The model lives in a worker thread, so the event loop keeps answering (`/health`, new requests, client
 * disconnects) while a batch generates. Requests wait in a bounded queue and compatible ones are generated
 * together; a full queue answers 503 with `Retry-After`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import { templateVarsProblem } from '../text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.js';
import { ApiError } from './apiError.js';
import { bearerAuth } from './auth.js';
import { type ChatContext, handleChat } from './chat.js';
import { listDirections } from './directionList.js';
import { Engine, type EngineStats } from './engine.js';
import { buildInterventions, DirectionResolver } from './interventions.js';
import { type WorkerLoadOptions, workerLoadOptions } from './messages.js';
import type { PositionsPolicy, RequestAblate, RequestSteer } from './protocol.js';
import { dispatcher, routes } from './routes.js';

/**
 * What `startServer` takes. The model loading options (`device`, `profile`, `threads`, `cacheDir`, `adapter`,
 * `maxPositions`) are those of `loadModel` (`LoadModelOptions`), handed to the model worker as they are.
 */
export interface ServeOptions extends WorkerLoadOptions {
  /** The Hugging Face model folder. */
  readonly model: string;
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
  /**
   * Chat-template variables for every request (e.g. `{ enable_thinking: false }`); a request's
   * `chat_template_kwargs` add to and override them.
   */
  readonly chatTemplateKwargs?: Readonly<Record<string, unknown>>;
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

function positiveInt(name: string, v: number | undefined, fallback: number): number {
  const x = v ?? fallback;
  if (!Number.isInteger(x) || x < 1) throw new EmlensError(`${name} must be a positive integer, not ${x}.`);
  return x;
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
  if (options.chatTemplateKwargs !== undefined) {
    const problem = templateVarsProblem(options.chatTemplateKwargs);
    if (problem !== null) {
      throw new EmlensError(
        `chatTemplateKwargs ${problem}; pass an object such as { enable_thinking: false }.`,
      );
    }
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
      load: workerLoadOptions(options),
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
  const chat: ChatContext = {
    modelId,
    tokenizer,
    info,
    resolver,
    maxBatch,
    tokenLimit,
    serverInterventions,
    defaultPositions,
    templateVars: options.chatTemplateKwargs,
    engine,
    timeoutMs,
    maxBodyBytes,
  };
  const server = createServer(
    dispatcher({
      route: routes({
        modelId,
        created,
        engine,
        chat: (req, res, arrived) => handleChat(req, res, arrived, chat),
        directions: () => listDirections(resolver),
      }),
      authorized: bearerAuth(options.apiKey),
      log,
    }),
  );

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
  if (!LOOPBACK.has(host) && options.apiKey === undefined) {
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
