/**
 * Directions: mean-difference numerics, the safetensors direction file (Python-compatible header), llama.cpp
 * GGUF control vectors (byte layout, round trip, strict reader), comparison tables and heatmaps, and the CLI.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  compareDirections,
  cosineHeatmap,
  formatCompareTable,
  writeComparison,
} from '../../src/directions/compare.js';
import {
  cosine,
  type DirectionMeta,
  type DirectionSet,
  directionNorms,
  directionSet,
  LayerMeanAccumulator,
  loadDirections,
  meanDiff,
  norm,
  normalize,
  normalizeSet,
  saveDirections,
} from '../../src/directions/direction.js';
import {
  decodeControlVector,
  encodeControlVector,
  exportGguf,
  guessModelHint,
  importGguf,
} from '../../src/directions/gguf.js';
import { EmlensError } from '../../src/errors.js';
import { GgufType } from '../../src/io/gguf.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { lineChart } from '../../src/plot/charts.js';
import { renderVegaLite } from '../../src/plot/render.js';
import { Rng } from '../../src/util/random.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const dirs = useTempDir('emlens-directions-');
let counter = 0;
const tmp = (name: string) => dirs.join(`${counter++}-${name}`);

const META: DirectionMeta = {
  model: 'Qwen/Qwen2.5-0.5B-Instruct',
  hook: 'hook_resid_post',
  method: 'mean_diff',
  positions: 'answer_mean',
  nPos: 120,
  nNeg: 340,
  sourcePos: 'activations/misaligned',
  sourceNeg: 'activations/aligned',
};

function randomSet(
  layers: readonly number[],
  d: number,
  seed: number,
  meta: DirectionMeta = META,
): DirectionSet {
  return directionSet(
    layers.map((l) => [l, Rng.derive(seed, `l${l}`).normalArray(d, 2)] as const),
    meta,
  );
}

/** Asserts that `fn` rejects with an EmlensError whose message matches `re`. */
async function rejectsWith(fn: () => unknown, re: RegExp): Promise<void> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, `expected an EmlensError matching ${re}`).toBeInstanceOf(EmlensError);
  expect((caught as Error).message).toMatch(re);
}

