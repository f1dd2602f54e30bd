/**
 * Generation: cached decoding against full recomputation, batching and seeding invariances, sampling
 * semantics, stop conditions, interventions under each position policy, and the `generate` command.
 */
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { type GenerateOptions, generate, TextStreamer } from '../../src/generate/generate.js';
import { argmax, sampleRng, sampleToken, topKIndices } from '../../src/generate/sampling.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { Intervention } from '../../src/model/interventions.js';
import { encodeChat } from '../../src/text/chat.js';
import { loadTokenizer, type TextTokenizer } from '../../src/text/tokenizer.js';
import { Rng } from '../../src/util/random.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { ids, lcg, vec } from '../helpers/numeric.js';

const tiny = useTinyModel('emlens-generate-', { family: 'qwen2', seed: 5, numLayers: 3, dModel: 64 });
let tokenizer: TextTokenizer;

beforeAll(async () => {
  tokenizer = await loadTokenizer(tiny.dir);
});

const PROMPTS = [ids(5, 1), ids(11, 2), ids(1, 3), ids(8, 4)] as const;

/** Greedy decoding by running the whole sequence through the model at every step (no cache). */
async function greedyReference(
  prompt: readonly number[],
  steps: number,
  interventions: readonly Intervention[] = [],
  policy: 'all' | 'prompt' | 'generated' = 'all',
): Promise<number[]> {
  const out: number[] = [];
  for (let t = 0; t < steps; t++) {
    const seq = [...prompt, ...out];
    const weights = Float32Array.from(seq, (_, i) =>
      policy === 'all' ? 1 : i < prompt.length === (policy === 'prompt') ? 1 : 0,
    );
    const r = await tiny.model.forward([seq], {
      interventions: interventions.map((iv) => ({ ...iv, positions: weights })),
    });
    out.push(argmax(r.logits.data));
  }
  return out;
}

const tokensOf = async (prompts: readonly (readonly number[])[], opts: GenerateOptions) =>
  (await generate(tiny.model, prompts, opts)).map((g) => g.tokens);

