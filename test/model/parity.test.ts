/**
 * The ONNX graph against the independent float64 reference (test/reference/forward64.ts): last-position and
 * all-position logits and every hook, for each family and a spread of odd shapes, in both profiles.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Profile } from '../../src/model/graph/transformer.js';
import { BLOCK_HOOKS, hookName } from '../../src/model/hooks.js';
import { loadModel, type Model } from '../../src/model/model.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { makeTinyModel, type TinyModelOptions } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { at, maxAbsDiff } from '../helpers/numeric.js';
import {
  loadWeights64,
  type ReferenceOutput,
  referenceForward,
  referenceInvFreq,
} from '../reference/forward64.js';

// the float profiles; int8/int4 have their own bounds (test/model/quantized.test.ts)
const TOL: Record<'fp32' | 'fp16', number> = { fp32: 1e-4, fp16: 2e-2 };

interface Case {
  readonly name: string;
  readonly options: TinyModelOptions;
  readonly seqLen: number;
}

const CASES: readonly Case[] = [
  { name: 'qwen2 gqa 2 untied', options: { family: 'qwen2', seed: 1 }, seqLen: 7 },
  {
    name: 'qwen2 gqa 7 tied, 3 layers',
    options: {
      family: 'qwen2',
      seed: 2,
      dModel: 56,
      numHeads: 7,
      numKvHeads: 1,
      tieWordEmbeddings: true,
      numLayers: 3,
    },
    seqLen: 9,
  },
  {
    name: 'llama mha, qkv/o + mlp bias, llama3 rope',
    options: {
      family: 'llama',
      seed: 3,
      numHeads: 4,
      numKvHeads: 4,
      qkvBias: true,
      mlpBias: true,
      ropeScaling: 'llama3',
    },
    seqLen: 12,
  },
  {
    name: 'llama gqa 2 tied, no bias, llama3 rope',
    options: {
      family: 'llama',
      seed: 4,
      numHeads: 4,
      numKvHeads: 2,
      tieWordEmbeddings: true,
      ropeScaling: 'llama3',
    },
    seqLen: 6,
  },
  {
    name: 'llama gqa 7, headDim 12, qkv bias',
    options: { family: 'llama', seed: 5, dModel: 64, numHeads: 7, numKvHeads: 1, headDim: 12, qkvBias: true },
    seqLen: 8,
  },
  {
    name: 'mistral headDim 24 != dModel/numHeads',
    options: { family: 'mistral', seed: 6, dModel: 64, numHeads: 4, numKvHeads: 2, headDim: 24 },
    seqLen: 10,
  },
  {
    name: 'mistral gqa 7, headDim 8, qkv/o bias, tied, 3 layers',
    options: {
      family: 'mistral',
      seed: 7,
      dModel: 48,
      numHeads: 7,
      numKvHeads: 1,
      headDim: 8,
      qkvBias: true,
      tieWordEmbeddings: true,
      numLayers: 3,
    },
    seqLen: 11,
  },
  {
    name: 'mistral mha, no bias, untied',
    options: { family: 'mistral', seed: 8, numHeads: 4, numKvHeads: 4 },
    seqLen: 6,
  },
  {
    name: 'qwen2 gqa 2, 301-token prefill',
    options: { family: 'qwen2', seed: 11, numLayers: 2 },
    seqLen: 301,
  },
  { name: 'qwen2 BF16 weights', options: { family: 'qwen2', seed: 9, dtype: 'BF16' }, seqLen: 8 },
  {
    name: 'llama F16 weights, llama3 rope',
    options: { family: 'llama', seed: 10, dtype: 'F16', ropeScaling: 'llama3', qkvBias: true },
    seqLen: 9,
  },
  {
    name: 'mistral sliding window 5 < 12 tokens',
    options: { family: 'mistral', seed: 12, slidingWindow: 5, numLayers: 2 },
    seqLen: 12,
  },
  {
    name: 'qwen2 use_sliding_window 3 from layer 1',
    options: { family: 'qwen2', seed: 13, slidingWindow: 3, maxWindowLayers: 1, numLayers: 3 },
    seqLen: 9,
  },
  {
    name: 'qwen3 gqa 3, headDim 12, q/k/v/o bias, tied',
    options: {
      family: 'qwen3',
      seed: 14,
      dModel: 48,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 12,
      qkvBias: true,
      tieWordEmbeddings: true,
    },
    seqLen: 9,
  },
  {
    name: 'qwen3 sliding window 4 from layer 1, 3 layers, BF16',
    options: { family: 'qwen3', seed: 15, slidingWindow: 4, maxWindowLayers: 1, numLayers: 3, dtype: 'BF16' },
    seqLen: 11,
  },
  {
    name: 'gemma2 gqa 2, headDim 16, window 5 < 13 tokens, strong softcaps',
    options: {
      family: 'gemma2',
      seed: 16,
      dModel: 40,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      numLayers: 3,
      slidingWindow: 5,
      attnSoftcap: 1.5,
      finalSoftcap: 2,
    },
    seqLen: 13,
  },
  {
    name: 'gemma2 BF16, default softcaps, untied',
    options: { family: 'gemma2', seed: 17, dtype: 'BF16', tieWordEmbeddings: false, slidingWindow: 4 },
    seqLen: 8,
  },
  {
    name: 'gemma3 multimodal layout (4.x config), gqa 4, headDim 12, window 4, linear rope on global layers',
    options: {
      family: 'gemma3',
      seed: 18,
      dModel: 32,
      numHeads: 4,
      numKvHeads: 1,
      headDim: 12,
      numLayers: 3,
      slidingWindow: 4,
      ropeScaling: 'linear',
      ropeTheta: 1000,
      ropeLocalTheta: 50,
    },
    seqLen: 10,
  },
  {
    name: 'gemma3_text (5.x config), mqa 5, headDim 20, window 3, final softcap, untied',
    options: {
      family: 'gemma3_text',
      seed: 19,
      dModel: 40,
      numHeads: 5,
      numKvHeads: 1,
      headDim: 20,
      numLayers: 4,
      slidingWindow: 3,
      slidingWindowPattern: 3,
      tieWordEmbeddings: false,
      finalSoftcap: 3,
    },
    seqLen: 9,
  },
];

/** Deterministic token ids that include both ends of the vocabulary. */
function tokenIds(n: number, vocab: number, seed: number): number[] {
  let s = (seed * 2654435761) >>> 0 || 1;
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    ids.push(s % vocab);
  }
  ids[1] = 0;
  ids[n - 2] = vocab - 1;
  return ids;
}

