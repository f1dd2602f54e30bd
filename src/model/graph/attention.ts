/**
 * The attention block of each layer (RoPE, masking, attention with a past/present KV cache), in two op sets:
 *
 * - `onnx`: the opset-23 `RotaryEmbedding` and `Attention` ops with a mask built in the graph from
 *   `attention_mask`. What the CPU provider runs.
 * - `contrib`: onnxruntime's com.microsoft `RotaryEmbedding` and `GroupQueryAttention`, the ops the WebGPU
 *   provider implements (it has no kernel for the opset-23 pair, which then fell back to the CPU with copies
 *   around them). The additive mask comes in as a graph input computed on the host (see `attentionFeeds`), so
 *   no shape arithmetic is left in the graph for a provider to push back to the CPU.
 *
 * Both take the same left-padded batch and the same `[batch, kv_heads, positions, head_dim]` cache, and give
 * the same numbers: GroupQueryAttention is told every row is full (`seqlens_k` = total - 1), which makes its
 * own causal mask the plain one over cache slots, and the padding (and a sliding window) is in the bias.
 */
import { EmlensError } from '../../errors.js';
import { f32ToF16 } from '../../io/halfFloat.js';
import type { GraphBuilder } from '../../onnx/builder.js';
import type { ModelSpec } from '../spec.js';

/** Which attention ops a graph uses: `onnx` (opset 23, the CPU's) or `contrib` (com.microsoft, WebGPU's). */
export type AttentionOps = 'onnx' | 'contrib';

/** The present output names (the same as `IO.presentKey/Value`; kept here so this file imports no cycle). */
const presentKeyName = (i: number) => `present.${i}.key`;
const presentValueName = (i: number) => `present.${i}.value`;

/** The graph inputs only the `contrib` attention has (fed by `attentionFeeds`). */
export const CONTRIB_IO = {
  /** `[batch, 1, seq, total]` float32: 0 where a query may see a key, a large negative number elsewhere. */
  bias: 'attention_bias',
  /** The same for sliding-window layers. */
  slidingBias: 'attention_bias_sliding',
  /** `[batch]` int32: total - 1 for every row (the mask is in the bias). */
  seqlensK: 'seqlens_k',
  /** `[1]` int32: positions held after this call. */
  totalSequenceLength: 'total_sequence_length',
} as const;

/** Per layer: the attention output `[batch, seq, H*hd]`; declares the layer's past inputs and present outputs. */
export type AttendFn = (
  layer: number,
  q: string,
  k: string,
  v: string,
  sliding: boolean,
  names: { pastKey: string; pastValue: string; presentKey: string; presentValue: string },
) => string;

export interface AttentionContext {
  readonly g: GraphBuilder;
  readonly spec: ModelSpec;
  /** The graph's element type. */
  readonly T: 'float32' | 'float16';
  readonly attnMask: string | null;
  readonly posIds: string;
  /** `seq` of this call, an int64 scalar (onnx only). */
  readonly seqLen: string | null;
  /** RoPE tables `[maxPositions, hd/2]`: full layers and sliding layers (the same where they do not differ). */
  readonly rope: { cos: string; sin: string; localCos: string; localSin: string };
  /** Whether any layer slides. */
  readonly sliding: boolean;
}

/**
 * Refuses, for a provider, what its contrib attention kernels get wrong. Sliding windows, Gemma's scale and
 * q/k norms are expressed through the bias and plain ops and match the CPU; an attention-logit softcap
 * (Gemma 2) does not on WebGPU: its GroupQueryAttention's softcap gave logits 1.5e-3 (softcap 50) to 1.5
 * (softcap 1) away from the CPU's on a tiny Gemma 2, while the CPU's GroupQueryAttention matches the CPU's
 * Attention exactly.
 */
export function checkDeviceSupport(spec: ModelSpec, device: string): void {
  if (device === 'webgpu' && spec.attnSoftcap !== null) {
    throw new EmlensError(
      `${spec.architecture} softcaps its attention logits, which onnxruntime's WebGPU GroupQueryAttention does not compute as transformers does; run this model with --device cpu.`,
    );
  }
}

/** Refuses what the com.microsoft ops cannot express at all. */
function checkContribSupport(spec: ModelSpec): void {
  if (spec.headDim % 2 !== 0) {
    throw new EmlensError(
      `${spec.architecture} has an odd head_dim (${spec.headDim}), which com.microsoft RotaryEmbedding cannot rotate; use --device cpu.`,
    );
  }
}

