/**
 * Qwen3, Gemma 2 and Gemma 3 beyond the parity and golden cases: real configs as shipped (transformers 4.x
 * and 5.x layouts), the one-line errors, KV-cached decoding across sliding-window boundaries, the multimodal
 * checkpoint and adapter layouts, and what Gemma refuses (weight orthogonalisation, a float16 overflow).
 */
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { orthogonalizeModel } from '../../src/interventions/orthogonalize.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { WeightSource } from '../../src/io/weightSource.js';
import { parseConfig } from '../../src/model/config.js';
import { textModelName } from '../../src/model/layout.js';
import { loadAdapter } from '../../src/model/lora/index.js';
import { type KVCache, loadModel } from '../../src/model/model.js';
import { ropeInvFreq } from '../../src/model/rope.js';
import { makeTinyModel, type TinyModelOptions } from '../../src/model/tiny.js';
import { at, maxAbsDiff } from '../helpers/numeric.js';
import { loadWeights64, referenceForward } from '../reference/forward64.js';

const SRC = '/models/x/config.json';

/** google/gemma-3-4b-it's config.json (transformers 4.50): a sparse text_config over Gemma3TextConfig. */
const GEMMA3_4B = {
  architectures: ['Gemma3ForConditionalGeneration'],
  boi_token_index: 255999,
  eoi_token_index: 256000,
  eos_token_id: [1, 106],
  image_token_index: 262144,
  initializer_range: 0.02,
  mm_tokens_per_image: 256,
  model_type: 'gemma3',
  text_config: {
    hidden_size: 2560,
    intermediate_size: 10240,
    model_type: 'gemma3_text',
    num_hidden_layers: 34,
    rope_scaling: { factor: 8.0, rope_type: 'linear' },
    sliding_window: 1024,
  },
  torch_dtype: 'bfloat16',
  transformers_version: '4.50.0.dev0',
  vision_config: { hidden_size: 1152, image_size: 896, model_type: 'siglip_vision_model', patch_size: 14 },
};

/** google/gemma-3-1b-it (Gemma3ForCausalLM, transformers 4.50). */
const GEMMA3_1B = {
  architectures: ['Gemma3ForCausalLM'],
  attention_bias: false,
  attn_logit_softcapping: null,
  bos_token_id: 2,
  eos_token_id: [1, 106],
  final_logit_softcapping: null,
  head_dim: 256,
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 1152,
  intermediate_size: 6912,
  max_position_embeddings: 32768,
  model_type: 'gemma3_text',
  num_attention_heads: 4,
  num_hidden_layers: 26,
  num_key_value_heads: 1,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_local_base_freq: 10000,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: 512,
  sliding_window_pattern: 6,
  torch_dtype: 'bfloat16',
  vocab_size: 262144,
};

/** google/gemma-2-2b-it. */
const GEMMA2_2B = {
  architectures: ['Gemma2ForCausalLM'],
  attn_logit_softcapping: 50.0,
  bos_token_id: 2,
  eos_token_id: [1, 107],
  final_logit_softcapping: 30.0,
  head_dim: 256,
  hidden_act: 'gelu_pytorch_tanh',
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 2304,
  intermediate_size: 9216,
  max_position_embeddings: 8192,
  model_type: 'gemma2',
  num_attention_heads: 8,
  num_hidden_layers: 26,
  num_key_value_heads: 4,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 10000.0,
  sliding_window: 4096,
  torch_dtype: 'float32',
  vocab_size: 256000,
};

/** Qwen/Qwen3-8B. */
const QWEN3_8B = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 4096,
  intermediate_size: 12288,
  max_position_embeddings: 40960,
  max_window_layers: 36,
  model_type: 'qwen3',
  num_attention_heads: 32,
  num_hidden_layers: 36,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  use_sliding_window: false,
  vocab_size: 151936,
};

