import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/io/halfFloat.js';
import {
  DTYPE_BYTES,
  decodeSafetensors,
  encodeSafetensors,
  readSafetensorsHeader,
  type SafetensorsDtype,
  SafetensorsFile,
  type TensorToWrite,
  writeSafetensors,
} from '../../src/io/safetensors.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-st-');

let counter = 0;
function tmpPath(): string {
  return tmp.join(`t${counter++}.safetensors`);
}

/** A raw file: length prefix (overridable), header text, then `data`. */
function rawFile(
  header: string | object,
  data: Uint8Array = new Uint8Array(0),
  lengthOverride?: bigint,
): Buffer {
  const text = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthOverride ?? BigInt(text.length));
  return Buffer.concat([prefix, text, data]);
}

async function openRaw(bytes: Uint8Array): Promise<SafetensorsFile> {
  const p = tmpPath();
  await writeFile(p, bytes);
  return SafetensorsFile.open(p);
}

async function expectOpenError(bytes: Uint8Array, pattern: RegExp): Promise<void> {
  const p = tmpPath();
  await writeFile(p, bytes);
  const err = await SafetensorsFile.open(p).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EmlensError);
  const msg = (err as Error).message;
  expect(msg).toMatch(pattern);
  expect(msg).toContain(p);
}

const f32 = (xs: number[]) => new Float32Array(xs);
const u32Bits = (x: Float32Array) => [...new Uint32Array(x.buffer, x.byteOffset, x.length)];

describe('halfFloat', () => {
  it('round-trips all 65536 f16 bit patterns', () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const back = f32ToF16(f16ToF32(all));
    const wide = f16ToF32(all);
    for (let i = 0; i < 65536; i++) {
      const nan = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      const got = back[i]!; // i < 65536, its length
      if (nan) {
        expect(Number.isNaN(wide[i])).toBe(true);
        expect((got & 0x7c00) === 0x7c00 && (got & 0x3ff) !== 0).toBe(true);
      } else if (got !== i) {
        expect.fail(`f16 0x${i.toString(16)} came back as 0x${got.toString(16)}`);
      }
    }
  });

  it('decodes known f16 values', () => {
    const v = f16ToF32(
      new Uint16Array([0x3c00, 0xc100, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x8000, 0x7c00, 0xfc00, 0x3555]),
    );
    expect(v[0]).toBe(1);
    expect(v[1]).toBe(-2.5);
    expect(v[2]).toBe(65504);
    expect(v[3]).toBe(2 ** -24);
    expect(v[4]).toBe(1023 * 2 ** -24);
    expect(v[5]).toBe(2 ** -14);
    expect(Object.is(v[6], -0)).toBe(true);
    expect(v[7]).toBe(Number.POSITIVE_INFINITY);
    expect(v[8]).toBe(Number.NEGATIVE_INFINITY);
    expect(v[9]).toBeCloseTo(1 / 3, 3);
  });

  it('encodes f16 with round-to-nearest-even, subnormals and overflow', () => {
    const out = f32ToF16(
      f32([
        1 + 2 ** -11, // tie between 1 and 1+2^-10: to even (1)
        1 + 3 * 2 ** -11, // tie: to even (1+2^-9)
        65519, // below the halfway point to 2^16: 65504
        65520, // halfway: rounds to Inf
        1e6,
        -1e6,
        2 ** -24, // smallest subnormal
        2 ** -25, // tie between 0 and the smallest subnormal: to even (0)
        3 * 2 ** -26, // above halfway: smallest subnormal
        1e-10,
        -0,
        Number.NaN,
        2 ** -14 - 2 ** -25, // rounds up into the smallest normal
      ]),
    );
    expect([...out]).toEqual([
      0x3c00,
      0x3c02,
      0x7bff,
      0x7c00,
      0x7c00,
      0xfc00,
      0x0001,
      0x0000,
      0x0001,
      0x0000,
      0x8000,
      out[11],
      0x0400,
    ]);
    expect(out[11]! & 0x7c00).toBe(0x7c00); // in range: the whole of out is checked above
    expect(out[11]! & 0x3ff).not.toBe(0);
  });

  it('decodes and encodes bf16', () => {
    const v = bf16ToF32(new Uint16Array([0x3f80, 0xc020, 0x7f80, 0x0001]));
    expect(v[0]).toBe(1);
    expect(v[1]).toBe(-2.5);
    expect(v[2]).toBe(Number.POSITIVE_INFINITY);
    expect(v[3]).toBe(2 ** -133);
    const out = f32ToBf16(f32([1, -2.5, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, Number.NaN]));
    expect([...out.slice(0, 5)]).toEqual([0x3f80, 0xc020, 0x3f80, 0x3f82, 0x7f80]);
    expect(Number.isNaN(bf16ToF32(out.slice(5))[0])).toBe(true);
  });

  it('keeps a NaN whose payload is only in the low bits a NaN in bf16', () => {
    const x = new Float32Array(new Uint32Array([0x7f800001, 0xffc00000]).buffer);
    const out = f32ToBf16(x);
    expect(
      u32Bits(bf16ToF32(out)).every((b) => (b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0),
    ).toBe(true);
  });
});

