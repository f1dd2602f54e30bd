import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { EmlensError } from '../errors.js';
import { WeightSource } from '../io/weightSource.js';
import { loadTokenizer, type TextTokenizer } from '../text/tokenizer.js';
import { leftPad } from './batch.js';
import { cacheKey, defaultCacheDir, fileFingerprint } from './cache.js';
import { readConfig } from './config.js';
import { type AttentionOps, attentionFeeds, CONTRIB_IO, checkDeviceSupport } from './graph/attention.js';
import { ensureGraph, graphFileName } from './graph/build.js';
import { type GraphVariant, graphHookName, IO, type Profile } from './graph/transformer.js';
import type { WeightReader } from './graph/weights.js';
import {
  allHookNames,
  type BlockHook,
  type HookName,
  type HookSelector,
  resolveHooks,
  siteCount,
} from './hooks.js';
import { type ForwardIntervention, interventionFeeds, patchSiteCount } from './interventions.js';
import { checkpointRenamer } from './layout.js';
import { LoraMergedWeights, loadAdapter } from './lora/index.js';
import type { KvArray, OutputBuffers } from './outputBuffers.js';
import { createSession, type Device } from './session.js';
import { type ModelSpec, parameterCount } from './spec.js';
import type { Float32Tensor } from './tensor.js';
import {
  type EncodeOptions,
  encodeInput,
  type TraceInput,
  type TraceOptions,
  type TraceResult,
  traceModel,
} from './trace.js';
import { checkWeights, unusedWeightsWarning } from './weightCheck.js';

export interface LoadModelOptions {
  readonly device?: Device;
  /**
   * The attention op set of the graph (see `AttentionOps`): default `contrib` on webgpu (the ops its provider
   * implements), `onnx` elsewhere. The CPU runs both, which lets the contrib graph be checked without a GPU.
   */
  readonly ops?: AttentionOps;
  /** Default: fp32 on the CPU and webgpu, fp16 on CUDA. */
  readonly profile?: Profile;
  readonly threads?: number;
  /** Where built graphs are kept (default `$EMLENS_CACHE_DIR` or `~/.cache/emlens`). */
  readonly cacheDir?: string;
  /** Longest sequence (prompt + generated) the graph accepts; default min(max_position_embeddings, 32768). */
  readonly maxPositions?: number;
  /** Replaces the folder's weights, e.g. with a LoRA adapter merged in; `weightsKey` must identify them. */
  readonly weights?: { readonly reader: WeightReader; readonly key: string };
  /**
   * A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into the weights when
   * the graph is built; base and adapted graphs are cached apart.
   */
  readonly adapter?: string;
  /** Called with a line of progress (graph build, session load). */
  readonly onProgress?: (message: string) => void;
  /** Further onnxruntime session options (e.g. `enableProfiling`), applied over emlens' own. */
  readonly sessionOptions?: ort.InferenceSession.SessionOptions;
  /** The tokenizer `trace` and `toTokens` use instead of the folder's own. */
  readonly tokenizer?: TextTokenizer;
}

/** The attention keys and values of earlier positions, returned by `forward` and passed back to continue. */
export interface KVCache {
  readonly batch: number;
  /** Positions held (padding included). */
  readonly length: number;
  /** `[batch, length]` 1 for real tokens. */
  readonly attentionMask: BigInt64Array;
  /** Position id the next token of each row gets. */
  readonly nextPosition: readonly number[];
  /**
   * Per layer: key then value, `[batch, kv_heads, length, head_dim]`. On webgpu these are device tensors
   * (`location: 'gpu-buffer'`): they never come to host memory; `releaseCache` frees them.
   */
  readonly tensors: readonly ort.Tensor[];
}

/**
 * Frees a cache's device buffers now (webgpu), rather than when the tensors are collected; host tensors are
 * left to the garbage collector. The cache must not be continued afterwards.
 */
export function releaseCache(cache: KVCache): void {
  for (const t of cache.tensors) if (t.location === 'gpu-buffer') t.dispose();
}

/** How long loading took, for benchmarks and progress reports. */
export interface LoadStats {
  /** Whether the graph was built now (false: found in the cache). */
  readonly built: boolean;
  readonly graphBuildMs: number;
  readonly sessionLoadMs: number;
}

