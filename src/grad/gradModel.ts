/**
 * A model loaded for gradients: its frozen weights (read once, adapter merged), and one onnxruntime session per
 * (batch shape, parameters, losses), built on first use. `run` packs rows, feeds weights, parameters and the
 * batch, and returns the losses and the gradients.
 */
import * as ort from 'onnxruntime-node';
import { EmlensError } from '../errors.js';
import type { ModelSpec } from '../model/spec.js';
import { type GradRow, type PackedBatch, packBatch } from './batch.js';
import { buildGradGraph, type GradGraph, LOSS_IO } from './graph.js';
import { checkParams, type ParamSpec } from './params.js';
import type { FloatType } from './tape.js';
import { type FrozenWeights, loadFrozenWeights } from './weights.js';

export type FloatArray = Float32Array | Float64Array;

interface Built {
  readonly session: ort.InferenceSession;
  readonly params: GradGraph['params'];
}

export interface GradModelOptions {
  /** A PEFT adapter folder merged into the frozen weights. */
  readonly adapter?: string;
  /** float32 (default) or float64 (the reference the finite-difference tests use). */
  readonly dtype?: FloatType;
  /** onnxruntime intra-op threads (default: onnxruntime's). */
  readonly threads?: number;
}

export interface RunOptions {
  readonly params: ParamSpec;
  /** Parameter name (see `PARAM`) -> values; a missing parameter is zero. */
  readonly values?: ReadonlyMap<string, FloatArray>;
  /**
   * The KL term's scale (`loss = ce + scale · kl`) and, optionally, the base log-probs `[batch, seq, vocab]` of
   * the packed batch; without them they are computed by the frozen model without parameters. Needed when any
   * row has KL weights.
   */
  readonly kl?: { readonly scale: number; readonly baseLogProbs?: FloatArray };
  /** Pad every batch to at least this length, so batches of varying lengths share one graph. */
  readonly seq?: number;
}

export interface RunResult {
  readonly loss: number;
  readonly ce: number;
  /** The KL term before scaling (0 without one). */
  readonly kl: number;
  /** Parameter name -> gradient of `loss`, in the parameter's shape. */
  readonly grads: ReadonlyMap<string, FloatArray>;
  readonly batch: PackedBatch;
}

export class GradModel {
  private readonly sessions = new Map<string, Promise<Built>>();
  private readonly weightFeeds: Record<string, ort.Tensor> = {};

  private constructor(
    readonly frozen: FrozenWeights,
    readonly dtype: FloatType,
    private readonly threads: number | undefined,
  ) {
    for (const [name, { data, shape }] of frozen.tensors) {
      this.weightFeeds[name] = new ort.Tensor(
        dtype,
        dtype === 'float64' ? Float64Array.from(data) : data,
        shape,
      );
    }
  }

  get spec(): ModelSpec {
    return this.frozen.spec;
  }

  static async load(dir: string, opts: GradModelOptions = {}): Promise<GradModel> {
    return GradModel.fromWeights(await loadFrozenWeights(dir, { adapter: opts.adapter }), opts);
  }

  static fromWeights(frozen: FrozenWeights, opts: Omit<GradModelOptions, 'adapter'> = {}): GradModel {
    return new GradModel(frozen, opts.dtype ?? 'float32', opts.threads);
  }

  private session(key: string, make: () => GradGraph): Promise<Built> {
    let s = this.sessions.get(key);
    if (!s) {
      const g = make();
      s = ort.InferenceSession.create(g.bytes, {
        ...(this.threads ? { intraOpNumThreads: this.threads } : {}),
        // the contrib fusions (QuickGelu, ...) have float32 kernels only
        graphOptimizationLevel: this.dtype === 'float64' ? 'basic' : 'all',
      }).then((session) => ({ session, params: g.params }));
      this.sessions.set(key, s);
    }
    return s;
  }