/** The opset-23 attention (unchanged numerics: what the CPU graphs always used). */
export function onnxAttention(c: AttentionContext): AttendFn {
  const { g, spec, T } = c;
  const half = T === 'float16';
  const H = spec.numHeads;
  const KV = spec.numKvHeads;
  const hd = spec.headDim;
  if (!c.attnMask || !c.seqLen) throw new Error('the onnx attention needs attention_mask and seqLen');
  // ---- attention mask, shared by all layers: query i (absolute position past + i) sees key j iff j <= past + i
  // and key j is not padding. A finite large negative keeps fully masked rows (left padding) free of NaN.
  const totalLen = g.op('Squeeze', [
    g.op('Slice', [g.op('Shape', [c.attnMask]), g.int64([1]), g.int64([2])]),
  ]);
  const pastLen = g.op('Sub', [totalLen, c.seqLen]);
  const one = g.int64([1], true);
  const zero = g.int64([0], true);
  const qPos = g.op('Unsqueeze', [g.op('Range', [pastLen, totalLen, one]), g.int64([1])]); // [seq, 1]
  const kPos = g.op('Unsqueeze', [g.op('Range', [zero, totalLen, one]), g.int64([0])]); // [1, total]
  const causal = g.op('LessOrEqual', [kPos, qPos]); // [seq, total]
  const notPad = g.op('Unsqueeze', [g.op('Cast', [c.attnMask], { to: { int: 9 } }), g.int64([1, 2])]); // [batch, 1, 1, total]
  const allowed = g.op('And', [causal, notPad]); // [batch, 1, seq, total]
  const negInf = g.scalar(half ? -1e4 : -3.4028234663852886e38, T, f32ToF16);
  const zeroT = g.scalar(0, T, f32ToF16);
  const fullBias = g.op('Where', [allowed, zeroT, negInf]);
  // Sliding layers also need key j > i - window (transformers' sliding_window_overlay), on the same absolute
  // positions, so a cached decode masks exactly what recomputing the whole sequence would.
  const slidingBias = c.sliding
    ? g.op('Where', [
        g.op('And', [
          allowed,
          g.op('Greater', [kPos, g.op('Sub', [qPos, g.int64([spec.slidingWindow ?? 0], true)])]),
        ]),
        zeroT,
        negInf,
      ])
    : fullBias;

  return (_layer, q, k, v, sliding, n) => {
    const [cosT, sinT] = sliding ? [c.rope.localCos, c.rope.localSin] : [c.rope.cos, c.rope.sin];
    const qRot = g.op('RotaryEmbedding', [q, cosT, sinT, c.posIds], { num_heads: { int: H } });
    const kRot = g.op('RotaryEmbedding', [k, cosT, sinT, c.posIds], { num_heads: { int: KV } });
    const pastK = g.input(n.pastKey, T, ['batch', KV, 'past', hd]);
    const pastV = g.input(n.pastValue, T, ['batch', KV, 'past', hd]);
    // onnxruntime's Attention applies `softcap` as c·tanh(x/c) to the scaled logits before adding the mask,
    // as Gemma 2 does (checked against the float64 reference and transformers' goldens).
    const [attn] = g.node('Attention', [qRot, kRot, v, sliding ? slidingBias : fullBias, pastK, pastV], {
      outputs: [g.fresh('attn'), n.presentKey, n.presentValue],
      attrs: {
        q_num_heads: { int: H },
        kv_num_heads: { int: KV },
        scale: { float: spec.attnScale },
        ...(spec.attnSoftcap === null ? {} : { softcap: { float: spec.attnSoftcap } }),
      },
    }); // [batch, seq, H*hd]
    g.output(n.presentKey, n.presentKey, T, ['batch', KV, 'total', hd]);
    g.output(n.presentValue, n.presentValue, T, ['batch', KV, 'total', hd]);
    return attn;
  };
}

