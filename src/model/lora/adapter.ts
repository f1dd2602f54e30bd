/**
 * An adapter folder: its config and which tensors of `adapter_model.safetensors` adapt or replace which base
 * weights (PEFT's key names mapped to emlens weight names), checked against each other and against a model.
 */
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { EmlensError } from '../../errors.js';
import { inputExists, readInputText } from '../../io/inputFiles.js';
import { readSafetensorsHeader, type TensorInfo } from '../../io/safetensors.js';
import { fileFingerprint } from '../cache.js';
import { textModelName } from '../layout.js';
import { type ModelSpec, weightNames, weightShape } from '../spec.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  type LoraConfig,
  loraScaling,
  matchesList,
  POINT,
  parseLoraConfig,
  targetsModule,
} from './config.js';

/** The prefix PEFT puts before every module name of a causal LM (`PeftModel.base_model.model`). */
export const PREFIX = 'base_model.model.';

/** One LoRA-adapted Linear layer. */
export interface LoraModule {
  /**
   * Full module name as PEFT names it, e.g. `model.layers.3.mlp.down_proj` (a multimodal Gemma 3's
   * `model.language_model.layers.3.mlp.down_proj`); `weight` is emlens' name of the weight it changes.
   */
  readonly module: string;
  /** The base weight it changes (`${module}.weight`, `[out, in]`). */
  readonly weight: string;
  readonly keyA: string;
  readonly keyB: string;
  readonly rank: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly alpha: number;
  readonly scaling: number;
}

/** A base weight replaced whole by a tensor of the adapter (`modules_to_save`). */
export interface LoraReplacement {
  /** Base weight name, e.g. `lm_head.weight`. */
  readonly weight: string;
  readonly key: string;
  readonly shape: readonly number[];
}

/** Saved full modules: PEFT writes `<module>.weight` (older versions `<module>.modules_to_save[.name].weight`). */
const SAVED = /^(.+?)(?:\.modules_to_save(?:\.[^.]+)?)?\.(weight|bias)$/;
const LORA = /^(.+)\.lora_(A|B)(?:\.([^.]+))?\.weight$/;

/** A PEFT LoRA adapter: its config, which tensors adapt which base weights, and a key for the graph cache. */
export class LoraAdapter {
  private constructor(
    /** Absolute path of the adapter folder. */
    readonly dir: string,
    /** Absolute path of `adapter_model.safetensors`. */
    readonly file: string,
    readonly config: LoraConfig,
    /** Identifies the adapter (weights file path, size and mtime, and the config text) for the graph cache. */
    readonly key: string,
    /** By base weight name (`model.layers.3.mlp.down_proj.weight`). */
    readonly modules: ReadonlyMap<string, LoraModule>,
    /** By base weight name. */
    readonly replacements: ReadonlyMap<string, LoraReplacement>,
    /** LoRA tensors of modules the config does not select; PEFT ignores them, and so does the merge. */
    readonly ignored: readonly string[],
    /** Tensors on a multimodal model's vision tower or projector, which emlens does not run. */
    readonly vision: readonly string[] = [],
  ) {}