const ALL: Record<SafetensorsDtype, () => ArrayBufferView> = {
  F64: () => new Float64Array([1.5, -2, 1e300, 0, 3, 4]),
  F32: () => new Float32Array([1.5, -2, 3.25, 0, 5, 6]),
  F16: () => new Uint16Array([0x3c00, 0xc100, 0x7bff, 1, 2, 3]),
  BF16: () => new Uint16Array([0x3f80, 0xc020, 0, 1, 2, 3]),
  I64: () => new BigInt64Array([1n, -2n, 2n ** 62n, 0n, 5n, 6n]),
  I32: () => new Int32Array([1, -2, 2 ** 31 - 1, 0, 5, 6]),
  I16: () => new Int16Array([1, -2, 32767, 0, 5, 6]),
  I8: () => new Int8Array([1, -2, 127, -128, 5, 6]),
  U8: () => new Uint8Array([1, 2, 255, 0, 5, 6]),
  BOOL: () => new Uint8Array([1, 0, 1, 1, 0, 0]),
};

describe('safetensors round trip', () => {
  it('writes and reads every dtype, including empty and scalar shapes', async () => {
    const tensors = new Map<string, TensorToWrite & { readonly data: ArrayBufferView }>();
    for (const [dtype, make] of Object.entries(ALL) as [SafetensorsDtype, () => ArrayBufferView][]) {
      const data = make();
      tensors.set(`${dtype}.matrix`, { dtype, shape: [2, 3], data });
      const one = data.constructor as new (buf: ArrayBufferLike, off: number, len: number) => ArrayBufferView;
      tensors.set(`${dtype}.scalar`, { dtype, shape: [], data: new one(data.buffer, 0, 1) });
      tensors.set(`${dtype}.empty`, { dtype, shape: [0, 4], data: new one(data.buffer, 0, 0) });
    }
    const p = tmpPath();
    await writeSafetensors(p, tensors, { format: 'pt', note: 'héllo' });
    const f = await SafetensorsFile.open(p);
    try {
      expect(f.metadata).toEqual({ format: 'pt', note: 'héllo' });
      expect(f.tensors.size).toBe(30);
      for (const [name, t] of tensors) {
        const info = f.info(name);
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        expect(info.byteLength).toBe(t.data.byteLength);
        const typed = await f.readTyped(name);
        expect(typed.constructor).toBe(t.dtype === 'BOOL' ? Uint8Array : t.data.constructor);
        expect(Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength)).toEqual(
          Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        );
      }
      expect([...(await f.readFloat32('F64.matrix'))]).toEqual([1.5, -2, Number.POSITIVE_INFINITY, 0, 3, 4]);
      expect([...(await f.readFloat32('F32.matrix'))]).toEqual([1.5, -2, 3.25, 0, 5, 6]);
      expect((await f.readFloat32('F32.scalar'))[0]).toBe(1.5);
      expect((await f.readFloat32('F16.empty')).length).toBe(0);
      // The in-memory decoder agrees with the file reader.
      const decoded = decodeSafetensors(await readFile(p), p);
      expect([...decoded.tensors.keys()]).toEqual([...f.tensors.keys()]);
      expect([...(decoded.tensors.get('I8.matrix')?.bytes ?? [])]).toEqual([1, 254, 127, 128, 5, 6]);
    } finally {
      await f.close();
    }
    expect(DTYPE_BYTES.BF16).toBe(2);
  });

  it('accepts a plain object and a file without tensors', async () => {
    const p = tmpPath();
    await writeSafetensors(p, {});
    const f = await SafetensorsFile.open(p);
    expect(f.tensors.size).toBe(0);
    expect(f.metadata).toEqual({});
    expect(() => f.info('x')).toThrow(/not in .*no tensors/);
    await f.close();
  });

  it('lays out bytes exactly as the format specifies', () => {
    const buf = encodeSafetensors(
      {
        b: { dtype: 'U8', shape: [2], data: new Uint8Array([7, 8]) },
        a: { dtype: 'I16', shape: [1], data: new Int16Array([-2]) },
      },
      { k: 'v' },
    );
    const json =
      '{"__metadata__":{"k":"v"},"a":{"dtype":"I16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}';
    expect(json.length).toBe(131);
    const expected = Buffer.concat([
      Buffer.from([136, 0, 0, 0, 0, 0, 0, 0]), // 131 padded to a multiple of 8
      Buffer.from(json, 'ascii'),
      Buffer.from('     ', 'ascii'),
      Buffer.from([0xfe, 0xff]), // a = -2 as little-endian i16, first because names are sorted
      Buffer.from([7, 8]),
    ]);
    expect(buf).toEqual(expected);
    expect((buf.length - 4) % 8).toBe(0);
  });

  it('reads f16 and bf16 tensors as float32', async () => {
    const f = await openRaw(
      encodeSafetensors({
        h: { dtype: 'F16', shape: [5], data: new Uint16Array([0x3c00, 0xc100, 0x7bff, 0x0001, 0x0400]) },
        b: { dtype: 'BF16', shape: [3], data: new Uint16Array([0x3f80, 0xc020, 0x0080]) },
      }),
    );
    expect([...(await f.readFloat32('h'))]).toEqual([1, -2.5, 65504, 2 ** -24, 2 ** -14]);
    expect([...(await f.readFloat32('b'))]).toEqual([1, -2.5, 2 ** -126]);
    expect([...(await f.readTyped('h'))]).toEqual([0x3c00, 0xc100, 0x7bff, 0x0001, 0x0400]);
    await f.close();
  });

  it('refuses integer tensors in readFloat32 and names close matches for unknown tensors', async () => {
    const f = await openRaw(
      encodeSafetensors({
        'model.layers.0.mlp.up_proj.weight': { dtype: 'I64', shape: [1], data: new BigInt64Array([1n]) },
        'model.layers.1.mlp.up_proj.weight': { dtype: 'F32', shape: [1], data: new Float32Array([1]) },
      }),
    );
    await expect(f.readFloat32('model.layers.0.mlp.up_proj.weight')).rejects.toThrow(
      /dtype I64.*not a float type/,
    );
    expect(() => f.info('model.layers.0.mlp.upproj.weight')).toThrow(
      /Tensor 'model.layers.0.mlp.upproj.weight' is not in .*did you mean 'model.layers.0.mlp.up_proj.weight'/,
    );
    expect(f.has('model.layers.1.mlp.up_proj.weight')).toBe(true);
    await f.close();
    await expect(f.readBytes('model.layers.1.mlp.up_proj.weight')).rejects.toThrow(/already closed/);
  });

  it('reads tensors beyond 2 GiB in a sparse file, reading only the header at open', async () => {
    const big = 2 ** 31 + 8;
    const header = {
      big: { dtype: 'U8', shape: [big], data_offsets: [0, big] },
      small: { dtype: 'F32', shape: [2], data_offsets: [big, big + 8] },
    };
    const head = rawFile(header);
    const p = tmpPath();
    const fh = await open(p, 'w');
    await fh.write(head, 0, head.length, 0);
    await fh.write(new Uint8Array(new Float32Array([3.5, -1]).buffer), 0, 8, head.length + big);
    await fh.close();
    const f = await SafetensorsFile.open(p);
    expect(f.info('small').fileOffset).toBe(head.length + big);
    expect([...(await f.readFloat32('small'))]).toEqual([3.5, -1]);
    await f.close();
    await rm(p);
  });
});

