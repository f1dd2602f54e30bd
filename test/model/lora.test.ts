/**
 * PEFT LoRA adapters merged at load: the adapted model against the float64 reference run on W + scaling * B @ A,
 * PEFT's module selection and per-module patterns, cache separation from the base model, the CLI flag, and the
 * errors a wrong adapter gives.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { BLOCK_HOOKS, hookName } from '../../src/model/hooks.js';
import {
  type LoraFactors,
  loadAdapter,
  loraScaling,
  mergeLora,
  type PeftAdapterOptions,
  parseLoraConfig,
  targetsModule,
  writePeftAdapter,
} from '../../src/model/lora/index.js';
import { loadModel } from '../../src/model/model.js';
import { weightShape } from '../../src/model/spec.js';
import { Rng } from '../../src/util/random.js';
import { expectEmlensError } from '../helpers/expectError.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { at, maxAbsDiff } from '../helpers/numeric.js';
import { loadWeights64, type ReferenceOutput, referenceForward } from '../reference/forward64.js';

const TOL = 1e-4;
const PROJECTIONS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const ids = [5, 17, 99, 3, 250, 41, 7];

const tiny = useTinyModel('emlens-lora-', { family: 'qwen2', seed: 41, numLayers: 3, load: false });
let base64: Map<string, Float64Array>;
let baseRef: ReferenceOutput;

function moduleName(layer: number, proj: string): string {
  const attn = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].includes(proj);
  return `model.layers.${layer}.${attn ? 'self_attn' : 'mlp'}.${proj}`;
}

/** `[out, in]` of a module's weight: every adaptable projection is a matrix. */
function matrixShape(name: string): [number, number] {
  const [out, inp] = weightShape(tiny.spec, name);
  if (out === undefined || inp === undefined) throw new Error(`${name} is not a matrix`);
  return [out, inp];
}

/** Random LoRA factors whose update is about half the size of the weight (so the adapter visibly matters). */
function factors(module: string, rank: number, scaling: number, seed: number): LoraFactors {
  const [out, inp] = matrixShape(`${module}.weight`);
  const rng = Rng.derive(seed, module);
  return {
    A: rng.normalArray(rank * inp, 1 / Math.sqrt(inp)),
    B: rng.normalArray(out * rank, 0.5 / (scaling * Math.sqrt(rank) * Math.sqrt(inp))),
  };
}

/** The base weights in float64 with W + scaling * B @ A applied to each adapted module. */
function merged64(
  mods: ReadonlyMap<string, LoraFactors & { scaling: number }>,
  replace: ReadonlyMap<string, Float32Array> = new Map(),
): Map<string, Float64Array> {
  const w = new Map(base64);
  for (const [module, { A, B, scaling }] of mods) {
    const name = `${module}.weight`;
    const [out, inp] = matrixShape(name);
    const rank = A.length / inp;
    const m = Float64Array.from(base64.get(name)!);
    // In range: B is [out, rank], A is [rank, inp] and m is [out, inp].
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inp; i++) {
        let s = 0;
        for (let k = 0; k < rank; k++) s += B[o * rank + k]! * A[k * inp + i]!;
        m[o * inp + i]! += scaling * s;
      }
    }
    w.set(name, m);
  }
  for (const [name, t] of replace) w.set(name, Float64Array.from(t));
  return w;
}

function referenceHook(ref: ReferenceOutput, layer: number, hook: string): Float64Array {
  const pre = at(ref.residPre, layer, 'residPre');
  const mid = at(ref.residMid, layer, 'residMid');
  const post = at(ref.residPost, layer, 'residPost');
  // Below, pre[p][i] and mid[p][i] are in range: pre, mid and post are all [pos][d].
  const rows =
    hook === 'hook_resid_pre'
      ? pre
      : hook === 'hook_resid_mid'
        ? mid
        : hook === 'hook_resid_post'
          ? post
          : hook === 'hook_attn_out'
            ? mid.map((m, p) => m.map((v, i) => v - pre[p]![i]!))
            : post.map((x, p) => x.map((v, i) => v - mid[p]![i]!));
  return Float64Array.from(rows.flatMap((v) => [...v]));
}

