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
export { LoraAdapter, type LoraModule, type LoraReplacement, loadAdapter } from './adapter.js';
export {
  ADAPTER_CONFIG_FILE,
  ADAPTER_WEIGHTS_FILE,
  type LoraConfig,
  loraScaling,
  parseLoraConfig,
  targetsModule,
} from './config.js';
export { LoraMergedWeights, mergeLora } from './merge.js';
export {
  type Checkpoint,
  findCheckpoints,
  type LoraTrajectory,
  loraTrajectory,
  type ModuleTrajectory,
  trajectoryPca,
} from './trajectory.js';
export { type LoraFactors, type PeftAdapterOptions, writePeftAdapter } from './writer.js';
