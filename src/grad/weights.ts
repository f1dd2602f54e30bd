/**
 * The frozen weights of a gradient graph, read once from a model folder (a LoRA adapter merged in when given)
 * and kept in the layout the graph takes them: Linear weights transposed to `[in, out]`, Gemma's norm weights
 * as float32(1 + w). They are fed to every run as graph inputs, so one graph serves any weights of the spec
 * and no graph is ever too large for protobuf.
 */
import { EmlensError } from '../errors.js';
import { WeightSource } from '../io/weightSource.js';
import { readConfig } from '../model/config.js';
import type { WeightReader } from '../model/graph/weights.js';
import { checkpointRenamer } from '../model/layout.js';
import { LoraMergedWeights, loadAdapter } from '../model/lora/index.js';
import { type ModelSpec, weightNames, weightShape } from '../model/spec.js';

/** Graph input name of a frozen weight (its HF name, prefixed). */
export const frozenName = (hf: string) => `w.${hf}`;

/** The transposed LM head's input name (a copy even when tied: the embedding table is gathered by rows). */
export const LM_HEAD_T = 'w.lm_head.T';

export interface FrozenWeights {
  readonly spec: ModelSpec;
  /** Graph input name -> values and shape, in graph layout. */
  readonly tensors: ReadonlyMap<string, { readonly data: Float32Array; readonly shape: readonly number[] }>;
}

/** `[out, in]` -> `[in, out]` */
export function transpose2d(w: Float32Array, out: number, inp: number): Float32Array {
  const t = new Float32Array(w.length);
  for (let o = 0; o < out; o++) {
    const row = o * inp;
    for (let i = 0; i < inp; i++) t[i * out + o] = w[row + i]!;
  }
  return t;
}

/** Reads every weight a spec needs from `reader` into graph layout. */
export async function frozenWeightsFrom(spec: ModelSpec, reader: WeightReader): Promise<FrozenWeights> {
  const tensors = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const name of weightNames(spec)) {
    const shape = weightShape(spec, name);
    const data = await reader.readFloat32(name);
    if (data.length !== shape.reduce((a, b) => a * b, 1)) {
      throw new EmlensError(
        `Tensor ${name} holds ${data.length} values but config.json implies shape [${shape.join(', ')}]; use the config.json that came with these weights.`,
      );
    }
    if (name.endsWith('_proj.weight')) {
      const [out, inp] = shape as [number, number];
      tensors.set(frozenName(name), { data: transpose2d(data, out, inp), shape: [inp, out] });
    } else if (name.endsWith('norm.weight') && spec.gemmaBlock) {
      // Gemma's x·(1 + w) with 1 + w in float32, as the inference graph stores it
      tensors.set(frozenName(name), { data: data.map((w) => Math.fround(1 + w)), shape });
    } else {
      tensors.set(frozenName(name), { data, shape });
    }
    if (name === 'lm_head.weight' || (name === 'model.embed_tokens.weight' && spec.tieWordEmbeddings)) {
      tensors.set(LM_HEAD_T, {
        data: transpose2d(data, spec.vocabSize, spec.dModel),
        shape: [spec.dModel, spec.vocabSize],
      });
    }
  }
  return { spec, tensors };
}

/** Reads a model folder's weights (with a PEFT adapter merged in when `adapter` is given). */
export async function loadFrozenWeights(
  dir: string,
  opts: { adapter?: string } = {},
): Promise<FrozenWeights> {
  const spec = await readConfig(dir);
  const source = await WeightSource.open(dir, { rename: checkpointRenamer(spec) });
  let merged: LoraMergedWeights | undefined;
  try {
    let reader: WeightReader = source;
    if (opts.adapter !== undefined) {
      const adapter = await loadAdapter(opts.adapter);
      adapter.validate(spec, `the model at ${dir}`);
      merged = new LoraMergedWeights(source, adapter);
      reader = merged;
    }
    return await frozenWeightsFrom(spec, reader);
  } finally {
    await merged?.close();
    await source.close();
  }
}
