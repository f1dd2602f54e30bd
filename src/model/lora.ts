/**
 * PEFT LoRA adapters, merged into the base weights as they are read: W' = W + scaling * B @ A.
 *
 * An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` with keys like
 * `base_model.model.model.layers.3.mlp.down_proj.lora_A.weight` (`[r, in]`) and `...lora_B.weight` (`[out, r]`),
 * optionally with the adapter name (`lora_A.default.weight`). Which modules the config selects follows PEFT
 * (`target_modules`, `exclude_modules`, `layers_to_transform`, `layers_pattern`), and so do the per-module
 * `rank_pattern`/`alpha_pattern` overrides and the scaling (alpha / r, or alpha / sqrt(r) with rsLoRA).
 * Saved full modules (`modules_to_save`) replace the base weight.
 */
import { createHash } from 'node:crypto';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { EmlensError } from '../errors.js';
import { f32ToBf16, f32ToF16 } from '../io/halfFloat.js';
import { inputExists, readInputText } from '../io/inputFiles.js';
import {
  readSafetensorsHeader,
  SafetensorsFile,
  type TensorInfo,
  writeSafetensors,
} from '../io/safetensors.js';
import { fileFingerprint } from './cache.js';
import type { WeightReader } from './graph/weights.js';
import { type ModelSpec, weightNames, weightShape } from './spec.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

/** The prefix PEFT puts before every module name of a causal LM (`PeftModel.base_model.model`). */
const PREFIX = 'base_model.model.';
/** The Linear projections of a decoder block, which is what PEFT's `all-linear` selects (never lm_head). */
const LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
/** PEFT's default `target_modules` for llama, mistral and qwen2 when the config has none. */
const DEFAULT_TARGETS = ['q_proj', 'v_proj'];
const POINT = 'point the adapter option (--adapter) at a PEFT LoRA adapter folder';

/** The fields of `adapter_config.json` that decide what the adapter changes. */
export interface LoraConfig {
  readonly r: number;
  readonly loraAlpha: number;
  /** Scaling alpha / sqrt(r) instead of alpha / r. */
  readonly useRslora: boolean;
  /** Module names (matched as PEFT does: equal, or a `.name` suffix) or one regex matched against the full name. */
  readonly targetModules: readonly string[] | string;
  readonly excludeModules: readonly string[] | string | null;
  readonly layersToTransform: readonly number[] | null;
  readonly layersPattern: readonly string[] | null;
  /** Per-module rank overrides; keys are regexes matched against a suffix of the module's full name. */
  readonly rankPattern: Readonly<Record<string, number>>;
  readonly alphaPattern: Readonly<Record<string, number>>;
  readonly modulesToSave: readonly string[];
  /** Informational: the model the adapter was trained on. */
  readonly baseModelNameOrPath: string | null;
}

/** One LoRA-adapted Linear layer. */
export interface LoraModule {
  /** Full module name, e.g. `model.layers.3.mlp.down_proj`. */
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

type Json = Record<string, unknown>;

function configError(file: string, what: string): EmlensError {
  return new EmlensError(`${file} ${what}.`);
}

function isPosInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x > 0;
}

function stringList(file: string, field: string, v: unknown): string[] | string | null {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  throw configError(
    file,
    `has ${field} ${JSON.stringify(v)}, which is not a string or a list of strings; fix it`,
  );
}

function numberMap(file: string, field: string, v: unknown, positiveInt: boolean): Record<string, number> {
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v)) {
    throw configError(file, `has ${field} ${JSON.stringify(v)}, which is not an object; fix it`);
  }
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(v as Json)) {
    const ok = positiveInt ? isPosInt(n) : typeof n === 'number' && Number.isFinite(n);
    if (!ok) {
      throw configError(
        file,
        `maps ${field} key '${k}' to ${JSON.stringify(n)}, which is not a ${positiveInt ? 'positive integer' : 'number'}; fix it`,
      );
    }
    out[k] = n as number;
  }
  return out;
}