function sub(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v - b[i]!); // in range: both are dModel-wide residual rows
}

/** The reference value of a hook at every position: [pos][dModel]. */
function referenceHook(ref: ReferenceOutput, layer: number, hook: string): Float64Array[] {
  const pre = at(ref.residPre, layer, 'residPre');
  const mid = at(ref.residMid, layer, 'residMid');
  const post = at(ref.residPost, layer, 'residPost');
  // Below, pre[p] and mid[p] are in range: pre, mid and post all hold one row per position.
  switch (hook) {
    case 'hook_resid_pre':
      return pre;
    case 'hook_resid_mid':
      return mid;
    case 'hook_resid_post':
      return post;
    case 'hook_attn_out':
      return mid.map((m, p) => sub(m, pre[p]!));
    case 'hook_mlp_out':
      return post.map((x, p) => sub(x, mid[p]!));
    default:
      throw new Error(`no reference for ${hook}`);
  }
}

/** Which of transformers' three llama3 bands each RoPE frequency falls in. */
function llama3Bands(spec: ModelSpec): Set<'kept' | 'smoothed' | 'divided'> {
  const s = spec.ropeScaling;
  if (s?.type !== 'llama3') throw new Error('llama3Bands: the spec has no llama3 rope scaling');
  const bands = new Set<'kept' | 'smoothed' | 'divided'>();
  for (let i = 0; i < spec.headDim / 2; i++) {
    const wavelen = 2 * Math.PI * spec.ropeTheta ** ((2 * i) / spec.headDim);
    if (wavelen > s.originalMaxPositionEmbeddings / s.lowFreqFactor) bands.add('divided');
    else if (wavelen >= s.originalMaxPositionEmbeddings / s.highFreqFactor) bands.add('smoothed');
    else bands.add('kept');
  }
  return bands;
}

/** Whether a case's tiny model has strong enough softcaps to matter. */
function hasSoftcap(options: TinyModelOptions): boolean {
  return options.attnSoftcap !== undefined || options.finalSoftcap !== undefined;
}

const tmp = useTempDir('emlens-parity-');