function expectError(fn: () => unknown, pattern: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(EmlensError);
  const message = (err as Error).message;
  expect(message).toMatch(pattern);
  expect(message).not.toContain('\n');
}

describe('configs as shipped', () => {
  it('reads gemma-3-4b-it: text_config over Gemma3TextConfig defaults, 5 local : 1 global, linear rope on global layers', () => {
    const s = parseConfig(GEMMA3_4B, SRC);
    expect(s).toMatchObject({
      family: 'gemma3',
      architecture: 'Gemma3ForConditionalGeneration',
      dModel: 2560,
      numLayers: 34,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 256,
      vocabSize: 262208,
      ropeTheta: 1_000_000,
      ropeScaling: { type: 'linear', factor: 8 },
      localRope: { theta: 10_000, scaling: null },
      slidingWindow: 1024,
      tieWordEmbeddings: true,
      eosTokenIds: [1, 106],
      torchDtype: 'bfloat16',
      attnSoftcap: null,
      finalSoftcap: null,
      qkNorm: true,
      gemmaBlock: true,
      activation: 'gelu_tanh',
    });
    expect(s.attnScale).toBe(256 ** -0.5);
    expect(s.embedScale).toBe(Math.fround(Math.sqrt(2560)));
    expect(s.layerTypes.map((t, i) => (t === 'full' ? i : -1)).filter((i) => i >= 0)).toEqual([
      5, 11, 17, 23, 29,
    ]);
    // global layers are slowed by the linear factor, local ones are not
    const full = ropeInvFreq(s, 'full');
    const local = ropeInvFreq(s, 'sliding');
    expect(full[1]).toBeCloseTo(1_000_000 ** (-2 / 256) / 8, 7);
    expect(local[1]).toBeCloseTo(10_000 ** (-2 / 256), 7);
  });

  it('reads gemma-3-1b-it, gemma-2-2b-it and Qwen3-8B', () => {
    const g3 = parseConfig(GEMMA3_1B, SRC);
    expect(g3).toMatchObject({ architecture: 'Gemma3ForCausalLM', numKvHeads: 1, slidingWindow: 512 });
    expect(g3.ropeScaling).toBeNull();
    const g2 = parseConfig(GEMMA2_2B, SRC);
    expect(g2).toMatchObject({ attnSoftcap: 50, finalSoftcap: 30, slidingWindow: 4096, qkNorm: false });
    expect(g2.layerTypes.slice(0, 4)).toEqual(['sliding', 'full', 'sliding', 'full']);
    const q3 = parseConfig(QWEN3_8B, SRC);
    expect(q3).toMatchObject({
      qkNorm: true,
      gemmaBlock: false,
      headDim: 128,
      slidingWindow: null,
      qkvBias: false,
    });
    expect(parseConfig({ ...QWEN3_8B, attention_bias: true }, SRC)).toMatchObject({
      qkvBias: true,
      oBias: true,
    });
  });

  it('Qwen3 head_dim defaults to Qwen3Config 128, not hidden / heads', () => {
    const { head_dim: _, ...noHeadDim } = QWEN3_8B;
    expect(parseConfig({ ...noHeadDim, hidden_size: 1024, num_attention_heads: 16 }, SRC).headDim).toBe(128);
  });

  it('reads the transformers 5 layout: rope_parameters per layer type and layer_types', () => {
    const {
      rope_local_base_freq: _a,
      rope_scaling: _b,
      rope_theta: _c,
      sliding_window_pattern: _d,
      ...rest
    } = GEMMA3_1B;
    const s = parseConfig(
      {
        ...rest,
        layer_types: ['sliding_attention', 'full_attention', ...Array(24).fill('sliding_attention')],
        rope_parameters: {
          full_attention: { rope_type: 'linear', factor: 2, rope_theta: 500000 },
          sliding_attention: { rope_type: 'default', rope_theta: 20000 },
        },
      },
      SRC,
    );
    expect(s.ropeTheta).toBe(500000);
    expect(s.ropeScaling).toEqual({ type: 'linear', factor: 2 });
    expect(s.localRope).toEqual({ theta: 20000, scaling: null });
    expect(s.layerTypes.slice(0, 3)).toEqual(['sliding', 'full', 'sliding']);
  });

  it('model_type alone identifies gemma3 (multimodal) and gemma3_text', () => {
    const { architectures: _a, ...mm } = GEMMA3_4B;
    const { architectures: _b, ...text } = GEMMA3_1B;
    expect(parseConfig(mm, SRC).architecture).toBe('Gemma3ForConditionalGeneration');
    expect(parseConfig(text, SRC).architecture).toBe('Gemma3ForCausalLM');
  });

  it('one clear line for what emlens cannot run or a config that contradicts itself', () => {
    expectError(
      () => parseConfig({ ...GEMMA2_2B, hidden_activation: 'relu' }, SRC),
      /hidden_activation.*"relu"/,
    );
    expectError(() => parseConfig({ ...QWEN3_8B, hidden_act: 'gelu' }, SRC), /hidden_act.*"gelu".*silu/);
    expectError(
      () =>
        parseConfig(
          { ...GEMMA3_4B, vocab_size: 1000, text_config: { ...GEMMA3_4B.text_config, vocab_size: 262208 } },
          SRC,
        ),
      /sets vocab_size 1000 but its text_config sets 262208; the wrapper and text_config disagree/,
    );
    expectError(
      () =>
        parseConfig({ ...GEMMA3_4B, text_config: { ...GEMMA3_4B.text_config, model_type: 'llama' } }, SRC),
      /text_config has model_type "llama"/,
    );
    expectError(
      () => parseConfig({ ...GEMMA3_1B, rope_scaling: { rope_type: 'yarn', factor: 4 } }, SRC),
      /rope_scaling type "yarn"/,
    );
    expectError(
      () =>
        parseConfig(
          { ...GEMMA3_1B, rope_parameters: { full_attention: { rope_type: 'dynamic', factor: 2 } } },
          SRC,
        ),
      /type "dynamic"/,
    );
    expectError(
      () => parseConfig({ ...GEMMA3_1B, rope_parameters: { rope_theta: 5 } }, SRC),
      /not keyed by layer type/,
    );
    expectError(() => parseConfig({ ...GEMMA3_1B, use_bidirectional_attention: true }, SRC), /encoder/);
    expectError(() => parseConfig({ ...GEMMA2_2B, layer_types: ['chunked_attention'] }, SRC), /layer_types/);
  });
});