/** Loads `adapter` (or the base model) and checks last logits and every hook against `ref`. */
async function expectMatches(ref: ReferenceOutput, adapter?: string, cache = tiny.cacheDir) {
  const m = await loadModel(tiny.dir, { cacheDir: cache, threads: 1, adapter });
  try {
    const r = await m.forward([ids], { hooks: ['blocks.*.*'] });
    expect(maxAbsDiff(r.logits.data, at(ref.logits, ids.length - 1)), 'logits').toBeLessThanOrEqual(TOL);
    for (let l = 0; l < tiny.spec.numLayers; l++) {
      for (const h of BLOCK_HOOKS) {
        const name = hookName(l, h);
        expect(maxAbsDiff(r.hooks.get(name)!.data, referenceHook(ref, l, h)), name).toBeLessThanOrEqual(TOL);
      }
    }
    return { logits: r.logits.data, built: m.loadStats.built };
  } finally {
    await m.dispose();
  }
}

let adapterCount = 0;
/** Writes an adapter into a fresh folder and returns it with the per-module scaling the reference needs. */
async function adapter(
  opts: Omit<PeftAdapterOptions, 'tensors'> & { modules: readonly string[]; seed?: number },
): Promise<{ dir: string; mods: Map<string, LoraFactors & { scaling: number }> }> {
  const adir = tiny.at(`adapter-${adapterCount++}`);
  const cfg = parseLoraConfig(
    {
      peft_type: 'LORA',
      r: opts.r,
      lora_alpha: opts.alpha,
      use_rslora: opts.useRslora ?? false,
      rank_pattern: opts.rankPattern ?? {},
      alpha_pattern: opts.alphaPattern ?? {},
      target_modules: PROJECTIONS,
    },
    'test',
  );
  const mods = new Map<string, LoraFactors & { scaling: number }>();
  for (const module of opts.modules) {
    const { rank, scaling } = loraScaling(cfg, module);
    mods.set(module, { ...factors(module, rank, scaling, opts.seed ?? 1), scaling });
  }
  await writePeftAdapter(adir, { ...opts, tensors: mods });
  return { dir: adir, mods };
}

beforeAll(async () => {
  base64 = await loadWeights64(tiny.dir);
  baseRef = referenceForward(tiny.spec, base64, ids);
});

describe('merged adapters match the float64 reference', () => {
  it('rank-1 down_proj adapter on one layer (model-organism style)', async () => {
    const { dir: adir, mods } = await adapter({
      r: 1,
      alpha: 256,
      modules: ['model.layers.1.mlp.down_proj'],
      baseModel: 'Qwen/Qwen2.5-0.5B-Instruct',
    });
    const ref = referenceForward(tiny.spec, merged64(mods), ids);
    const { logits } = await expectMatches(ref, adir);
    // The adapter matters, and only from layer 1's MLP on.
    expect(maxAbsDiff(logits, at(baseRef.logits, ids.length - 1))).toBeGreaterThan(1e-2);
    expect(
      maxAbsDiff(referenceHook(ref, 1, 'hook_resid_mid'), referenceHook(baseRef, 1, 'hook_resid_mid')),
    ).toBe(0);
    const a = await loadAdapter(adir);
    expect([...a.modules.keys()]).toEqual(['model.layers.1.mlp.down_proj.weight']);
    expect(a.modules.get('model.layers.1.mlp.down_proj.weight')!.scaling).toBe(256);
    expect(a.config.baseModelNameOrPath).toBe('Qwen/Qwen2.5-0.5B-Instruct');
  });

  it('rank-4 all-projection adapter with rsLoRA (alpha / sqrt(r)), BF16 tensors, adapter names in keys', async () => {
    const modules = [0, 1, 2].flatMap((l) => PROJECTIONS.map((p) => moduleName(l, p)));
    const { dir: adir, mods } = await adapter({
      r: 4,
      alpha: 8,
      useRslora: true,
      modules,
      dtype: 'BF16',
      adapterNameInKeys: true,
    });
    expect(mods.get(at(modules, 0))!.scaling).toBe(4); // 8 / sqrt(4)
    // The reference uses the BF16-rounded factors, as stored.
    const a = await loadAdapter(adir);
    const f = await SafetensorsFile.open(a.file);
    const stored = new Map<string, LoraFactors & { scaling: number }>();
    for (const m of a.modules.values()) {
      stored.set(m.module, {
        A: await f.readFloat32(m.keyA),
        B: await f.readFloat32(m.keyB),
        scaling: 8 / Math.sqrt(4), // rsLoRA: alpha / sqrt(r)
      });
    }
    await f.close();
    expect(a.modules.size).toBe(21);
    expect(at([...a.modules.values()], 0).keyA).toMatch(/\.lora_A\.default\.weight$/);
    const { logits } = await expectMatches(referenceForward(tiny.spec, merged64(stored), ids), adir);
    expect(maxAbsDiff(logits, at(baseRef.logits, ids.length - 1))).toBeGreaterThan(1e-2);
  });

  it('applies rank_pattern / alpha_pattern per module and modules_to_save replacements', async () => {
    const lmHead = new Rng(7).normalArray(tiny.spec.vocabSize * tiny.spec.dModel, 0.1);
    const { dir: adir, mods } = await adapter({
      r: 2,
      alpha: 4,
      modules: [
        'model.layers.0.self_attn.q_proj',
        'model.layers.2.mlp.up_proj',
        'model.layers.2.mlp.down_proj',
      ],
      rankPattern: { 'layers.2.mlp.up_proj': 3 },
      alphaPattern: { down_proj: 10 },
      modulesToSave: { lm_head: { weight: lmHead, shape: [tiny.spec.vocabSize, tiny.spec.dModel] } },
    });
    const a = await loadAdapter(adir);
    const get = (m: string) => a.modules.get(`${m}.weight`)!;
    expect(get('model.layers.0.self_attn.q_proj')).toMatchObject({ rank: 2, alpha: 4, scaling: 2 });
    expect(get('model.layers.2.mlp.up_proj')).toMatchObject({ rank: 3, alpha: 4, scaling: 4 / 3 });
    expect(get('model.layers.2.mlp.down_proj')).toMatchObject({ rank: 2, alpha: 10, scaling: 5 });
    expect([...a.replacements.keys()]).toEqual(['lm_head.weight']);
    const ref = referenceForward(tiny.spec, merged64(mods, new Map([['lm_head.weight', lmHead]])), ids);
    await expectMatches(ref, adir);
  });
});

