/**
 * Checks a model folder's tensors (names, dtypes and shapes from the safetensors headers; no data is read)
 * against the spec config.json gives, before anything is built. transformers refuses a checkpoint whose
 * shapes disagree with its config; without this check emlens would build a graph from them and give NaN or
 * wrong numbers with exit code 0, or fail deep inside the graph builder.
 */
import { EmlensError } from '../errors.js';
import type { SafetensorsDtype } from '../io/safetensors.js';
import { type ModelSpec, weightDims, weightNames } from './spec.js';

/** What the check needs of a weight source: tensor names and their header entries. */
export interface TensorIndex {
  names(): Iterable<string>;
  has(name: string): boolean;
  info(name: string): { readonly dtype: SafetensorsDtype; readonly shape: readonly number[] };
}

const FLOAT_DTYPES: ReadonlySet<SafetensorsDtype> = new Set(['F32', 'F16', 'BF16', 'F64']);
const DISAGREE = 'the weights and config.json disagree: use the config.json that came with these weights';
const LAYER = /^model\.layers\.(\d+)\./;
/** Non-persistent RoPE buffers that old checkpoints saved; transformers drops them without a warning. */
const IGNORED = /(^|\.)rotary_emb\.inv_freq$/;

const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** How many layers the tensor names cover (one more than the highest `model.layers.N`). */
function layersIn(names: readonly string[]): number {
  let n = 0;
  for (const name of names) {
    const m = LAYER.exec(name);
    if (m) n = Math.max(n, Number(m[1]) + 1);
  }
  return n;
}

function missingError(spec: ModelSpec, name: string, layers: number, where: string): EmlensError {
  const { shape, dims } = weightDims(spec, name);
  const head = `Tensor ${name}, which config.json implies ${shapeText(shape)} (${dims.join(', ')}), is not in the weights at ${where}`;
  const layer = LAYER.exec(name);
  if (layer && Number(layer[1]) >= layers) {
    return new EmlensError(
      `${head}: config.json has num_hidden_layers ${spec.numLayers} but the weights have ${layers} layers, so ${DISAGREE}.`,
    );
  }
  if (name === 'lm_head.weight') {
    return new EmlensError(
      `${head}; config.json sets tie_word_embeddings false, so if the output head shares embed_tokens set tie_word_embeddings to true, or else use the config.json that came with these weights.`,
    );
  }
  return new EmlensError(
    `${head}; the download is incomplete or config.json is for other weights: re-download the model, or use the config.json that came with these weights.`,
  );
}

/** A bias in the weights the config says the model does not have (emlens would silently drop it). */
function unexpectedBias(spec: ModelSpec, name: string): EmlensError | null {
  const m = /^model\.layers\.\d+\.(self_attn|mlp)\.(\w+)\.bias$/.exec(name);
  if (!m || spec.family === 'qwen2') return null; // Qwen2 hard-codes its biases, as transformers does
  const field = m[1] === 'self_attn' ? 'attention_bias' : spec.family === 'llama' ? 'mlp_bias' : null;
  if (field === null) return null;
  return new EmlensError(
    `Tensor ${name} is in the weights but config.json sets no ${field}, so it would be dropped; set ${field} to true in config.json, or use the config.json that came with these weights.`,
  );
}

/**
 * Checks every tensor `spec` needs: present, a float dtype and the shape config.json implies; and that the
 * weights hold no layer beyond num_hidden_layers. Throws an EmlensError naming the first disagreement
 * (`where` names the model folder); returns the tensors the model does not use (a warning, as in
 * transformers).
 */
export function checkWeights(spec: ModelSpec, index: TensorIndex, where: string): { unused: string[] } {
  const names = [...index.names()];
  const layers = layersIn(names);
  const expected = weightNames(spec);
  for (const name of expected) {
    if (!index.has(name)) throw missingError(spec, name, layers, where);
    const { dtype, shape: found } = index.info(name);
    const { shape, dims } = weightDims(spec, name);
    if (found.length !== shape.length || found.some((n, i) => n !== shape[i])) {
      throw new EmlensError(
        `Tensor ${name} has shape ${shapeText(found)} but config.json implies ${shapeText(shape)} (${dims.join(', ')}); ${DISAGREE}.`,
      );
    }
    if (!FLOAT_DTYPES.has(dtype)) {
      throw new EmlensError(
        `Tensor ${name} has dtype ${dtype}, but model weights must be a float type (F32, F16, BF16 or F64); re-export the weights in their float dtype.`,
      );
    }
  }
  const wanted = new Set(expected);
  const unused: string[] = [];
  for (const name of names) {
    if (wanted.has(name) || IGNORED.test(name)) continue;
    const layer = LAYER.exec(name);
    if (layer && Number(layer[1]) >= spec.numLayers) {
      throw new EmlensError(
        `Tensor ${name} belongs to layer ${layer[1]}, but config.json has num_hidden_layers ${spec.numLayers} while the weights have ${layers} layers; ${DISAGREE}.`,
      );
    }
    const bias = unexpectedBias(spec, name);
    if (bias) throw bias;
    unused.push(name);
  }
  return { unused };
}

/** The warning line for tensors `checkWeights` found unused (transformers warns about them too). */
export function unusedWeightsWarning(spec: ModelSpec, unused: readonly string[], where: string): string {
  const shown = unused.slice(0, 3).map((n) => `'${n}'`);
  const more = unused.length > 3 ? ` and ${unused.length - 3} more` : '';
  const s = unused.length === 1 ? '' : 's';
  return `warning: ignoring ${unused.length} tensor${s} of ${where} that a ${spec.architecture} with this config.json does not use (${shown.join(', ')}${more})`;
}
