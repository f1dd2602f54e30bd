/**
 * Output buffers that a forward pass writes into instead of having onnxruntime allocate fresh ones.
 *
 * A decode step's outputs (last-position logits and the whole grown KV cache) are new native buffers on every
 * call. They are freed only when V8 collects their JS wrappers. At batch 32 on the Qwen2.5-0.5B shape that is
 * about 60 MB a step, and it cost a scavenge plus a mark-compact per step ("external memory pressure" in
 * `--trace-gc`) and about 2,000 page faults per step. A decode loop that reuses its buffers avoids all three.
 */
import { EmlensError } from '../errors.js';
import type { ModelSpec } from './spec.js';

/** One layer's key or value cache: fp32, or fp16 bits. */
export type KvArray = Float32Array | Uint16Array;

/** Where a forward pass writes its outputs (see `ForwardOptions.into`). */
export interface OutputBuffers {
  /** At least `batch * vocab` floats for the last-position logits. */
  readonly logits?: Float32Array;
  /**
   * Per layer, key then value: the returned cache, each at least `batch * kv_heads * length * head_dim`
   * elements. These must not be the buffers of the cache being continued, since that cache is read while this
   * one is written.
   */
  readonly cache?: readonly KvArray[];
}

/**
 * The reused buffers of one decode loop: one logits buffer and two cache sets that alternate. Each call reads
 * the cache in one set and writes the grown cache into the other. So the logits a call returns are overwritten
 * by the next call, and its cache by the call after that. A set grows when a call needs more positions than it
 * holds, to twice its size (or 32 positions more), but not beyond `capacity` where that is known.
 */
export class DecodeBuffers {
  readonly logits: Float32Array; // [batch, vocab]
  private readonly sets: [KvArray[], KvArray[]] = [[], []];
  private readonly held: [number, number] = [0, 0];
  private turn: 0 | 1 = 0;

  constructor(
    private readonly spec: ModelSpec,
    private readonly fp16: boolean,
    private readonly batch: number,
    /** Positions the loop will need at most (prompt + new tokens), if known; capped by `maxPositions`. */
    private readonly capacity: number | undefined,
    private readonly maxPositions: number,
    /**
     * Whether to hold host cache buffers (default true). A model whose cache stays on the device
     * (`Model.deviceCache`, webgpu) writes none: the loop then holds the logits buffer only.
     */
    private readonly hostCache = true,
  ) {
    this.logits = new Float32Array(batch * spec.vocabSize);
  }

  /** The buffers for the next call, whose returned cache holds `length` positions. */
  next(length: number): OutputBuffers {
    if (length > this.maxPositions) {
      throw new EmlensError(
        `The decode needs ${length} positions but the graph was built for ${this.maxPositions}; load the model with a larger maxPositions.`,
      );
    }
    if (!this.hostCache) return { logits: this.logits };
    const i = this.turn;
    this.turn = i === 0 ? 1 : 0;
    if (this.held[i] < length) {
      // Geometric growth keeps reallocations few; the known capacity keeps a long budget from being allocated
      // for a short answer, and a short one from being outgrown.
      const limit = Math.min(this.capacity ?? this.maxPositions, this.maxPositions);
      this.held[i] = Math.max(length, Math.min(limit, Math.max(2 * this.held[i], length + 32)));
      const { numLayers, numKvHeads, headDim } = this.spec;
      const size = this.batch * numKvHeads * this.held[i] * headDim; // [batch, kv_heads, positions, head_dim]
      this.sets[i] = Array.from({ length: 2 * numLayers }, () =>
        this.fp16 ? new Uint16Array(size) : new Float32Array(size),
      );
    }
    return { logits: this.logits, cache: this.sets[i] };
  }
}