describe('sampling', () => {
  it('greedy is argmax (first on ties) and draws nothing', () => {
    const rng = new Rng(1);
    expect(sampleToken([0.1, 3, -2, 3], { temperature: 0 }, null)).toBe(1);
    expect(sampleToken([0.1, 3, -2, 3], { temperature: 0, topK: 2, topP: 0.1 }, rng)).toBe(1);
  });

  it('topKIndices returns the k best, best first, ties by index', () => {
    expect([...topKIndices([1, 5, 3, 5, -1, 4], 3)]).toEqual([1, 3, 5]);
    expect([...topKIndices([2, 2, 2], 5)]).toEqual([0, 1, 2]);
  });

  it('top-p keeps the smallest set reaching p (at least one token), renormalised', () => {
    const logits = [0.5, 0.3, 0.15, 0.05].map(Math.log);
    const draw = (params: { topP?: number; topK?: number }, draws = 4000) => {
      const rng = new Rng(7);
      const counts = [0, 0, 0, 0];
      // a token of the 4 logits, so within counts
      for (let i = 0; i < draws; i++) counts[sampleToken(logits, { temperature: 1, ...params }, rng)]!++;
      return counts.map((c) => c / draws);
    };
    expect(draw({ topP: 0.4 })).toEqual([1, 0, 0, 0]); // the top token alone exceeds p
    expect(draw({ topP: 0.5 })).toEqual([1, 0, 0, 0]); // reaches p exactly
    const two = draw({ topP: 0.7 }); // 0.5 + 0.3 >= 0.7
    expect(two[2]! + two[3]!).toBe(0); // four entries; an undefined one gives NaN, not 0
    expect(two[0]).toBeCloseTo(0.5 / 0.8, 1);
    const three = draw({ topP: 0.9 });
    expect(three[3]).toBe(0);
    expect(three[2]).toBeCloseTo(0.15 / 0.95, 1);
    const all = draw({});
    expect(all[3]).toBeCloseTo(0.05, 1);
    expect(all[3]).toBeGreaterThan(0);
    // top-k first, then top-p on the renormalised remainder: {0.5, 0.3} -> {0.625, 0.375}; p 0.6 keeps one
    expect(draw({ topK: 2, topP: 0.6 })).toEqual([1, 0, 0, 0]);
    const k2 = draw({ topK: 2 });
    expect(k2[0]).toBeCloseTo(0.625, 1);
  });

  it('temperature sharpens and flattens', () => {
    const logits = [Math.log(0.6), Math.log(0.4)];
    const freq = (temperature: number) => {
      const rng = new Rng(3);
      let zeros = 0;
      for (let i = 0; i < 4000; i++) if (sampleToken(logits, { temperature }, rng) === 0) zeros++;
      return zeros / 4000;
    };
    // p0 ∝ 0.6^(1/T): T = 0.5 -> 0.36/(0.36+0.16) = 0.692; T = 2 -> 0.775/(0.775+0.632) = 0.55
    expect(freq(0.5)).toBeCloseTo(0.692, 1);
    expect(freq(1)).toBeCloseTo(0.6, 1);
    expect(freq(2)).toBeCloseTo(0.55, 1);
  });

  it('a full-vocabulary top-p draw matches sorting the whole vocabulary', () => {
    const r = lcg(11);
    const logits = Float32Array.from({ length: 5000 }, () => (r() - 0.5) * 6);
    for (const topP of [0.05, 0.5, 0.95, 0.999]) {
      // the nucleus by brute force
      // order holds the indices of logits (5000 of them), so every lookup below is in range
      const order = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]! || a - b);
      const max = logits[order[0]!]!;
      const w = order.map((i) => Math.exp(logits[i]! - max));
      const total = w.reduce((a, b) => a + b, 0);
      const nucleus = new Set<number>();
      let cum = 0;
      for (let j = 0; j < order.length && (j === 0 || cum < topP * total); j++) {
        nucleus.add(order[j]!); // j < order.length = w.length
        cum += w[j]!;
      }
      const rng = new Rng(5);
      const seen = new Set<number>();
      for (let i = 0; i < 3000; i++) seen.add(sampleToken(logits, { temperature: 1, topP }, rng));
      for (const s of seen) expect(nucleus.has(s), `p ${topP}`).toBe(true);
      if (nucleus.size < 50) expect(seen.size).toBe(nucleus.size);
    }
  });

  it('ranks -0 and +0 logits as ties (by id) at the nucleus boundary', () => {
    // Weights e, 1, 1, 1, 1, e^-6: top-p 0.5 needs the top token and one zero, the one with the smallest id.
    const logits = Float32Array.from([1, -0, 0, -0, 0, -5]);
    const rng = new Rng(3);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { temperature: 1, topP: 0.5 }, rng));
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('rejects bad parameters with a clear error', () => {
    expect(() => sampleToken([1, 2], { temperature: -1 }, new Rng(0))).toThrow(/temperature/);
    expect(() => sampleToken([1, 2], { topP: 0 }, new Rng(0))).toThrow(/top_p/);
    expect(() => sampleToken([1, 2], { topK: 1.5 }, new Rng(0))).toThrow(/top_k/);
  });

  it('streams are per (prompt, sample)', () => {
    expect(sampleRng(1, 0, 0).next()).toBe(sampleRng(1, 0, 0).next());
    expect(sampleRng(1, 0, 1).next()).not.toBe(sampleRng(1, 0, 0).next());
    expect(sampleRng(1, 1, 0).next()).not.toBe(sampleRng(1, 0, 1).next());
    expect(sampleRng(2, 0, 0).next()).not.toBe(sampleRng(1, 0, 0).next());
  });
});

