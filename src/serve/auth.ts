/** The server's API key check: `Authorization: Bearer <key>`, compared in constant time. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** Whether a request carries the key; every request passes when there is no key. */
export function bearerAuth(apiKey: string | undefined): (req: IncomingMessage) => boolean {
  if (apiKey === undefined) return () => true;
  const keyDigest = createHash('sha256').update(apiKey).digest();
  return (req) => {
    const [, token] = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '') ?? [];
    if (token === undefined) return false;
    return timingSafeEqual(createHash('sha256').update(token.trim()).digest(), keyDigest);
  };
}