/** The com.microsoft attention (RotaryEmbedding + GroupQueryAttention), with the mask as graph inputs. */
export function contribAttention(c: AttentionContext): AttendFn {
  const { g, spec, T } = c;
  const H = spec.numHeads;
  const KV = spec.numKvHeads;
  const hd = spec.headDim;
  checkContribSupport(spec);
  const MS = 'com.microsoft';
  const toT = (x: string) => (T === 'float16' ? g.op('Cast', [x], { to: { int: 10 } }) : x);
  const fullBias = toT(g.input(CONTRIB_IO.bias, 'float32', ['batch', 1, 'seq', 'total']));
  const slidingBias = c.sliding
    ? toT(g.input(CONTRIB_IO.slidingBias, 'float32', ['batch', 1, 'seq', 'total']))
    : fullBias;
  const seqlensK = g.input(CONTRIB_IO.seqlensK, 'int32', ['batch']);
  const totalLen = g.input(CONTRIB_IO.totalSequenceLength, 'int32', [1]);
  // The present outputs come first among the graph's outputs. onnxruntime-node 1.30 applies a session's
  // per-output `preferredOutputLocation` by position in the run's fetch list (which follows the graph's output
  // order), not by output name: with the cache first and always fetched, positions 0..2L-1 are the cache (kept on
  // the device) and everything after it (hooks, logits) comes to the host, whatever else a call fetches.
  for (let i = 0; i < spec.numLayers; i++) {
    for (const name of [presentKeyName(i), presentValueName(i)]) {
      g.output(name, name, T, ['batch', KV, 'total', hd]);
    }
  }

  return (_layer, q, k, v, sliding, n) => {
    const [cosT, sinT] = sliding ? [c.rope.localCos, c.rope.localSin] : [c.rope.cos, c.rope.sin];
    // com.microsoft RotaryEmbedding takes (input, position_ids, cos_cache, sin_cache) and rotates halves by
    // default (interleaved = 0), the layout the opset-23 op and transformers use.
    const qRot = g.node('RotaryEmbedding', [q, c.posIds, cosT, sinT], {
      domain: MS,
      attrs: { num_heads: { int: H } },
    })[0];
    const kRot = g.node('RotaryEmbedding', [k, c.posIds, cosT, sinT], {
      domain: MS,
      attrs: { num_heads: { int: KV } },
    })[0];
    const pastK = g.input(n.pastKey, T, ['batch', KV, 'past', hd]);
    const pastV = g.input(n.pastValue, T, ['batch', KV, 'past', hd]);
    // Inputs: query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
    // position_ids, attention_bias. The sliding window is in the bias (on absolute positions, as the onnx path),
    // not in local_window_size, which counts from each row's first slot and would miss the left padding.
    const [attn] = g.node(
      'GroupQueryAttention',
      [qRot, kRot, v, pastK, pastV, seqlensK, totalLen, '', '', '', sliding ? slidingBias : fullBias],
      {
        domain: MS,
        outputs: [g.fresh('attn'), n.presentKey, n.presentValue],
        attrs: {
          num_heads: { int: H },
          kv_num_heads: { int: KV },
          scale: { float: spec.attnScale },
          ...(spec.attnSoftcap === null ? {} : { softcap: { float: spec.attnSoftcap } }),
        },
      },
    ); // [batch, seq, H*hd]
    return attn;
  };
}

/**
 * The additive masks and lengths the contrib graph takes, from a left-padded batch's `[batch, total]` mask:
 * query i of this call (slot past + i) sees slot j iff j <= past + i, j holds a real token and, for sliding
 * layers, j > past + i - window. Positions are slots here: a row's slots are contiguous, so slot distances are
 * position distances.
 */
export function attentionFeeds(
  spec: ModelSpec,
  attentionMask: BigInt64Array,
  batch: number,
  seq: number,
  total: number,
): { bias: Float32Array; slidingBias: Float32Array | null; seqlensK: Int32Array; total: Int32Array } {
  // -1e30 rather than -FLT_MAX: a fully masked row (a left-padding query) must stay finite after q.k is added.
  const NEG = -1e30;
  const past = total - seq;
  const window = spec.slidingWindow;
  const sliding = window !== null && spec.layerTypes.includes('sliding');
  const bias = new Float32Array(batch * seq * total).fill(NEG); // [batch, 1, seq, total]
  const slidingBias = sliding ? new Float32Array(batch * seq * total).fill(NEG) : null;
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < seq; i++) {
      const row = (b * seq + i) * total;
      const qSlot = past + i;
      for (let j = 0; j <= qSlot; j++) {
        if (attentionMask[b * total + j] === 0n) continue;
        bias[row + j] = 0;
        if (slidingBias && j > qSlot - (window ?? 0)) slidingBias[row + j] = 0;
      }
    }
  }
  return {
    bias,
    slidingBias,
    seqlensK: new Int32Array(batch).fill(total - 1),
    total: Int32Array.of(total),
  };
}
