/** Writing PEFT LoRA adapter folders (tests, synthetic finetunes). */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../../errors.js';
import { f32ToBf16, f32ToF16 } from '../../io/halfFloat.js';
import { writeSafetensors } from '../../io/safetensors.js';
import { sortKeys } from '../../util/json.js';
import { PREFIX } from './adapter.js';
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  type Json,
  loraScaling,
  parseLoraConfig,
} from './config.js';

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