describe('cache and selection', () => {
  it('base and adapter loads sharing a cache dir do not collide', async () => {
    const shared = tiny.at('shared-cache');
    const { dir: adir, mods } = await adapter({ r: 1, alpha: 1, modules: ['model.layers.0.mlp.down_proj'] });
    const ref = referenceForward(tiny.spec, merged64(mods), ids);
    expect((await expectMatches(baseRef, undefined, shared)).built).toBe(true);
    expect((await expectMatches(ref, adir, shared)).built).toBe(true);
    expect((await expectMatches(baseRef, undefined, shared)).built).toBe(false);
    expect((await expectMatches(ref, adir, shared)).built).toBe(false);
    // A changed config (different scaling) is a different graph.
    const cfgPath = join(adir, 'adapter_config.json');
    const cfg = JSON.parse(await readFile(cfgPath, 'utf8'));
    await writeFile(cfgPath, JSON.stringify({ ...cfg, lora_alpha: 2 }, null, 2));
    const doubled = new Map([...mods].map(([k, v]) => [k, { ...v, scaling: 2 }]));
    expect(
      (await expectMatches(referenceForward(tiny.spec, merged64(doubled), ids), adir, shared)).built,
    ).toBe(true);
  });

  it('respects layers_to_transform: tensors of other layers are ignored, as PEFT does', async () => {
    const modules = [0, 1, 2].map((l) => moduleName(l, 'down_proj'));
    const { dir: adir, mods } = await adapter({ r: 2, alpha: 4, modules, layers: [1] });
    const a = await loadAdapter(adir);
    expect([...a.modules.keys()]).toEqual(['model.layers.1.mlp.down_proj.weight']);
    expect(a.ignored).toHaveLength(4);
    const only1 = new Map([...mods].filter(([k]) => k.includes('layers.1.')));
    await expectMatches(referenceForward(tiny.spec, merged64(only1), ids), adir);

    const { dir: adir2 } = await adapter({ r: 2, alpha: 4, modules, layers: 2 });
    expect([...(await loadAdapter(adir2)).modules.keys()]).toEqual(['model.layers.2.mlp.down_proj.weight']);
  });

  it('selects modules as PEFT does (lists, regex, all-linear, exclude_modules)', () => {
    const cfg = (extra: Record<string, unknown>) =>
      parseLoraConfig({ peft_type: 'LORA', r: 4, ...extra }, 'test');
    const q0 = 'model.layers.0.self_attn.q_proj';
    const d3 = 'model.layers.3.mlp.down_proj';
    expect(targetsModule(cfg({ target_modules: ['q_proj'] }), q0)).toBe(true);
    expect(targetsModule(cfg({ target_modules: ['q_proj'] }), d3)).toBe(false);
    expect(targetsModule(cfg({ target_modules: ['proj'] }), q0)).toBe(false); // suffix after a dot only
    expect(targetsModule(cfg({ target_modules: '.*\\.(3)\\.mlp\\.down_proj' }), d3)).toBe(true);
    expect(targetsModule(cfg({ target_modules: 'down_proj' }), d3)).toBe(false); // regex is a full match
    expect(targetsModule(cfg({ target_modules: 'all-linear' }), d3)).toBe(true);
    expect(targetsModule(cfg({ target_modules: 'all-linear' }), 'lm_head')).toBe(false);
    expect(targetsModule(cfg({}), q0)).toBe(true); // PEFT's default for these models: q_proj, v_proj
    expect(targetsModule(cfg({ target_modules: ['down_proj'], layers_to_transform: [3] }), d3)).toBe(true);
    expect(targetsModule(cfg({ target_modules: ['down_proj'], layers_to_transform: 2 }), d3)).toBe(false);
    expect(
      targetsModule(
        cfg({ target_modules: ['down_proj'], layers_to_transform: [3], layers_pattern: 'layers' }),
        d3,
      ),
    ).toBe(true);
    expect(targetsModule(cfg({ target_modules: ['down_proj'], exclude_modules: [d3] }), d3)).toBe(false);
    const rs = cfg({ r: 8, lora_alpha: 16, use_rslora: true, rank_pattern: { '^model.layers.3.*': 2 } });
    expect(loraScaling(rs, d3)).toEqual({ rank: 2, alpha: 16, scaling: 16 / Math.sqrt(2) });
    expect(loraScaling(rs, q0)).toEqual({ rank: 8, alpha: 16, scaling: 16 / Math.sqrt(8) });
  });

  it('mergeLora accumulates in float64', () => {
    // One weight, rank 3: in float32, 1e8 + 1 - 1e8 would be 0.
    const merged = mergeLora(
      Float32Array.of(0.25),
      Float32Array.of(1e8, 1, -1e8),
      Float32Array.of(1, 1, 1),
      3,
      2,
    );
    expect(Array.from(merged)).toEqual([2.25]);
  });
});

