/** A judge from a command-line spec: `local:DIR` or the base URL of an OpenAI-compatible endpoint. */
import { EmlensError } from '../../errors.js';
import { type LocalJudgeOptions, loadLocalJudge } from './local.js';
import { OpenAIJudge, type OpenAIJudgeOptions } from './openai.js';
import type { Judge } from './types.js';

export interface CreateJudgeOptions extends Omit<OpenAIJudgeOptions, 'baseURL' | 'model'> {
  /** The judge model for a URL judge (default: the question file's `judge`). */
  readonly model?: string;
  /** Model loading options for a `local:DIR` judge. */
  readonly local?: LocalJudgeOptions;
}

/**
 * A judge from a command-line spec: `local:DIR` loads a local judge, anything else is the base URL of an
 * OpenAI-compatible endpoint.
 */
export async function createJudge(spec: string, opts: CreateJudgeOptions = {}): Promise<Judge> {
  if (spec.startsWith('local:')) {
    const dir = spec.slice('local:'.length);
    if (!dir) throw new EmlensError('A local judge needs a folder: write --judge local:DIR.');
    return loadLocalJudge(dir, opts.local);
  }
  if (!opts.model) {
    throw new EmlensError(`The judge at ${spec} needs a model name; pass --judge-model NAME.`);
  }
  return OpenAIJudge.create({ ...opts, baseURL: spec, model: opts.model });
}
