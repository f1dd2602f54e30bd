/**
 * The WebGPU device path against the CPU, on tiny models (GQA: 4 query heads over 2 key/value heads) through
 * whatever adapter Dawn finds: SwiftShader's software Vulkan on a GPU-less machine. Hooks and logits within
 * 1e-4, greedy text identical with and without steering and ablation, batched decode with padding equal to each
 * row alone, no node on the CPU provider, and a decode step that copies the logits only (the KV cache stays on
 * the device).
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { decodeLoop } from '../../src/generate/decodeLoop.js';
import { type DecodeStats, generate } from '../../src/generate/generate.js';
import { nodeAssignment, readAssignment } from '../../src/model/deviceCheck.js';
import type { Intervention } from '../../src/model/interventions.js';
import { loadModel, type Model, releaseCache } from '../../src/model/model.js';
import { makeTinyModel, type TinyFamily } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';
import { webgpuTestEnv } from '../helpers/webgpu.js';

const env = webgpuTestEnv();
const FAMILIES = ['qwen2', 'llama', 'gemma3_text'] as const satisfies readonly TinyFamily[];
const TOL = 1e-4;

/** A fixed direction large enough to change a tiny model's greedy text (each phase its own frequency). */
function direction(d: number, phase: number): Float32Array {
  return Float32Array.from({ length: d }, (_, i) => 3 * Math.sin((1.7 + 0.61 * phase) * i + phase));
}