describe('errors', () => {
  const mismatch = async (
    mutate: (cfg: Record<string, unknown>) => void,
    ...patterns: (string | RegExp)[]
  ) => {
    const { dir: adir } = await adapter({ r: 1, alpha: 1, modules: ['model.layers.0.mlp.down_proj'] });
    const path = join(adir, 'adapter_config.json');
    const cfg = JSON.parse(await readFile(path, 'utf8'));
    mutate(cfg);
    await writeFile(path, JSON.stringify(cfg));
    return expectEmlensError(loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }), ...patterns);
  };

  it('an adapter for another model: shapes differ', async () => {
    const adir = tiny.at('other-shape');
    const module = 'model.layers.0.mlp.down_proj';
    // A model with intermediate size 96: A is [1, 96], B is [64, 1] against a [64, 128] down_proj.
    await writePeftAdapter(adir, {
      r: 1,
      alpha: 1,
      tensors: { [module]: { A: new Float32Array(96), B: new Float32Array(64) } },
    });
    await expectEmlensError(
      loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }),
      'base_model.model.model.layers.0.mlp.down_proj.lora_B.weight',
      '[64, 1]',
      '[1, 96]',
      '[64, 128]',
      'another model',
    );
  });

  it('an adapter for another model: a layer the model does not have', async () => {
    const adir = tiny.at('other-layers');
    await writePeftAdapter(adir, {
      r: 1,
      alpha: 1,
      tensors: { 'model.layers.5.mlp.down_proj': { A: new Float32Array(128), B: new Float32Array(64) } },
    });
    await expectEmlensError(
      loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }),
      "'base_model.model.model.layers.5.mlp.down_proj.lora_A.weight'",
      'has 3 layers',
      'another model',
    );
  });

  it('a missing lora_B or lora_A tensor', async () => {
    for (const which of ['A', 'B']) {
      const { dir: adir } = await adapter({ r: 1, alpha: 1, modules: ['model.layers.0.mlp.down_proj'] });
      const key = `base_model.model.model.layers.0.mlp.down_proj.lora_${which}.weight`;
      const [rows, cols] = which === 'A' ? [1, 128] : [64, 1];
      await writeSafetensors(join(adir, 'adapter_model.safetensors'), {
        [key]: { dtype: 'F32', shape: [rows, cols], data: new Float32Array(rows * cols) },
      });
      await expectEmlensError(
        loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }),
        key,
        `no matching lora_${which === 'A' ? 'B' : 'A'}`,
      );
    }
  });

  it('ranks that disagree with the config', async () => {
    await mismatch((c) => {
      c.r = 2;
    }, 'rank 1 but adapter_config.json gives');
  });

  it('unsupported configs: DoRA, bias, fan_in_fan_out, other PEFT types', async () => {
    await mismatch((c) => {
      c.use_dora = true;
    }, 'DoRA');
    await mismatch((c) => {
      c.bias = 'all';
    }, 'bias "all"');
    await mismatch((c) => {
      c.fan_in_fan_out = true;
    }, 'fan_in_fan_out');
    await mismatch((c) => {
      c.peft_type = 'IA3';
    }, 'peft_type "IA3"');
    await mismatch((c) => {
      c.layers_to_transform = [2];
    }, 'selects none');
  });

  it('unknown and DoRA tensors', async () => {
    for (const [key, pattern] of [
      ['base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector', 'DoRA'],
      ['base_model.model.model.layers.0.mlp.down_proj.hada_w1_a', 'neither a LoRA'],
      ['base_model.model.model.norm.weight', 'neither a LoRA'],
      ['model.layers.0.mlp.down_proj.lora_A.weight', "does not start with 'base_model.model.'"],
    ] as const) {
      const { dir: adir } = await adapter({ r: 1, alpha: 1, modules: ['model.layers.0.mlp.down_proj'] });
      const path = join(adir, 'adapter_model.safetensors');
      const f = await SafetensorsFile.open(path);
      const tensors: Record<string, { dtype: 'F32'; shape: readonly number[]; data: Float32Array }> = {};
      for (const [k, t] of f.tensors)
        tensors[k] = { dtype: 'F32', shape: t.shape, data: await f.readFloat32(k) };
      await f.close();
      tensors[key] = { dtype: 'F32', shape: [4], data: new Float32Array(4) };
      await writeSafetensors(path, tensors);
      await expectEmlensError(loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }), key, pattern);
    }
  });

  it('a folder without adapter_config.json, or no folder at all', async () => {
    await expectEmlensError(
      loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: tiny.dir }),
      'No adapter_config.json in',
    );
    await expectEmlensError(
      loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: tiny.at('nope') }),
      'does not exist',
      'PEFT LoRA adapter folder',
    );
    const { dir: adir } = await adapter({ r: 1, alpha: 1, modules: ['model.layers.0.mlp.down_proj'] });
    await rm(join(adir, 'adapter_model.safetensors'));
    await expectEmlensError(
      loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir }),
      'No adapter_model.safetensors',
    );
  });
});