describe('safetensors validation', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const data8 = new Uint8Array(8);

  it('rejects a file shorter than 8 bytes', async () => {
    await expectOpenError(new Uint8Array(5), /5 bytes long, too short.*8-byte header length/);
  });
  it('rejects a header length of 0', async () => {
    await expectOpenError(rawFile('', data8), /header length is 0/);
  });
  it('rejects a header length above 100 MB', async () => {
    await expectOpenError(
      rawFile(ok, data8, 200_000_000n),
      /header length 200000000 exceeds the 100000000-byte limit/,
    );
  });
  it('rejects a header length past the end of the file', async () => {
    await expectOpenError(rawFile(ok, data8, 1000n), /header length 1000 runs past the end of the file/);
    await expectOpenError(rawFile(ok, data8, 2n ** 63n), /header length \d+ exceeds/);
  });
  it('rejects a header that is not UTF-8', async () => {
    const bad = Buffer.concat([Buffer.from('{"'), Buffer.from([0xff, 0xfe]), Buffer.from('":1}')]);
    await expectOpenError(
      Buffer.concat([rawFile('', new Uint8Array(0), BigInt(bad.length)), bad]),
      /not valid UTF-8/,
    );
  });
  it('rejects a header that is not JSON', async () => {
    await expectOpenError(rawFile('{"a": ', data8), /not valid JSON/);
  });
  it('rejects a header that is not a JSON object', async () => {
    await expectOpenError(rawFile('[1, 2]'), /header is an array, not a JSON object/);
    await expectOpenError(rawFile('42'), /header is a number, not a JSON object/);
  });
  it('rejects an entry without dtype, shape and data_offsets', async () => {
    await expectOpenError(
      rawFile({ a: { dtype: 'F32', shape: [2] } }, data8),
      /entry 'a' is not an object with dtype, shape and data_offsets/,
    );
    await expectOpenError(rawFile({ a: 'F32' }, data8), /entry 'a' is not an object/);
  });
  it('rejects an unknown dtype', async () => {
    await expectOpenError(
      rawFile({ a: { dtype: 'F8_E4M3', shape: [8], data_offsets: [0, 8] } }, data8),
      /tensor 'a' has unsupported dtype "F8_E4M3"/,
    );
  });
  it('rejects a shape that is not an array of non-negative safe integers', async () => {
    for (const shape of [[-1], [1.5], '8', [2 ** 53], [null]]) {
      await expectOpenError(
        rawFile({ a: { dtype: 'U8', shape, data_offsets: [0, 8] } }, data8),
        /tensor 'a' has shape .*not an array of non-negative integers/,
      );
    }
  });
  it('rejects data_offsets that are not [begin, end] with 0 <= begin <= end', async () => {
    for (const offs of [[8, 0], [-1, 7], [0], [0, 8, 9], '0,8', [0, '8']]) {
      await expectOpenError(
        rawFile({ a: { dtype: 'U8', shape: [8], data_offsets: offs } }, data8),
        /tensor 'a' has data_offsets .*not \[begin, end\] with 0 <= begin <= end/,
      );
    }
  });
  it('rejects a tensor that ends beyond the data section', async () => {
    await expectOpenError(
      rawFile({ a: { dtype: 'U8', shape: [12], data_offsets: [0, 12] } }, data8),
      /tensor 'a' ends at byte 12 but the file has 8 bytes of data/,
    );
  });
  it('rejects a byte length that does not match dtype and shape', async () => {
    await expectOpenError(
      rawFile({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, data8),
      /tensor 'a' spans 8 bytes but dtype F32 with shape \[3\] needs 12/,
    );
    await expectOpenError(
      rawFile({ a: { dtype: 'F32', shape: [2 ** 30, 2 ** 30], data_offsets: [0, 8] } }, data8),
      /needs more than 2\^53/,
    );
  });
  it('rejects overlapping tensors', async () => {
    await expectOpenError(
      rawFile(
        {
          a: { dtype: 'U8', shape: [6], data_offsets: [0, 6] },
          b: { dtype: 'U8', shape: [4], data_offsets: [4, 8] },
        },
        data8,
      ),
      /tensor 'b' starts at byte 4, overlapping the previous tensor, which ends at 6/,
    );
  });
  it('rejects gaps between tensors and at either end of the data', async () => {
    const two = (a: [number, number], b: [number, number]) => ({
      a: { dtype: 'U8', shape: [a[1] - a[0]], data_offsets: a },
      b: { dtype: 'U8', shape: [b[1] - b[0]], data_offsets: b },
    });
    await expectOpenError(
      rawFile(two([0, 3], [4, 8]), data8),
      /tensor 'b' starts at byte 4, leaving a gap.*ends at 3/,
    );
    await expectOpenError(
      rawFile(two([2, 4], [4, 8]), data8),
      /tensor 'a' starts at byte 2, leaving a gap.*ends at 0/,
    );
    await expectOpenError(
      rawFile(two([0, 2], [2, 6]), data8),
      /tensors cover 6 bytes but the data section holds 8 bytes/,
    );
    await expectOpenError(rawFile({}, data8), /tensors cover 0 bytes but the data section holds 8 bytes/);
  });
  it('rejects __metadata__ that is not a string-to-string map', async () => {
    await expectOpenError(
      rawFile({ __metadata__: { n: 1 }, ...ok }, data8),
      /__metadata__ must map strings to strings but key 'n' holds a number/,
    );
    await expectOpenError(
      rawFile({ __metadata__: ['x'], ...ok }, data8),
      /__metadata__ is an array but must be an object/,
    );
  });
  it('accepts zero-length tensors inside the tiling and a null __metadata__', async () => {
    const f = await openRaw(
      rawFile(
        {
          __metadata__: null,
          z: { dtype: 'F32', shape: [0], data_offsets: [8, 8] },
          a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        },
        data8,
      ),
    );
    expect([...f.tensors.keys()]).toEqual(['a', 'z']);
    await f.close();
  });
  it('names a missing file', async () => {
    await expect(readSafetensorsHeader(tmp.join('nope.safetensors'))).rejects.toThrow(
      /nope.safetensors does not exist/,
    );
  });
  it('refuses to encode data whose size does not match the shape', () => {
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(
      /holds 8 bytes but dtype F32 with shape \[3\] needs 12/,
    );
  });
});