/** A Python regex (as PEFT uses it) compiled for JavaScript; `what` names it in the error. */
function compile(pattern: string, file: string, what: string, wrap: (p: string) => string): RegExp {
  try {
    return new RegExp(wrap(pattern));
  } catch (e) {
    throw configError(
      file,
      `has ${what} '${pattern}', which is not a regex JavaScript understands (${(e as Error).message}); rewrite it without Python-only syntax`,
    );
  }
}

/** Validates a parsed `adapter_config.json`; `file` names it in errors. */
export function parseLoraConfig(json: unknown, file: string): LoraConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw configError(file, `is not a JSON object; ${POINT}`);
  }
  const c = json as Json;
  if (c.peft_type !== 'LORA') {
    throw configError(
      file,
      `has peft_type ${JSON.stringify(c.peft_type ?? null)}, but emlens merges only LoRA adapters (peft_type "LORA"); use a LoRA adapter`,
    );
  }
  if (c.use_dora === true) {
    throw configError(
      file,
      'describes a DoRA adapter (use_dora: true), which emlens cannot merge; merge it in Python (merge_and_unload) and load the merged model instead',
    );
  }
  const bias = c.bias ?? 'none';
  if (bias !== 'none') {
    throw configError(
      file,
      `has bias ${JSON.stringify(bias)}, but emlens merges only adapters trained with bias "none"; merge it in Python (merge_and_unload) and load the merged model instead`,
    );
  }
  if (c.fan_in_fan_out === true) {
    throw configError(
      file,
      'sets fan_in_fan_out: true, which is only for GPT-2 style Conv1D layers that Llama, Qwen2 and Mistral do not have; the adapter is for another model',
    );
  }
  if (c.lora_bias === true) {
    throw configError(
      file,
      'sets lora_bias: true (a bias on lora_B), which emlens cannot merge; merge it in Python (merge_and_unload) and load the merged model instead',
    );
  }
  for (const field of ['layer_replication', 'trainable_token_indices', 'target_parameters'] as const) {
    const v = c[field];
    if (v !== null && v !== undefined && !(Array.isArray(v) && v.length === 0)) {
      throw configError(
        file,
        `sets ${field}, which emlens does not support; merge the adapter in Python (merge_and_unload) and load the merged model instead`,
      );
    }
  }
  const r = c.r ?? 8;
  if (!isPosInt(r))
    throw configError(file, `has r ${JSON.stringify(r)}, which is not a positive integer; fix it`);
  const loraAlpha = c.lora_alpha ?? 8;
  if (typeof loraAlpha !== 'number' || !Number.isFinite(loraAlpha)) {
    throw configError(file, `has lora_alpha ${JSON.stringify(loraAlpha)}, which is not a number; fix it`);
  }
  const useRslora = c.use_rslora ?? false;
  if (typeof useRslora !== 'boolean') {
    throw configError(
      file,
      `has use_rslora ${JSON.stringify(useRslora)}, which is not true or false; fix it`,
    );
  }
  const targets = stringList(file, 'target_modules', c.target_modules);
  const targetModules = targets === 'all-linear' ? LINEAR_MODULES : (targets ?? DEFAULT_TARGETS);
  if (typeof targetModules === 'string') compile(targetModules, file, 'target_modules', (p) => p);
  const excludeModules = stringList(file, 'exclude_modules', c.exclude_modules);
  if (typeof excludeModules === 'string') compile(excludeModules, file, 'exclude_modules', (p) => p);

  let layersToTransform: number[] | null = null;
  const ltt = c.layers_to_transform;
  if (ltt !== null && ltt !== undefined) {
    const list = typeof ltt === 'number' ? [ltt] : ltt;
    if (
      !Array.isArray(list) ||
      !list.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)
    ) {
      throw configError(
        file,
        `has layers_to_transform ${JSON.stringify(ltt)}, which is not a layer index or a list of them; fix it`,
      );
    }
    if (list.length > 0) layersToTransform = list as number[];
  }
  if (layersToTransform !== null && typeof targetModules === 'string') {
    throw configError(
      file,
      'sets layers_to_transform together with a regex target_modules, which PEFT refuses too; list the module names instead',
    );
  }
  const lp = stringList(file, 'layers_pattern', c.layers_pattern);
  const layersPattern = lp === null ? null : typeof lp === 'string' ? [lp] : lp.length > 0 ? lp : null;

  const rankPattern = numberMap(file, 'rank_pattern', c.rank_pattern, true);
  const alphaPattern = numberMap(file, 'alpha_pattern', c.alpha_pattern, false);
  for (const k of [...Object.keys(rankPattern), ...Object.keys(alphaPattern)]) {
    compile(k, file, 'a rank_pattern/alpha_pattern key', (p) => p);
  }
  const mts = stringList(file, 'modules_to_save', c.modules_to_save);
  const modulesToSave = mts === null ? [] : typeof mts === 'string' ? [mts] : mts;
  const base = c.base_model_name_or_path;
  return {
    r,
    loraAlpha,
    useRslora,
    targetModules,
    excludeModules,
    layersToTransform,
    layersPattern,
    rankPattern,
    alphaPattern,
    modulesToSave,
    baseModelNameOrPath: typeof base === 'string' ? base : null,
  };
}

