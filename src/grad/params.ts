/**
 * What a gradient graph differentiates with respect to: a steering vector added at residual sites and LoRA
 * factors on chosen linear modules. Everything else in the model stays frozen.
 */
import { EmlensError } from '../errors.js';
import type { ResidualHookName } from '../model/hooks.js';
import type { ModelSpec } from '../model/spec.js';

/** The linear modules LoRA factors can sit on (PEFT's module names). */
export const LORA_MODULES = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
] as const;
export type LoraModuleName = (typeof LORA_MODULES)[number];

/**
 * A steering vector added at every position of each of `sites`: one vector shared by all sites
 * (`shared`, parameter `[d]`), or one per site (parameter `[sites, d]`); with `perToken`, one per site and
 * token (`[sites, batch, seq, d]`: the gradient with respect to the activations themselves, for attribution).
 */
export interface SteerParamSpec {
  readonly sites: readonly ResidualHookName[];
  readonly shared?: boolean;
  readonly perToken?: boolean;
}

/** Rank-`rank` LoRA factors on one module: `y += scale · x Aᵀ Bᵀ`, A `[rank, in]`, B `[out, rank]` (PEFT layout). */
export interface LoraParamSpec {
  readonly layer: number;
  readonly module: LoraModuleName;
  readonly rank: number;
  readonly scale: number;
}

export interface ParamSpec {
  readonly steer?: SteerParamSpec;
  readonly lora?: readonly LoraParamSpec[];
}

/** Graph input names of the parameters. */
export const PARAM = {
  steer: 'param.steer',
  loraA: (l: LoraParamSpec) => `param.lora.${l.layer}.${l.module}.A`,
  loraB: (l: LoraParamSpec) => `param.lora.${l.layer}.${l.module}.B`,
} as const;

/**
 * The residual write a site names, numbered as the inference graph numbers them: 0 after the embeddings
 * (`blocks.0.hook_resid_pre`), 2L+1 after block L's attention (`hook_resid_mid`), 2L+2 after its MLP
 * (`hook_resid_post`, the same write as `blocks.{L+1}.hook_resid_pre`).
 */
export function residualSite(spec: ModelSpec, site: string): number {
  const m = /^blocks\.(\d+)\.hook_resid_(pre|mid|post)$/.exec(site);
  if (!m) {
    throw new EmlensError(
      `'${site}' is not a residual site; use blocks.L.hook_resid_pre, blocks.L.hook_resid_mid or blocks.L.hook_resid_post.`,
    );
  }
  const layer = Number(m[1]);
  if (layer >= spec.numLayers) {
    throw new EmlensError(
      `Site '${site}' names block ${layer}, but the model has blocks 0-${spec.numLayers - 1}; use a layer in that range.`,
    );
  }
  if (m[2] === 'pre') return 2 * layer;
  return m[2] === 'mid' ? 2 * layer + 1 : 2 * layer + 2;
}

/** The HF name prefix of a module's Linear (`model.layers.3.mlp.down_proj`). */
export function moduleWeight(layer: number, module: LoraModuleName): string {
  const block =
    module === 'gate_proj' || module === 'up_proj' || module === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${module}`;
}

/** In and out features of a module's linear layer. */
export function moduleDims(spec: ModelSpec, module: LoraModuleName): { inDim: number; outDim: number } {
  const { dModel: d, numHeads: h, numKvHeads: kv, headDim: hd, intermediateSize: ff } = spec;
  switch (module) {
    case 'q_proj':
      return { inDim: d, outDim: h * hd };
    case 'k_proj':
    case 'v_proj':
      return { inDim: d, outDim: kv * hd };
    case 'o_proj':
      return { inDim: h * hd, outDim: d };
    case 'gate_proj':
    case 'up_proj':
      return { inDim: d, outDim: ff };
    case 'down_proj':
      return { inDim: ff, outDim: d };
  }
}

/** The shape of the steering parameter for a batch shape. */
export function steerShape(spec: ModelSpec, s: SteerParamSpec, batch: number, seq: number): number[] {
  const k = s.shared ? 1 : s.sites.length;
  return s.perToken ? [k, batch, seq, spec.dModel] : s.shared ? [spec.dModel] : [k, spec.dModel];
}

/** Checks a parameter spec against the model; one clear sentence on the first problem. */
export function checkParams(spec: ModelSpec, p: ParamSpec): void {
  if (p.steer) {
    if (p.steer.sites.length === 0) throw new EmlensError('A steering parameter needs at least one site.');
    const seen = new Set<number>();
    for (const s of p.steer.sites) {
      const j = residualSite(spec, s);
      if (seen.has(j)) {
        throw new EmlensError(
          `Site '${s}' is the same residual write as another site given; give each write once.`,
        );
      }
      seen.add(j);
    }
  }
  const mods = new Set<string>();
  for (const l of p.lora ?? []) {
    if (!LORA_MODULES.includes(l.module)) {
      throw new EmlensError(`'${l.module}' is not a LoRA module; use one of ${LORA_MODULES.join(', ')}.`);
    }
    if (!Number.isInteger(l.layer) || l.layer < 0 || l.layer >= spec.numLayers) {
      throw new EmlensError(
        `LoRA layer ${l.layer} is not a block of this model (0-${spec.numLayers - 1}); use a layer in that range.`,
      );
    }
    if (!Number.isInteger(l.rank) || l.rank < 1) {
      throw new EmlensError(`LoRA rank must be a positive integer, not ${l.rank}.`);
    }
    const key = `${l.layer}.${l.module}`;
    if (mods.has(key)) throw new EmlensError(`LoRA module ${key} is given twice; give each module once.`);
    mods.add(key);
  }
}
