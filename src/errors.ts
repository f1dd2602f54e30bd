/**
 * An error caused by the user's input (a file, a flag, a shape). Its message is one sentence that names the
 * problem and the fix; the CLI prints it without a stack trace.
 */
export class EmlensError extends Error {
  override readonly name = 'EmlensError';
}