export interface ForwardOptions {
  /**
   * Hook names or patterns to return (`blocks.*.hook_resid_post`, see `HookPattern`); none by default. A
   * run-time string (a CLI flag) goes through `parseHookPatterns` first.
   */
  readonly hooks?: readonly HookSelector[];
  /** Steering, ablation and activation patching (see `Patch`), applied in the graph. */
  readonly interventions?: readonly ForwardIntervention[];
  /** `last` (default): `[batch, vocab]`; `all`: `[batch, seq, vocab]` (a second graph, built on first use). */
  readonly logits?: 'last' | 'all';
  /** Continue from this cache: `ids` are then the new tokens only, one row per cached row. */
  readonly cache?: KVCache;
  /** Return the updated cache. */
  readonly returnCache?: boolean;
  /**
   * Write the last-position logits and the returned cache into these buffers instead of fresh ones; the
   * results are views of them. A decode loop reuses them from step to step (see `DecodeBuffers`).
   */
  readonly into?: OutputBuffers;
}

export interface ForwardResult {
  readonly logits: Float32Tensor;
  /** Requested hooks, each `[batch, seq, d_model]` (left padding included: see `padding`). */
  readonly hooks: ReadonlyMap<HookName, Float32Tensor>;
  /** Left padding of each row in this call. */
  readonly padding: readonly number[];
  readonly cache?: KVCache;
  /**
   * Bytes of this call's outputs that came back in host memory (logits, hooks, and the cache unless it stays
   * on the device): what a decode step pays in device-to-host copies on a GPU provider.
   */
  readonly hostBytes: number;
}

/** A graph variant, and on a device-resident cache also the hook outputs its session fetches (see `session`). */
type VariantKey =
  | `${'last' | 'all'}-${boolean}-${boolean}`
  | `${'last' | 'all'}-${boolean}-${boolean}:${string}`;

/** Names of the present (KV cache) outputs of a model's graphs. */
function presentNames(numLayers: number): string[] {
  return Array.from({ length: numLayers }, (_, i) => [IO.presentKey(i), IO.presentValue(i)]).flat();
}

/**
 * The longest sequence a model loads for when `maxPositions` is not given: its `max_position_embeddings`, capped
 * at 32768 (the RoPE tables and attention buffers grow with it).
 */
export function defaultMaxPositions(spec: ModelSpec): number {
  return Math.min(spec.maxPositionEmbeddings, 32768);
}

/** A loaded model: its spec, hook names, and a batched forward pass with hooks and interventions. */
export class Model {
  private readonly sessions = new Map<VariantKey, Promise<ort.InferenceSession>>();
  private stats: LoadStats = { built: false, graphBuildMs: 0, sessionLoadMs: 0 };
  private tokenizerLoad?: Promise<TextTokenizer>;

  private constructor(
    readonly dir: string,
    readonly spec: ModelSpec,
    readonly profile: Profile,
    readonly device: Device,
    /** The graph's attention op set. */
    readonly ops: AttentionOps,
    /** Whether the returned KV cache stays in device memory (webgpu) instead of coming back to the host. */
    readonly deviceCache: boolean,
    /** Longest sequence (cache included) the graph accepts. */
    readonly maxPositions: number,
    private readonly openSession: (variant: GraphVariant) => Promise<ort.InferenceSession>,
    private readonly givenTokenizer?: TextTokenizer,
  ) {}