  /** @internal use `loadAdapter`. */
  static async load(dir: string): Promise<LoraAdapter> {
    const abs = resolve(dir);
    try {
      if (!(await stat(abs)).isDirectory()) {
        throw new EmlensError(`Adapter path ${abs} is a file, not a folder; ${POINT}.`);
      }
    } catch (e) {
      if (e instanceof EmlensError) throw e;
      throw new EmlensError(`Adapter folder ${abs} does not exist or cannot be read; ${POINT}.`);
    }
    const configPath = join(abs, ADAPTER_CONFIG_FILE);
    const text = await readInputText(configPath);
    if (text === null) {
      throw new EmlensError(
        `No ${ADAPTER_CONFIG_FILE} in ${abs}; ${POINT} (${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE}).`,
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new EmlensError(
        `${configPath} is not valid JSON (${(e as Error).message}); re-save the adapter.`,
      );
    }
    const config = parseLoraConfig(json, configPath);

    const file = join(abs, ADAPTER_WEIGHTS_FILE);
    if (!(await inputExists(file))) {
      const bin = await stat(join(abs, 'adapter_model.bin')).then(
        () => true,
        () => false,
      );
      throw new EmlensError(
        bin
          ? `${abs} holds only adapter_model.bin, which is not supported; re-save the adapter with safe_serialization=True to get ${ADAPTER_WEIGHTS_FILE}.`
          : `No ${ADAPTER_WEIGHTS_FILE} in ${abs}; ${POINT}.`,
      );
    }
    const header = await readSafetensorsHeader(file);
    const { modules, replacements, ignored, vision } = parseTensors(config, header.tensors, file);
    const key = createHash('sha256')
      .update(JSON.stringify({ weights: await fileFingerprint([file]), config: text }))
      .digest('hex');
    return new LoraAdapter(abs, file, config, `lora:${key}`, modules, replacements, ignored, vision);
  }

  /**
   * Checks that every weight the adapter changes is in the model described by `spec`, with matching shapes;
   * `model` names the model in errors.
   */
  validate(spec: ModelSpec, model = 'the base model'): void {
    const names = new Set(weightNames(spec));
    const missing = (key: string, weight: string): EmlensError => {
      if (weight === 'lm_head.weight' && spec.tieWordEmbeddings) {
        return new EmlensError(
          `Adapter tensor '${key}' in ${this.file} changes lm_head, but ${model} ties lm_head to embed_tokens, so it cannot be changed alone; the adapter is for another model.`,
        );
      }
      const layer = /^model\.layers\.(\d+)\./.exec(weight);
      const why =
        layer && Number(layer[1]) >= spec.numLayers
          ? ` (it has ${spec.numLayers} layers)`
          : ` (a ${spec.architecture} with d_model ${spec.dModel})`;
      return new EmlensError(
        `Adapter tensor '${key}' in ${this.file} is for weight '${weight}', which ${model}${why} does not have; the adapter is for another model, so load it with its own base model.`,
      );
    };
    for (const m of this.modules.values()) {
      if (!names.has(m.weight)) throw missing(m.keyA, m.weight);
      const shape = weightShape(spec, m.weight);
      if (shape.length !== 2 || shape[0] !== m.outFeatures || shape[1] !== m.inFeatures) {
        throw new EmlensError(
          `Adapter tensors '${m.keyB}' [${m.outFeatures}, ${m.rank}] x '${m.keyA}' [${m.rank}, ${m.inFeatures}] give an update of shape [${m.outFeatures}, ${m.inFeatures}], but '${m.weight}' of ${model} is [${shape.join(', ')}]; the adapter is for another model, so load it with its own base model.`,
        );
      }
    }
    for (const r of this.replacements.values()) {
      if (!names.has(r.weight)) throw missing(r.key, r.weight);
      const shape = weightShape(spec, r.weight);
      if (shape.length !== r.shape.length || shape.some((d, i) => d !== r.shape[i])) {
        throw new EmlensError(
          `Adapter tensor '${r.key}' in ${this.file} is [${r.shape.join(', ')}] but '${r.weight}' of ${model} is [${shape.join(', ')}]; the adapter is for another model, so load it with its own base model.`,
        );
      }
      if (r.weight === 'model.embed_tokens.weight' && spec.tieWordEmbeddings) {
        const saved = this.config.modulesToSave.some((t) => matchesList([t], 'model.embed_tokens'));
        if (saved) {
          throw new EmlensError(
            `Adapter ${this.dir} saves embed_tokens (modules_to_save), which PEFT keeps apart from the tied lm_head but emlens cannot; merge it in Python (merge_and_unload) and load the merged model instead.`,
          );
        }
      }
    }
  }
}

/** Reads an adapter folder's config and tensor list (not the tensor data) and checks them against each other. */
export function loadAdapter(dir: string): Promise<LoraAdapter> {
  return LoraAdapter.load(dir);
}

function parseTensors(
  config: LoraConfig,
  tensors: ReadonlyMap<string, TensorInfo>,
  file: string,
): {
  modules: Map<string, LoraModule>;
  replacements: Map<string, LoraReplacement>;
  ignored: string[];
  vision: string[];
} {
  const pairs = new Map<string, { A?: TensorInfo; B?: TensorInfo }>();
  const replacements = new Map<string, LoraReplacement>();
  const vision: string[] = [];
  for (const [key, info] of tensors) {
    const fix = 'merge it in Python (merge_and_unload) and load the merged model instead';
    if (!key.startsWith(PREFIX)) {
      throw new EmlensError(
        `Adapter tensor '${key}' in ${file} does not start with '${PREFIX}' as PEFT names a causal LM's tensors; re-save the adapter with PEFT's save_pretrained.`,
      );
    }
    const name = key.slice(PREFIX.length);
    // A multimodal Gemma 3 (`model.language_model.*`, older `language_model.model.*`): the vision tower's
    // tensors are not the text model's and are set aside; the text model's map to emlens' names below.
    if (textModelName(name) === null) {
      vision.push(key);
      continue;
    }
    if (name.includes('lora_magnitude_vector')) {
      throw new EmlensError(
        `Adapter tensor '${key}' in ${file} belongs to a DoRA adapter, which emlens cannot merge; ${fix}.`,
      );
    }
    if (name.includes('lora_embedding_')) {
      throw new EmlensError(
        `Adapter tensor '${key}' in ${file} is a LoRA on an embedding layer, which emlens cannot merge; ${fix}.`,
      );
    }
    const lora = LORA.exec(name);
    if (lora) {
      const [, module = '', which] = lora; // both groups take part in every match
      if (info.shape.length !== 2) {
        throw new EmlensError(
          `Adapter tensor '${key}' in ${file} has shape [${info.shape.join(', ')}] but a LoRA ${which} weight is 2-D; re-save the adapter.`,
        );
      }
      const p = pairs.get(module) ?? {};
      if (p[which as 'A' | 'B']) {
        throw new EmlensError(
          `Adapter ${file} holds two lora_${which} tensors for '${module}' (one is '${key}'); keep one adapter name per file.`,
        );
      }
      p[which as 'A' | 'B'] = info;
      pairs.set(module, p);
      continue;
    }
    const saved = SAVED.exec(name);
    if (saved && !name.includes('lora_') && !name.includes('.base_layer.')) {
      const [, module = '', param] = saved; // both groups take part in every match
      const listed = config.modulesToSave.some((t) => module === t || module.endsWith(`.${t}`));
      const weight = `${textModelName(module)}.${param}`;
      const embedding = weight === 'model.embed_tokens.weight' || weight === 'lm_head.weight';
      if (listed || embedding) {
        replacements.set(weight, { weight, key, shape: info.shape });
        continue;
      }
    }
    throw new EmlensError(
      `Adapter tensor '${key}' in ${file} is neither a LoRA A/B weight nor a module named in modules_to_save; the adapter is not a plain LoRA adapter, so ${fix}.`,
    );
  }

  const modules = new Map<string, LoraModule>();
  const ignored: string[] = [];
  for (const [module, { A, B }] of pairs) {
    if (!A || !B) {
      const have = (A ?? B)!.name; // a pair is created with its first tensor
      throw new EmlensError(
        `Adapter ${file} has '${have}' but no matching lora_${A ? 'B' : 'A'} tensor for '${module}'; the adapter file is incomplete, so re-save or re-download it.`,
      );
    }
    if (!targetsModule(config, module)) {
      ignored.push(A.name, B.name);
      continue;
    }
    const { rank, alpha, scaling } = loraScaling(config, module);
    // both 2-D (checked when collected): the defaults are never used
    const [rA, inFeatures = 0] = A.shape;
    const [outFeatures = 0, rB] = B.shape;
    if (rA !== rB) {
      throw new EmlensError(
        `Adapter tensors '${A.name}' [${A.shape.join(', ')}] and '${B.name}' [${B.shape.join(', ')}] disagree on the rank (${rA} vs ${rB}); re-save the adapter.`,
      );
    }
    if (rA !== rank) {
      throw new EmlensError(
        `Adapter tensor '${A.name}' has rank ${rA} but adapter_config.json gives '${module}' rank ${rank} (r or rank_pattern); fix the config to match the weights.`,
      );
    }
    const weight = `${textModelName(module)}.weight`;
    if (replacements.has(weight)) {
      throw new EmlensError(
        `Adapter ${file} both replaces and LoRA-adapts '${weight}'; the adapter is inconsistent, so re-save it.`,
      );
    }
    modules.set(weight, {
      module,
      weight,
      keyA: A.name,
      keyB: B.name,
      rank,
      inFeatures,
      outFeatures,
      alpha,
      scaling,
    });
  }
  if (modules.size === 0 && replacements.size === 0) {
    throw new EmlensError(
      vision.length > 0
        ? `Adapter ${file} only adapts the vision tower (${vision.length} tensors), which emlens does not run, so it would change nothing; use an adapter of the text model.`
        : ignored.length > 0
          ? `adapter_config.json of ${file} selects none of the adapter's ${ignored.length / 2} LoRA modules (check target_modules and layers_to_transform); fix the config.`
          : `Adapter ${file} holds no LoRA tensors; ${POINT}.`,
    );
  }
  return { modules, replacements, ignored, vision };
}