describe('generate', () => {
  it('greedy cached generation equals recomputing the whole sequence every step', async () => {
    for (const prompt of [PROMPTS[0], PROMPTS[1]]) {
      const [g] = await generate(tiny.model, [prompt], { maxNewTokens: 20, temperature: 0, eosTokenIds: [] });
      expect(g).toBeDefined();
      expect(g!.finishReason).toBe('length');
      expect(g!.tokens).toEqual(await greedyReference(prompt, 20));
    }
  });

  it('a batch of prompts of different lengths equals running them one by one (greedy)', async () => {
    const opts = { maxNewTokens: 12, temperature: 0, eosTokenIds: [] };
    const batched = await tokensOf(PROMPTS, opts);
    for (let i = 0; i < PROMPTS.length; i++)
      expect(batched[i]).toEqual((await tokensOf([PROMPTS[i]!], opts))[0]); // i < PROMPTS.length
  });

  it('seeded sampling does not depend on the batch composition', async () => {
    const opts = {
      maxNewTokens: 12,
      temperature: 1.2,
      topP: 0.95,
      topK: 100,
      seed: 9,
      n: 2,
      eosTokenIds: [],
    };
    const batched = await generate(tiny.model, PROMPTS, opts);
    const oneByOne = await generate(tiny.model, PROMPTS, { ...opts, batchSize: 1 });
    const inThrees = await generate(tiny.model, PROMPTS, { ...opts, batchSize: 3 });
    expect(oneByOne).toEqual(batched);
    expect(inThrees).toEqual(batched);
    expect(batched.map((g) => [g.prompt, g.sample])).toEqual([
      [0, 0],
      [0, 1],
      [1, 0],
      [1, 1],
      [2, 0],
      [2, 1],
      [3, 0],
      [3, 1],
    ]);
    // prompt 0 alone (still prompt index 0) draws the same tokens as in the full batch
    const alone = await generate(tiny.model, [PROMPTS[0]], opts);
    expect(alone).toEqual(batched.slice(0, 2));
  });

  it('the same seed repeats, a different seed differs, and the n samples of a prompt differ', async () => {
    const opts = { maxNewTokens: 16, temperature: 1, seed: 3, n: 4, eosTokenIds: [] };
    const a = await tokensOf([PROMPTS[1]], opts);
    const b = await tokensOf([PROMPTS[1]], opts);
    const c = await tokensOf([PROMPTS[1]], { ...opts, seed: 4 });
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    expect(new Set(a.map((t) => t.join(','))).size).toBe(4);
    for (let s = 0; s < 4; s++) expect(c[s]).not.toEqual(a[s]);
  });

  it('top_k = 1 is greedy at any temperature', async () => {
    const greedy = await tokensOf(PROMPTS, { maxNewTokens: 10, temperature: 0, eosTokenIds: [] });
    for (const temperature of [0.5, 1, 3]) {
      expect(
        await tokensOf(PROMPTS, { maxNewTokens: 10, temperature, topK: 1, seed: 1, eosTokenIds: [] }),
      ).toEqual(greedy);
    }
  });

  it('an eos token stops its row (kept as the last token) while the others go on', async () => {
    const free = await tokensOf(PROMPTS.slice(0, 2), { maxNewTokens: 10, temperature: 0, eosTokenIds: [] });
    // two rows of 10 tokens: with no eos ids each row runs to maxNewTokens
    const free0 = free[0]!;
    const free1 = free[1]!;
    const eos = free0[2]!;
    const stop = free0.indexOf(eos);
    const seen: [number, number][] = [];
    const out = await generate(tiny.model, PROMPTS.slice(0, 2), {
      maxNewTokens: 10,
      temperature: 0,
      eosTokenIds: [eos],
      onToken: (row, t) => seen.push([row, t]),
    });
    const [out0, out1] = out;
    expect(out0).toBeDefined();
    expect(out1).toBeDefined();
    expect(out0!.tokens).toEqual(free0.slice(0, stop + 1));
    expect(out0!.finishReason).toBe('eos');
    const other = free1.indexOf(eos);
    expect(out1!.tokens).toEqual(other >= 0 ? free1.slice(0, other + 1) : free1);
    expect(out1!.finishReason).toBe(other >= 0 ? 'eos' : 'length');
    // onToken saw exactly the kept tokens of each row, in order
    expect(seen.filter(([r]) => r === 0).map(([, t]) => t)).toEqual(out0!.tokens);
    expect(seen.filter(([r]) => r === 1).map(([, t]) => t)).toEqual(out1!.tokens);
  });

  it("defaults to the model's eos ids", async () => {
    const [g] = await generate(tiny.model, [PROMPTS[0]], { maxNewTokens: 40, temperature: 0 });
    expect(g).toBeDefined();
    const hit = g!.tokens.findIndex((t) => tiny.spec.eosTokenIds.includes(t));
    expect(g!.finishReason).toBe(hit >= 0 ? 'eos' : 'length');
    expect(g!.tokens.length).toBe(hit >= 0 ? hit + 1 : 40);
  });

  it('a stop string stops the row and cuts the text before it', async () => {
    const prompt = tokenizer.encode('The quick brown fox');
    const [free] = await generate(tiny.model, [prompt], {
      maxNewTokens: 30,
      temperature: 0,
      eosTokenIds: [],
      tokenizer,
    });
    expect(free).toBeDefined();
    expect(free!.text).toBe(tokenizer.decode(free!.tokens));
    // the first text a token adds that was not in the text before it
    let k = -1;
    let stopString = '';
    for (let i = 1; i < free!.tokens.length && k < 0; i++) {
      const before = tokenizer.decode(free!.tokens.slice(0, i));
      const after = tokenizer.decode(free!.tokens.slice(0, i + 1));
      const added = after.slice(before.length);
      if (
        after.startsWith(before) &&
        added.length > 0 &&
        !added.includes('\uFFFD') &&
        !before.includes(added)
      ) {
        k = i;
        stopString = added;
      }
    }
    expect(k, 'the greedy text grows at some step').toBeGreaterThan(0);
    const [g] = await generate(tiny.model, [prompt], {
      maxNewTokens: 30,
      temperature: 0,
      eosTokenIds: [],
      tokenizer,
      stopStrings: ['never appears \u0000', stopString],
    });
    expect(g).toBeDefined();
    expect(g!.finishReason).toBe('stop');
    expect(g!.tokens).toEqual(free!.tokens.slice(0, k + 1));
    expect(g!.text).toBe(tokenizer.decode(free!.tokens.slice(0, k)));
  });

  it('maxNewTokens bounds every row; 0 generates nothing', async () => {
    const out = await generate(tiny.model, PROMPTS, {
      maxNewTokens: 3,
      temperature: 0.7,
      n: 2,
      eosTokenIds: [],
    });
    expect(out.every((g) => g.tokens.length === 3 && g.finishReason === 'length')).toBe(true);
    const none = await generate(tiny.model, PROMPTS, { maxNewTokens: 0 });
    expect(none.every((g) => g.tokens.length === 0 && g.finishReason === 'length')).toBe(true);
  });

  it('rejects what it cannot do with clear errors', async () => {
    await expect(generate(tiny.model, [PROMPTS[0]], { maxNewTokens: 5, stopStrings: ['x'] })).rejects.toThrow(
      /tokenizer/,
    );
    const iv: Intervention = {
      kind: 'steer',
      hooks: ['blocks.0.hook_resid_post'],
      vector: new Float32Array(tiny.spec.dModel),
      positions: new Float32Array(5),
    };
    await expect(
      generate(tiny.model, [PROMPTS[0]], { maxNewTokens: 5, interventions: [iv] }),
    ).rejects.toThrow(/interventionPositions/);
    await expect(
      generate(tiny.model, [PROMPTS[0]], { maxNewTokens: tiny.model.maxPositions }),
    ).rejects.toThrow(/maxPositions/);
    await expect(generate(tiny.model, [[]], { maxNewTokens: 2 })).rejects.toThrow(/empty/);
  });
});