describe('tiny models of the new families', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'emlens-families-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const DECODE: readonly { name: string; options: TinyModelOptions }[] = [
    {
      name: 'gemma3 multimodal, window 3',
      options: { family: 'gemma3', seed: 31, numLayers: 3, slidingWindow: 3, ropeScaling: 'linear' },
    },
    { name: 'gemma2, window 4', options: { family: 'gemma2', seed: 32, numLayers: 2, slidingWindow: 4 } },
    { name: 'qwen3, window 3', options: { family: 'qwen3', seed: 33, numLayers: 2, slidingWindow: 3 } },
    { name: 'mistral, window 4', options: { family: 'mistral', seed: 34, numLayers: 2, slidingWindow: 4 } },
  ];

  it.each(DECODE)(
    '$name: batched KV-cached decoding across the window boundary equals full recomputation',
    async ({ name, options }) => {
      const dir = join(root, name.replace(/[^a-z0-9]+/gi, '-'));
      const spec = await makeTinyModel(dir, options);
      const m = await loadModel(dir, { cacheDir: join(root, 'cache'), threads: 1 });
      try {
        // rows of 2 and 5 tokens (left padding), then 6 single tokens: both rows cross the window
        const prompts = [
          [11, 40],
          [7, 300, 25, 61, 90],
        ];
        const seqs = prompts.map((p) => [...p]);
        let res = await m.forward(prompts, { returnCache: true });
        let cache: KVCache = res.cache!;
        for (let step = 0; step < 6; step++) {
          const next = [100 + step, 200 + step];
          for (let r = 0; r < 2; r++) at(seqs, r).push(at(next, r));
          res = await m.forward(
            next.map((t) => [t]),
            { cache, returnCache: true, hooks: ['blocks.*.hook_resid_post'] },
          );
          cache = res.cache!;
          for (let r = 0; r < 2; r++) {
            const full = await m.forward([at(seqs, r)], { hooks: ['blocks.*.hook_resid_post'] });
            const got = res.logits.data.subarray(r * spec.vocabSize, (r + 1) * spec.vocabSize);
            expect(maxAbsDiff(got, full.logits.data), `step ${step} row ${r}`).toBeLessThanOrEqual(1e-4);
          }
        }
        expect(Math.max(...seqs.map((s) => s.length))).toBeGreaterThan(2 * (spec.slidingWindow ?? 0));
        // and the decoded logits are the float64 reference's, which applies the window
        const seq1 = at(seqs, 1);
        const ref = referenceForward(spec, await loadWeights64(dir), seq1);
        const got = res.logits.data.subarray(spec.vocabSize, 2 * spec.vocabSize);
        expect(maxAbsDiff(got, at(ref.logits, seq1.length - 1, 'reference logits'))).toBeLessThanOrEqual(
          1e-4,
        );
      } finally {
        await m.dispose();
      }
    },
  );

  it('a gemma3 tiny model is a Gemma3ForConditionalGeneration with its text model under language_model.model', async () => {
    const dir = join(root, 'layout');
    const spec = await makeTinyModel(dir, { family: 'gemma3', seed: 3 });
    const f = await SafetensorsFile.open(join(dir, 'model.safetensors'));
    try {
      const names = [...f.tensors.keys()];
      expect(names.every((n) => n.startsWith('language_model.model.'))).toBe(true);
      expect(names).toContain('language_model.model.layers.0.self_attn.q_norm.weight');
      expect(names).toContain('language_model.model.layers.1.pre_feedforward_layernorm.weight');
    } finally {
      await f.close();
    }
    expect(spec.architecture).toBe('Gemma3ForConditionalGeneration');
    const src = await WeightSource.open(dir, { rename: textModelName });
    try {
      expect(src.has('model.layers.0.self_attn.k_norm.weight')).toBe(true);
    } finally {
      await src.close();
    }
  });

  it('refuses to orthogonalise a Gemma model, saying why and what to do instead', async () => {
    const dir = join(root, 'ortho-gemma');
    const spec = await makeTinyModel(dir, { family: 'gemma2', seed: 4 });
    const d = new Float64Array(spec.dModel).fill(1);
    await expect(orthogonalizeModel(dir, join(root, 'ortho-out'), { direction: d })).rejects.toThrow(
      /post-normalises.*ablate at run time/,
    );
  });

  it('an fp16 overflow on Gemma stops with an error that says to use fp32', async () => {
    const dir = join(root, 'fp16-gemma');
    await makeTinyModel(dir, { family: 'gemma2', seed: 5 });
    const source = await WeightSource.open(dir);
    const messages: string[] = [];
    try {
      // embeddings far beyond float16's range, as large Gemma activations get
      const reader = {
        readFloat32: async (name: string) => {
          const w = await source.readFloat32(name);
          return name === 'model.embed_tokens.weight' ? w.map((x) => x * 1e5) : w;
        },
      };
      const m = await loadModel(dir, {
        cacheDir: join(root, 'cache'),
        threads: 1,
        profile: 'fp16',
        weights: { reader, key: 'scaled-embeddings' },
        onProgress: (s) => messages.push(s),
      });
      try {
        expect(messages.some((s) => /warning: .*overflow float16.*fp32/.test(s))).toBe(true);
        await expect(m.forward([[5, 6, 7]])).rejects.toThrow(/overflowed float16.*profile fp32/);
      } finally {
        await m.dispose();
      }
    } finally {
      await source.close();
    }
  });
});

