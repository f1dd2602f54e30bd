/**
 * Where a text model's tensors sit in a checkpoint. Causal LMs use `model.*` and `lm_head.weight` (emlens'
 * own names); a Gemma3ForConditionalGeneration holds the same text model under `language_model.model.*` and
 * `language_model.lm_head.weight` (what transformers 4.x and 5.18's save_pretrained write) or under
 * `model.language_model.*` with `lm_head.weight` (transformers 5's module layout), beside a vision tower and a
 * projector that emlens does not run.
 */
import type { ModelSpec } from './spec.js';

const VISION = /^(?:model\.)?(?:vision_tower|multi_modal_projector)(?:\.|$)/;

/** Whether the spec's checkpoint nests the text model inside a multimodal wrapper. */
export function isMultimodal(spec: Pick<ModelSpec, 'architecture'>): boolean {
  return spec.architecture === 'Gemma3ForConditionalGeneration';
}

/**
 * emlens' name of a multimodal checkpoint's tensor or module (`model.language_model.layers.0.mlp.up_proj` ->
 * `model.layers.0.mlp.up_proj`); null for the vision tower and projector, which the text model does not use.
 * Names outside those prefixes are returned as they are.
 */
export function textModelName(name: string): string | null {
  if (VISION.test(name)) return null;
  for (const prefix of ['model.language_model.', 'language_model.model.']) {
    if (name.startsWith(prefix)) return `model.${name.slice(prefix.length)}`;
  }
  if (name === 'language_model.lm_head' || name.startsWith('language_model.lm_head.')) {
    return name.slice('language_model.'.length);
  }
  return name;
}

/** The renaming a spec's checkpoint needs (identity for causal LMs). */
export function checkpointRenamer(
  spec: Pick<ModelSpec, 'architecture'>,
): ((name: string) => string | null) | undefined {
  return isMultimodal(spec) ? textModelName : undefined;
}

/** The name transformers 5.18's save_pretrained gives emlens' tensor `name` in the spec's checkpoint. */
export function checkpointName(spec: Pick<ModelSpec, 'architecture'>, name: string): string {
  if (!isMultimodal(spec)) return name;
  if (name.startsWith('model.')) return `language_model.${name}`;
  if (name.startsWith('lm_head.')) return `language_model.${name}`;
  return name;
}