/** PEFT's `match_target_against_key` / list matching: equal, or ends with `.name`. */
function matchesList(names: readonly string[] | string, module: string): boolean {
  if (typeof names === 'string') return new RegExp(`^(?:${names})$`).test(module);
  return names.some((t) => module === t || module.endsWith(`.${t}`));
}

/** Whether the config puts a LoRA layer on `module` (a full name like `model.layers.0.mlp.down_proj`), as PEFT decides. */
export function targetsModule(config: LoraConfig, module: string): boolean {
  if (config.excludeModules !== null && matchesList(config.excludeModules, module)) return false;
  const t = config.targetModules;
  if (typeof t === 'string') return matchesList(t, module);
  if (t.includes(module)) return true; // named exactly: layers_to_transform does not apply
  if (!matchesList(t, module)) return false;
  if (config.layersToTransform === null) return true;
  let m: RegExpExecArray | null = null;
  if (config.layersPattern === null) m = /^.*\.[^.]*\.(\d+)\./.exec(module);
  else {
    for (const p of config.layersPattern) {
      m = new RegExp(`^.*\\.${p}\\.(\\d+)\\.`).exec(module);
      if (m) break;
    }
  }
  return m !== null && config.layersToTransform.includes(Number(m[1]));
}

/** PEFT's `get_pattern_key`: the first pattern key matching a dot-bounded suffix of the module name. */
function patternValue(pattern: Readonly<Record<string, number>>, module: string): number | undefined {
  for (const [key, value] of Object.entries(pattern)) {
    if (new RegExp(`^(?:.*\\.)?(?:${key})$`).test(module)) return value;
  }
  return undefined;
}

/** Rank, alpha and scaling of a module after `rank_pattern` / `alpha_pattern`. */
export function loraScaling(
  config: LoraConfig,
  module: string,
): { rank: number; alpha: number; scaling: number } {
  const rank = patternValue(config.rankPattern, module) ?? config.r;
  const alpha = patternValue(config.alphaPattern, module) ?? config.loraAlpha;
  return { rank, alpha, scaling: config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
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
    const { modules, replacements, ignored } = parseTensors(config, header.tensors, file);
    const key = createHash('sha256')
      .update(JSON.stringify({ weights: await fileFingerprint([file]), config: text }))
      .digest('hex');
    return new LoraAdapter(abs, file, config, `lora:${key}`, modules, replacements, ignored);
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
): { modules: Map<string, LoraModule>; replacements: Map<string, LoraReplacement>; ignored: string[] } {
  const pairs = new Map<string, { A?: TensorInfo; B?: TensorInfo }>();
  const replacements = new Map<string, LoraReplacement>();
  for (const [key, info] of tensors) {
    const fix = 'merge it in Python (merge_and_unload) and load the merged model instead';
    if (!key.startsWith(PREFIX)) {
      throw new EmlensError(
        `Adapter tensor '${key}' in ${file} does not start with '${PREFIX}' as PEFT names a causal LM's tensors; re-save the adapter with PEFT's save_pretrained.`,
      );
    }
    const name = key.slice(PREFIX.length);
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
      const [, module, which] = lora;
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
      const [, module, param] = saved;
      const listed = config.modulesToSave.some((t) => module === t || module.endsWith(`.${t}`));
      const embedding = module === 'model.embed_tokens' || module === 'lm_head';
      if (listed || embedding) {
        replacements.set(`${module}.${param}`, { weight: `${module}.${param}`, key, shape: info.shape });
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
      const have = (A ?? B)!.name;
      throw new EmlensError(
        `Adapter ${file} has '${have}' but no matching lora_${A ? 'B' : 'A'} tensor for '${module}'; the adapter file is incomplete, so re-save or re-download it.`,
      );
    }
    if (!targetsModule(config, module)) {
      ignored.push(A.name, B.name);
      continue;
    }
    const { rank, alpha, scaling } = loraScaling(config, module);
    const [rA, inFeatures] = A.shape;
    const [outFeatures, rB] = B.shape;
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
    const weight = `${module}.weight`;
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
      ignored.length > 0
        ? `adapter_config.json of ${file} selects none of the adapter's ${ignored.length / 2} LoRA modules (check target_modules and layers_to_transform); fix the config.`
        : `Adapter ${file} holds no LoRA tensors; ${POINT}.`,
    );
  }
  return { modules, replacements, ignored };
}