describe('adapters of multimodal Gemma 3 checkpoints', () => {
  const HF = join(import.meta.dirname, '..', 'goldens', 'hf');
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'emlens-families-lora-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('maps model.language_model.* and the older language_model.model.* keys to the same text-model weights', async () => {
    const golden = join(HF, 'gemma3-multimodal-4x-config-lora', 'adapter');
    const legacy = join(root, 'legacy-adapter');
    await mkdir(legacy, { recursive: true });
    // an adapter made on the older layout names its patterns after the older module names
    const config = JSON.parse(await readFile(join(golden, 'adapter_config.json'), 'utf8'));
    config.rank_pattern = { 'model.layers.1.mlp.down_proj': 2 };
    config.alpha_pattern = { 'model.layers.1.mlp.down_proj': 3 };
    await writeFile(join(legacy, 'adapter_config.json'), JSON.stringify(config));
    const f = await SafetensorsFile.open(join(golden, 'adapter_model.safetensors'));
    const tensors = new Map<string, { dtype: 'F32'; shape: readonly number[]; data: Float32Array }>();
    try {
      for (const [name, info] of f.tensors) {
        const old = name.replace(
          'base_model.model.model.language_model.',
          'base_model.model.language_model.model.',
        );
        tensors.set(old, { dtype: 'F32', shape: info.shape, data: await f.readFloat32(name) });
      }
    } finally {
      await f.close();
    }
    await writeSafetensors(join(legacy, 'adapter_model.safetensors'), tensors);
    const a = await loadAdapter(golden);
    const b = await loadAdapter(legacy);
    expect([...a.modules.keys()].sort()).toEqual([...b.modules.keys()].sort());
    expect([...a.modules.keys()]).toContain('model.layers.1.mlp.down_proj.weight');
    expect(a.modules.get('model.layers.1.mlp.down_proj.weight')).toMatchObject({ rank: 2, alpha: 3 });
    expect(a.vision.length).toBeGreaterThan(0);
    expect(b.vision.length).toBe(a.vision.length);
    // the base in the older tensor layout (language_model.model.*) with the older adapter keys gives the
    // same outputs as transformers' layout with the new keys
    const base = join(root, 'base-legacy');
    await cp(join(HF, 'gemma3-multimodal-4x-config', 'model'), base, { recursive: true });
    const bf = await SafetensorsFile.open(join(base, 'model.safetensors'));
    const baseTensors = new Map<string, { dtype: 'F32'; shape: readonly number[]; data: Float32Array }>();
    try {
      for (const [name, info] of bf.tensors) {
        const old = name.replace(/^model\.language_model\./, 'language_model.model.').replace(/^model\./, '');
        baseTensors.set(old, { dtype: 'F32', shape: info.shape, data: await bf.readFloat32(name) });
      }
    } finally {
      await bf.close();
    }
    await writeSafetensors(join(base, 'model.safetensors'), baseTensors);
    const ids = [[3, 17, 42, 5, 88, 61]];
    const cacheDir = join(root, 'cache');
    const m1 = await loadModel(join(HF, 'gemma3-multimodal-4x-config', 'model'), {
      cacheDir,
      threads: 1,
      adapter: golden,
    });
    const m2 = await loadModel(base, { cacheDir, threads: 1, adapter: legacy });
    try {
      const r1 = await m1.forward(ids);
      const r2 = await m2.forward(ids);
      expect(maxAbsDiff(r1.logits.data, r2.logits.data)).toBe(0);
    } finally {
      await m1.dispose();
      await m2.dispose();
    }
  });
});