  /** @internal use `loadModel`. */
  static async create(dir: string, opts: LoadModelOptions): Promise<Model> {
    const spec = await readConfig(dir);
    const device = opts.device ?? 'cpu';
    const profile = opts.profile ?? (device === 'cuda' ? 'fp16' : 'fp32');
    const ops: AttentionOps = opts.ops ?? (device === 'webgpu' ? 'contrib' : 'onnx');
    if (ops !== 'onnx' && ops !== 'contrib') {
      throw new EmlensError(`ops must be 'onnx' or 'contrib', not '${String(ops)}'.`);
    }
    // onnxruntime-node keeps outputs on the device only for WebGPU (`gpu-buffer`); CUDA outputs always come
    // back to host memory, since the binding has no IO binding for it.
    const deviceCache = device === 'webgpu' && ops === 'contrib';
    checkDeviceSupport(spec, device);
    if (device === 'webgpu' && profile === 'int8') {
      // measured: the WebGPU provider has no DynamicQuantizeMatMul kernel; every GEMM then ran on the CPU
      throw new EmlensError(
        'The int8 profile quantises GEMMs with DynamicQuantizeMatMul, which the WebGPU provider does not run (it falls back to the CPU); use --profile int4 or fp32 on webgpu.',
      );
    }
    const maxPositions = opts.maxPositions ?? defaultMaxPositions(spec);
    if (!Number.isInteger(maxPositions) || maxPositions < 1) {
      throw new EmlensError(`maxPositions must be a positive integer, not ${maxPositions}.`);
    }
    const progress = opts.onProgress ?? (() => {});
    if (profile === 'fp16' && spec.gemmaBlock) {
      progress(
        `warning: ${spec.architecture} activations are large and can overflow float16 (results then stop with an error); load with profile fp32 if they do`,
      );
    }
    let weightsKey: unknown = opts.weights?.key;
    if (!opts.weights) {
      // Headers only: checked against config.json before the cache is consulted, so that a cached graph
      // cannot hide weights that disagree with the config either.
      const probe = await WeightSource.open(dir, { rename: checkpointRenamer(spec) });
      try {
        const { unused } = checkWeights(spec, probe, dir);
        if (probe.hidden > 0) {
          progress(
            `ignoring the ${probe.hidden} vision-tower and projector tensors of ${dir} (emlens runs the text model only)`,
          );
        }
        if (unused.length > 0) progress(unusedWeightsWarning(spec, unused, dir));
        weightsKey = await fileFingerprint(probe.files);
      } finally {
        await probe.close();
      }
    }
    // Config and tensor headers only: checked against the spec now, merged only if the graph must be built.
    const adapter = opts.adapter === undefined ? undefined : await loadAdapter(opts.adapter);
    if (adapter) {
      adapter.validate(spec, `the model at ${dir}`);
      weightsKey = { base: weightsKey, adapter: adapter.key };
    }
    const folder = join(
      opts.cacheDir ?? defaultCacheDir(),
      // a quantised contrib graph keeps an fp32 embedding table (see the graph emitter), so its external data
      // differs from the onnx graph's and lives in a folder of its own
      cacheKey({
        spec,
        weightsKey,
        profile,
        maxPositions,
        ...(ops === 'contrib' && (profile === 'int8' || profile === 'int4') ? { embedTable: 'fp32' } : {}),
      }),
    );
    if (adapter && adapter.vision.length > 0) {
      progress(
        `adapter ${adapter.dir}: ignoring its ${adapter.vision.length} vision-tower and projector tensors (emlens runs the text model only)`,
      );
    }
    if (adapter && adapter.ignored.length > 0) {
      progress(
        `adapter ${adapter.dir}: ignoring ${adapter.ignored.length} tensors of modules its config does not select (as PEFT does)`,
      );
    }
    const open = async (variant: GraphVariant) => {
      const t0 = performance.now();
      let source: WeightSource | undefined;
      let merged: LoraMergedWeights | undefined;
      const baseReader = async (): Promise<WeightReader> => {
        if (opts.weights) return opts.weights.reader;
        if (!source) {
          progress(`building ${profile} graph for ${dir} (reading weights)`);
          source = await WeightSource.open(dir, { rename: checkpointRenamer(spec) });
        }
        return source;
      };
      const reader = async (): Promise<WeightReader> => {
        if (!adapter) return baseReader();
        merged ??= new LoraMergedWeights(await baseReader(), adapter);
        return merged;
      };
      let graph: { path: string; built: boolean };
      try {
        graph = await ensureGraph(folder, spec, reader, { ...variant, ops, profile, maxPositions });
      } finally {
        await merged?.close();
        await source?.close();
      }
      const t1 = performance.now();
      if (graph.built)
        progress(
          `built ${graphFileName({ ...variant, ops })} in ${((t1 - t0) / 1000).toFixed(1)} s -> ${folder}`,
        );
      const session = await createSession(graph.path, {
        device,
        threads: opts.threads,
        extra: opts.sessionOptions,
        ...(deviceCache ? { deviceOutputs: presentNames(spec.numLayers) } : {}),
      });
      const t2 = performance.now();
      progress(
        `session ready (${device}, ${profile}, ${graphFileName({ ...variant, ops })}) in ${((t2 - t1) / 1000).toFixed(1)} s`,
      );
      if (variant.logits === 'last' && !variant.interventions) {
        model.stats = { built: graph.built, graphBuildMs: t1 - t0, sessionLoadMs: t2 - t1 };
      }
      return session;
    };
    const model = new Model(dir, spec, profile, device, ops, deviceCache, maxPositions, open, opts.tokenizer);
    await model.session({ ops, logits: 'last', interventions: false });
    return model;
  }

