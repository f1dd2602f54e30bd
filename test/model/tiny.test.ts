import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { decodeSafetensors, encodeSafetensors, SafetensorsFile } from '../../src/io/safetensors.js';
import { readConfig } from '../../src/model/config.js';
import { type ModelSpec, parameterCount, weightNames, weightShape } from '../../src/model/spec.js';
import { makeTinyModel, QWEN25_05B_SHAPE, type TinyModelOptions, tinySpec } from '../../src/model/tiny.js';
import { Rng } from '../../src/util/random.js';
import { useTempDir } from '../helpers/fixtures.js';
import { at } from '../helpers/numeric.js';
import { loadWeights64, referenceForward, referenceInvFreq, ropeAt } from '../reference/forward64.js';

const FAMILIES = ['qwen2', 'llama', 'mistral'] as const;

const tmp = useTempDir('emlens-tiny-');

let counter = 0;
async function make(options: TinyModelOptions): Promise<{ dir: string; spec: ModelSpec }> {
  const dir = tmp.join(`m${counter++}`);
  return { dir, spec: await makeTinyModel(dir, options) };
}

async function loadTokenizer(dir: string): Promise<{ tok: Tokenizer; config: Record<string, unknown> }> {
  const json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
  const config = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
  return { tok: new Tokenizer(json, config), config };
}

describe('Rng', () => {
  it('gives the same stream for the same seed and a different one otherwise', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const c = new Rng(43);
    const xs = Array.from({ length: 8 }, () => a.next());
    expect(Array.from({ length: 8 }, () => b.next())).toEqual(xs);
    expect(Array.from({ length: 8 }, () => c.next())).not.toEqual(xs);
    expect(new Rng(2 ** 40).next()).not.toBe(new Rng(0).next());
  });

  it('pins the xoshiro128** stream (guards against platform or refactor drift)', () => {
    const r = new Rng(1);
    expect([r.nextUint32(), r.nextUint32(), r.nextUint32()]).toEqual([2442144158, 3238099751, 3819917871]);
    expect(new Rng(1).next()).toBe(0.5686059948349658);
    expect(new Rng(1).normal()).toBe(0.9959804453489101);
  });

  it('derives independent streams per label', () => {
    expect(Rng.derive(0, 'a').next()).toBe(Rng.derive(0, 'a').next());
    expect(Rng.derive(0, 'a').next()).not.toBe(Rng.derive(0, 'b').next());
    expect(Rng.derive(0, 'a').next()).not.toBe(Rng.derive(1, 'a').next());
  });

  it('draws uniform, integer and normal samples with the right moments', () => {
    const r = new Rng(7);
    const u = Array.from({ length: 20000 }, () => r.next());
    expect(Math.min(...u)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...u)).toBeLessThan(1);
    expect(u.reduce((s, x) => s + x, 0) / u.length).toBeCloseTo(0.5, 1);
    const ints = Array.from({ length: 1000 }, () => r.int(5));
    expect(new Set(ints)).toEqual(new Set([0, 1, 2, 3, 4]));
    const z = r.normalArray(20000, 2);
    const mean = z.reduce((s, x) => s + x, 0) / z.length;
    const std = Math.sqrt(z.reduce((s, x) => s + (x - mean) ** 2, 0) / z.length);
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(std).toBeCloseTo(2, 1);
  });

  it('shuffles into a permutation', () => {
    const xs = Array.from({ length: 50 }, (_, i) => i);
    const shuffled = new Rng(3).shuffle([...xs]);
    expect(shuffled).not.toEqual(xs);
    expect([...shuffled].sort((a, b) => a - b)).toEqual(xs);
  });
});

