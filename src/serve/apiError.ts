/**
 * Errors the server answers with, as OpenAI writes them: a status and a body
 * `{error: {message, type, param, code}}`.
 */
import { EmlensError } from '../errors.js';

export type ApiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'timeout_error'
  | 'server_error';

/** An error with the HTTP status and OpenAI error fields to answer it with. */
export class ApiError extends EmlensError {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ApiErrorType = 'invalid_request_error',
    readonly code: string | null = null,
    readonly param: string | null = null,
    /** Extra response headers (`Retry-After`, `Allow`, `WWW-Authenticate`). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }

  /** The OpenAI error body. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** Any thrown value as an ApiError: user errors (EmlensError) become 400, anything else 500. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof EmlensError) return new ApiError(400, e.message);
  return new ApiError(
    500,
    `The server failed while handling the request (${(e as Error)?.message ?? String(e)}); retry, and report it if it persists.`,
    'server_error',
  );
}
