/**
 * Hook names, typed. A hook is `blocks.{layer}.{hook}` with the TransformerLens hook names below; the types make
 * a misspelt literal (`'blocks.0.hook_resid_psot'`) a compile error, and {@link parseHookPatterns} is the door
 * for strings known only at run time (a CLI flag, a config file).
 */
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

/** The residual-stream hooks: where interventions act. */
export type ResidualHook = 'hook_resid_pre' | 'hook_resid_mid' | 'hook_resid_post';

/** A hook's short name, as TransformerLens' `get_act_name` takes it: `resid_post`, `attn_out`, ... */
export type ShortBlockHook = BlockHook extends `hook_${infer S}` ? S : never;

/** One hook of one block: `blocks.3.hook_resid_post`. */
export type HookName = `blocks.${number}.${BlockHook}`;

/** One residual hook of one block: `blocks.3.hook_resid_mid`. */
export type ResidualHookName = `blocks.${number}.${ResidualHook}`;

/**
 * The glob patterns {@link resolveHooks} accepts, exactly. A `*` stands for a whole dotted segment:
 *
 * - `blocks.*.hook_resid_post`: one hook of every block;
 * - `blocks.3.*`: every hook of one block; `blocks.*.*`: every hook;
 * - `blocks.3.hook_resid_*`, `blocks.*.hook_resid_*`: the residual hooks (pre, mid, post).
 */
export type HookPattern =
  | `blocks.*.${BlockHook | 'hook_resid_*' | '*'}`
  | `blocks.${number}.${'hook_resid_*' | '*'}`;

/** The residual-hook patterns: what an intervention's `hooks` may also hold. */
export type ResidualHookPattern =
  | `blocks.*.${ResidualHook | 'hook_resid_*'}`
  | `blocks.${number}.hook_resid_*`;

/** What `forward`, `collectToStore` and the trace options take: hook names or patterns. */
export type HookSelector = HookName | HookPattern;

/** What an intervention's `hooks` take: residual hook names or patterns. */
export type ResidualHookSelector = ResidualHookName | ResidualHookPattern;

type Canonical<H extends BlockHook | ShortBlockHook> = H extends BlockHook ? H : `hook_${H}`;

const HOOK_SET: ReadonlySet<string> = new Set(BLOCK_HOOKS);

/**
 * The name of hook `hook` of block `layer`; the hook may be given in full or short (`'resid_post'`). This is
 * the one place hook names are spelt out.
 *
 * @example
 * hookName(3, 'resid_post'); // 'blocks.3.hook_resid_post'
 * hookName(0, 'hook_attn_out'); // 'blocks.0.hook_attn_out'
 */
export function hookName<H extends BlockHook | ShortBlockHook>(
  layer: number,
  hook: H,
): `blocks.${number}.${Canonical<H>}` {
  if (!Number.isInteger(layer) || layer < 0) {
    throw new EmlensError(`A hook's layer must be a block index (an integer >= 0), not ${layer}.`);
  }
  const full = (hook.startsWith('hook_') ? hook : `hook_${hook}`) as Canonical<H>;
  if (!HOOK_SET.has(full)) {
    throw new EmlensError(`'${hook}' is not a hook; use one of ${BLOCK_HOOKS.join(', ')}.`);
  }
  return `blocks.${layer}.${full}`;
}

/** Every hook name of a model with `numLayers` blocks, block by block. */
export function allHookNames(numLayers: number): HookName[] {
  const names: HookName[] = [];
  for (let i = 0; i < numLayers; i++) for (const h of BLOCK_HOOKS) names.push(hookName(i, h));
  return names;
}

/** Whether `s` is a hook name (of some model: the layer is not checked against one). */
export function isHookName(s: string): s is HookName {
  const m = /^blocks\.(\d+)\.([a-z_]+)$/.exec(s);
  // both groups take part in every match
  return m !== null && String(Number(m[1])) === m[1] && HOOK_SET.has(m[2] ?? '');
}

/** Layer part: a block index without leading zeros, or `*`; hook part: a hook, `hook_resid_*` or `*`. */
const SELECTOR =
  /^blocks\.(0|[1-9]\d*|\*)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|hook_resid_\*|\*)$/;

const FORMS =
  'a hook name (blocks.N.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out) or a pattern (blocks.*.HOOK, blocks.N.*, blocks.*.*, blocks.N.hook_resid_*, blocks.*.hook_resid_*)';