describe.each(FAMILIES)('makeTinyModel (%s)', (family) => {
  let dir: string;
  let spec: ModelSpec;
  beforeAll(async () => {
    ({ dir, spec } = await make({ family, seed: 1 }));
  });

  it('writes a folder whose config.json (+ generation_config.json) parses back to the same spec', async () => {
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json']) {
      expect(existsSync(join(dir, f))).toBe(true);
    }
    expect(await readConfig(dir)).toEqual(spec);
    expect(spec).toMatchObject({ family, numLayers: 2, dModel: 64, numHeads: 4, numKvHeads: 2, headDim: 16 });
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    expect(config.model_type).toBe(family);
    expect(config.torch_dtype).toBe('float32');
    expect(Object.keys(config)).toEqual([...Object.keys(config)].sort());
  });

  it('holds exactly the weights the spec names, with their shapes, and O(1) activations', async () => {
    const file = await SafetensorsFile.open(join(dir, 'model.safetensors'));
    try {
      expect([...file.tensors.keys()].sort()).toEqual(weightNames(spec).sort());
      for (const [name, info] of file.tensors) {
        expect(info.shape).toEqual(weightShape(spec, name));
        expect(info.dtype).toBe('F32');
      }
    } finally {
      await file.close();
    }
    const out = referenceForward(spec, await loadWeights64(dir), [5, 70, 300, 12, 9]);
    const rms = (v: Float64Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
    for (const layer of out.residPost) for (const v of layer) expect(rms(v)).toBeGreaterThan(0.1);
    for (const layer of out.residPost) for (const v of layer) expect(rms(v)).toBeLessThan(10);
    for (const l of out.logits) expect(rms(l)).toBeGreaterThan(0.1);
    for (const l of out.logits) expect(rms(l)).toBeLessThan(20);
  });

  it('writes a tokenizer that @huggingface/tokenizers loads and that round-trips text and special tokens', async () => {
    const { tok } = await loadTokenizer(dir);
    const text = "Hello, the world is round and that's it.\n\nNumbers: 12345 (x) ~`!@#$%^&*[]{}|\\";
    const { ids } = tok.encode(text, { add_special_tokens: false });
    expect(ids.length).toBeLessThan(text.length); // merges apply
    expect(Math.max(...ids)).toBeLessThan(spec.vocabSize);
    expect(tok.decode(ids)).toBe(text);
    for (const eos of spec.eosTokenIds) {
      const t = tok.id_to_token(eos)!;
      expect(tok.encode(`a${t}b`, { add_special_tokens: false }).ids).toContain(eos);
      expect(tok.decode(tok.encode(`a${t}b`, { add_special_tokens: false }).ids)).toBe(`a${t}b`);
    }
    const withSpecial = tok.encode('hi').ids;
    if (family === 'qwen2') expect(withSpecial[0]).not.toBe(spec.bosTokenId);
    else expect(withSpecial[0]).toBe(spec.bosTokenId);
    expect(tok.decode(withSpecial, { skip_special_tokens: true })).toBe('hi');
  });

  it('has a chat template in the family style that @huggingface/jinja renders', async () => {
    const { tok, config } = await loadTokenizer(dir);
    const template = new Template(config.chat_template as string);
    const text = template.render({
      messages: [
        { role: 'user', content: 'Hi there' },
        { role: 'assistant', content: 'Hello' },
      ],
      add_generation_prompt: false,
      bos_token: config.bos_token,
      eos_token: config.eos_token,
    });
    const expected: Record<'qwen2' | 'llama' | 'mistral', string> = {
      qwen2:
        '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n',
      llama:
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>',
      mistral: '<s>[INST] Hi there [/INST]Hello</s>',
    };
    expect(text).toBe(expected[family]);
    // Every special token of the rendering is one token, and the end of turn is an eos id.
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    expect(tok.decode(ids)).toBe(text);
    expect(spec.eosTokenIds).toContain(family === 'qwen2' ? ids[ids.length - 2] : ids[ids.length - 1]);
    const prompt = template.render({
      messages: [{ role: 'user', content: 'Hi' }],
      add_generation_prompt: true,
      bos_token: config.bos_token,
      eos_token: config.eos_token,
    });
    if (family !== 'mistral') expect(prompt).toMatch(/assistant(<\|end_header_id\|>)?\n+$/);
  });
});

