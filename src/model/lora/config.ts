/**
 * `adapter_config.json`: parsing and validating it, and the PEFT rules it drives (which modules get a LoRA
 * layer, each module's rank, alpha and scaling).
 */
import { EmlensError } from '../../errors.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

/** The Linear projections of a decoder block, which is what PEFT's `all-linear` selects (never lm_head). */
const LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
/** PEFT's default `target_modules` for llama, mistral and qwen2 when the config has none. */
const DEFAULT_TARGETS = ['q_proj', 'v_proj'];
/** @internal The hint every "this is not an adapter" error ends with. */
export const POINT = 'point the adapter option (--adapter) at a PEFT LoRA adapter folder';

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

export type Json = Record<string, unknown>;

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
export function matchesList(names: readonly string[] | string, module: string): boolean {
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