describe.each(CASES)('$name', ({ name, options, seqLen }) => {
  let spec: ModelSpec;
  let ids: number[];
  let ref: ReferenceOutput;
  const models = new Map<Profile, Model>();

  beforeAll(async () => {
    const dir = tmp.join(name.replace(/[^a-z0-9]+/gi, '-'));
    spec = await makeTinyModel(dir, options);
    ids = tokenIds(seqLen, spec.vocabSize, options.seed ?? 0);
    // The weights as stored (BF16/F16 already rounded), widened to float64.
    ref = referenceForward(spec, await loadWeights64(dir), ids);
    const cacheDir = tmp.join('cache');
    for (const profile of ['fp32', 'fp16'] as const) {
      models.set(profile, await loadModel(dir, { cacheDir, profile, threads: 1 }));
    }
  });
  afterAll(async () => {
    for (const m of models.values()) await m.dispose();
  });

  if (options.ropeScaling === 'llama3') {
    it('has RoPE frequencies in every llama3 band, and the scaling matters', () => {
      expect(spec.ropeScaling).not.toBeNull();
      expect([...llama3Bands(spec)].sort()).toEqual(['divided', 'kept', 'smoothed']);
      const inv = referenceInvFreq(spec);
      const plain = referenceInvFreq({ ...spec, ropeScaling: null });
      // plain[i] is in range: both have headDim / 2 entries
      expect(inv.some((f, i) => Math.abs(f - plain[i]!) > 1e-3 * plain[i]!)).toBe(true);
    });
  }

  if (options.slidingWindow || options.family.startsWith('gemma')) {
    it('has a window shorter than the sequence on some layer, and the window matters', async () => {
      expect(spec.slidingWindow).not.toBeNull();
      expect(spec.slidingWindow!).toBeLessThan(seqLen);
      expect(spec.layerTypes).toContain('sliding');
      const dir = tmp.join(name.replace(/[^a-z0-9]+/gi, '-'));
      const full = referenceForward({ ...spec, slidingWindow: null }, await loadWeights64(dir), ids);
      expect(maxAbsDiff(at(full.logits, seqLen - 1), at(ref.logits, seqLen - 1))).toBeGreaterThan(1e-3);
    });
  }
  if (hasSoftcap(options)) {
    it('softcapping changes the outputs (so the case checks it)', async () => {
      const dir = tmp.join(name.replace(/[^a-z0-9]+/gi, '-'));
      const plain = referenceForward(
        { ...spec, attnSoftcap: null, finalSoftcap: null },
        await loadWeights64(dir),
        ids,
      );
      expect(maxAbsDiff(at(plain.logits, seqLen - 1), at(ref.logits, seqLen - 1))).toBeGreaterThan(1e-3);
    });
  }

  describe.each(['fp32', 'fp16'] as const)('%s', (profile) => {
    const tol = TOL[profile];

    it('last-position logits and every hook match the reference', async () => {
      const m = models.get(profile)!;
      const r = await m.forward([ids], { hooks: ['blocks.*.*'] });
      expect(r.logits.dims).toEqual([1, spec.vocabSize]);
      expect(maxAbsDiff(r.logits.data, at(ref.logits, seqLen - 1))).toBeLessThanOrEqual(tol);
      expect(r.hooks.size).toBe(spec.numLayers * BLOCK_HOOKS.length);
      for (let l = 0; l < spec.numLayers; l++) {
        for (const h of BLOCK_HOOKS) {
          const name = hookName(l, h);
          const got = r.hooks.get(name);
          expect(got, name).toBeDefined();
          expect(got!.dims).toEqual([1, seqLen, spec.dModel]);
          const want = referenceHook(ref, l, h);
          const err = maxAbsDiff(got!.data, Float64Array.from(want.flatMap((v) => [...v])));
          expect(err, `${name} max abs error`).toBeLessThanOrEqual(tol);
        }
      }
    });

    it("logits: 'all' matches the reference at every position", async () => {
      const m = models.get(profile)!;
      const r = await m.forward([ids], { logits: 'all' });
      expect(r.logits.dims).toEqual([1, seqLen, spec.vocabSize]);
      for (let p = 0; p < seqLen; p++) {
        const row = r.logits.data.subarray(p * spec.vocabSize, (p + 1) * spec.vocabSize);
        expect(maxAbsDiff(row, at(ref.logits, p)), `position ${p}`).toBeLessThanOrEqual(tol);
      }
    });
  });
});