function bytesOf(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

describe('meanDiff', () => {
  it('is mean(pos) - mean(neg) per layer, with provenance in the metadata', () => {
    const pos = {
      count: 2,
      means: new Map([
        [3, Float64Array.from([1.5, -2, 0.25])],
        [1, Float64Array.from([0, 0, 1])],
      ]),
    };
    const neg = {
      count: 5,
      means: new Map([
        [1, Float64Array.from([1, 1, 1])],
        [3, Float64Array.from([0.5, 2, -0.75])],
      ]),
    };
    const set = meanDiff(pos, neg, { model: 'm', sourcePos: 'p', sourceNeg: 'n' });
    expect([...set.vectors.keys()]).toEqual([1, 3]);
    expect([...set.vectors.get(1)!]).toEqual([-1, -1, 0]);
    expect([...set.vectors.get(3)!]).toEqual([1, -4, 1]);
    expect(set.vectors.get(3)).toBeInstanceOf(Float32Array);
    expect(set.meta).toMatchObject({
      model: 'm',
      hook: 'hook_resid_post',
      method: 'mean_diff',
      positions: 'answer_mean',
      nPos: 2,
      nNeg: 5,
      sourcePos: 'p',
      sourceNeg: 'n',
    });
  });

  it('accumulates and subtracts in float64 (a float32 sum or mean would lose the 0.75)', () => {
    // 2^24 + 1 + 1 + 1 = 16777219 exactly in float64; in float32 every +1 rounds back to 2^24.
    const acc = new LayerMeanAccumulator();
    for (const x of [2 ** 24, 1, 1, 1]) acc.add(new Map([[0, Float32Array.of(x, -x)]]));
    const pos = acc.result();
    expect(pos.count).toBe(4);
    expect([...pos.means.get(0)!]).toEqual([16777219 / 4, -16777219 / 4]); // 4194304.75
    expect(Math.fround(16777219 / 4)).not.toBe(16777219 / 4); // not representable in float32
    const neg = { count: 1, means: new Map([[0, Float64Array.of(4194304, -4194304)]]) };
    const set = meanDiff(pos, neg);
    expect([...set.vectors.get(0)!]).toEqual([0.75, -0.75]);
  });

  it('rejects mismatched layers, lengths and empty sides with clear errors', async () => {
    const m = (layers: number[], d = 2, count = 1) => ({
      count,
      means: new Map(layers.map((l) => [l, new Float64Array(d)])),
    });
    await rejectsWith(() => meanDiff(m([0, 1]), m([0, 2])), /layers \[0, 1\] but the negative side \[0, 2\]/);
    await rejectsWith(() => meanDiff(m([0], 2), m([0], 3)), /length 2 but the negative 3/);
    await rejectsWith(() => meanDiff(m([0], 2, 0), m([0])), /positive side has 0 samples/);
    const acc = new LayerMeanAccumulator();
    acc.add(new Map([[0, new Float32Array(2)]]));
    await rejectsWith(
      () => acc.add(new Map([[1, new Float32Array(2)]])),
      /layer 1, which earlier samples lacked/,
    );
  });
});

describe('direction file (safetensors)', () => {
  it('round-trips vectors exactly and the metadata, layers in numeric order', async () => {
    const set = randomSet([0, 2, 10], 16, 1, { ...META, extra: { note: 'hello' } });
    const path = tmp('dir.safetensors');
    await saveDirections(path, set);
    const back = await loadDirections(path);
    expect([...back.vectors.keys()]).toEqual([0, 2, 10]);
    for (const [l, v] of set.vectors) expect(bytesOf(back.vectors.get(l)!)).toEqual(bytesOf(v));
    expect(back.meta).toEqual({ ...META, extra: { note: 'hello' } });
  });

  it('writes a header Python safetensors can load: LE length, string-only __metadata__, contiguous F32', async () => {
    const set = randomSet([0, 1, 2, 10], 8, 2);
    const path = tmp('py.safetensors');
    await saveDirections(path, set);
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
    const meta = header.__metadata__ as Record<string, unknown>;
    expect(Object.values(meta).every((v) => typeof v === 'string')).toBe(true);
    expect(meta).toMatchObject({
      model: META.model,
      hook: 'hook_resid_post',
      method: 'mean_diff',
      positions: 'answer_mean',
      n_pos: '120',
      n_neg: '340',
      source_pos: META.sourcePos,
      source_neg: META.sourceNeg,
      d_model: '8',
      layers: '[0,1,2,10]',
    });
    const norms = JSON.parse(meta.norms as string) as number[];
    expect(norms).toHaveLength(4);
    for (const [i, x] of norms.entries()) expect(x).toBeCloseTo(directionNorms(set)[i]!, 12);
    const tensors = Object.entries(header).filter(([k]) => k !== '__metadata__') as [
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] },
    ][];
    expect(tensors.map(([k]) => k).sort()).toEqual([
      'direction.0',
      'direction.1',
      'direction.10',
      'direction.2',
    ]);
    const ranges = tensors.map(([, t]) => t.data_offsets).sort((a, b) => a[0] - b[0]);
    let cursor = 0;
    for (const [begin, end] of ranges) {
      expect(begin).toBe(cursor);
      expect(end - begin).toBe(8 * 4);
      cursor = end;
    }
    expect(bytes.length).toBe(8 + n + cursor);
    for (const [name, t] of tensors) {
      expect(t.dtype).toBe('F32');
      expect(t.shape).toEqual([8]);
      const layer = Number(name.split('.')[1]);
      const data = bytes.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]);
      expect(new Uint8Array(data)).toEqual(bytesOf(set.vectors.get(layer)!));
    }
  });

  it('refuses to overwrite an existing file unless asked, leaving it untouched', async () => {
    const path = tmp('once.safetensors');
    await saveDirections(path, randomSet([1], 4, 3));
    const before = await readFile(path);
    await rejectsWith(() => saveDirections(path, randomSet([1], 4, 4)), /already exists.*--overwrite/);
    expect(await readFile(path)).toEqual(before);
    await saveDirections(path, randomSet([1], 4, 4), { overwrite: true });
    expect(await readFile(path)).not.toEqual(before);
  });

  it('rejects files that are not direction files with one clear sentence', async () => {
    const f32 = (n: number) => ({ dtype: 'F32' as const, shape: [n], data: new Float32Array(n) });
    const cases: [Record<string, unknown>, Record<string, string> | undefined, RegExp][] = [
      [
        { 'model.embed.weight': f32(4) },
        undefined,
        /tensor 'model.embed.weight', which is not named direction/,
      ],
      [
        { 'direction.1': { dtype: 'F16', shape: [4], data: new Uint16Array(4) } },
        undefined,
        /as F16.*must be F32/,
      ],
      [
        { 'direction.1': { dtype: 'F32', shape: [2, 2], data: new Float32Array(4) } },
        undefined,
        /must be 1-D/,
      ],
      [{ 'direction.1': f32(4), 'direction.2': f32(5) }, undefined, /length 5 at layer 2 but 4 at layer 1/],
      [
        { 'direction.1': f32(4) },
        { layers: '[1,2]' },
        /lists layers \[1,2\] but holds tensors for layers \[1\]/,
      ],
      [{ 'direction.1': f32(4) }, { d_model: '8' }, /says d_model 8/],
      [{ 'direction.1': f32(4) }, { n_pos: 'many' }, /n_pos = 'many'/],
      [{}, undefined, /holds no direction/],
    ];
    for (const [tensors, md, re] of cases) {
      const path = tmp('bad.safetensors');
      await writeSafetensors(path, tensors as never, md);
      await rejectsWith(() => loadDirections(path), re);
    }
    await rejectsWith(() => loadDirections(dirs.join('missing.safetensors')), /does not exist/);
  });

  it('loads a bare file (no metadata, as torch save_file would write) with unknown provenance', async () => {
    const path = tmp('bare.safetensors');
    await writeSafetensors(path, {
      'direction.5': { dtype: 'F32', shape: [3], data: Float32Array.of(1, 2, 3) },
    });
    const set = await loadDirections(path);
    expect([...set.vectors.get(5)!]).toEqual([1, 2, 3]);
    expect(set.meta).toMatchObject({ model: 'unknown', method: 'unknown', nPos: 0, nNeg: 0 });
  });
});