describe.skipIf(!env.ok)(`webgpu device (${env.summary})`, () => {
  const tmp = useTempDir('emlens-webgpu-');
  const models = new Map<string, { dir: string; cpu: Model; gpu: Model }>();
  const pair = (f: string) => models.get(f)!; // every family is loaded in beforeAll

  beforeAll(async () => {
    for (const family of FAMILIES) {
      const dir = tmp.join(family);
      await makeTinyModel(dir, { family, seed: 11, numLayers: 2, dModel: 32 });
      const cacheDir = tmp.join('cache');
      models.set(family, {
        dir,
        cpu: await loadModel(dir, { threads: 1, cacheDir }),
        gpu: await loadModel(dir, { device: 'webgpu', cacheDir }),
      });
    }
  });
  afterAll(async () => {
    for (const { cpu, gpu } of models.values()) {
      await cpu.dispose();
      await gpu.dispose();
    }
  });

  for (const family of FAMILIES) {
    it(`${family}: trace hooks and two cached steps equal the CPU's within ${TOL}`, async () => {
      const { cpu, gpu } = pair(family);
      expect(gpu.ops).toBe('contrib');
      expect(gpu.deviceCache).toBe(true);
      const hooks = ['blocks.*.hook_resid_post', 'blocks.*.hook_attn_out'] as const;
      const prompts = [
        [3, 1, 4, 1, 5, 9, 2, 6],
        [5, 3, 5],
      ];
      const [tc, tg] = [await cpu.trace(prompts, { hooks }), await gpu.trace(prompts, { hooks })];
      expect(maxAbsDiff(tc.result.logits.data, tg.result.logits.data)).toBeLessThan(TOL);
      expect(tc.result.hooks.size).toBe(4);
      for (const [name, t] of tc.result.hooks) {
        const g = tg.result.hooks.get(name)!;
        const [batch, seq, d] = t.dims as [number, number, number];
        for (let r = 0; r < batch; r++) {
          // real positions only: what a padded position holds is not defined to agree
          const from = (r * seq + tc.padding[r]!) * d;
          const to = (r + 1) * seq * d;
          expect(maxAbsDiff(t.data.subarray(from, to), g.data.subarray(from, to)), name).toBeLessThan(TOL);
        }
      }
      let a = await cpu.forward(prompts, { hooks, returnCache: true });
      let b = await gpu.forward(prompts, { hooks, returnCache: true });
      for (const next of [
        [[7], [8]],
        [[2], [9]],
      ]) {
        const [ca, cb] = [a.cache!, b.cache!];
        a = await cpu.forward(next, { hooks, cache: ca, returnCache: true });
        b = await gpu.forward(next, { hooks, cache: cb, returnCache: true });
        releaseCache(cb);
        expect(b.cache!.tensors.every((t) => t.location === 'gpu-buffer')).toBe(true);
        expect(maxAbsDiff(a.logits.data, b.logits.data)).toBeLessThan(TOL);
        for (const [name, t] of a.hooks)
          expect(maxAbsDiff(t.data, b.hooks.get(name)!.data), name).toBeLessThan(TOL);
      }
      releaseCache(b.cache!);
    });
  }

  for (const family of ['qwen2', 'gemma3_text'] as const) {
    it(`${family}: greedy text equals the CPU's, plain, steered and ablated`, async () => {
      const { cpu, gpu } = pair(family);
      const d = cpu.spec.dModel;
      const tokenizer = await cpu.tokenizer();
      const prompts = [tokenizer.encode('the cat sat'), tokenizer.encode('a b')];
      const cases: Record<string, Intervention[]> = {
        plain: [],
        steered: [{ kind: 'steer', hooks: ['blocks.0.hook_resid_post'], vector: direction(d, 0), scale: 2 }],
        ablated: [
          {
            kind: 'ablate',
            hooks: ['blocks.*.hook_resid_mid'],
            directions: Array.from({ length: 12 }, (_, k) => direction(d, k + 1)),
          },
        ],
      };
      const texts: Record<string, string[]> = {};
      for (const [name, interventions] of Object.entries(cases)) {
        const opts = { maxNewTokens: 12, temperature: 0, tokenizer, interventions, eosTokenIds: [] };
        const want = await generate(cpu, prompts, opts);
        const got = await generate(gpu, prompts, opts);
        expect(
          got.map((g) => g.tokens),
          name,
        ).toEqual(want.map((g) => g.tokens));
        expect(got.map((g) => g.text)).toEqual(want.map((g) => g.text));
        texts[name] = want.map((g) => g.text!);
      }
      // the interventions act: each changes the text, so equal texts above are not just the plain text thrice
      expect(texts.steered).not.toEqual(texts.plain);
      expect(texts.ablated).not.toEqual(texts.plain);
    });
  }

  it('batched decode with left padding equals each row decoded alone', async () => {
    const { gpu } = pair('llama');
    const prompts = [[9, 8, 7, 6, 5, 4, 3], [2], [11, 12, 13]];
    const opts = { maxNewTokens: 10, temperature: 0, eosTokenIds: [] };
    const together = await generate(gpu, prompts, opts);
    for (const [i, p] of prompts.entries()) {
      const [alone] = await generate(gpu, [p], opts);
      expect(together[i]!.tokens, `row ${i}`).toEqual(alone!.tokens);
    }
  });

  for (const family of ['qwen2', 'gemma3_text'] as const) {
    it(`${family}: no node of the prefill or decode graphs runs on the CPU provider`, async () => {
      const { dir } = pair(family);
      const a = await nodeAssignment(dir, { device: 'webgpu', cacheDir: tmp.join('cache') });
      // no allow-list: the contrib graph has no shape arithmetic for onnxruntime to place on the CPU
      expect(a.fallback).toEqual([]);
      expect(a.providers.map((p) => p.provider)).toEqual(['WebGpuExecutionProvider']);
      const ops = a.providers[0]!.ops;
      for (const op of ['GroupQueryAttention', 'RotaryEmbedding', 'MatMul', 'SimplifiedLayerNormalization']) {
        expect(ops[op], op).toBeGreaterThan(0);
      }
    });
  }

  it("the all-positions logits graph leaves only its output shape's Shape and Concat to the CPU", async () => {
    const { dir, cpu } = pair('qwen2');
    const prof = tmp.join('profile-all');
    await mkdir(prof);
    const m = await loadModel(dir, {
      device: 'webgpu',
      cacheDir: tmp.join('cache'),
      sessionOptions: { enableProfiling: true, profileFilePrefix: join(prof, 'p') },
    });
    const prompts = [[1, 2, 3], [4]];
    try {
      const [g, c] = [
        await m.forward(prompts, { logits: 'all' }),
        await cpu.forward(prompts, { logits: 'all' }),
      ];
      const V = cpu.spec.vocabSize;
      for (const [row, pos] of [
        [0, 0],
        [0, 1],
        [0, 2],
        [1, 2],
      ] as const) {
        const at = (row * 3 + pos) * V; // real positions only (row 1 has two of padding)
        expect(
          maxAbsDiff(g.logits.data.subarray(at, at + V), c.logits.data.subarray(at, at + V)),
        ).toBeLessThan(TOL);
      }
    } finally {
      await m.dispose(); // writes the profiles
    }
    const { cpuNodes } = await readAssignment((await readdir(prof)).map((f) => join(prof, f)));
    // The allow-list: `Reshape(logits, Concat(Shape(input_ids), [vocab]))` gives [batch*seq, vocab] its
    // [batch, seq, vocab] shape; onnxruntime runs shape ops on the CPU by design and no tensor data crosses.
    // The last-position graphs (prefill and decode) have none at all (above).
    expect(cpuNodes.map((n) => n.split(' ')[0]).sort()).toEqual(['Concat', 'Shape']);
  });

  it('a decode step copies the logits and the asked hooks to the host, never the KV cache', async () => {
    const { cpu, gpu } = pair('qwen2');
    const { vocabSize, numLayers, numKvHeads, headDim } = gpu.spec;
    const prompts = [
      [1, 2, 3, 4, 5],
      [6, 7],
    ];
    const batch = prompts.length;
    const logitsBytes = batch * vocabSize * 4;
    const statsOf = async (m: Model) => {
      const seen: DecodeStats[] = [];
      await generate(m, prompts, {
        maxNewTokens: 6,
        temperature: 0,
        eosTokenIds: [],
        onStats: (s) => seen.push(s),
      });
      expect(seen).toHaveLength(1);
      return seen[0]!;
    };
    const g = await statsOf(gpu);
    expect(g.steps).toBe(5);
    expect(g.prefillHostBytes).toBe(logitsBytes);
    expect(g.maxStepHostBytes).toBe(logitsBytes);
    expect(g.stepHostBytes).toBe(5 * logitsBytes);
    // on the CPU the grown cache comes back at every step: the bound above is not vacuous
    const c = await statsOf(cpu);
    const kvBytesFirstStep = 2 * numLayers * batch * numKvHeads * (prompts[0]!.length + 1) * headDim * 4;
    expect(c.maxStepHostBytes).toBeGreaterThanOrEqual(logitsBytes + kvBytesFirstStep);
  });

  it('a decode loop with a hook copies logits plus that hook per step', async () => {
    const { gpu } = pair('qwen2');
    const { vocabSize, dModel } = gpu.spec;
    let calls = 0;
    const stats = await decodeLoop(
      gpu,
      [[1, 2, 3], [4]],
      [],
      'all',
      async () => ({ next: [5, 6], done: ++calls > 3 }),
      { maxNewTokens: 4, hooks: ['blocks.1.hook_resid_post'] },
    );
    expect(stats.steps).toBe(3);
    expect(stats.maxStepHostBytes).toBe(2 * vocabSize * 4 + 2 * 1 * dModel * 4);
    expect(stats.prefillHostBytes).toBe(2 * vocabSize * 4 + 2 * 3 * dModel * 4);
  });

  it(
    env.swiftshader ? 'fp16 is refused on an adapter without shader-f16, saying what to do' : 'fp16 runs',
    async () => {
      const { dir, cpu } = pair('llama');
      const half = await loadModel(dir, { device: 'webgpu', profile: 'fp16', cacheDir: tmp.join('cache') });
      try {
        const run = half.forward([[1, 2, 3]]);
        if (env.swiftshader) {
          const err = await run.catch((e: unknown) => e);
          expect(err).toBeInstanceOf(EmlensError);
          expect(String((err as Error).message)).toMatch(/no float16 shaders \(shader-f16\).*profile fp32/);
        } else {
          // a real GPU: fp16 weights and activations, within fp16's rounding of the fp32 CPU logits
          const want = await cpu.forward([[1, 2, 3]]);
          expect(maxAbsDiff((await run).logits.data, want.logits.data)).toBeLessThan(5e-2);
        }
      } finally {
        await half.dispose();
      }
    },
  );
});

