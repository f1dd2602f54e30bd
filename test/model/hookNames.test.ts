/**
 * Typed hook names. The compile-time half of this file is checked by `npm run typecheck` (part of `npm test`):
 * every `@ts-expect-error` line below must fail to compile, or tsc reports the directive as unused. The
 * run-time half checks the same forms at run time, for strings that come from a CLI flag or a JS caller.
 */
import { describe, expect, it } from 'vitest';
import {
  type BlockHook,
  EmlensError,
  type ForwardOptions,
  type HookName,
  type HookPattern,
  type HookSelector,
  hookName,
  type Intervention,
  type Model,
  parseHookPatterns,
  type ResidualHookName,
} from '../../src/index.js';
import { allHookNames, isHookName, isHookSelector, resolveHooks } from '../../src/model/index.js';

/** Never called: it only has to compile (and fail to, on the marked lines). */
async function compileTimeChecks(model: Model): Promise<void> {
  const names: HookName[] = ['blocks.0.hook_resid_pre', 'blocks.12.hook_resid_post', 'blocks.3.hook_mlp_out'];
  const patterns: HookPattern[] = [
    'blocks.*.hook_resid_post',
    'blocks.*.hook_attn_out',
    'blocks.3.*',
    'blocks.*.*',
    'blocks.3.hook_resid_*',
    'blocks.*.hook_resid_*',
  ];
  await model.forward([[1]], { hooks: [...names, ...patterns] });
  // @ts-expect-error a misspelt hook does not compile
  await model.forward([[1]], { hooks: ['blocks.0.hook_resid_psot'] });
  // @ts-expect-error nor a misspelt pattern
  await model.forward([[1]], { hooks: ['blocks.*.hook_resid_psot'] });
  // @ts-expect-error nor TransformerLens' short form (use hookName(0, 'resid_post'))
  await model.forward([[1]], { hooks: ['blocks.0.resid_post'] });
  // @ts-expect-error nor a layer that is not a number
  await model.forward([[1]], { hooks: ['blocks.x.hook_resid_post'] });
  // @ts-expect-error nor a glob form resolveHooks does not support
  await model.forward([[1]], { hooks: ['blocks.*.hook_*'] });
  // @ts-expect-error nor a comma-separated string (that is parseHookPatterns' job)
  await model.forward([[1]], { hooks: ['blocks.0.hook_resid_post,blocks.1.hook_resid_post'] });
  const flag: string = 'blocks.*.hook_resid_post';
  // @ts-expect-error a run-time string must go through parseHookPatterns ...
  await model.forward([[1]], { hooks: [flag] });
  await model.forward([[1]], { hooks: parseHookPatterns(flag) }); // ... which validates it

  // results are keyed by HookName
  const r = await model.forward([[1]], { hooks: ['blocks.*.hook_resid_post'] });
  r.hooks.get('blocks.0.hook_resid_post');
  // @ts-expect-error a misspelt key does not compile either
  r.hooks.get('blocks.0.hook_resid_psot');

  // interventions take residual hooks only
  const steer: Intervention = {
    kind: 'steer',
    hooks: ['blocks.*.hook_resid_post'],
    vector: new Float32Array(1),
  };
  // @ts-expect-error hook_attn_out is not a residual site
  const bad: Intervention = { kind: 'steer', hooks: ['blocks.0.hook_attn_out'], vector: new Float32Array(1) };

  // hookName is typed by its hook: the full or the short name
  const post: `blocks.${number}.hook_resid_post` = hookName(3, 'resid_post');
  const mid: ResidualHookName = hookName(3, 'hook_resid_mid');
  const attn: HookName = hookName(3, 'attn_out');
  const some: BlockHook = 'hook_mlp_out';
  const fromVariable: HookName = hookName(3, some);
  // @ts-expect-error an unknown hook does not compile
  hookName(3, 'resid_psot');
  // @ts-expect-error a hook's result is not a residual hook name
  const notResid: ResidualHookName = hookName(3, 'mlp_out');
  const opts: ForwardOptions = { hooks: [post, mid, attn, fromVariable] };
  void [steer, bad, notResid, opts];
}

describe('hook names', () => {
  it('the compile-time checks above are part of the typecheck', () => {
    expect(typeof compileTimeChecks).toBe('function');
  });

  it('hookName spells every hook name, from the full or the short hook', () => {
    expect(hookName(3, 'resid_post')).toBe('blocks.3.hook_resid_post');
    expect(hookName(0, 'hook_attn_out')).toBe('blocks.0.hook_attn_out');
    expect(allHookNames(2)).toHaveLength(10);
    expect(allHookNames(2).every(isHookName)).toBe(true);
    expect(() => hookName(-1, 'resid_post')).toThrow(EmlensError);
    expect(() => hookName(1.5, 'resid_post')).toThrow(/block index/);
    expect(() => hookName(1, 'resid_psot' as never)).toThrow(/not a hook/);
  });

  it('parseHookPatterns takes run-time strings, comma lists included, and suggests a spelling', () => {
    const parsed: HookSelector[] = parseHookPatterns('blocks.*.hook_resid_post, blocks.2.hook_mlp_out');
    expect(parsed).toEqual(['blocks.*.hook_resid_post', 'blocks.2.hook_mlp_out']);
    expect(parseHookPatterns(['blocks.0.*', 'blocks.*.hook_resid_*'])).toEqual([
      'blocks.0.*',
      'blocks.*.hook_resid_*',
    ]);
    expect(() => parseHookPatterns('blocks.*.hook_resid_psot')).toThrow(
      /did you mean 'blocks\.\*\.hook_resid_post'/,
    );
    expect(() => parseHookPatterns('blocks.3.resid_post')).toThrow(
      /did you mean 'blocks\.3\.hook_resid_post'/,
    );
    expect(() => parseHookPatterns('blocks.*.hook_*')).toThrow(EmlensError);
    expect(() => parseHookPatterns(' , ')).toThrow(/No hooks/);
  });

  it('resolveHooks supports exactly the typed pattern forms', () => {
    expect(resolveHooks(['blocks.*.hook_resid_post'], 3)).toEqual([
      'blocks.0.hook_resid_post',
      'blocks.1.hook_resid_post',
      'blocks.2.hook_resid_post',
    ]);
    expect(resolveHooks(['blocks.1.*'], 3)).toEqual(allHookNames(3).filter((n) => n.startsWith('blocks.1.')));
    expect(resolveHooks(['blocks.*.*'], 3)).toEqual(allHookNames(3));
    expect(resolveHooks(['blocks.1.hook_resid_*'], 3)).toEqual([
      'blocks.1.hook_resid_pre',
      'blocks.1.hook_resid_mid',
      'blocks.1.hook_resid_post',
    ]);
    // model order, no duplicates
    expect(resolveHooks(['blocks.1.hook_mlp_out', 'blocks.0.hook_attn_out', 'blocks.0.*'], 3)).toEqual([
      ...allHookNames(3).filter((n) => n.startsWith('blocks.0.')),
      'blocks.1.hook_mlp_out',
    ]);
    expect(() => resolveHooks(['blocks.3.hook_resid_post'], 3)).toThrow(/blocks 0\.\.2/);
    // what the types refuse is refused at run time too (a JS caller, a cast)
    for (const bad of ['blocks.*.hook_*', 'blocks.0.hook_resid_psot', 'blocks.01.hook_resid_post', 'a,b']) {
      expect(isHookSelector(bad)).toBe(false);
      expect(() => resolveHooks([bad as HookSelector], 3)).toThrow(EmlensError);
    }
  });
});