/**
 * W + scaling * B @ A for W `[out, in]`, A `[rank, in]`, B `[out, rank]`, each sum accumulated in float64 and
 * rounded to float32 once.
 */
export function mergeLora(
  weight: Float32Array,
  a: Float32Array,
  b: Float32Array,
  rank: number,
  scaling: number,
): Float32Array {
  const out = b.length / rank;
  const inp = a.length / rank;
  if (weight.length !== out * inp)
    throw new Error(`mergeLora: W has ${weight.length} values, not ${out}x${inp}`);
  const merged = new Float32Array(weight.length);
  const acc = new Float64Array(inp); // one output row of B @ A
  for (let o = 0; o < out; o++) {
    acc.fill(0);
    for (let k = 0; k < rank; k++) {
      const bk = b[o * rank + k];
      if (bk === 0) continue;
      const row = k * inp;
      for (let i = 0; i < inp; i++) acc[i] += bk * a[row + i];
    }
    const w = o * inp;
    for (let i = 0; i < inp; i++) merged[w + i] = weight[w + i] + scaling * acc[i];
  }
  return merged;
}

/** A base WeightReader with a LoRA adapter merged in; the adapter file is opened on the first read it needs. */
export class LoraMergedWeights implements WeightReader {
  private file: Promise<SafetensorsFile> | undefined;

  constructor(
    private readonly base: WeightReader,
    readonly adapter: LoraAdapter,
  ) {}

  async readFloat32(name: string): Promise<Float32Array> {
    const replaced = this.adapter.replacements.get(name);
    if (replaced) return (await this.open()).readFloat32(replaced.key);
    const m = this.adapter.modules.get(name);
    if (!m) return this.base.readFloat32(name);
    const file = await this.open();
    const [w, a, b] = await Promise.all([
      this.base.readFloat32(name),
      file.readFloat32(m.keyA),
      file.readFloat32(m.keyB),
    ]);
    if (w.length !== m.outFeatures * m.inFeatures) {
      throw new EmlensError(
        `Weight '${name}' holds ${w.length} values but the adapter's update is [${m.outFeatures}, ${m.inFeatures}]; the adapter is for another model, so load it with its own base model.`,
      );
    }
    return mergeLora(w, a, b, m.rank, m.scaling);
  }

  /** Closes the adapter file (not the base reader). */
  async close(): Promise<void> {
    const f = this.file;
    this.file = undefined;
    if (f) await (await f).close();
  }

