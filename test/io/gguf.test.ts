/**
 * The GGUF container on its own (the control-vector mapping is in test/directions/directions.test.ts): every scalar metadata
 * type and F32 tensors round-trip through encodeGguf/parseGguf, and a reader's error wording defaults to any
 * GGUF file's.
 */
import { describe, expect, it } from 'vitest';
import {
  checkDisjoint,
  encodeGguf,
  GGML_TYPE_F32,
  GGUF_DEFAULT_ALIGNMENT,
  type GgufKvEntry,
  GgufType,
  parseGguf,
  tensorData,
} from '../../src/io/gguf.js';

describe('the GGUF container', () => {
  it('round-trips every scalar metadata type and F32 tensors at the default alignment', () => {
    const kv: GgufKvEntry[] = [
      { key: 'u8', type: GgufType.UINT8, value: 200 },
      { key: 'i8', type: GgufType.INT8, value: -100 },
      { key: 'u16', type: GgufType.UINT16, value: 60_000 },
      { key: 'i16', type: GgufType.INT16, value: -30_000 },
      { key: 'u32', type: GgufType.UINT32, value: 4_000_000_000 },
      { key: 'i32', type: GgufType.INT32, value: -2_000_000_000 },
      { key: 'f32', type: GgufType.FLOAT32, value: 0.5 },
      { key: 'bool', type: GgufType.BOOL, value: true },
      { key: 'str', type: GgufType.STRING, value: 'héllo' },
      { key: 'u64', type: GgufType.UINT64, value: 2n ** 63n },
      { key: 'i64', type: GgufType.INT64, value: -(2n ** 62n) },
      { key: 'f64', type: GgufType.FLOAT64, value: Math.PI },
    ];
    const a = Float32Array.from([1, -2, 3]);
    const b = Float32Array.from([0.25, 0.5, 0.75, 1, 1.25, 1.5]);
    const bytes = encodeGguf(kv, [
      { name: 'a', data: a },
      { name: 'b', data: b, dims: [3, 2] },
    ]);
    const g = parseGguf(bytes);
    expect(g.version).toBe(3);
    expect(g.alignment).toBe(GGUF_DEFAULT_ALIGNMENT);
    expect(g.dataStart % GGUF_DEFAULT_ALIGNMENT).toBe(0);
    expect([...g.kv]).toEqual(kv.map(({ key, type, value }) => [key, { type, value }]));
    expect(g.tensors).toEqual([
      { name: 'a', dims: [3], type: GGML_TYPE_F32, offset: 0 },
      { name: 'b', dims: [3, 2], type: GGML_TYPE_F32, offset: 32 },
    ]);
    const read = (i: number, n: number) => {
      const data = tensorData(g, g.tensors[i]!, n * 4); // i: 0 or 1, the two tensors above
      return new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    };
    expect(read(0, 3)).toEqual(a);
    expect(read(1, 6)).toEqual(b);
  });

  it('words errors for any GGUF file unless the reader names its kind', () => {
    expect(() => parseGguf(Buffer.from('PK\x03\x04'), 'x.bin')).toThrow(
      /x\.bin is not a GGUF file: .*; pass a GGUF file \(\.gguf\)\.$/,
    );
    const spans = [
      { name: 'a', start: 0, end: 64 },
      { name: 'b', start: 32, end: 96 },
    ];
    expect(() => checkDisjoint(spans, 'x.gguf')).toThrow(
      /^GGUF file x\.gguf is corrupt: tensors 'a' .* overlap; re-save/,
    );
    expect(() => checkDisjoint(spans, 'x.gguf', { kind: 'GGUF thing', fix: 'redo it' })).toThrow(
      /^GGUF thing x\.gguf is corrupt: .*; redo it\.$/,
    );
    expect(() => checkDisjoint([spans[0]!, { name: 'b', start: 64, end: 96 }])).not.toThrow();
  });
});