/** Whether `s` is a hook name or one of the {@link HookPattern} forms. */
export function isHookSelector(s: string): s is HookSelector {
  return SELECTOR.test(s);
}

/**
 * Hook names and patterns from run-time strings (a `--hooks` flag, a config file): each string may hold a
 * comma-separated list. Each entry is checked against the {@link HookPattern} forms (not yet against a model:
 * {@link resolveHooks} does that), and a misspelt one is an error that suggests the nearest spelling.
 *
 * @example
 * parseHookPatterns('blocks.*.hook_resid_post,blocks.2.hook_mlp_out'); // typed HookSelector[]
 */
export function parseHookPatterns(text: string | readonly string[]): HookSelector[] {
  const out: HookSelector[] = [];
  for (const raw of typeof text === 'string' ? [text] : text) {
    for (const entry of String(raw)
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)) {
      out.push(checkSelector(entry));
    }
  }
  if (out.length === 0) {
    throw new EmlensError(`No hooks were given; pass ${FORMS}.`);
  }
  return out;
}

function checkSelector(s: string): HookSelector {
  if (isHookSelector(s)) return s;
  throw new EmlensError(`Unknown hook '${s}': give ${FORMS}; did you mean '${nearestSpelling(s)}'?`);
}

function selectorToRegExp(selector: HookSelector): RegExp {
  const m = SELECTOR.exec(selector)!; // a HookSelector matches SELECTOR (checkSelector)
  const layer = m[1] === '*' ? '\\d+' : m[1];
  const hook = m[2] === '*' ? '[a-z_]+' : m[2] === 'hook_resid_*' ? 'hook_resid_(?:pre|mid|post)' : m[2];
  return new RegExp(`^blocks\\.${layer}\\.${hook}$`);
}

/**
 * Resolves hook names and patterns (the {@link HookPattern} forms) to the model's hook names, in model order,
 * without duplicates. A name or pattern that matches nothing, or is not of those forms, is an error that
 * suggests the nearest hook name.
 */
export function resolveHooks(selectors: readonly HookSelector[], numLayers: number): HookName[] {
  const all = allHookNames(numLayers);
  const chosen = new Set<string>();
  for (const selector of selectors) {
    if (!isHookSelector(selector)) {
      throw new EmlensError(
        `Unknown hook '${selector}': give ${FORMS}; did you mean '${nearestHook(selector, all)}'? (for a comma-separated string use parseHookPatterns)`,
      );
    }
    const re = selectorToRegExp(selector);
    const hits = all.filter((n) => re.test(n));
    if (hits.length === 0) {
      throw new EmlensError(
        `Unknown hook '${selector}' (this model has blocks 0..${numLayers - 1}); did you mean '${nearestHook(selector, all)}'?`,
      );
    }
    for (const h of hits) chosen.add(h);
  }
  return all.filter((n) => chosen.has(n));
}

/** The nearest selector spelling, model-free: keep a valid layer part (a number or `*`), fix the hook part. */
function nearestSpelling(s: string): string {
  const m = /^blocks\.([^.]+)\.([^.]+)$/.exec(s);
  const [, layerPart = '', hookPart = ''] = m ?? []; // both groups take part in every match
  const layer = m && /^(\d+|\*)$/.test(layerPart) ? String(layerPart === '*' ? '*' : Number(layerPart)) : '*';
  const part = m ? hookPart : (s.split('.').pop() ?? s);
  return `blocks.${layer}.${nearestHookPart(part)}`;
}

function nearestHookPart(part: string): string {
  const candidates = [...BLOCK_HOOKS, 'hook_resid_*'];
  return candidates.reduce((best, h) => (distance(h, part) < distance(best, part) ? h : best));
}

/** The closest valid spelling: keep the layer part (a number or `*`) when it is valid, fix the hook part. */
function nearestHook(pattern: string, all: readonly string[]): string {
  const m = /^blocks\.([^.]+)\.([^.]+)$/.exec(pattern);
  const [, layerPart, hookPart = ''] = m ?? []; // both groups take part in every match
  if (m && (layerPart === '*' || all.some((n) => n.startsWith(`blocks.${layerPart}.`)))) {
    return `blocks.${layerPart}.${nearestHookPart(hookPart)}`;
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
