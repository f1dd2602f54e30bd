/**
 * Parsers of CLI option values, one place for all commands. Each throws commander's InvalidArgumentError,
 * whose message `main` prints on one line after commander's "option '--x <v>' argument 'y' is invalid"; so
 * the messages say what was expected, without a trailing period.
 */
import { InvalidArgumentError } from 'commander';
import { templateVarsProblem } from '../text/chat.js';

/** A non-negative decimal integer literal: no sign, exponent, hex or fraction, so `1e3` or `0x10` is not taken as a count. */
function integer(value: string): number | null {
  const s = value.trim();
  if (!/^\d+$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

/** Counts and sizes: 1, 2, 3, ... */
export function positiveInt(value: string): number {
  const n = integer(value);
  if (n === null || n <= 0) throw new InvalidArgumentError('expected a positive integer (1, 2, 3, ...)');
  return n;
}

/** Seeds, layers and counts that may be zero. */
export function nonNegativeInt(value: string): number {
  const n = integer(value);
  if (n === null || n < 0) throw new InvalidArgumentError('expected a non-negative integer (0, 1, 2, ...)');
  return n;
}

/** Any finite number (scales, seeds given as numbers). */
export function finiteNumber(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x)) throw new InvalidArgumentError('expected a number');
  return x;
}

/** Temperatures and other quantities that cannot be negative. */
export function nonNegativeNumber(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x) || x < 0) {
    throw new InvalidArgumentError('expected a number >= 0');
  }
  return x;
}

/** Probability masses such as top-p: in (0, 1]. */
export function unitInterval(value: string): number {
  const x = Number(value);
  if (value.trim() === '' || !(x > 0 && x <= 1))
    throw new InvalidArgumentError('expected a number in (0, 1]');
  return x;
}

/** A TCP port; 0 asks the system for any free port (the server prints the one it got). */
export function port(value: string): number {
  const n = integer(value);
  if (n === null || n < 0 || n > 65535) {
    throw new InvalidArgumentError('expected a port number in 1..65535 (or 0 for any free port)');
  }
  return n;
}

/**
 * `--chat-template-kwargs`: a JSON object of extra chat-template variables (transformers' `apply_chat_template`
 * keyword arguments), e.g. `{"enable_thinking": false}` for Qwen3.
 */
export function chatTemplateKwargs(value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (e) {
    throw new InvalidArgumentError(
      `expected a JSON object such as '{"enable_thinking": false}' (${String((e as Error).message).replace(/\s+/g, ' ')})`,
    );
  }
  const problem = templateVarsProblem(parsed);
  if (problem !== null) {
    throw new InvalidArgumentError(
      `expected a JSON object such as '{"enable_thinking": false}'; this ${problem}`,
    );
  }
  return parsed as Record<string, unknown>;
}
