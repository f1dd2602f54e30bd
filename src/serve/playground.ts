/**
 * The steering playground's static files (`GET /`, `/playground.js`, `/playground.css`): one page, its script and
 * its style, read from `playground/` beside this module (copied into `dist/serve/playground/` by the build).
 *
 * The page is served without the API key: it holds no data, only code. Everything it shows comes from `/v1/*`
 * calls that send the key the user types in. The Content-Security-Policy allows nothing but this origin, so
 * the page makes no request anywhere else, even if a model's answer held markup (it is shown as text).
 */
import { readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';

const FILES = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/playground.js': { file: 'playground.js', type: 'text/javascript; charset=utf-8' },
  '/playground.css': { file: 'playground.css', type: 'text/css; charset=utf-8' },
} as const;

export type PlaygroundPath = keyof typeof FILES;

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export function isPlaygroundPath(path: string): path is PlaygroundPath {
  return Object.hasOwn(FILES, path);
}

const cache = new Map<string, Promise<Buffer>>();

/** Answers one of the playground's files. */
export async function sendPlayground(res: ServerResponse, path: PlaygroundPath): Promise<void> {
  const { file, type } = FILES[path];
  let body = cache.get(file);
  if (!body) {
    body = readFile(new URL(`./playground/${file}`, import.meta.url));
    cache.set(file, body);
    body.catch(() => cache.delete(file));
  }
  const data = await body;
  if (res.headersSent || res.destroyed) return;
  res.writeHead(200, {
    'Content-Type': type,
    'Content-Length': data.length,
    'Content-Security-Policy': CSP,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-cache',
  });
  res.end(data);
}