  /** Timings of the first (last-logits) graph's build and session load. */
  get loadStats(): LoadStats {
    return this.stats;
  }

  /**
   * The model's tokenizer and chat template (the folder's `tokenizer.json`, `tokenizer_config.json` and
   * `chat_template.jinja`, or `LoadModelOptions.tokenizer`), loaded on first use. A folder without
   * tokenizer.json still loads and runs token ids; this then rejects with one line saying so.
   */
  tokenizer(): Promise<TextTokenizer> {
    if (this.givenTokenizer) return Promise.resolve(this.givenTokenizer);
    if (!this.tokenizerLoad) {
      if (!existsSync(join(this.dir, 'tokenizer.json'))) {
        return Promise.reject(
          new EmlensError(
            `The model at ${this.dir} has no tokenizer.json, so it takes token ids only; pass token ids (or add the model's tokenizer files to the folder).`,
          ),
        );
      }
      const load = loadTokenizer(this.dir);
      this.tokenizerLoad = load;
      load.catch(() => {
        if (this.tokenizerLoad === load) this.tokenizerLoad = undefined;
      });
    }
    return this.tokenizerLoad;
  }

  /**
   * Token ids of each row as `trace` runs them: conversations rendered with the chat template and encoded
   * without adding special tokens (the template writes BOS itself), raw text encoded with the tokenizer's
   * special tokens (BOS where it adds one), token ids as given.
   */
  toTokens(input: TraceInput, opts: EncodeOptions = {}): Promise<number[][]> {
    return encodeInput(input, () => this.tokenizer(), opts);
  }

  /**
   * Runs conversations, text or token ids (one or a batch) and caches the requested hooks, as TransformerLens'
   * `run_with_cache`: `cache.get(name)` is a `[batch, pos, d_model]` ndarray view (no copy).
   *
   * @example
   * const { tokens, logits, cache } = await model.trace([{ role: 'user', content: 'Hi' }], {
   *   hooks: ['blocks.*.hook_resid_post'],
   *   addGenerationPrompt: true,
   * });
   * cache.get('blocks.0.hook_resid_post').pick(0, tokens[0].length - 1); // last token's residual
   */
  trace(input: TraceInput, opts: TraceOptions = {}): Promise<TraceResult> {
    return traceModel(this, input, opts);
  }

  /** Every hook name, block by block. */
  get hookNames(): HookName[] {
    return allHookNames(this.spec.numLayers);
  }

  get parameterCount(): number {
    return parameterCount(this.spec);
  }

  /**
   * The session of a graph variant, built and opened on first use. With a device-resident cache, one session
   * per set of fetched hook outputs (`fetchKey`): onnxruntime-node 1.30 runs such a session through one IO
   * binding that keeps every output it was once asked for bound, with that run's buffer, so a later run that
   * fetches other outputs fails ("Tensor size mismatch" / "Output count mismatch"). Each of these sessions
   * holds its own copy of the weights on the device; a decode loop fetches one hook set throughout.
   */
  private session(variant: GraphVariant, fetchKey = ''): Promise<ort.InferenceSession> {
    // one op set per model, so the op set is no part of the key
    const base = `${variant.logits}-${variant.interventions}-${variant.patch === true}` as const;
    const key: VariantKey = this.deviceCache && fetchKey !== '' ? `${base}:${fetchKey}` : base;
    let s = this.sessions.get(key);
    if (!s) {
      s = this.openSession(variant);
      this.sessions.set(key, s);
      s.catch(() => this.sessions.delete(key));
    }
    return s;
  }

