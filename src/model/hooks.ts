import { distance } from 'fastest-levenshtein';
import { EmlensError } from '../errors.js';

/** Per-block hook points, named as in TransformerLens. */
export const BLOCK_HOOKS = [
  'hook_resid_pre',
  'hook_resid_mid',
  'hook_resid_post',
  'hook_attn_out',
  'hook_mlp_out',
] as const;
export type BlockHook = (typeof BLOCK_HOOKS)[number];

export function hookName(layer: number, hook: BlockHook): string {
  return `blocks.${layer}.${hook}`;
}

/** Every hook name of a model with `numLayers` blocks, block by block. */
export function allHookNames(numLayers: number): string[] {
  const names: string[] = [];
  for (let i = 0; i < numLayers; i++) for (const h of BLOCK_HOOKS) names.push(hookName(i, h));
  return names;
}

function patternToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^.]+');
  return new RegExp(`^${escaped}$`);
}

/**
 * Resolves hook names and glob patterns (`*` matches one dotted segment: `blocks.*.hook_resid_post`) to the
 * model's hook names, in model order. A name or pattern that matches nothing is an error that suggests the
 * nearest hook name.
 */
export function resolveHooks(patterns: readonly string[], numLayers: number): string[] {
  const all = allHookNames(numLayers);
  const chosen = new Set<string>();
  for (const raw of patterns) {
    for (const pattern of raw
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)) {
      const re = patternToRegExp(pattern);
      const hits = all.filter((n) => re.test(n));
      if (hits.length === 0) {
        const nearest = nearestHook(pattern, all);
        throw new EmlensError(
          `Unknown hook '${pattern}' (this model has blocks 0..${numLayers - 1}); did you mean '${nearest}'?`,
        );
      }
      for (const h of hits) chosen.add(h);
    }
  }
  return all.filter((n) => chosen.has(n));
}

/** The closest valid spelling: keep the layer part (a number or `*`) when it is valid, fix the hook part. */
function nearestHook(pattern: string, all: readonly string[]): string {
  const m = /^blocks\.([^.]+)\.([^.]+)$/.exec(pattern);
  if (m && (m[1] === '*' || all.some((n) => n.startsWith(`blocks.${m[1]}.`)))) {
    const hook = BLOCK_HOOKS.reduce((best, h) => (distance(h, m[2]) < distance(best, m[2]) ? h : best));
    return `blocks.${m[1]}.${hook}`;
  }
  return all.reduce((best, n) => (distance(n, pattern) < distance(best, pattern) ? n : best));
}

/**
 * Intervention sites: every point where the residual stream is written. Site 0 is the embedding output
 * (`blocks.0.hook_resid_pre`), then `hook_resid_mid` and `hook_resid_post` of each block. Ablating at all of
 * them is what weight orthogonalisation bakes in.
 */
export function siteCount(numLayers: number): number {
  return 2 * numLayers + 1;
}

/** The site index of a residual hook, or an error naming the hooks that accept interventions. */
export function siteOf(hook: string, numLayers: number): number {
  const m = /^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post)$/.exec(hook);
  const layer = m ? Number(m[1]) : -1;
  if (!m || layer >= numLayers) {
    throw new EmlensError(
      `Interventions apply at residual-stream hooks (blocks.{0..${numLayers - 1}}.hook_resid_pre|mid|post), not '${hook}'.`,
    );
  }
  if (m[2] === 'hook_resid_pre') return layer === 0 ? 0 : 2 * (layer - 1) + 2;
  return m[2] === 'hook_resid_mid' ? 2 * layer + 1 : 2 * layer + 2;
}
