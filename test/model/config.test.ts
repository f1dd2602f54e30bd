import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { parseConfig, readConfig } from '../../src/model/config.js';
import { useTempDir } from '../helpers/fixtures.js';

// As published on the Hub (Qwen/Qwen2.5-0.5B-Instruct/config.json).
const QWEN25_05B = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 21,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.43.1',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

// As published on the Hub (meta-llama/Llama-3.1-8B-Instruct/config.json).
const LLAMA31_8B = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: 'llama3',
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.42.3',
  use_cache: true,
  vocab_size: 128256,
};

// mistralai/Mistral-7B-v0.1/config.json: a 4096 sliding window inside a 32768 context.
const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.34.0.dev0',
  use_cache: true,
  vocab_size: 32000,
};

const SRC = '/models/x/config.json';

function parse(overrides: Record<string, unknown>, base: Record<string, unknown> = QWEN25_05B) {
  const json: Record<string, unknown> = { ...base, ...overrides };
  for (const [k, v] of Object.entries(overrides)) if (v === undefined) delete json[k];
  return parseConfig(json, SRC);
}

/** Asserts an EmlensError whose message matches and is one sentence naming the source. */
function expectError(fn: () => unknown, pattern: RegExp, source = SRC): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(EmlensError);
  const message = (err as Error).message;
  expect(message).toMatch(pattern);
  expect(message).toContain(source);
  expect(message).not.toContain('\n');
  expect(message).toMatch(/\.$/);
}

