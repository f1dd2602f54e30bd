/**
 * Weight orthogonalisation: bakes the ablation of one direction into a model's weights, so that the new model
 * run plainly equals the old one with the direction ablated at every residual site.
 *
 * The residual stream is a sum of what the embedding, every attention output (o_proj) and every MLP output
 * (down_proj) write. Projecting `d` out of each of those writers (`W <- W - d d^T W` for a `[d_model, in]`
 * weight, `e <- e - (e.d) d` for each embedding row, the same for their biases) leaves every residual site
 * orthogonal to `d`, which is exactly what ablating `d` at all `2L + 1` sites does at run time. The LM head
 * reads the stream and is left as it is (a tied head is untied, so it keeps the original embeddings).
 */
import { copyFile, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type DirectionSet, directionLayers } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import { claimOutputFolder, writeFolderAtomic } from '../io/outputs.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { WeightSource } from '../io/weightSource.js';
import { readConfig } from '../model/config.js';
import type { WeightReader } from '../model/graph/weights.js';
import { LoraMergedWeights, loadAdapter } from '../model/lora/index.js';
import { type ModelSpec, weightNames, weightShape } from '../model/spec.js';
import { checkWeights } from '../model/weightCheck.js';
import { dotAt, unitVector64 } from '../util/vector.js';
import { checkDirectionsFit, directionAt } from './compose.js';

export interface OrthogonalizeOptions {
  /** A PEFT LoRA adapter merged into the weights first. */
  readonly adapter?: string;
  /** The direction: a set plus the `layer` whose vector to use, or a vector `[d_model]` directly. */
  readonly direction: DirectionSet | ArrayLike<number>;
  /** Which layer of the set (required with a set that holds more than one layer). */
  readonly layer?: number;
  /** Written into the safetensors metadata (e.g. the direction file's path). */
  readonly source?: string;
  readonly onProgress?: (message: string) => void;
  /** Replace an existing non-empty `outDir` (default: refuse). */
  readonly overwrite?: boolean;
}

export interface OrthogonalizeResult {
  readonly outDir: string;
  readonly spec: ModelSpec;
  /** Names of the weights that were changed. */
  readonly modified: readonly string[];
  /** Whether a tied LM head was written out apart (config tie_word_embeddings becomes false). */
  readonly untied: boolean;
}

/** Weights that write to the residual stream: embed_tokens rows, every o_proj and down_proj (and biases). */
export function residualWriters(spec: ModelSpec): string[] {
  return weightNames(spec).filter(
    (n) => n === 'model.embed_tokens.weight' || /\.(o_proj|down_proj)\.(weight|bias)$/.test(n),
  );
}

/** Unit vector in float64 of a set's layer, or of a given vector; checks the width. */
function unitDirection(
  opts: OrthogonalizeOptions,
  spec: ModelSpec,
): { unit: Float64Array; layer: number | null } {
  let v: ArrayLike<number>;
  let layer: number | null = null;
  const dir = opts.direction;
  if (isDirectionSet(dir)) {
    checkDirectionsFit(dir, spec);
    const layers = directionLayers(dir);
    if (opts.layer === undefined && layers.length > 1) {
      throw new EmlensError(
        `The direction set holds layers ${layers.join(', ')}; choose the one to project out (--layer).`,
      );
    }
    const chosen = opts.layer ?? layers[0];
    if (chosen === undefined || !Number.isInteger(chosen) || chosen < 0 || chosen >= spec.numLayers) {
      throw new EmlensError(
        `Layer ${chosen} is out of range: the model has layers 0..${spec.numLayers - 1}; pick a layer from those.`,
      );
    }
    layer = chosen;
    v = directionAt(dir, layer);
  } else {
    v = dir;
    if (v.length !== spec.dModel) {
      throw new EmlensError(
        `The direction has ${v.length} entries but the model's d_model is ${spec.dModel}; use a direction computed on this model.`,
      );
    }
  }
  return { unit: unitVector64(v, 'the direction'), layer };
}

function isDirectionSet(x: DirectionSet | ArrayLike<number>): x is DirectionSet {
  return typeof x === 'object' && x !== null && 'vectors' in x && x.vectors instanceof Map;
}

/** `W <- W - d d^T W` for a row-major `[dModel, cols]` weight (float64 sums, rounded once). */
export function projectOutputs(w: Float32Array, d: Float64Array, cols: number): Float32Array {
  const rows = d.length;
  // o < rows = d.length, j < cols = c.length and row + j < rows * cols = w.length: the indexes are in range.
  const c = new Float64Array(cols); // d^T W
  for (let o = 0; o < rows; o++) {
    const dk = d[o]!;
    if (dk === 0) continue;
    const row = o * cols;
    for (let j = 0; j < cols; j++) c[j]! += dk * w[row + j]!;
  }
  const out = new Float32Array(w.length);
  for (let o = 0; o < rows; o++) {
    const row = o * cols;
    const dk = d[o]!;
    for (let j = 0; j < cols; j++) out[row + j] = w[row + j]! - dk * c[j]!;
  }
  return out;
}