describe('makeTinyModel options', () => {
  it('is deterministic: same seed gives byte-identical weights, another seed different ones', async () => {
    const a = await make({ family: 'qwen2', seed: 5 });
    const b = await make({ family: 'qwen2', seed: 5 });
    const c = await make({ family: 'qwen2', seed: 6 });
    const bytes = (d: string) => readFile(join(d, 'model.safetensors'));
    expect((await bytes(a.dir)).equals(await bytes(b.dir))).toBe(true);
    expect((await bytes(a.dir)).equals(await bytes(c.dir))).toBe(false);
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
      expect(await readFile(join(a.dir, f), 'utf8')).toBe(await readFile(join(c.dir, f), 'utf8'));
    }
  });

  it('generates each tensor as it is written, to the bytes the in-memory encoder gives', async () => {
    const a = await make({ family: 'llama', seed: 2, dtype: 'BF16' });
    const bytes = await readFile(join(a.dir, 'model.safetensors'));
    const { metadata, tensors } = decodeSafetensors(bytes);
    const eager = new Map(
      [...tensors].map(([name, t]) => [name, { dtype: t.dtype, shape: t.shape, data: t.bytes.slice() }]),
    );
    expect(encodeSafetensors(eager, { ...metadata }).equals(bytes)).toBe(true);
  });

  it('writes no lm_head for tied models, and one for untied ones', async () => {
    for (const family of FAMILIES) {
      const tied = await make({ family, tieWordEmbeddings: true });
      const untied = await make({ family, tieWordEmbeddings: false });
      const names = async (d: string) => {
        const f = await SafetensorsFile.open(join(d, 'model.safetensors'));
        const keys = [...f.tensors.keys()];
        await f.close();
        return keys;
      };
      expect(await names(tied.dir)).not.toContain('lm_head.weight');
      expect(await names(untied.dir)).toContain('lm_head.weight');
      expect((await readConfig(tied.dir)).tieWordEmbeddings).toBe(true);
    }
  });

  it('honours dtype, biases, rope scaling and shape options', async () => {
    const { dir, spec } = await make({
      family: 'llama',
      dtype: 'F16',
      qkvBias: true,
      mlpBias: true,
      ropeScaling: 'llama3',
      ropeTheta: 500000,
      numLayers: 1,
      dModel: 48,
      numHeads: 6,
      numKvHeads: 3,
      headDim: 10,
      intermediateSize: 40,
      vocabSize: 400,
      maxPositionEmbeddings: 4096,
    });
    expect(await readConfig(dir)).toEqual(spec);
    expect(spec).toMatchObject({
      qkvBias: true,
      oBias: true,
      mlpBias: true,
      headDim: 10,
      torchDtype: 'float16',
    });
    expect(spec.ropeScaling).toEqual({
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 512,
    });
    const f = await SafetensorsFile.open(join(dir, 'model.safetensors'));
    expect(f.info('model.layers.0.self_attn.o_proj.bias').dtype).toBe('F16');
    expect(f.has('model.layers.0.mlp.down_proj.bias')).toBe(true);
    const norm = await f.readFloat32('model.layers.0.input_layernorm.weight');
    await f.close();
    expect(norm.some((x) => Math.abs(x - 1) > 0.01)).toBe(true); // norm weights are not all ones
  });

  it('gives Qwen2 q/k/v bias even without qkvBias, and never an o bias', () => {
    expect(tinySpec({ family: 'qwen2' })).toMatchObject({ qkvBias: true, oBias: false });
    expect(tinySpec({ family: 'mistral' })).toMatchObject({ qkvBias: false, oBias: false });
  });

  it('describes Qwen2.5-0.5B exactly (494,032,768 parameters)', () => {
    const spec = tinySpec(QWEN25_05B_SHAPE);
    expect(spec).toMatchObject({ headDim: 64, rmsNormEps: 1e-6, ropeTheta: 1e6, tieWordEmbeddings: true });
    expect(parameterCount(spec)).toBe(494_032_768);
  });

  it('rejects impossible shapes with one-sentence errors', () => {
    expect(() => tinySpec({ family: 'qwen2', vocabSize: 100 })).toThrow(EmlensError);
    expect(() => tinySpec({ family: 'qwen2', vocabSize: 100 })).toThrow(/smaller than its tokenizer/);
    expect(() => tinySpec({ family: 'qwen2', numHeads: 4, numKvHeads: 3 })).toThrow(
      /not a multiple of numKvHeads/,
    );
    expect(() => tinySpec({ family: 'qwen2', headDim: 7 })).toThrow(/headDim 7 is odd/);
    expect(() => tinySpec({ family: 'qwen2', numLayers: 0 })).toThrow(/numLayers is 0/);
  });
});