describe('interventions during generation', () => {
  const steer = (): Intervention[] => [
    { kind: 'steer', hooks: ['blocks.1.hook_resid_post'], vector: vec(tiny.spec.dModel, 17), scale: 6 },
  ];

  it('a large steering vector changes the output', async () => {
    const opts = { maxNewTokens: 12, temperature: 0, eosTokenIds: [] };
    const base = await tokensOf(PROMPTS, opts);
    const steered = await tokensOf(PROMPTS, { ...opts, interventions: steer() });
    for (let i = 0; i < PROMPTS.length; i++) expect(steered[i]).not.toEqual(base[i]);
  });

  for (const policy of ['all', 'prompt', 'generated'] as const) {
    it(`'${policy}' positions match full recomputation with the same position weights`, async () => {
      const out = await tokensOf(PROMPTS.slice(0, 3), {
        maxNewTokens: 10,
        temperature: 0,
        eosTokenIds: [],
        interventions: steer(),
        interventionPositions: policy,
      });
      for (let i = 0; i < 3; i++) {
        expect(out[i], `prompt ${i}`).toEqual(await greedyReference(PROMPTS[i]!, 10, steer(), policy)); // i < 3
      }
    });
  }

  it("'generated' leaves the first new token alone; the three policies differ", async () => {
    const opts = { maxNewTokens: 10, temperature: 0, eosTokenIds: [], interventions: steer() };
    const base = await tokensOf(PROMPTS, { ...opts, interventions: [] });
    const gen = await tokensOf(PROMPTS, { ...opts, interventionPositions: 'generated' });
    const prompt = await tokensOf(PROMPTS, { ...opts, interventionPositions: 'prompt' });
    const all = await tokensOf(PROMPTS, opts);
    // one row of tokens per prompt, so i is a row of each
    for (let i = 0; i < PROMPTS.length; i++) {
      expect(gen[i]![0]).toBe(base[i]![0]);
      expect(prompt[i]![0]).toBe(all[i]![0]);
    }
    expect(gen).not.toEqual(all);
    expect(prompt).not.toEqual(all);
  });

  it('ablation during generation matches full recomputation', async () => {
    const ablate: Intervention[] = [
      { kind: 'ablate', hooks: ['blocks.*.hook_resid_post'], directions: [vec(tiny.spec.dModel, 23)] },
    ];
    const out = await tokensOf([PROMPTS[3]], {
      maxNewTokens: 8,
      temperature: 0,
      eosTokenIds: [],
      interventions: ablate,
    });
    expect(out[0]).toEqual(await greedyReference(PROMPTS[3], 8, ablate));
  });
});