describe('emlens trace --adapter', () => {
  it('writes the hooks and logits of the adapted model', async () => {
    const { dir: adir } = await adapter({
      r: 4,
      alpha: 16,
      modules: [1, 2].flatMap((l) => ['gate_proj', 'down_proj'].map((p) => moduleName(l, p))),
    });
    const out = tiny.at('trace.safetensors');
    let stderr = '';
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
      stderr += String(s);
      return true;
    });
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    let code: number;
    try {
      code = await main([
        'trace',
        '--model',
        tiny.dir,
        '--adapter',
        adir,
        '--ids',
        ids.join(','),
        '--hooks',
        'blocks.*.hook_resid_post',
        '--out',
        out,
        '--cache-dir',
        tiny.cacheDir,
      ]);
    } finally {
      err.mockRestore();
      log.mockRestore();
    }
    expect(code, stderr).toBe(0);
    const m = await loadModel(tiny.dir, { cacheDir: tiny.cacheDir, adapter: adir });
    const lib = await m.forward([ids], { hooks: ['blocks.*.hook_resid_post'] });
    const base = await loadModel(tiny.dir, { cacheDir: tiny.cacheDir });
    const plain = await base.forward([ids]);
    const f = await SafetensorsFile.open(out);
    try {
      for (let l = 0; l < tiny.spec.numLayers; l++) {
        const name = hookName(l, 'resid_post');
        expect(await f.readFloat32(name), name).toEqual(lib.hooks.get(name)!.data);
      }
      const logits = await f.readFloat32('logits');
      expect(logits).toEqual(lib.logits.data);
      expect(maxAbsDiff(logits, plain.logits.data)).toBeGreaterThan(1e-2);
    } finally {
      await f.close();
      await m.dispose();
      await base.dispose();
    }
  });
});