describe('parseConfig on real configs', () => {
  it('reads Qwen2.5-0.5B-Instruct', () => {
    expect(parseConfig(QWEN25_05B, SRC)).toEqual({
      family: 'qwen2',
      architecture: 'Qwen2ForCausalLM',
      numLayers: 24,
      dModel: 896,
      numHeads: 14,
      numKvHeads: 2,
      headDim: 64,
      intermediateSize: 4864,
      vocabSize: 151936,
      rmsNormEps: 1e-6,
      ropeTheta: 1000000,
      ropeScaling: null,
      maxPositionEmbeddings: 32768,
      qkvBias: true,
      oBias: false,
      mlpBias: false,
      tieWordEmbeddings: true,
      bosTokenId: 151643,
      eosTokenIds: [151645],
      padTokenId: null,
      torchDtype: 'bfloat16',
      activation: 'silu',
      qkNorm: false,
      gemmaBlock: false,
      embedScale: null,
      attnScale: 1 / 8,
      attnSoftcap: null,
      finalSoftcap: null,
      layerTypes: Array(24).fill('full'),
      slidingWindow: null,
      localRope: null,
    });
  });

  it('reads Llama-3.1-8B-Instruct with llama3 rope scaling and three eos ids', () => {
    const spec = parseConfig(LLAMA31_8B, SRC);
    expect(spec).toMatchObject({
      family: 'llama',
      architecture: 'LlamaForCausalLM',
      numLayers: 32,
      dModel: 4096,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 128,
      intermediateSize: 14336,
      vocabSize: 128256,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      maxPositionEmbeddings: 131072,
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      bosTokenId: 128000,
      eosTokenIds: [128001, 128008, 128009],
    });
    expect(spec.ropeScaling).toEqual({
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
  });

  it('accepts the legacy rope_scaling.type key', () => {
    const { rope_type: _, ...legacy } = LLAMA31_8B.rope_scaling;
    expect(parse({ rope_scaling: { ...legacy, type: 'llama3' } }, LLAMA31_8B).ropeScaling?.factor).toBe(8);
  });

  it('reads Mistral-7B-v0.1, whose sliding window is shorter than its context', () => {
    const spec = parseConfig(MISTRAL_7B, SRC);
    expect(spec).toMatchObject({
      family: 'mistral',
      headDim: 128,
      numKvHeads: 8,
      ropeTheta: 10000,
      eosTokenIds: [2],
      slidingWindow: 4096,
    });
    expect(spec.layerTypes).toEqual(Array(32).fill('sliding'));
    const full = parse({ sliding_window: null }, MISTRAL_7B);
    expect([full.slidingWindow, full.layerTypes.includes('sliding')]).toEqual([null, false]);
  });

  it('takes an explicit head_dim (Mistral-Nemo: 5120 / 32 heads but head_dim 128)', () => {
    const spec = parse({ hidden_size: 5120, head_dim: 128 }, MISTRAL_7B);
    expect(spec.headDim).toBe(128);
    expect(parse({ head_dim: null }, MISTRAL_7B).headDim).toBe(128);
  });
});

describe('parseConfig defaults and family rules', () => {
  it('falls back to model_type when architectures is missing', () => {
    expect(parse({ architectures: undefined }).architecture).toBe('Qwen2ForCausalLM');
    expect(parse({ architectures: undefined, model_type: 'llama' }, LLAMA31_8B).family).toBe('llama');
    expect(parse({ architectures: [], model_type: 'mistral' }, MISTRAL_7B).architecture).toBe(
      'MistralForCausalLM',
    );
  });

  it('defaults num_key_value_heads to num_attention_heads', () => {
    expect(parse({ num_key_value_heads: undefined }).numKvHeads).toBe(14);
  });

  it('defaults rope_theta to 10000', () => {
    expect(parse({ rope_theta: undefined }).ropeTheta).toBe(10000);
  });

  it('defaults tie_word_embeddings to false', () => {
    expect(parse({ tie_word_embeddings: undefined }).tieWordEmbeddings).toBe(false);
    expect(parse({ tie_word_embeddings: undefined }, LLAMA31_8B).tieWordEmbeddings).toBe(false);
  });

  it('gives Qwen2 q/k/v bias and no o bias, whatever attention_bias says', () => {
    for (const attention_bias of [undefined, true, false]) {
      const spec = parse({ attention_bias });
      expect([spec.qkvBias, spec.oBias, spec.mlpBias]).toEqual([true, false, false]);
    }
  });

  it('maps Llama/Mistral attention_bias to q/k/v and o bias, and Llama mlp_bias to MLP bias', () => {
    expect(parse({ attention_bias: true }, LLAMA31_8B)).toMatchObject({ qkvBias: true, oBias: true });
    expect(parse({ attention_bias: true }, MISTRAL_7B)).toMatchObject({ qkvBias: true, oBias: true });
    expect(parse({ attention_bias: undefined }, MISTRAL_7B)).toMatchObject({ qkvBias: false, oBias: false });
    expect(parse({ mlp_bias: true }, LLAMA31_8B).mlpBias).toBe(true);
  });

  it('treats rope_scaling null or rope_type default as no scaling', () => {
    expect(parse({ rope_scaling: null }, LLAMA31_8B).ropeScaling).toBeNull();
    expect(parse({ rope_scaling: { rope_type: 'default' } }, LLAMA31_8B).ropeScaling).toBeNull();
  });

  it('reads torch_dtype, or dtype, defaulting to float32', () => {
    expect(parse({ torch_dtype: undefined }).torchDtype).toBe('float32');
    expect(parse({ torch_dtype: undefined, dtype: 'float16' }).torchDtype).toBe('float16');
  });

  it('reads eos_token_id as a number or a list, and pad_token_id', () => {
    expect(parse({ eos_token_id: 7 }).eosTokenIds).toEqual([7]);
    expect(parse({ eos_token_id: [7, 8] }).eosTokenIds).toEqual([7, 8]);
    expect(parse({ eos_token_id: undefined }).eosTokenIds).toEqual([]);
    expect(parse({ pad_token_id: 3 }).padTokenId).toBe(3);
  });

  it('slides Qwen2 layers from max_window_layers on only with use_sliding_window, as Qwen2Config does', () => {
    const spec = parse({ use_sliding_window: true, sliding_window: 4096, max_window_layers: 21 });
    expect(spec.slidingWindow).toBe(4096);
    expect(spec.layerTypes).toEqual([...Array(21).fill('full'), ...Array(3).fill('sliding')]);
    const off = parse({ use_sliding_window: false, sliding_window: 4096, max_window_layers: 21 });
    expect([off.slidingWindow, off.layerTypes.includes('sliding')]).toEqual([null, false]);
  });

  it('reads linear rope_scaling', () => {
    expect(parse({ rope_scaling: { rope_type: 'linear', factor: 4 } }).ropeScaling).toEqual({
      type: 'linear',
      factor: 4,
    });
  });
});

describe('parseConfig errors', () => {
  it('rejects an unsupported architecture, listing the supported ones', () => {
    expectError(
      () => parse({ architectures: ['GPT2LMHeadModel'] }),
      /'?"GPT2LMHeadModel"'?.*not support.*LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM/,
    );
    expectError(() => parse({ architectures: ['toString'] }), /"toString".*not support/);
    expectError(
      () => parse({ architectures: undefined, model_type: 'gpt2' }),
      /model_type "gpt2".*LlamaForCausalLM/,
    );
  });

  it('rejects a non-object', () => {
    expectError(() => parseConfig([1, 2], SRC), /is not a JSON object/);
  });

  it.each([
    'hidden_size',
    'num_hidden_layers',
    'num_attention_heads',
    'intermediate_size',
    'vocab_size',
    'rms_norm_eps',
    'max_position_embeddings',
  ])('names missing field %s', (field) => {
    expectError(() => parse({ [field]: undefined }), new RegExp(`is missing ${field}; set it to a positive`));
  });

  it('names invalid numeric fields', () => {
    expectError(
      () => parse({ hidden_size: '896' }),
      /invalid \("896"\) hidden_size; set it to a positive integer/,
    );
    expectError(() => parse({ num_hidden_layers: 2.5 }), /invalid \(2.5\) num_hidden_layers/);
    expectError(() => parse({ vocab_size: 0 }), /invalid \(0\) vocab_size/);
    expectError(
      () => parse({ rms_norm_eps: -1 }),
      /invalid \(-1\) rms_norm_eps; set it to a positive number/,
    );
    expectError(() => parse({ rope_theta: 'big' }), /invalid \("big"\) rope_theta/);
    expectError(() => parse({ num_key_value_heads: null, head_dim: 0 }), /invalid \(0\) head_dim/);
  });

  it('rejects num_attention_heads not divisible by num_key_value_heads', () => {
    expectError(
      () => parse({ num_key_value_heads: 3 }),
      /num_attention_heads 14, which is not a multiple of num_key_value_heads 3/,
    );
  });

  it('rejects hidden_size not divisible by heads when head_dim is absent', () => {
    expectError(
      () => parse({ hidden_size: 900 }),
      /hidden_size 900.*not a multiple of num_attention_heads 14.*head_dim/,
    );
  });

  it.each(['dynamic', 'yarn', 'longrope'])('rejects rope_scaling type %s', (type) => {
    expectError(
      () => parse({ rope_scaling: { type, factor: 4 } }),
      new RegExp(`rope_scaling type "${type}".*only supports 'llama3' and 'linear'`),
    );
  });

  it('names a missing llama3 rope_scaling field', () => {
    const { low_freq_factor: _, ...partial } = LLAMA31_8B.rope_scaling;
    expectError(
      () => parse({ rope_scaling: partial }, LLAMA31_8B),
      /\(rope_scaling\) is missing low_freq_factor/,
    );
  });

  it('rejects non-SiLU activations, bad booleans and bad token ids', () => {
    expectError(() => parse({ hidden_act: 'gelu' }), /hidden_act to "gelu".*only implements 'silu'/);
    expectError(() => parse({ tie_word_embeddings: 'yes' }), /non-boolean tie_word_embeddings/);
    expectError(() => parse({ eos_token_id: [1, 'x'] }), /invalid eos_token_id/);
    expectError(() => parse({ bos_token_id: -1 }), /invalid bos_token_id/);
  });
});

describe('readConfig', () => {
  const tmp = useTempDir('emlens-config-');

  it('reads config.json alone', async () => {
    const d = tmp.join('plain');
    await mkdir(d);
    await writeFile(join(d, 'config.json'), JSON.stringify(QWEN25_05B));
    expect((await readConfig(d)).eosTokenIds).toEqual([151645]);
  });

  it('lets generation_config.json override bos/eos/pad', async () => {
    const d = tmp.join('gen');
    await mkdir(d, { recursive: true });
    await writeFile(join(d, 'config.json'), JSON.stringify(QWEN25_05B));
    await writeFile(
      join(d, 'generation_config.json'),
      JSON.stringify({
        bos_token_id: 151643,
        eos_token_id: [151645, 151643],
        pad_token_id: 151643,
        top_p: 0.8,
      }),
    );
    const spec = await readConfig(d);
    expect(spec.eosTokenIds).toEqual([151645, 151643]);
    expect(spec.padTokenId).toBe(151643);
  });

  it('keeps config.json ids that generation_config.json leaves out', async () => {
    const d = tmp.join('gen-partial');
    await mkdir(d, { recursive: true });
    await writeFile(join(d, 'config.json'), JSON.stringify(LLAMA31_8B));
    await writeFile(join(d, 'generation_config.json'), JSON.stringify({ temperature: 0.6 }));
    const spec = await readConfig(d);
    expect(spec.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(spec.bosTokenId).toBe(128000);
  });

  it('explains a folder without config.json', async () => {
    const d = tmp.join('empty');
    await expect(readConfig(d)).rejects.toThrow(
      /No config\.json in .*empty; pass a Hugging Face model folder/,
    );
  });

  it('explains invalid JSON', async () => {
    const d = tmp.join('broken');
    await mkdir(d, { recursive: true });
    await writeFile(join(d, 'config.json'), '{"hidden_size": 8,');
    await expect(readConfig(d)).rejects.toThrow(EmlensError);
    await expect(readConfig(d)).rejects.toThrow(/config\.json is not valid JSON/);
  });
});