describe('writeSafetensors atomicity', () => {
  it('leaves no temp file behind and replaces the target', async () => {
    const sub = await mkdtemp(tmp.join('atomic-'));
    const p = join(sub, 'w.safetensors');
    await writeSafetensors(p, { a: { dtype: 'U8', shape: [1], data: new Uint8Array([1]) } });
    await writeSafetensors(p, { a: { dtype: 'U8', shape: [1], data: new Uint8Array([2]) } });
    expect(await readdir(sub)).toEqual(['w.safetensors']);
    const f = await SafetensorsFile.open(p);
    expect([...(await f.readBytes('a'))]).toEqual([2]);
    await f.close();
  });

  it('does not clobber the target or leave a temp file when the write fails', async () => {
    const sub = await mkdtemp(tmp.join('atomic-'));
    const p = join(sub, 'w.safetensors');
    await writeSafetensors(p, { a: { dtype: 'U8', shape: [1], data: new Uint8Array([1]) } });
    const before = await readFile(p);
    await expect(
      writeSafetensors(p, { a: { dtype: 'F32', shape: [2], data: new Uint8Array(3) } }),
    ).rejects.toThrow(EmlensError);
    expect(await readFile(p)).toEqual(before);
    // A rename that fails (target is a non-empty directory) must clean up the temp file.
    const target = join(sub, 'dir.safetensors');
    await mkdir(target);
    await writeFile(join(target, 'keep'), 'x');
    await expect(
      writeSafetensors(target, { a: { dtype: 'U8', shape: [1], data: new Uint8Array([1]) } }),
    ).rejects.toThrow();
    expect((await readdir(sub)).sort()).toEqual(['dir.safetensors', 'w.safetensors']);
    expect(await readdir(target)).toEqual(['keep']);
  });

  it('streams lazily produced tensors to the bytes the same tensors in memory give, one at a time', async () => {
    const sub = await mkdtemp(tmp.join('lazy-'));
    const eager = {
      b: { dtype: 'F32' as const, shape: [2, 2], data: f32([1, 2, 3, 4]) },
      a: { dtype: 'BF16' as const, shape: [3], data: f32ToBf16(f32([0.5, -1, 2])) },
    };
    const produced: string[] = [];
    const lazy = Object.fromEntries(
      Object.entries(eager).map(([name, t]) => [
        name,
        {
          ...t,
          data: () => {
            produced.push(name);
            return t.data;
          },
        },
      ]),
    );
    const p = join(sub, 'lazy.safetensors');
    await writeSafetensors(p, lazy, { format: 'pt' });
    expect(produced).toEqual(['a', 'b']); // in file order, each once
    expect(await readFile(p)).toEqual(encodeSafetensors(eager, { format: 'pt' }));
  });

  it('fails on lazily produced data of the wrong size, leaving no file', async () => {
    const sub = await mkdtemp(tmp.join('lazy-bad-'));
    const p = join(sub, 'bad.safetensors');
    await expect(
      writeSafetensors(p, { a: { dtype: 'F32', shape: [3], data: () => new Float32Array(2) } }),
    ).rejects.toThrow(/Tensor 'a' holds 8 bytes but dtype F32 with shape \[3\] needs 12/);
    expect(await readdir(sub)).toEqual([]);
  });
});