  /**
   * Runs token ids through the model. Rows of different lengths are left-padded; each row's results equal
   * running it alone. Only the hooks asked for are copied out of onnxruntime.
   *
   * @example
   * const m = await loadModel('models/tiny');
   * const r = await m.forward([[1, 2, 3]], { hooks: ['blocks.*.hook_resid_post'] });
   * r.hooks.get('blocks.0.hook_resid_post'); // [1, 3, d_model]
   */
  async forward(ids: readonly (readonly number[])[], opts: ForwardOptions = {}): Promise<ForwardResult> {
    const { spec } = this;
    const hooks = opts.hooks ? resolveHooks(opts.hooks, spec.numLayers) : [];
    const pad = spec.padTokenId ?? spec.eosTokenIds[0] ?? 0;
    const cache = opts.cache;
    if (cache && ids.length !== cache.batch) {
      throw new EmlensError(
        `The cache holds ${cache.batch} rows but ${ids.length} were given; pass one row per cached row.`,
      );
    }
    const b = leftPad(ids, pad, spec.vocabSize);
    if (cache && b.padding.some((p) => p > 0)) {
      throw new EmlensError('Rows continuing from a cache must all have the same number of new tokens.');
    }
    const past = cache?.length ?? 0;
    if (past + b.seq > this.maxPositions) {
      throw new EmlensError(
        `The sequence needs ${past + b.seq} positions but the graph was built for ${this.maxPositions}; load the model with a larger maxPositions.`,
      );
    }
    const total = past + b.seq;
    const attentionMask = new BigInt64Array(b.batch * total);
    const positionIds = b.positionIds;
    for (let r = 0; r < b.batch; r++) {
      if (cache) attentionMask.set(cache.attentionMask.subarray(r * past, (r + 1) * past), r * total);
      attentionMask.set(b.attentionMask.subarray(r * b.seq, (r + 1) * b.seq), r * total + past);
      if (cache) {
        // r < b.batch = cache.batch (checked above), one nextPosition per cached row
        for (let p = 0; p < b.seq; p++) positionIds[r * b.seq + p] = BigInt(cache.nextPosition[r]! + p);
      }
    }

    const kvType = this.profile === 'fp16' ? 'float16' : 'float32';
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: new ort.Tensor('int64', b.inputIds, [b.batch, b.seq]),
      [IO.positionIds]: new ort.Tensor('int64', positionIds, [b.batch, b.seq]),
    };
    if (this.ops === 'onnx') {
      feeds[IO.attentionMask] = new ort.Tensor('int64', attentionMask, [b.batch, total]);
    } else {
      const a = attentionFeeds(spec, attentionMask, b.batch, b.seq, total);
      feeds[CONTRIB_IO.bias] = new ort.Tensor('float32', a.bias, [b.batch, 1, b.seq, total]);
      if (a.slidingBias) {
        feeds[CONTRIB_IO.slidingBias] = new ort.Tensor('float32', a.slidingBias, [b.batch, 1, b.seq, total]);
      }
      feeds[CONTRIB_IO.seqlensK] = new ort.Tensor('int32', a.seqlensK, [b.batch]);
      feeds[CONTRIB_IO.totalSequenceLength] = new ort.Tensor('int32', a.total, [1]);
    }
    const interventions = opts.interventions ?? [];
    let patching = false;
    if (interventions.length > 0) {
      const iv = interventionFeeds(interventions, spec.numLayers, spec.dModel, b.batch, b.seq);
      const sites = siteCount(spec.numLayers);
      feeds[IO.steerVectors] = new ort.Tensor('float32', iv.steerVectors, [sites, spec.dModel]);
      feeds[IO.steerMask] = new ort.Tensor('float32', iv.steerMask, [sites, b.batch, b.seq]);
      feeds[IO.ablateBasis] = new ort.Tensor('float32', iv.ablateBasis, [sites, iv.rank, spec.dModel]);
      feeds[IO.ablateMask] = new ort.Tensor('float32', iv.ablateMask, [sites, b.batch, b.seq]);
      if (iv.patch) {
        patching = true;
        const psites = patchSiteCount(spec.numLayers);
        const p = iv.patch;
        feeds[IO.patchSlots] = new ort.Tensor('int64', p.slots, [psites]);
        feeds[IO.patchValues] = new ort.Tensor('float32', p.values, [p.count, b.batch, b.seq, spec.dModel]);
        feeds[IO.patchMask] = new ort.Tensor('float32', p.mask, [psites, b.batch, b.seq]);
      }
    }
    const emptyKv = kvType === 'float16' ? new Uint16Array(0) : new Float32Array(0);
    for (let i = 0; i < spec.numLayers; i++) {
      const shape = [b.batch, spec.numKvHeads, 0, spec.headDim];
      feeds[IO.pastKey(i)] = cache?.tensors[2 * i] ?? new ort.Tensor(kvType, emptyKv, shape);
      feeds[IO.pastValue(i)] = cache?.tensors[2 * i + 1] ?? new ort.Tensor(kvType, emptyKv, shape);
    }
    // resid_pre of block i > 0 is fetched as resid_post of block i - 1 (the same tensor, see graphHookName).
    const hookSources = hooks.map((h) => {
      const m = /^blocks\.(\d+)\.(\w+)$/.exec(h)!; // resolveHooks returns only blocks.{i}.{hook} names
      return [h, graphHookName(Number(m[1]), m[2] as BlockHook)] as const;
    });
    // null: onnxruntime allocates the output; a tensor: it writes into that tensor's buffer.
    const fetches: Record<string, ort.Tensor | null> = { [IO.logits]: null };
    for (const [, source] of hookSources) fetches[source] = null;
    const logitsMode = opts.logits ?? 'last';
    // A device-resident cache is never written into host buffers: only the logits buffer is used then.
    const into = intoTensors(
      opts.into && this.deviceCache ? { logits: opts.into.logits } : opts.into,
      spec,
      kvType,
      b.batch,
      total,
      logitsMode,
      opts.returnCache,
      cache,
    );
    // onnxruntime-node's IO binding (a device-resident cache) ignores given output tensors and allocates its own.
    if (into.logits && !this.deviceCache) fetches[IO.logits] = into.logits;
    // A device-resident cache is fetched on every call (see the contrib attention on why the binding needs the
    // cache at the head of every fetch list); unasked for, it is freed right after the run.
    if (opts.returnCache || this.deviceCache) {
      for (let i = 0; i < spec.numLayers; i++) {
        fetches[IO.presentKey(i)] = into.cache?.[2 * i] ?? null;
        fetches[IO.presentValue(i)] = into.cache?.[2 * i + 1] ?? null;
      }
    }
    const session = await this.session(
      {
        ops: this.ops,
        logits: logitsMode,
        interventions: interventions.length > 0,
        ...(patching ? { patch: true } : {}),
      },
      [...new Set(hookSources.map(([, source]) => source))].sort().join(','),
    );
    const out = await session.run(feeds, fetches).catch((e: unknown) => {
      throw this.device === 'webgpu' ? webgpuRunError(e, this.profile) : e;
    });
    // Outputs written into given buffers are read through the caller's own tensors (views of those buffers).
    const output = (name: string): ort.Tensor => {
      const t = fetches[name] ?? out[name];
      if (!t) throw new Error(`onnxruntime returned no '${name}'`); // every fetched name is a graph output
      return t;
    };
    const asF32 = (t: ort.Tensor): Float32Tensor => ({ data: t.data as Float32Array, dims: t.dims });
    const logits = asF32(output(IO.logits));
    if (this.profile === 'fp16' && !allFinite(logits.data)) {
      throw new EmlensError(
        `The fp16 graph of ${this.dir} gave non-finite logits: the activations of this ${spec.architecture} overflowed float16; load the model with profile fp32 (--profile fp32).`,
      );
    }
    if (this.deviceCache) {
      for (const [name, t] of Object.entries(out)) {
        if (t.location !== 'gpu-buffer') continue;
        if (!name.startsWith('present.')) {
          throw new Error(
            `onnxruntime left output '${name}' on the device; only the KV cache should stay there`,
          );
        }
        if (!opts.returnCache) t.dispose();
      }
    }
    let hostBytes = 0;
    for (const name of Object.keys(fetches)) {
      const t = output(name);
      if (t.location === 'cpu' || t.location === 'cpu-pinned')
        hostBytes += (t.data as ArrayBufferView).byteLength;
    }
    const result: ForwardResult = {
      logits,
      hooks: new Map(hookSources.map(([h, source]) => [h, asF32(output(source))])),
      padding: cache ? cache.nextPosition.map(() => 0) : b.padding,
      hostBytes,
    };
    if (!opts.returnCache) return result;
    const tensors: ort.Tensor[] = [];
    for (let i = 0; i < spec.numLayers; i++)
      tensors.push(output(IO.presentKey(i)), output(IO.presentValue(i)));
    // r < b.batch = b.padding.length = cache.nextPosition.length (the cache's batch was checked above)
    const nextPosition = Array.from({ length: b.batch }, (_, r) =>
      cache ? cache.nextPosition[r]! + b.seq : b.seq - b.padding[r]!,
    );
    return { ...result, cache: { batch: b.batch, length: total, attentionMask, nextPosition, tensors } };
  }

  /** Releases the onnxruntime sessions. */
  async dispose(): Promise<void> {
    for (const s of this.sessions.values()) await (await s).release();
    this.sessions.clear();
  }
}

