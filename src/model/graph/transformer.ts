import { f32ToF16 } from '../../io/halfFloat.js';
import type { GraphBuilder } from '../../onnx/builder.js';
import { hookName, siteCount } from '../hooks.js';
import { ropeTables } from '../rope.js';
import type { ModelSpec } from '../spec.js';
import { concatVectors, packTransposed, type WeightReader } from './weights.js';

/** fp32 for the CPU; fp16 for CUDA (whose fused attention kernels are half precision only). */
export type Profile = 'fp32' | 'fp16';

export interface TransformerGraphOptions {
  readonly profile: Profile;
  /** `last`: logits of the last position only (`[batch, vocab]`); `all`: every position. */
  readonly logits: 'last' | 'all';
  /** Rows of the RoPE cos/sin tables: the longest sequence (prompt + generated) the graph accepts. */
  readonly maxPositions: number;
}

/** Graph input and output names, shared by the builder and the session wrapper. */
export const IO = {
  inputIds: 'input_ids',
  attentionMask: 'attention_mask',
  positionIds: 'position_ids',
  pastKey: (i: number) => `past_key_values.${i}.key`,
  pastValue: (i: number) => `past_key_values.${i}.value`,
  presentKey: (i: number) => `present.${i}.key`,
  presentValue: (i: number) => `present.${i}.value`,
  steerVectors: 'steer_vectors',
  steerMask: 'steer_mask',
  ablateBasis: 'ablate_basis',
  ablateMask: 'ablate_mask',
  logits: 'logits',
} as const;

/**
 * Emits the decoder graph: embeddings, `numLayers` pre-norm blocks with grouped-query attention and a SwiGLU
 * MLP, the final norm and the LM head, with every TransformerLens hook as a named output and the intervention
 * inputs applied at every residual write (see `siteOf`). Weights are streamed into the builder one layer at a
 * time, so peak memory stays near one layer plus what the builder has already written out.
 */