describe('reference forward (float64)', () => {
  let dir: string;
  let spec: ModelSpec;
  let weights: Map<string, Float64Array>;
  beforeAll(async () => {
    ({ dir, spec } = await make({ family: 'llama', numLayers: 1, qkvBias: true, seed: 9 }));
    weights = await loadWeights64(dir);
  });
  // b[i]! as before: a shorter b gives NaN, which fails every comparison below.
  const maxDiff = (a: Float64Array, b: Float64Array) =>
    a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);

  it('RoPE at position 0 is the identity, and preserves norms elsewhere', () => {
    const x = Float64Array.from(new Rng(1).normalArray(2 * 16));
    const inv = referenceInvFreq(spec);
    expect(maxDiff(ropeAt(x, 2, 16, inv, 0), x)).toBe(0);
    const norm = (v: Float64Array) => Math.hypot(...v);
    const rotated = ropeAt(x, 2, 16, inv, 37);
    expect(norm(rotated)).toBeCloseTo(norm(x), 10);
    expect(maxDiff(rotated, x)).toBeGreaterThan(0.1);
  });

  it('is causal: a position does not depend on later tokens', () => {
    const a = referenceForward(spec, weights, [10, 20, 30]);
    const b = referenceForward(spec, weights, [10, 20, 99, 7]);
    expect(maxDiff(at(a.logits, 0), at(b.logits, 0))).toBeLessThan(1e-12);
    expect(maxDiff(at(a.logits, 1), at(b.logits, 1))).toBeLessThan(1e-12);
    expect(maxDiff(at(a.logits, 2), at(b.logits, 2))).toBeGreaterThan(1e-3);
  });

  it('with one token, attention is v itself, so its output ignores the position', () => {
    const at0 = referenceForward(spec, weights, [42]);
    const at17 = referenceForward(spec, weights, [42], [17]);
    expect(maxDiff(at(at0.logits, 0), at(at17.logits, 0))).toBeLessThan(1e-12);
    // resid_mid = embedding + o_proj(v_proj(norm(embedding))), computed by hand.
    const d = spec.dModel;
    const kvd = spec.numKvHeads * spec.headDim;
    const e = weights.get('model.embed_tokens.weight')!.slice(42 * d, 43 * d);
    const g = weights.get('model.layers.0.input_layernorm.weight')!;
    const ms = e.reduce((s, x) => s + x * x, 0) / d;
    // Indices below are in range: each weight is read within its [out, in] shape (g: d, bv: kvd, bo: d).
    const h = e.map((x, i) => (x / Math.sqrt(ms + spec.rmsNormEps)) * g[i]!);
    const wv = weights.get('model.layers.0.self_attn.v_proj.weight')!;
    const bv = weights.get('model.layers.0.self_attn.v_proj.bias')!;
    const v = new Float64Array(kvd).map((_, o) => bv[o]! + h.reduce((s, x, i) => s + wv[o * d + i]! * x, 0));
    // Each query head reads kv head floor(h / 2), so the concatenated heads repeat each kv head twice.
    const hd = spec.headDim;
    const cat = new Float64Array(spec.numHeads * hd).map(
      (_, j) => v[Math.floor(j / hd / 2) * hd + (j % hd)]!,
    );
    const wo = weights.get('model.layers.0.self_attn.o_proj.weight')!;
    const bo = weights.get('model.layers.0.self_attn.o_proj.bias')!;
    const mid = e.map((x, o) => x + bo[o]! + cat.reduce((s, c, i) => s + wo[o * cat.length + i]! * c, 0));
    expect(maxDiff(at(at(at0.residMid, 0), 0), mid)).toBeLessThan(1e-12);
    expect(maxDiff(at(at(at0.residPre, 0), 0), e)).toBe(0);
  });

  it('depends only on relative positions (RoPE)', () => {
    const a = referenceForward(spec, weights, [3, 4, 5], [0, 1, 2]);
    const b = referenceForward(spec, weights, [3, 4, 5], [100, 101, 102]);
    const c = referenceForward(spec, weights, [3, 4, 5], [0, 2, 4]);
    expect(maxDiff(at(a.logits, 2), at(b.logits, 2))).toBeLessThan(1e-9);
    expect(maxDiff(at(a.logits, 2), at(c.logits, 2))).toBeGreaterThan(1e-4);
  });

  it('llama3 scaling: factor 1, or every band above the high-frequency cutoff, leaves inv_freq unchanged', () => {
    const base = referenceInvFreq({ ...spec, ropeScaling: null });
    const scaled = (factor: number, originalMaxPositionEmbeddings: number) =>
      referenceInvFreq({
        ...spec,
        ropeScaling: {
          type: 'llama3',
          factor,
          lowFreqFactor: 1,
          highFreqFactor: 4,
          originalMaxPositionEmbeddings,
        },
      });
    for (let i = 0; i < base.length; i++) expect(scaled(1, 256)[i]).toBeCloseTo(base[i]!, 15); // i < base.length
    // The longest wavelength is 2π·theta^((d-2)/d) ≈ 20k; a cutoff (orig / 4) above that keeps every band.
    expect(Array.from(scaled(8, 1e6))).toEqual(Array.from(base));
    // A tiny original context puts every band in the low-frequency regime: all divided by the factor.
    const low = scaled(8, 4);
    for (let i = 0; i < base.length; i++) expect(low[i]).toBeCloseTo(base[i]! / 8, 15); // i < base.length
  });
});