/**
 * An adapter without WebGPU's `shader-f16` feature (SwiftShader has none) cannot run the fp16 graphs, nor the
 * int8/int4 ones, whose activations are fp16: onnxruntime says so at the first kernel, which this turns into
 * what to do.
 */
function webgpuRunError(e: unknown, profile: Profile): unknown {
  const msg = String((e as Error)?.message ?? e);
  if (!/requires f16 but the device does not support it/.test(msg)) return e;
  return new EmlensError(
    `This WebGPU adapter has no float16 shaders (shader-f16), which the ${profile} profile needs; load the model with profile fp32 (--profile fp32) on webgpu, or use --device cpu.`,
  );
}

function allFinite(data: Float32Array): boolean {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
  return true;
}

/** Tensors over the given output buffers, shaped as this call's outputs; checks their sizes. */
function intoTensors(
  into: OutputBuffers | undefined,
  spec: ModelSpec,
  kvType: 'float32' | 'float16',
  batch: number,
  total: number,
  logitsMode: 'last' | 'all',
  returnCache: boolean | undefined,
  cache: KVCache | undefined,
): { logits?: ort.Tensor; cache?: ort.Tensor[] } {
  if (!into) return {};
  const logitsSize = batch * spec.vocabSize;
  if (into.logits && logitsMode !== 'last') {
    throw new EmlensError(
      "Output buffers hold last-position logits only; drop `into.logits` or use logits: 'last'.",
    );
  }
  if (into.logits && into.logits.length < logitsSize) {
    throw new EmlensError(
      `into.logits holds ${into.logits.length} floats but this call's logits need ${logitsSize} (batch x vocab); pass a larger buffer.`,
    );
  }
  const logits =
    into.logits && new ort.Tensor('float32', into.logits.subarray(0, logitsSize), [batch, spec.vocabSize]);
  if (!into.cache || !returnCache) return { logits };
  const { numLayers, numKvHeads, headDim } = spec;
  const kvSize = batch * numKvHeads * total * headDim;
  const wantArray = kvType === 'float16' ? Uint16Array : Float32Array;
  if (
    into.cache.length !== 2 * numLayers ||
    into.cache.some((a) => !(a instanceof wantArray) || a.length < kvSize)
  ) {
    throw new EmlensError(
      `into.cache must be ${2 * numLayers} ${wantArray.name}s of at least ${kvSize} elements each (batch x kv_heads x ${total} positions x head_dim); pass buffers of that size.`,
    );
  }
  const read = new Set(cache?.tensors.map((t) => (t.data as KvArray).buffer));
  if (into.cache.some((a) => read.has(a.buffer))) {
    throw new EmlensError(
      'into.cache shares memory with the cache being continued; write the new cache into other buffers (DecodeBuffers alternates two sets).',
    );
  }
  return {
    logits,
    cache: into.cache.map(
      (a) => new ort.Tensor(kvType, a.subarray(0, kvSize), [batch, numKvHeads, total, headDim]),
    ),
  };
}

/**
 * Loads a Hugging Face model folder (config.json + safetensors): builds the ONNX graph on first use (cached on
 * disk, rebuilt when the model or a build option changes) and opens an onnxruntime session.
 */
export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  return Model.create(dir, opts);
}