describe('TextStreamer', () => {
  it('prints multi-byte characters whole and concatenates to the full text', () => {
    const text = 'héllo wörld ✓ 日本';
    const tokens = tokenizer.encode(text, { addSpecialTokens: false });
    const s = new TextStreamer(tokenizer);
    const parts = tokens.map((t) => s.push(t));
    parts.push(s.flush());
    expect(parts.join('')).toBe(text);
    expect(parts.some((p) => p.includes('\uFFFD'))).toBe(false);
  });
});

describe('emlens generate', () => {
  let stdout: string[];
  let stderr: string[];
  afterEach(() => {
    vi.restoreAllMocks();
  });
  const capture = () => {
    stdout = [];
    stderr = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stdout.push(String(chunk));
      return true;
    });
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr.push(String(chunk));
      return true;
    });
  };
  const base = () => ['generate', '--model', tiny.dir, '--cache-dir', tiny.cacheDir, '--threads', '1'];

  async function steerFile(d = tiny.spec.dModel): Promise<string> {
    const file = tiny.at(`steer-${d}.safetensors`);
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (let l = 0; l < tiny.spec.numLayers; l++) {
      tensors[`direction.${l}`] = { dtype: 'F32', shape: [d], data: vec(d, 100 + l) };
    }
    await writeSafetensors(file, tensors);
    return file;
  }

  it('streams the steered greedy reply of the chat-templated prompt, as the library generates it', async () => {
    const file = await steerFile();
    capture();
    const code = await main([
      ...base(),
      '--prompt',
      'Hello there',
      '--system',
      'Be brief.',
      '--temperature',
      '0',
      '--max-new-tokens',
      '12',
      '--steer',
      file,
      '--layers',
      '1',
      '--scale',
      '6',
    ]);
    vi.restoreAllMocks();
    expect(code, stderr.join('')).toBe(0);
    const prompt = encodeChat(
      tokenizer,
      [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hello there' },
      ],
      { addGenerationPrompt: true },
    );
    const decoder = {
      decode: (t: readonly number[]) => tokenizer.decode(t, { cleanUpTokenizationSpaces: false }),
    };
    const opts = { maxNewTokens: 12, temperature: 0, tokenizer: decoder };
    const [steered] = await generate(tiny.model, [prompt], {
      ...opts,
      interventions: [
        { kind: 'steer', hooks: ['blocks.1.hook_resid_post'], vector: vec(tiny.spec.dModel, 101), scale: 6 },
      ],
    });
    const [plain] = await generate(tiny.model, [prompt], opts);
    expect(steered).toBeDefined();
    expect(plain).toBeDefined();
    expect(steered!.tokens).not.toEqual(plain!.tokens);
    expect(stdout.join('')).toBe(`${steered!.text}\n`);
    expect(stdout.length).toBeGreaterThan(1); // streamed in pieces
  });

  it('prints every sample with --n, sample 0 first', async () => {
    const file = await steerFile();
    capture();
    const code = await main([
      ...base(),
      '--prompt',
      'Hi',
      '--raw',
      '--n',
      '3',
      '--seed',
      '4',
      '--max-new-tokens',
      '6',
      '--ablate',
      file,
      '--layers',
      'all',
    ]);
    vi.restoreAllMocks();
    expect(code, stderr.join('')).toBe(0);
    const text = stdout.join('');
    expect(text.indexOf('[sample 1/3]')).toBe(0);
    expect(text.indexOf('[sample 2/3]')).toBeGreaterThan(0);
    expect(text.indexOf('[sample 3/3]')).toBeGreaterThan(text.indexOf('[sample 2/3]'));
    expect(stderr.join('')).toMatch(/sample 3\/3 done/);
  });

  it('rejects a d_model mismatch and --steer without --layers with one-line errors', async () => {
    const wrong = await steerFile(tiny.spec.dModel + 8);
    const cases: [string[], RegExp][] = [
      [['--prompt', 'x', '--steer', wrong, '--layers', '0'], /d_model is 64/],
      [['--prompt', 'x', '--steer', wrong], /need --layers/],
      [['--prompt', 'x', '--steer', wrong, '--layers', '7'], /layers 0\.\.2/],
    ];
    for (const [args, message] of cases) {
      capture();
      const code = await main([...base(), ...args]);
      vi.restoreAllMocks();
      expect(code).toBe(2);
      expect(stderr.join('')).toMatch(message);
    }
  });
});
