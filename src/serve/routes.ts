/**
 * The server's routes (`/health`, `/v1/models`, `/v1/models/{id}`, `/v1/chat/completions`,
 * `/v1/emlens/directions`, and the playground page at `/`) and the request
 * handler that dispatches to them: 404 for an unknown URL, 405 for a wrong method, 401 for `/v1/*` without the
 * key, and any error thrown answered as an OpenAI error.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError, toApiError } from './apiError.js';
import type { DirectionListing } from './directionList.js';
import type { Engine } from './engine.js';
import { sendError, sendJson } from './http.js';
import { isPlaygroundPath, sendPlayground } from './playground.js';
import { modelList, modelObject } from './protocol.js';

export interface Route {
  readonly methods: string[];
  handle(req: IncomingMessage, res: ServerResponse): Promise<void> | void;
}

export interface RouteContext {
  readonly modelId: string;
  /** When the server started (Unix seconds), as `/v1/models` reports it. */
  readonly created: number;
  /** Health and queue counters for `/health`. */
  readonly engine: Pick<Engine, 'healthy' | 'stats'>;
  /** Answers a chat completions request; `arrived` is performance.now() when it came in. */
  readonly chat: (req: IncomingMessage, res: ServerResponse, arrived: number) => Promise<void>;
  /** The direction files requests may name. */
  readonly directions: () => Promise<DirectionListing[]>;
}

/** The routes, looked up by path (null: no route). */
export function routes(ctx: RouteContext): (path: string) => Route | null {
  const { modelId, created, engine } = ctx;
  const health = (_req: IncomingMessage, res: ServerResponse) =>
    sendJson(res, engine.healthy ? 200 : 503, {
      status: engine.healthy ? 'ok' : 'unavailable',
      model: modelId,
      ...engine.stats,
    });
  return (path) => {
    if (path === '/health') return { methods: ['GET'], handle: health };
    if (isPlaygroundPath(path)) return { methods: ['GET'], handle: (_q, s) => sendPlayground(s, path) };
    if (path === '/v1/emlens/directions') {
      return {
        methods: ['GET'],
        handle: async (_q, s) => sendJson(s, 200, { object: 'list', data: await ctx.directions() }),
      };
    }
    if (path === '/v1/models')
      return { methods: ['GET'], handle: (_q, s) => sendJson(s, 200, modelList(modelId, created)) };
    const m = /^\/v1\/models\/(.+)$/.exec(path);
    if (m) {
      return {
        methods: ['GET'],
        handle: (_q, s) => {
          const wanted = decodeURIComponent(m[1]!); // the group is not optional: set on a match
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
      return { methods: ['POST'], handle: (q, s) => ctx.chat(q, s, performance.now()) };
    }
    return null;
  };
}

export interface DispatchOptions {
  readonly route: (path: string) => Route | null;
  /** Whether a request may use `/v1/*`. */
  readonly authorized: (req: IncomingMessage) => boolean;
  /** Where server errors (5xx) are logged. */
  readonly log: (line: string) => void;
}

/** The `http.createServer` listener: finds the route, checks method and key, and answers errors. */
export function dispatcher(opts: DispatchOptions): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/(.)\/+$/, '$1');
    const handle = async () => {
      const route = opts.route(path);
      if (!route) {
        throw new ApiError(
          404,
          `Unknown request URL: ${method} ${path}; use POST /v1/chat/completions, GET /v1/models, GET /v1/emlens/directions, GET /health or GET / (the playground).`,
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
      if (path.startsWith('/v1/') && !opts.authorized(req)) {
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
      if (err.status >= 500) opts.log(`error: ${method} ${path}: ${(e as Error)?.stack ?? e}`);
      if (!res.headersSent) sendError(res, err);
      else res.end();
      // An error before the body was read (404, 405, 401): drain the body, so the answer reaches the client.
      if (!req.complete) req.resume();
    });
  };
}