/** Each row `r` of a row-major `[rows, dModel]` matrix becomes `r - (r.d) d` (a bias is one row). */
export function projectRows(w: Float32Array, d: Float64Array): Float32Array {
  const dm = d.length;
  const out = new Float32Array(w.length);
  for (let r = 0; r < w.length / dm; r++) {
    const at = r * dm;
    const dot = dotAt(w, at, d);
    // i < dm = d.length and at + i < w.length (whole rows of dm): the indexes are in range.
    for (let i = 0; i < dm; i++) out[at + i] = w[at + i]! - dot * d[i]!;
  }
  return out;
}

/** Files of a model folder that are not weights (config, tokenizer, chat template, generation config). */
function isWeightFile(name: string): boolean {
  return (
    name.endsWith('.safetensors') ||
    name.endsWith('.safetensors.index.json') ||
    name.endsWith('.bin') ||
    name.endsWith('.bin.index.json') ||
    name.endsWith('.pt') ||
    name.endsWith('.pth') ||
    name.endsWith('.onnx') ||
    name.endsWith('.onnx_data') ||
    name.endsWith('.gguf')
  );
}

/**
 * Writes a new Hugging Face model folder at `outDir` (config and tokenizer files copied, one F32
 * `model.safetensors`) whose weights have the unit direction projected out of every matrix writing to the
 * residual stream. Refuses an existing non-empty `outDir` unless `overwrite`. The folder appears whole or not
 * at all (it is built beside `outDir` and renamed into place), so even `outDir` = `modelDir` with `overwrite`
 * reads every weight before anything is replaced.
 *
 * @example
 * await orthogonalizeModel('models/qwen', 'models/qwen-no-em', { direction: await loadDirections('em.safetensors'), layer: 12 });
 */
export async function orthogonalizeModel(
  modelDir: string,
  outDir: string,
  opts: OrthogonalizeOptions,
): Promise<OrthogonalizeResult> {
  // Checked before the weights are read, so a refusal costs nothing; writeFolderAtomic checks again.
  await claimOutputFolder(outDir, { overwrite: opts.overwrite });
  const spec = await readConfig(modelDir);
  if (spec.gemmaBlock) {
    // Gemma writes norm(o_proj(.)) and norm(down_proj(.)) to the residual stream: RMS-normalising after the
    // projection rescales every other component too, so no weight edit equals ablating d at run time.
    throw new EmlensError(
      `${spec.architecture} post-normalises each attention and MLP output before adding it to the residual stream, so projecting a direction out of its weights is not the same as ablating it; ablate at run time instead (steer/ablate interventions).`,
    );
  }
  const { unit, layer } = unitDirection(opts, spec);
  const progress = opts.onProgress ?? (() => {});
  const adapter = opts.adapter === undefined ? undefined : await loadAdapter(opts.adapter);
  adapter?.validate(spec, `the model at ${modelDir}`);

  const source = await WeightSource.open(modelDir);
  try {
    checkWeights(spec, source, modelDir);
  } catch (e) {
    await source.close();
    throw e;
  }
  const merged = adapter ? new LoraMergedWeights(source, adapter) : undefined;
  const reader: WeightReader = merged ?? source;
  const writers = new Set(residualWriters(spec));
  const tensors = new Map<string, TensorToWrite>();
  const modified: string[] = [];
  try {
    for (const name of weightNames(spec)) {
      const shape = weightShape(spec, name);
      const w = await reader.readFloat32(name);
      const n = shape.reduce((a, b) => a * b, 1);
      if (w.length !== n) {
        throw new EmlensError(
          `Weight '${name}' of ${modelDir} holds ${w.length} values but its config says [${shape.join(', ')}]; re-download the model.`,
        );
      }
      let out = w;
      if (writers.has(name)) {
        if (name === 'model.embed_tokens.weight' || name.endsWith('.bias')) out = projectRows(w, unit);
        else {
          const [, cols] = shape;
          if (cols === undefined) throw new Error(`orthogonalizeModel: weight '${name}' is not a matrix`);
          out = projectOutputs(w, unit, cols);
        }
        modified.push(name);
        if (name === 'model.embed_tokens.weight' && spec.tieWordEmbeddings) {
          tensors.set('lm_head.weight', { dtype: 'F32', shape: [spec.vocabSize, spec.dModel], data: w });
        }
      }
      tensors.set(name, { dtype: 'F32', shape, data: out });
    }
  } finally {
    await merged?.close();
    await source.close();
  }
  progress(`projected the direction out of ${modified.length} weights`);

  await writeFolderAtomic(outDir, { overwrite: opts.overwrite }, async (tmp) => {
    for (const entry of await readdir(modelDir, { withFileTypes: true })) {
      if (!entry.isFile() || isWeightFile(entry.name)) continue;
      if (entry.name === 'config.json') continue;
      await copyFile(join(modelDir, entry.name), join(tmp, entry.name));
    }
    const config = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    if (spec.tieWordEmbeddings) config.tie_word_embeddings = false;
    if ('torch_dtype' in config || !('dtype' in config)) config.torch_dtype = 'float32';
    if ('dtype' in config) config.dtype = 'float32';
    await writeFile(join(tmp, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    await writeSafetensors(join(tmp, 'model.safetensors'), tensors, {
      format: 'pt',
      emlens_orthogonalized: JSON.stringify({
        model: modelDir,
        adapter: opts.adapter ?? null,
        direction: opts.source ?? null,
        layer,
      }),
    });
  });
  progress(`wrote ${outDir}`);
  return { outDir, spec, modified, untied: spec.tieWordEmbeddings };
}