  private open(): Promise<SafetensorsFile> {
    this.file ??= SafetensorsFile.open(this.adapter.file);
    return this.file;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writing adapters (tests, synthetic finetunes)

/** One module's LoRA factors, row-major: A `[rank, in]`, B `[out, rank]`. */
export interface LoraFactors {
  readonly A: Float32Array;
  readonly B: Float32Array;
}

export interface PeftAdapterOptions {
  readonly r: number;
  readonly alpha: number;
  /** Module names (`down_proj`) or a regex; default: the last name part of every module in `tensors`. */
  readonly targetModules?: readonly string[] | string;
  /** `layers_to_transform` (default null: every layer). */
  readonly layers?: number | readonly number[] | null;
  readonly useRslora?: boolean;
  /** By full module name (`model.layers.3.mlp.down_proj`). A module's rank is `r` unless `rankPattern` says otherwise. */
  readonly tensors: Readonly<Record<string, LoraFactors>> | ReadonlyMap<string, LoraFactors>;
  readonly rankPattern?: Readonly<Record<string, number>>;
  readonly alphaPattern?: Readonly<Record<string, number>>;
  /** Full modules saved whole, by module name (`lm_head`): written as `base_model.model.<module>.weight`. */
  readonly modulesToSave?: Readonly<
    Record<string, { readonly weight: Float32Array; readonly shape: readonly number[] }>
  >;
  /** `base_model_name_or_path` (default null). */
  readonly baseModel?: string | null;
  /** dtype of the tensors (default F32). */
  readonly dtype?: 'F32' | 'BF16' | 'F16';
  /** Keep the adapter name in the keys (`lora_A.default.weight`), as some tools write them. */
  readonly adapterNameInKeys?: boolean;
  /** Fields added to (or overriding) adapter_config.json. */
  readonly config?: Readonly<Record<string, unknown>>;
}

function sortKeys(o: Json): Json {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Writes a PEFT LoRA adapter folder (`adapter_config.json` as PEFT's save_pretrained writes it, and
 * `adapter_model.safetensors`) that PEFT and `loadAdapter` both read.
 */
export async function writePeftAdapter(dir: string, options: PeftAdapterOptions): Promise<void> {
  const entries = options.tensors instanceof Map ? [...options.tensors] : Object.entries(options.tensors);
  const targetModules =
    options.targetModules ?? [...new Set(entries.map(([m]) => m.slice(m.lastIndexOf('.') + 1)))].sort();
  const layers = options.layers ?? null;
  const config: Json = sortKeys({
    alpha_pattern: { ...(options.alphaPattern ?? {}) },
    auto_mapping: null,
    base_model_name_or_path: options.baseModel ?? null,
    bias: 'none',
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: typeof layers === 'number' ? layers : layers === null ? null : [...layers],
    loftq_config: {},
    lora_alpha: options.alpha,
    lora_bias: false,
    lora_dropout: 0.0,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: options.modulesToSave ? Object.keys(options.modulesToSave) : null,
    peft_type: 'LORA',
    r: options.r,
    rank_pattern: { ...(options.rankPattern ?? {}) },
    revision: null,
    target_modules: typeof targetModules === 'string' ? targetModules : [...targetModules],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: options.useRslora ?? false,
    ...(options.config ?? {}),
  });
  const parsed = parseLoraConfig(
    { ...config, use_dora: false, peft_type: 'LORA', bias: 'none', fan_in_fan_out: false },
    'writePeftAdapter options',
  );
  const dtype = options.dtype ?? 'F32';
  const encode = (x: Float32Array) => (dtype === 'BF16' ? f32ToBf16(x) : dtype === 'F16' ? f32ToF16(x) : x);
  const suffix = options.adapterNameInKeys ? '.default.weight' : '.weight';
  const tensors = new Map<string, { dtype: typeof dtype; shape: number[]; data: ArrayBufferView }>();
  for (const [module, { A, B }] of entries) {
    const { rank } = loraScaling(parsed, module);
    if (A.length % rank !== 0 || B.length % rank !== 0) {
      throw new EmlensError(
        `LoRA factors of '${module}' hold ${A.length} and ${B.length} values, not multiples of its rank ${rank}; give A as [rank, in] and B as [out, rank].`,
      );
    }
    tensors.set(`${PREFIX}${module}.lora_A${suffix}`, {
      dtype,
      shape: [rank, A.length / rank],
      data: encode(A),
    });
    tensors.set(`${PREFIX}${module}.lora_B${suffix}`, {
      dtype,
      shape: [B.length / rank, rank],
      data: encode(B),
    });
  }
  for (const [module, { weight, shape }] of Object.entries(options.modulesToSave ?? {})) {
    tensors.set(`${PREFIX}${module}.weight`, { dtype, shape: [...shape], data: encode(weight) });
  }
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, ADAPTER_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
  await writeSafetensors(join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: 'pt' });
}