export async function emitTransformer(
  g: GraphBuilder,
  spec: ModelSpec,
  weights: WeightReader,
  opts: TransformerGraphOptions,
): Promise<void> {
  const T = opts.profile === 'fp16' ? 'float16' : 'float32';
  const half = T === 'float16';
  const d = spec.dModel;
  const H = spec.numHeads;
  const KV = spec.numKvHeads;
  const hd = spec.headDim;
  const ff = spec.intermediateSize;
  const sites = siteCount(spec.numLayers);

  /** A weight initializer in the graph's element type. */
  const weight = (name: string, dims: readonly number[], data: Float32Array) =>
    g.initializer(name, T, dims, half ? f32ToF16(data) : data);
  /** Casts a float32 value to the graph's type (a no-op for fp32). */
  const toT = (v: string) => (half ? g.op('Cast', [v], { to: { int: 10 } }) : v);
  const toF32 = (v: string) => (half ? g.op('Cast', [v], { to: { int: 1 } }) : v);
  const hook = (value: string, layer: number, name: Parameters<typeof hookName>[1]) =>
    g.output(toF32(value), hookName(layer, name), 'float32', ['batch', 'seq', d]);

  // ---- inputs
  const ids = g.input(IO.inputIds, 'int64', ['batch', 'seq']);
  const attnMask = g.input(IO.attentionMask, 'int64', ['batch', 'total']);
  const posIds = g.input(IO.positionIds, 'int64', ['batch', 'seq']);
  const steerVectors = g.input(IO.steerVectors, 'float32', [sites, d]);
  const steerMask = g.input(IO.steerMask, 'float32', [sites, 'batch', 'seq']);
  const ablateBasis = g.input(IO.ablateBasis, 'float32', [sites, 'rank', d]);
  const ablateMask = g.input(IO.ablateMask, 'float32', [sites, 'batch', 'seq']);

  // ---- attention mask, shared by all layers: query i (absolute position past + i) sees key j iff j <= past + i
  // and key j is not padding. A finite large negative keeps fully masked rows (left padding) free of NaN.
  const seqLen = g.op('Squeeze', [g.op('Slice', [g.op('Shape', [ids]), g.int64([1]), g.int64([2])])]);
  const totalLen = g.op('Squeeze', [g.op('Slice', [g.op('Shape', [attnMask]), g.int64([1]), g.int64([2])])]);
  const pastLen = g.op('Sub', [totalLen, seqLen]);
  const one = g.int64([1], true);
  const zero = g.int64([0], true);
  const qPos = g.op('Unsqueeze', [g.op('Range', [pastLen, totalLen, one]), g.int64([1])]); // [seq, 1]
  const kPos = g.op('Unsqueeze', [g.op('Range', [zero, totalLen, one]), g.int64([0])]); // [1, total]
  const causal = g.op('LessOrEqual', [kPos, qPos]); // [seq, total]
  const notPad = g.op('Unsqueeze', [g.op('Cast', [attnMask], { to: { int: 9 } }), g.int64([1, 2])]); // [batch, 1, 1, total]
  const allowed = g.op('And', [causal, notPad]); // [batch, 1, seq, total]
  const negInf = g.scalar(half ? -1e4 : -3.4028234663852886e38, T, f32ToF16);
  const maskBias = g.op('Where', [allowed, g.scalar(0, T, f32ToF16), negInf]);

  // ---- RoPE tables (HF float32 angles), rotate-half layout, indexed by position_ids
  const rope = ropeTables(spec, opts.maxPositions);
  const ropeCos = weight('rope.cos', [opts.maxPositions, hd / 2], rope.cos);
  const ropeSin = weight('rope.sin', [opts.maxPositions, hd / 2], rope.sin);

  // ---- interventions at residual site j: x <- x - m_a (x D^T) D, then x <- x + m_s v
  const intervene = (x: string, site: number): string => {
    const j = g.int64([site], true);
    const basis = toT(g.op('Gather', [ablateBasis, j], { axis: { int: 0 } })); // [rank, d]
    const aMask = toT(g.op('Unsqueeze', [g.op('Gather', [ablateMask, j], { axis: { int: 0 } }), g.int64([2])])); // [batch, seq, 1]
    const coeff = g.op('MatMul', [x, g.op('Transpose', [basis], { perm: { ints: [1, 0] } })]); // [batch, seq, rank]
    const ablated = g.op('Sub', [x, g.op('MatMul', [g.op('Mul', [coeff, aMask]), basis])]);
    const vec = toT(g.op('Gather', [steerVectors, j], { axis: { int: 0 } })); // [d]
    const sMask = toT(g.op('Unsqueeze', [g.op('Gather', [steerMask, j], { axis: { int: 0 } }), g.int64([2])])); // [batch, seq, 1]
    return g.op('Add', [ablated, g.op('Mul', [sMask, vec])]);
  };

  const rmsNorm = (x: string, w: string) =>
    g.op('SimplifiedLayerNormalization', [x, w], { epsilon: { float: spec.rmsNormEps }, axis: { int: -1 } });
  const linear = (x: string, w: string, b: string | null) => {
    const y = g.op('MatMul', [x, w]);
    return b ? g.op('Add', [y, b]) : y;
  };

  // ---- embeddings
  const embedW = await weights.readFloat32('model.embed_tokens.weight');
  const embed = weight('model.embed_tokens.weight', [spec.vocabSize, d], embedW);
  let x = intervene(g.op('Gather', [embed, ids], { axis: { int: 0 } }), 0); // [batch, seq, d]

  for (let i = 0; i < spec.numLayers; i++) {
    const p = `model.layers.${i}`;
    const read = (n: string) => weights.readFloat32(`${p}.${n}`);
    hook(x, i, 'hook_resid_pre');

    // attention
    const ln1 = weight(`${p}.input_layernorm.weight`, [d], await read('input_layernorm.weight'));
    const h = rmsNorm(x, ln1); // [batch, seq, d]
    const qkvOut = (H + 2 * KV) * hd;
    const wqkv = packTransposed(
      [
        { data: await read('self_attn.q_proj.weight'), out: H * hd },
        { data: await read('self_attn.k_proj.weight'), out: KV * hd },
        { data: await read('self_attn.v_proj.weight'), out: KV * hd },
      ],
      d,
    );
    const bqkv = spec.qkvBias
      ? weight(
          `${p}.self_attn.qkv.bias`,
          [qkvOut],
          concatVectors([
            await read('self_attn.q_proj.bias'),
            await read('self_attn.k_proj.bias'),
            await read('self_attn.v_proj.bias'),
          ]),
        )
      : null;
    const qkv = linear(h, weight(`${p}.self_attn.qkv.weight`, [d, qkvOut], wqkv), bqkv); // [batch, seq, (H+2KV)*hd]
    const [q, k, v] = g.node('Split', [qkv, g.int64([H * hd, KV * hd, KV * hd])], {
      outputs: 3,
      attrs: { axis: { int: -1 } },
    });
    const qRot = g.op('RotaryEmbedding', [q, ropeCos, ropeSin, posIds], { num_heads: { int: H } });
    const kRot = g.op('RotaryEmbedding', [k, ropeCos, ropeSin, posIds], { num_heads: { int: KV } });
    const pastK = g.input(IO.pastKey(i), T, ['batch', KV, 'past', hd]);
    const pastV = g.input(IO.pastValue(i), T, ['batch', KV, 'past', hd]);
    const [attn] = g.node('Attention', [qRot, kRot, v, maskBias, pastK, pastV], {
      outputs: [g.fresh('attn'), IO.presentKey(i), IO.presentValue(i)],
      attrs: { q_num_heads: { int: H }, kv_num_heads: { int: KV }, scale: { float: 1 / Math.sqrt(hd) } },
    }); // [batch, seq, H*hd]
    g.output(IO.presentKey(i), IO.presentKey(i), T, ['batch', KV, 'total', hd]);
    g.output(IO.presentValue(i), IO.presentValue(i), T, ['batch', KV, 'total', hd]);
    const wo = weight(`${p}.self_attn.o_proj.weight`, [H * hd, d], packTransposed([{ data: await read('self_attn.o_proj.weight'), out: d }], H * hd));
    const bo = spec.oBias ? weight(`${p}.self_attn.o_proj.bias`, [d], await read('self_attn.o_proj.bias')) : null;
    const attnOut = linear(attn, wo, bo); // [batch, seq, d]
    hook(attnOut, i, 'hook_attn_out');
    x = intervene(g.op('Add', [x, attnOut]), 2 * i + 1);
    hook(x, i, 'hook_resid_mid');

    // MLP: down(silu(gate(h)) * up(h))
    const ln2 = weight(`${p}.post_attention_layernorm.weight`, [d], await read('post_attention_layernorm.weight'));
    const h2 = rmsNorm(x, ln2);
    const wgu = packTransposed(
      [
        { data: await read('mlp.gate_proj.weight'), out: ff },
        { data: await read('mlp.up_proj.weight'), out: ff },
      ],
      d,
    );
    const bgu = spec.mlpBias
      ? weight(`${p}.mlp.gate_up.bias`, [2 * ff], concatVectors([await read('mlp.gate_proj.bias'), await read('mlp.up_proj.bias')]))
      : null;
    const gu = linear(h2, weight(`${p}.mlp.gate_up.weight`, [d, 2 * ff], wgu), bgu); // [batch, seq, 2*ff]
    const [gate, up] = g.node('Split', [gu, g.int64([ff, ff])], { outputs: 2, attrs: { axis: { int: -1 } } });
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]); // [batch, seq, ff]
    const wd = weight(`${p}.mlp.down_proj.weight`, [ff, d], packTransposed([{ data: await read('mlp.down_proj.weight'), out: d }], ff));
    const bd = spec.mlpBias ? weight(`${p}.mlp.down_proj.bias`, [d], await read('mlp.down_proj.bias')) : null;
    const mlpOut = linear(act, wd, bd);
    hook(mlpOut, i, 'hook_mlp_out');
    x = intervene(g.op('Add', [x, mlpOut]), 2 * i + 2);
    hook(x, i, 'hook_resid_post');
  }

  // ---- final norm and LM head (Gemm with transB reads the HF [vocab, d] matrix as is, so tied embeddings
  // share one initializer)
  const normW = weight('model.norm.weight', [d], await weights.readFloat32('model.norm.weight'));
  const head = spec.tieWordEmbeddings
    ? embed
    : weight('lm_head.weight', [spec.vocabSize, d], await weights.readFloat32('lm_head.weight'));
  const gemmHead = (x2d: string) => g.op('Gemm', [x2d, head], { transB: { int: 1 } });
  if (opts.logits === 'last') {
    const lastIdx = g.op('Sub', [seqLen, one]);
    const last = g.op('Gather', [x, lastIdx], { axis: { int: 1 } }); // [batch, d]
    g.output(toF32(gemmHead(rmsNorm(last, normW))), IO.logits, 'float32', ['batch', spec.vocabSize]);
  } else {
    const flat = g.op('Reshape', [rmsNorm(x, normW), g.int64([-1, d])]); // [batch*seq, d]
    const outShape = g.op('Concat', [g.op('Shape', [ids]), g.int64([spec.vocabSize])], { axis: { int: 0 } });
    const logits = g.op('Reshape', [gemmHead(flat), outShape]); // [batch, seq, vocab]
    g.output(toF32(logits), IO.logits, 'float32', ['batch', 'seq', spec.vocabSize]);
  }
}