describe('vector math', () => {
  it('cosine of known vectors, in float64', () => {
    expect(cosine([1, 0], [0, 1])).toBe(0);
    expect(cosine([1, 2, 3], [2, 4, 6])).toBeCloseTo(1, 15);
    expect(cosine([1, 2, 3], [-1, -2, -3])).toBeCloseTo(-1, 15);
    expect(cosine([1, 1], [1, 0])).toBeCloseTo(Math.SQRT1_2, 15);
    expect(cosine([3, 4], [4, 3])).toBeCloseTo(24 / 25, 15);
    expect(cosine([0, 0], [1, 0])).toBeNaN();
    expect(() => cosine([1, 2], [1, 2, 3])).toThrow(EmlensError);
  });

  it('normalize gives unit vectors and refuses zero', () => {
    const u = normalize([3, 4]);
    expect([...u]).toEqual([Math.fround(0.6), Math.fround(0.8)]);
    expect(() => normalize([0, 0])).toThrow(/zero vector/);
    const set = normalizeSet(randomSet([0, 1], 32, 5));
    for (const v of set.vectors.values()) expect(norm(v)).toBeCloseTo(1, 6);
    expect(set.meta.extra).toMatchObject({ normalized: 'true' });
  });
});

/** Little-endian GGUF pieces for hand-built files. */
const le = {
  u32: (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  },
  i32: (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    return b;
  },
  u64: (v: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    return b;
  },
  str: (s: string) => Buffer.concat([le.u64(Buffer.byteLength(s)), Buffer.from(s, 'utf8')]),
  f32: (xs: number[]) => Buffer.from(Float32Array.from(xs).buffer),
  pad: (n: number, a = 32) => Buffer.alloc((a - (n % a)) % a),
};

