/** Messages between the server (main thread) and the model worker thread. */
import type { FinishReason } from '../generate/generate.js';
import type { Intervention } from '../model/interventions.js';
import type { LoadModelOptions } from '../model/model.js';
import type { MonitorSpec } from './monitor.js';
import type { LogprobEntry, MonitorEntry, PositionsPolicy } from './protocol.js';

/** The model loading options that cross to the worker thread (structured-cloneable: no callbacks, no readers). */
export const WORKER_LOAD_OPTIONS = [
  'device',
  'profile',
  'threads',
  'cacheDir',
  'adapter',
  'maxPositions',
] as const;
export type WorkerLoadOptions = Pick<LoadModelOptions, (typeof WORKER_LOAD_OPTIONS)[number]>;

/** The {@link WORKER_LOAD_OPTIONS} of `options`, and nothing else. */
export function workerLoadOptions(options: WorkerLoadOptions): WorkerLoadOptions {
  return Object.fromEntries(WORKER_LOAD_OPTIONS.map((k) => [k, options[k]])) as WorkerLoadOptions;
}

/** What the worker loads. */
export interface WorkerInit {
  readonly dir: string;
  readonly load: WorkerLoadOptions;
}

/** One request's generation: `n` rows sharing a prompt, each with its own sampling stream. */
export interface JobSpec {
  readonly id: number;
  readonly prompt: readonly number[];
  readonly n: number;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
  readonly seed: number;
  readonly stop: readonly string[];
  readonly ignoreEos: boolean;
  /** null: no logprobs; k: logprobs with the k most likely alternatives. */
  readonly topLogprobs: number | null;
  /** null: no per-token projections (`emlens.monitor`). */
  readonly monitor: MonitorSpec | null;
}

export type ToWorker =
  | {
      readonly type: 'batch';
      readonly id: number;
      readonly jobs: readonly JobSpec[];
      readonly interventions: readonly Intervention[];
      readonly positions: PositionsPolicy;
    }
  | { readonly type: 'cancel'; readonly job: number }
  | { readonly type: 'close' };

export interface TokenEvent {
  readonly job: number;
  readonly sample: number;
  /** Text that can be shown now (held back while it may be the start of a stop string or of a character). */
  readonly delta: string;
  readonly logprob?: LogprobEntry;
  /** The token's projections, when the job has a monitor. */
  readonly monitor?: MonitorEntry;
}

export interface FinishEvent {
  readonly job: number;
  readonly sample: number;
  /** The row's text (without a final eos token, cut before a stop string). */
  readonly text: string;
  /** The rest of the text not yet sent as deltas. */
  readonly delta: string;
  readonly finishReason: FinishReason;
  /** Tokens generated (a final eos included). */
  readonly tokens: number;
}

export interface ModelInfo {
  readonly maxPositions: number;
  readonly numLayers: number;
  readonly dModel: number;
  readonly vocabSize: number;
  readonly eosTokenIds: readonly number[];
}

export type FromWorker =
  | ({ readonly type: 'ready' } & ModelInfo)
  | { readonly type: 'progress'; readonly message: string }
  | { readonly type: 'fatal'; readonly message: string; readonly user: boolean }
  | {
      readonly type: 'step';
      readonly batch: number;
      readonly tokens: readonly TokenEvent[];
      readonly finished: readonly FinishEvent[];
    }
  | {
      readonly type: 'done';
      readonly batch: number;
      readonly ms: number;
      readonly error?: { readonly message: string; readonly user: boolean };
    };
