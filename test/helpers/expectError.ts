/** The check the error tests share: a promise or call that fails with an EmlensError naming the problem. */
import { expect } from 'vitest';
import { EmlensError } from '../../src/errors.js';

/**
 * Awaits `p` (or calls it) and checks it rejects with an EmlensError whose message matches every pattern
 * (a string: contained; a RegExp: matched). Returns the message.
 */
export async function expectEmlensError(
  p: Promise<unknown> | (() => unknown),
  ...patterns: (string | RegExp)[]
): Promise<string> {
  let error: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    error = e;
  }
  expect(error, 'expected an error').toBeInstanceOf(EmlensError);
  const message = (error as Error).message;
  for (const pattern of patterns) {
    if (typeof pattern === 'string') expect(message).toContain(pattern);
    else expect(message).toMatch(pattern);
  }
  return message;
}