describe('GGUF control vectors', () => {
  it('encodes a 2-layer case byte for byte as llama.cpp expects', () => {
    const set = directionSet(
      [
        [1, Float32Array.of(1, 2, 3)],
        [2, Float32Array.of(-1, 0.5, 4)],
      ],
      META,
    );
    const { bytes, layers, skipped, modelHint } = encodeControlVector(set, {
      modelHint: 'qwen2',
      provenance: false,
    });
    expect(layers).toEqual([1, 2]);
    expect(skipped).toEqual([]);
    expect(modelHint).toBe('qwen2');
    const head = Buffer.concat([
      Buffer.from('GGUF', 'ascii'),
      le.u32(3), // version
      le.u64(2), // tensor_count
      le.u64(3), // kv_count
      le.str('general.architecture'),
      le.u32(GgufType.STRING),
      le.str('controlvector'),
      le.str('controlvector.model_hint'),
      le.u32(GgufType.STRING),
      le.str('qwen2'),
      le.str('controlvector.layer_count'),
      le.u32(GgufType.UINT32),
      le.u32(2),
      // tensor infos: name, n_dims, dims (u64 each), type (0 = F32), offset from the data start
      le.str('direction.1'),
      le.u32(1),
      le.u64(3),
      le.u32(0),
      le.u64(0),
      le.str('direction.2'),
      le.u32(1),
      le.u64(3),
      le.u32(0),
      le.u64(32), // 12 bytes of data padded to the 32-byte alignment
    ]);
    const expected = Buffer.concat([
      head,
      le.pad(head.length),
      le.f32([1, 2, 3]),
      le.pad(12),
      le.f32([-1, 0.5, 4]),
      le.pad(12),
    ]);
    expect(bytes.subarray(0, 4).toString('ascii')).toBe('GGUF');
    expect(bytes.readUInt32LE(4)).toBe(3);
    expect(bytes.readBigUInt64LE(8)).toBe(2n);
    expect(bytes.readBigUInt64LE(16)).toBe(3n);
    expect(bytes.toString('hex')).toBe(expected.toString('hex'));
    const back = decodeControlVector(bytes);
    expect([...back.vectors.get(2)!]).toEqual([-1, 0.5, 4]);
    expect(back.meta.model).toBe('qwen2');
  });

  it('export -> import round-trips vectors byte-exactly and the provenance; block 0 is left out', async () => {
    const set = randomSet([0, 1, 2, 5, 23], 896, 7, { ...META, extra: { seed: '9' } });
    const path = tmp('cv.gguf');
    const r = await exportGguf(set, path);
    expect(r).toEqual({ path, layers: [1, 2, 5, 23], skipped: [0], modelHint: 'qwen2' });
    const back = await importGguf(path);
    expect([...back.vectors.keys()]).toEqual([1, 2, 5, 23]);
    for (const [l, v] of back.vectors) expect(bytesOf(v)).toEqual(bytesOf(set.vectors.get(l)!));
    expect(back.meta).toEqual({ ...META, extra: { seed: '9', model_hint: 'qwen2' } });
    // Blocks keep their numbers through a second trip (safetensors -> GGUF -> safetensors -> GGUF).
    const st = tmp('back.safetensors');
    await saveDirections(st, back);
    const again = tmp('again.gguf');
    await exportGguf(await loadDirections(st), again);
    expect(await readFile(again)).toEqual(await readFile(path));
    await rejectsWith(() => exportGguf(set, path), /already exists/);
    await exportGguf(set, path, { overwrite: true });
  });

  it('reads a foreign control vector: INT32 layer_count, explicit alignment, other KV types', () => {
    const kvs = Buffer.concat([
      le.str('general.architecture'),
      le.u32(GgufType.STRING),
      le.str('controlvector'),
      le.str('general.alignment'),
      le.u32(GgufType.UINT32),
      le.u32(64),
      le.str('controlvector.model_hint'),
      le.u32(GgufType.STRING),
      le.str('llama'),
      le.str('controlvector.layer_count'),
      le.u32(GgufType.INT32),
      le.i32(1),
      le.str('x.array'),
      le.u32(GgufType.ARRAY),
      le.u32(GgufType.STRING),
      le.u64(2),
      le.str('a'),
      le.str('bc'),
      le.str('x.u64'),
      le.u32(GgufType.UINT64),
      le.u64(7),
      le.str('x.bool'),
      le.u32(GgufType.BOOL),
      Buffer.from([1]),
      le.str('x.f32'),
      le.u32(GgufType.FLOAT32),
      le.f32([0.5]),
    ]);
    const head = Buffer.concat([
      Buffer.from('GGUF'),
      le.u32(3),
      le.u64(1),
      le.u64(8),
      kvs,
      le.str('direction.4'),
      le.u32(1),
      le.u64(2),
      le.u32(0),
      le.u64(0),
    ]);
    const file = Buffer.concat([head, le.pad(head.length, 64), le.f32([7, -8])]);
    const set = decodeControlVector(file, 'repeng.gguf');
    expect([...set.vectors.keys()]).toEqual([4]);
    expect([...set.vectors.get(4)!]).toEqual([7, -8]);
    expect(set.meta).toMatchObject({ model: 'llama', hook: 'hook_resid_post', method: 'unknown', nPos: 0 });
  });

  it('rejects bad files with one clear sentence', async () => {
    const good = encodeControlVector(randomSet([1, 2], 4, 8), { modelHint: 'qwen2' }).bytes;
    const patched = (at: number, bytes: Buffer) => {
      const b = Buffer.from(good);
      bytes.copy(b, at);
      return b;
    };
    const bad = (bytes: Uint8Array, re: RegExp) => {
      let caught: unknown;
      try {
        decodeControlVector(bytes, 'x.gguf');
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(EmlensError);
      expect((caught as Error).message).toMatch(re);
      expect((caught as Error).message.split('; ').length).toBeLessThanOrEqual(3);
    };
    bad(Buffer.from('PK\x03\x04rest'), /not a GGUF file: it starts with bytes \[50 4b 03 04\]/);
    bad(Buffer.alloc(0), /not a GGUF file/);
    bad(patched(4, le.u32(4)), /version 4, which is not supported \(emlens reads versions 2 and 3\)/);
    bad(patched(4, Buffer.from([0, 0, 0, 3])), /looks big-endian/);
    // Every truncation is a clear error, never a RangeError from a DataView.
    // (Up to the end of the last tensor's data; the padding after it carries nothing.)
    for (let n = 4; n < good.length - 16; n++) bad(good.subarray(0, n), /truncated|corrupt/);
    const arch = good.indexOf(Buffer.from('controlvector'));
    bad(patched(arch, Buffer.from('llamaXXXXXXXX')), /is a 'llamaXXXXXXXX' file, not a control vector/);
    const name = good.indexOf(Buffer.from('direction.1'));
    bad(patched(name, Buffer.from('direction.0')), /direction\.0, which llama\.cpp rejects/);
    bad(patched(name, Buffer.from('blk.0.attn_')), /'blk\.0\.attn_', which is not named direction\.N/);
    const type = name + 'direction.1'.length + 4 + 8; // after n_dims and the one dim
    bad(patched(type, le.u32(1)), /ggml type 1, but control vectors must be F32/);
    await rejectsWith(() => importGguf(dirs.join('nope.gguf')), /does not exist/);
  });

  it('refuses tensors whose data overlap, naming both', () => {
    // d_model 16: 64 bytes a tensor, so an offset of 32 overlaps the first tensor's second half.
    const good = encodeControlVector(randomSet([1, 2], 16, 8), { modelHint: 'qwen2' }).bytes;
    const offsetOf = (name: string) => good.indexOf(Buffer.from(name)) + name.length + 4 + 8 + 4;
    expect(good.readBigUInt64LE(offsetOf('direction.2'))).toBe(64n);
    for (const at of [0n, 32n]) {
      const b = Buffer.from(good);
      b.writeBigUInt64LE(at, offsetOf('direction.2'));
      expect(() => decodeControlVector(b, 'x.gguf')).toThrow(
        new RegExp(
          `'direction\\.1' \\(bytes 0\\.\\.64 of the data\\) and 'direction\\.2' \\(bytes ${at}\\.\\.${at + 64n}\\) overlap`,
        ),
      );
    }
    // the first tensor moved onto the second: named in file order of their offsets
    const b = Buffer.from(good);
    b.writeBigUInt64LE(64n, offsetOf('direction.1'));
    expect(() => decodeControlVector(b, 'x.gguf')).toThrow(/'direction\.1' .* and 'direction\.2' .* overlap/);
  });

  it('refuses directions that are not block outputs, and a set with only block 0', () => {
    expect(() => encodeControlVector(randomSet([1], 4, 9, { ...META, hook: 'hook_resid_mid' }))).toThrow(
      /read at hook_resid_mid, but llama\.cpp adds control vectors to each block's output/,
    );
    expect(() => encodeControlVector(randomSet([0], 4, 9))).toThrow(/only block 0/);
  });

  it('guesses the model hint from common model names', () => {
    expect(guessModelHint('Qwen/Qwen2.5-7B-Instruct')).toBe('qwen2');
    expect(guessModelHint('unsloth/Qwen3-8B')).toBe('qwen3');
    expect(guessModelHint('meta-llama/Llama-3.1-8B-Instruct')).toBe('llama');
    expect(guessModelHint('google/gemma-3-4b-it')).toBe('gemma3');
    expect(guessModelHint('mistralai/Mistral-Small-24B-Instruct-2501')).toBe('mistral');
    expect(guessModelHint('/models/tiny')).toBeUndefined();
  });
});

/** Three sets with known cosines at layers 1 and 2: b = -a at layer 1, c ⟂ a at layer 1. */
function knownSets() {
  const v = (...xs: number[]) => Float32Array.from(xs);
  const a = directionSet(
    [
      [1, v(1, 0, 0)],
      [2, v(1, 1, 0)],
      [3, v(0, 0, 1)],
    ],
    META,
  );
  const b = directionSet(
    [
      [1, v(-2, 0, 0)],
      [2, v(1, 0, 0)],
    ],
    META,
  );
  const c = directionSet(
    [
      [1, v(0, 3, 0)],
      [2, v(2, 2, 0)],
    ],
    META,
  );
  return [
    { name: 'general', set: a },
    { name: 'medical', set: b },
    { name: 'financial', set: c },
  ] as const;
}

describe('compare', () => {
  it('computes signed and absolute cosines per common layer for every pair', () => {
    const cmp = compareDirections(knownSets());
    expect(cmp.layers).toEqual([1, 2]);
    expect(cmp.pairs.map((p) => p.label)).toEqual([
      'general ~ medical',
      'general ~ financial',
      'medical ~ financial',
    ]);
    // the three pairs, checked above
    const gm = cmp.pairs[0]!;
    const gf = cmp.pairs[1]!;
    const mf = cmp.pairs[2]!;
    expect(gm.cosines[0]).toBeCloseTo(-1, 12);
    expect(gm.absCosines[0]).toBeCloseTo(1, 12);
    expect(gm.cosines[1]).toBeCloseTo(Math.SQRT1_2, 12);
    expect(gf.cosines).toEqual([0, expect.closeTo(1, 12)]);
    expect(mf.cosines[1]).toBeCloseTo(Math.SQRT1_2, 12);
    expect(gm.meanCosine).toBeCloseTo((-1 + Math.SQRT1_2) / 2, 12);
    expect(gm.meanAbsCosine).toBeCloseTo((1 + Math.SQRT1_2) / 2, 12);
    expect(cmp.norms[1]).toEqual({ name: 'medical', norms: [2, 1] });
    expect(cmp.dropped).toEqual([{ name: 'general', layers: [3] }]);
  });

  it('formats a readable table', () => {
    const table = formatCompareTable(compareDirections(knownSets()));
    const lines = table.split('\n');
    expect(lines[0]).toBe('cosine similarity per layer (2 common layers, d_model 3)');
    expect(lines[2]).toMatch(
      /^\| layer +\| general ~ medical \| general ~ financial \| medical ~ financial \|$/,
    );
    expect(lines.find((l) => l.startsWith('| 1 '))).toMatch(/\| +-1\.000 \| +0\.000 \| +0\.000 \|$/);
    expect(lines.find((l) => l.startsWith('| 2 '))).toMatch(/\| +0\.707 \| +1\.000 \| +0\.707 \|$/);
    expect(lines.find((l) => l.startsWith('| mean |cos|'))).toMatch(/\| +0\.854 \| +0\.500 \| +0\.354 \|$/);
    expect(table).toContain("note: 'general' also holds layers [3]");
  });

  it('rejects sets that cannot be compared', async () => {
    const [g, m] = knownSets();
    await rejectsWith(() => compareDirections([g]), /at least two sets/);
    await rejectsWith(() => compareDirections([g, { ...m, name: 'general' }]), /both named 'general'/);
    await rejectsWith(
      () => compareDirections([g, { name: 'other', set: randomSet([1], 5, 1) }]),
      /d_model 5 but 'general' has 3/,
    );
    await rejectsWith(
      () => compareDirections([g, { name: 'far', set: randomSet([9], 3, 1) }]),
      /share no layer \(general: \[1, 2, 3\]; far: \[9\]\)/,
    );
  });

  it('writes cosine.svg, a real PNG and compare.json', async () => {
    const cmp = compareDirections(knownSets());
    expect(JSON.stringify(cosineHeatmap(cmp))).toContain('"domain":[-1,1]');
    const out = tmp('cmp');
    const files = await writeComparison(cmp, out);
    const svg = await readFile(files.svg, 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('Cosine similarity between directions');
    const png = await readFile(files.png);
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    expect(png.subarray(12, 16).toString('ascii')).toBe('IHDR');
    expect(png.readUInt32BE(16)).toBe(900);
    expect(png.readUInt32BE(20)).toBeGreaterThan(0);
    const json = JSON.parse(await readFile(files.json, 'utf8'));
    expect(json.layers).toEqual([1, 2]);
    expect(json.pairs[0].label).toBe('general ~ medical');
  });

  it('renders a line chart too', async () => {
    const rows = [1, 2, 3].flatMap((layer) => [
      { layer, cosine: layer / 4, pair: 'a ~ b' },
      { layer, cosine: -layer / 4, pair: 'a ~ c' },
    ]);
    const base = tmp('line');
    const r = await renderVegaLite(
      lineChart(rows, { x: 'layer', y: 'cosine', series: 'pair', title: 'T' }),
      base,
    );
    expect((await stat(r.png)).size).toBeGreaterThan(1000);
    expect(await readFile(r.svg, 'utf8')).toContain('a ~ c');
  });
});

/** Runs the CLI in-process and captures what it writes. */
const run = runCli;

describe('CLI', () => {
  it('emlens compare prints the table and writes the files', async () => {
    const files: string[] = [];
    for (const { name, set } of knownSets()) {
      const path = dirs.join(`cli-${name}.safetensors`);
      await saveDirections(path, set, { overwrite: true });
      files.push(path);
    }
    const out = tmp('cli-compare');
    const r = await run(['compare', ...files, '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('cli-general ~ cli-medical');
    expect(r.stdout).toMatch(/\| 1 +\| +-1\.000 \|/);
    for (const f of ['cosine.svg', 'cosine.png', 'compare.json']) {
      expect((await stat(join(out, f))).size).toBeGreaterThan(0);
      expect(r.stdout).toContain(join(out, f));
    }
  });

  it('emlens compare with one file fails with one line', async () => {
    const path = tmp('one.safetensors');
    await saveDirections(path, randomSet([1], 3, 1));
    const r = await run(['compare', path, '--out', tmp('x')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'emlens: Comparing directions needs at least two sets but got 1; pass two or more.\n',
    );
  });

  it('emlens direction export-gguf / import-gguf round-trip', async () => {
    const set = randomSet([0, 1, 2, 3], 64, 11);
    const st = tmp('cli.safetensors');
    await saveDirections(st, set);
    const gguf = tmp('cli.gguf');
    const e = await run(['direction', 'export-gguf', '--in', st, '--out', gguf, '--model-hint', 'llama']);
    expect(e.stderr).toBe('');
    expect(e.code).toBe(0);
    expect(e.stdout).toContain(
      `wrote ${gguf}: 3 layers (blocks 1-3 as direction.N), d_model 64, model hint llama`,
    );
    expect(e.stdout).toContain('note: block 0 left out');
    const overlapping = Buffer.from(await readFile(gguf));
    const at = overlapping.indexOf(Buffer.from('direction.2')) + 'direction.2'.length + 4 + 8 + 4;
    overlapping.writeBigUInt64LE(0n, at);
    const overlapFile = tmp('overlap.gguf');
    await writeFile(overlapFile, overlapping);
    const o = await run(['direction', 'import-gguf', '--in', overlapFile, '--out', tmp('o.safetensors')]);
    expect(o.code).toBe(2);
    expect(o.stderr).toMatch(
      /^emlens: GGUF control vector .*'direction\.1' .* and 'direction\.2' .* overlap; [^\n]*\n$/,
    );
    const back = tmp('cli-back.safetensors');
    const i = await run(['direction', 'import-gguf', '--in', gguf, '--out', back]);
    expect(i.code).toBe(0);
    expect(i.stdout).toContain(`wrote ${back}: 3 layers (blocks 1-3, hook_resid_post), d_model 64`);
    const loaded = await loadDirections(back);
    for (const l of [1, 2, 3]) expect(bytesOf(loaded.vectors.get(l)!)).toEqual(bytesOf(set.vectors.get(l)!));
    expect(loaded.meta.extra?.model_hint).toBe('llama');

    const again = await run(['direction', 'import-gguf', '--in', gguf, '--out', back]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/^emlens: --out .* already exists; pass --overwrite to replace it.*\.\n$/);
    expect((await run(['direction', 'import-gguf', '--in', gguf, '--out', back, '--overwrite'])).code).toBe(
      0,
    );

    const notGguf = tmp('not.gguf');
    await writeFile(notGguf, 'hello world');
    const bad = await run(['direction', 'import-gguf', '--in', notGguf, '--out', tmp('y.safetensors')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/not a GGUF file/);
  });

  it('a missing required option is a usage error (exit 2, one line), not an exit', async () => {
    const r = await run(['direction', 'export-gguf', '--out', tmp('z.gguf')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("required option '--in <file>' not specified");
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toContain('internal error');
    const c = await run(['compare']);
    expect(c.code).toBe(2);
    expect(c.stderr).toContain("missing required argument 'files'");
    expect(c.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(c.stderr).not.toContain('internal error');
  });
});