  private floats(data: Float64Array | FloatArray): FloatArray {
    if (this.dtype === 'float64') return data instanceof Float64Array ? data : Float64Array.from(data);
    return data instanceof Float32Array ? data : Float32Array.from(data);
  }

  private batchFeeds(b: PackedBatch, names: readonly string[]): Record<string, ort.Tensor> {
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of names) {
      const w = this.weightFeeds[name];
      if (w) {
        feeds[name] = w;
        continue;
      }
      const v = b.inputs.get(name);
      if (!v) continue;
      feeds[name] =
        v.data instanceof BigInt64Array
          ? new ort.Tensor('int64', v.data, v.shape)
          : new ort.Tensor(this.dtype, this.floats(v.data), v.shape);
    }
    return feeds;
  }

  /** Log-probs `[batch, seq, vocab]` of the frozen model (no parameters) on a packed batch. */
  async logProbs(b: PackedBatch): Promise<FloatArray> {
    const key = `logprobs:${b.batch}x${b.seq}`;
    const { session } = await this.session(key, () =>
      buildGradGraph(this.spec, {
        batch: b.batch,
        seq: b.seq,
        dtype: this.dtype,
        params: {},
        kl: false,
        mode: 'logprobs',
      }),
    );
    const out = await session.run(this.batchFeeds(b, session.inputNames));
    return out[LOSS_IO.logProbs]!.data as FloatArray;
  }

  /** Losses and gradients over `rows` (see `GradRow`) for the parameters of `o.params`. */
  async run(rows: readonly GradRow[], o: RunOptions): Promise<RunResult> {
    checkParams(this.spec, o.params);
    const b = packBatch(this.spec, rows, o.seq);
    if (b.hasKl && !o.kl) throw new EmlensError('Rows with KL weights need the KL options (its scale).');
    const kl = b.hasKl && o.kl !== undefined;
    const key = `grad:${b.batch}x${b.seq}:${kl}:${JSON.stringify(o.params)}`;
    const { session, params: shapes } = await this.session(key, () =>
      buildGradGraph(this.spec, {
        batch: b.batch,
        seq: b.seq,
        dtype: this.dtype,
        params: o.params,
        kl,
        mode: 'grad',
      }),
    );
    const feeds = this.batchFeeds(b, session.inputNames);
    if (kl && o.kl) {
      const base = o.kl.baseLogProbs ?? (await this.logProbs(b));
      const expected = b.batch * b.seq * this.spec.vocabSize;
      if (base.length !== expected) {
        throw new Error(`GradModel.run: base log-probs hold ${base.length} values, expected ${expected}`);
      }
      feeds[LOSS_IO.baseLogProbs] = new ort.Tensor(this.dtype, this.floats(base), [
        b.batch,
        b.seq,
        this.spec.vocabSize,
      ]);
      feeds[LOSS_IO.klScale] = new ort.Tensor(this.dtype, this.floats(Float64Array.of(o.kl.scale)), []);
    }
    for (const { name, shape } of shapes) {
      const n = shape.reduce((a, c) => a * c, 1);
      const given = o.values?.get(name);
      if (given && given.length !== n) {
        throw new EmlensError(
          `Parameter ${name} has ${given.length} values but the graph takes [${shape.join(', ')}]; give it that shape.`,
        );
      }
      feeds[name] = new ort.Tensor(this.dtype, this.floats(given ?? new Float64Array(n)), [...shape]);
    }
    const out = await session.run(feeds);
    const scalar = (name: string) => (out[name] ? Number((out[name].data as FloatArray)[0]) : 0);
    const grads = new Map<string, FloatArray>();
    for (const { name } of shapes) grads.set(name, out[LOSS_IO.grad(name)]!.data as FloatArray);
    return { loss: scalar(LOSS_IO.loss), ce: scalar(LOSS_IO.ce), kl: scalar(LOSS_IO.kl), grads, batch: b };
  }

  async dispose(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) await (await s).session.release();
  }
}