describe('webgpu test adapter check', () => {
  it('skips without a driver outside CI and fails under CI=true, naming what to install', () => {
    const saved = { icd: process.env.VK_ICD_FILENAMES, ci: process.env.CI };
    try {
      process.env.VK_ICD_FILENAMES = '/nonexistent/icd.json';
      delete process.env.CI;
      expect(webgpuTestEnv().ok).toBe(false);
      process.env.CI = 'true';
      expect(() => webgpuTestEnv()).toThrow(
        /no WebGPU adapter.*apt-get install -y --no-install-recommends chromium libvulkan1/,
      );
    } finally {
      for (const [k, v] of [
        ['VK_ICD_FILENAMES', saved.icd],
        ['CI', saved.ci],
      ] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

describe.skipIf(!env.ok)('webgpu quantised profiles', () => {
  const tmp = useTempDir('emlens-webgpu-quant-');

  it('int4 runs entirely on webgpu (MatMulNBits) near the CPU int4 logits; int8 is refused', async () => {
    const dir = tmp.join('llama');
    const cacheDir = tmp.join('cache');
    await makeTinyModel(dir, { family: 'llama', seed: 5, numLayers: 2, dModel: 64 });
    const a = await nodeAssignment(dir, { device: 'webgpu', profile: 'int4', cacheDir });
    expect(a.fallback).toEqual([]);
    expect(a.providers[0]!.ops.MatMulNBits).toBeGreaterThan(0);
    const [gpu, cpu] = [
      await loadModel(dir, { device: 'webgpu', profile: 'int4', cacheDir }),
      await loadModel(dir, { profile: 'int4', threads: 1, cacheDir }),
    ];
    try {
      const prompts = [
        [1, 2, 3, 4],
        [5, 6],
      ];
      const [g, c] = [await gpu.forward(prompts), await cpu.forward(prompts)];
      // the CPU's MatMulNBits (accuracy_level 4) also quantises activations to int8 per block; WebGPU's does
      // not: 0.055 apart at most on this model, measured
      expect(maxAbsDiff(g.logits.data, c.logits.data)).toBeLessThan(0.1);
    } finally {
      await gpu.dispose();
      await cpu.dispose();
    }
    await expect(loadModel(dir, { device: 'webgpu', profile: 'int8', cacheDir })).rejects.toThrow(
      /int8 profile .* WebGPU provider does not run .*--profile int4 or fp32/,
    );
  });
});
