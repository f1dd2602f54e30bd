/** Plain HTTP helpers of the server: JSON answers, API errors, and reading a request body under a limit. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError } from './apiError.js';

/** A body this far over the limit is no longer drained: the connection is dropped. */
const DRAIN_CAP = 64 * 1024 * 1024;

/** Answers with a JSON body (nothing, once headers went out or the socket is gone). */
export function sendJson(
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

/** Answers with an API error: its status, OpenAI-style body and headers. */
export function sendError(res: ServerResponse, e: ApiError): void {
  sendJson(res, e.status, e.body(), { ...e.headers });
}

/** The body, or a 413 once it passes `limit` bytes (read to the end first, so the client sees the answer). */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
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
