import type { ModelSpec } from '../spec.js';
import { linearBytes, linearSchemeFor } from './linear.js';
import type { Profile } from './transformer.js';

export const PROFILES: readonly Profile[] = ['fp32', 'fp16', 'int8', 'int4'];

/**
 * Bytes of the weights a profile's graph holds (embeddings, block GEMMs, LM head, norms and biases; the RoPE
 * tables, which grow with maxPositions, are left out): what loading the model in that profile costs in memory
 * before activations and the KV cache.
 */
export function profileWeightBytes(spec: ModelSpec, profile: Profile): number {
  const { dModel: d, numHeads: h, numKvHeads: kv, headDim: hd, intermediateSize: ff, vocabSize: v } = spec;
  const scheme = linearSchemeFor(profile);
  const floatBytes = profile === 'fp16' ? 2 : 4;
  const quantized = scheme.kind !== 'float';
  // the quantised profiles keep the embedding table in fp16 and give the LM head its own quantised copy
  const embed = v * d * (quantized ? 2 : floatBytes);
  const head = quantized ? linearBytes(scheme, d, v) : spec.tieWordEmbeddings ? 0 : v * d * floatBytes;
  const qkv = (h + 2 * kv) * hd;
  const gemms =
    linearBytes(scheme, d, qkv) +
    linearBytes(scheme, h * hd, d) +
    linearBytes(scheme, d, 2 * ff) +
    linearBytes(scheme, ff, d);
  const norms = (spec.gemmaBlock ? 4 : 2) * d + (spec.qkNorm ? 2 * hd : 0);
  const biases = (spec.qkvBias ? qkv : 0) + (spec.oBias ? d : 0) + (spec.mlpBias ? 2 * ff + d : 0);
  return embed + head + spec.numLayers * (gemms + (norms + biases) * floatBytes) + d * floatBytes;
}
