/**
 * The GGUF container (llama.cpp's file format), little-endian versions 2 and 3: the magic and version, the
 * tensor and key/value counts, the typed key/value metadata, the tensor infos (name, ggml dims, ggml type,
 * data offset), and the data section at the next multiple of `general.alignment` (default 32). Reading is
 * strict about every length and offset, and about tensors whose data overlap; writing produces F32 tensors
 * at the default alignment.
 */
import { EmlensError } from '../errors.js';

/** 'GGUF' read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types. */
export const GgufType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
export type GgufType = (typeof GgufType)[keyof typeof GgufType];

/** ggml tensor type F32. */
export const GGML_TYPE_F32 = 0;

export type GgufScalar = number | bigint | boolean | string;
/** A decoded metadata value: scalars as JS values (64-bit integers as bigint), arrays as arrays. */
export type GgufValue = GgufScalar | GgufValue[];

export interface GgufKv {
  readonly type: GgufType;
  readonly value: GgufValue;
}

export interface GgufTensorInfo {
  readonly name: string;
  /** ggml order: dims[0] is the innermost (contiguous) dimension. */
  readonly dims: readonly number[];
  readonly type: number;
  /** Byte offset relative to the start of the data section. */
  readonly offset: number;
}

/** A parsed GGUF file held in memory. */
export interface GgufFile {
  readonly version: number;
  readonly kv: ReadonlyMap<string, GgufKv>;
  readonly tensors: readonly GgufTensorInfo[];
  readonly alignment: number;
  /** Absolute offset of the data section. */
  readonly dataStart: number;
  readonly bytes: Uint8Array;
}

/**
 * How errors about a file say what it is and what to do; the defaults suit any GGUF file, a reader of one
 * kind (control vectors) names its own.
 */
export interface GgufHints {
  /** What the file is, opening errors about its tensors (default `GGUF file`). */
  readonly kind?: string;
  /** What to do about a damaged file (default `re-save or re-download it`). */
  readonly fix?: string;
  /** What to pass instead of a file that is not GGUF at all (default `pass a GGUF file (.gguf)`). */
  readonly want?: string;
}

const DEFAULT_KIND = 'GGUF file';
const DEFAULT_FIX = 're-save or re-download it';
const DEFAULT_WANT = 'pass a GGUF file (.gguf)';

/** Reads the header, metadata and tensor infos of a GGUF file; strict about every length and offset. */
export function parseGguf(bytes: Uint8Array, file = '<buffer>', hints: GgufHints = {}): GgufFile {
  const FIX = hints.fix ?? DEFAULT_FIX;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const need = (n: number, what: string) => {
    if (at + n > bytes.length) {
      throw new EmlensError(
        `GGUF file ${file} is truncated: reading ${what} needs ${n} bytes at offset ${at} but the file has ${bytes.length}; ${FIX}.`,
      );
    }
  };
  const u32 = (what: string) => {
    need(4, what);
    const v = dv.getUint32(at, true);
    at += 4;
    return v;
  };
  const u64 = (what: string) => {
    need(8, what);
    const v = dv.getBigUint64(at, true);
    at += 8;
    return v;
  };
  /** A u64 used as a count or length: bounded by the bytes left (each item takes at least `min` bytes). */
  const size = (what: string, min: number) => {
    const v = u64(what);
    if (v > BigInt(Math.floor((bytes.length - at) / Math.max(min, 1)))) {
      throw new EmlensError(
        `GGUF file ${file} is truncated or corrupt: ${what} is ${v}, more than the ${bytes.length - at} bytes left could hold; ${FIX}.`,
      );
    }
    return Number(v);
  };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const str = (what: string) => {
    const n = size(`the length of ${what}`, 1);
    need(n, what);
    let s: string;
    try {
      s = utf8.decode(bytes.subarray(at, at + n));
    } catch {
      throw new EmlensError(`GGUF file ${file} is corrupt: ${what} is not valid UTF-8; ${FIX}.`);
    }
    at += n;
    return s;
  };
  const value = (type: number, what: string, depth: number): GgufValue => {
    switch (type) {
      case GgufType.UINT8:
        need(1, what);
        return dv.getUint8(at++);
      case GgufType.INT8:
        need(1, what);
        return dv.getInt8(at++);
      case GgufType.BOOL:
        need(1, what);
        return dv.getUint8(at++) !== 0;
      case GgufType.UINT16:
      case GgufType.INT16: {
        need(2, what);
        const v = type === GgufType.UINT16 ? dv.getUint16(at, true) : dv.getInt16(at, true);
        at += 2;
        return v;
      }
      case GgufType.UINT32:
      case GgufType.INT32:
      case GgufType.FLOAT32: {
        need(4, what);
        const v =
          type === GgufType.UINT32
            ? dv.getUint32(at, true)
            : type === GgufType.INT32
              ? dv.getInt32(at, true)
              : dv.getFloat32(at, true);
        at += 4;
        return v;
      }
      case GgufType.UINT64:
      case GgufType.INT64:
      case GgufType.FLOAT64: {
        need(8, what);
        const v =
          type === GgufType.UINT64
            ? dv.getBigUint64(at, true)
            : type === GgufType.INT64
              ? dv.getBigInt64(at, true)
              : dv.getFloat64(at, true);
        at += 8;
        return v;
      }
      case GgufType.STRING:
        return str(what);
      case GgufType.ARRAY: {
        if (depth > 8) {
          throw new EmlensError(`GGUF file ${file} is corrupt: ${what} nests arrays too deeply; ${FIX}.`);
        }
        const itemType = u32(`the item type of ${what}`);
        const n = size(`the length of ${what}`, 1);
        const out: GgufValue[] = [];
        for (let i = 0; i < n; i++) out.push(value(itemType, `${what}[${i}]`, depth + 1));
        return out;
      }
      default:
        throw new EmlensError(
          `GGUF file ${file} is corrupt: ${what} has unknown value type ${type} (GGUF knows 0..12); ${FIX}.`,
        );
    }
  };

  if (bytes.length < 4 || dv.getUint32(0, true) !== GGUF_MAGIC) {
    const head = [...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    throw new EmlensError(
      `File ${file} is not a GGUF file: it starts with bytes [${head}] instead of 'GGUF'; ${hints.want ?? DEFAULT_WANT}.`,
    );
  }
  at = 4;
  const version = u32('the version');
  if (version !== 2 && version !== 3) {
    const hint =
      (version & 0xffff) === 0 && version >>> 24 <= 3
        ? 'it looks big-endian, which emlens does not read'
        : 'emlens reads versions 2 and 3';
    throw new EmlensError(
      `GGUF file ${file} has version ${version}, which is not supported (${hint}); re-save it as a little-endian GGUF v3 file.`,
    );
  }
  const tensorCount = size('the tensor count', 8 + 4 + 4 + 8);
  const kvCount = size('the key/value count', 8 + 4);
  const kv = new Map<string, GgufKv>();
  for (let i = 0; i < kvCount; i++) {
    const key = str(`key ${i}`);
    const type = u32(`the type of '${key}'`);
    const v = value(type, `'${key}'`, 0);
    if (kv.has(key)) throw new EmlensError(`GGUF file ${file} holds key '${key}' twice; ${FIX}.`);
    kv.set(key, { type: type as GgufType, value: v });
  }
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = str(`the name of tensor ${i}`);
    const nDims = u32(`the dimension count of '${name}'`);
    if (nDims > 4) {
      throw new EmlensError(
        `GGUF file ${file} is corrupt: tensor '${name}' has ${nDims} dimensions (max 4); ${FIX}.`,
      );
    }
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const n = u64(`dimension ${d} of '${name}'`);
      if (n > BigInt(bytes.length)) {
        throw new EmlensError(
          `GGUF file ${file} is corrupt: tensor '${name}' has dimension ${n}, larger than the file; ${FIX}.`,
        );
      }
      dims.push(Number(n));
    }
    const type = u32(`the type of '${name}'`);
    const offset = u64(`the offset of '${name}'`);
    if (offset > BigInt(bytes.length)) {
      throw new EmlensError(
        `GGUF file ${file} is truncated: tensor '${name}' starts at data offset ${offset}, beyond the end of the file; ${FIX}.`,
      );
    }
    tensors.push({ name, dims, type, offset: Number(offset) });
  }
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = kv.get('general.alignment');
  if (al !== undefined) {
    if (
      al.type !== GgufType.UINT32 ||
      typeof al.value !== 'number' ||
      al.value === 0 ||
      (al.value & (al.value - 1)) !== 0
    ) {
      throw new EmlensError(
        `GGUF file ${file} has general.alignment ${String(al.value)}, which is not a power-of-two UINT32; ${FIX}.`,
      );
    }
    alignment = al.value;
  }
  const dataStart = alignUp(at, alignment);
  return { version, kv, tensors, alignment, dataStart, bytes };
}

/**
 * The `byteLength` data bytes of tensor `t`: its offset must be a multiple of the alignment and its bytes
 * inside the file.
 */
export function tensorData(
  g: GgufFile,
  t: GgufTensorInfo,
  byteLength: number,
  file = '<buffer>',
  hints: GgufHints = {},
): Uint8Array {
  const fix = hints.fix ?? DEFAULT_FIX;
  if (t.offset % g.alignment !== 0) {
    throw new EmlensError(
      `${hints.kind ?? DEFAULT_KIND} ${file} has '${t.name}' at data offset ${t.offset}, not a multiple of the alignment ${g.alignment}; ${fix}.`,
    );
  }
  const start = g.dataStart + t.offset;
  if (start + byteLength > g.bytes.length) {
    throw new EmlensError(
      `GGUF file ${file} is truncated: '${t.name}' needs bytes ${start}..${start + byteLength} but the file has ${g.bytes.length}; ${fix}.`,
    );
  }
  return g.bytes.subarray(start, start + byteLength);
}

/** A tensor's data as bytes `start..end` of the data section. */
export interface GgufSpan {
  readonly name: string;
  readonly start: number;
  readonly end: number;
}

/**
 * Throws when the data of two tensors overlap: both would read as valid (one holding the other's values), a
 * writer bug or a tampered file, never a layout llama.cpp writes.
 */
export function checkDisjoint(spans: readonly GgufSpan[], file = '<buffer>', hints: GgufHints = {}): void {
  const sorted = [...spans].sort((a, b) => a.start - b.start);
  let a: GgufSpan | undefined; // the span before b
  for (const b of sorted) {
    if (a && b.start < a.end) {
      throw new EmlensError(
        `${hints.kind ?? DEFAULT_KIND} ${file} is corrupt: tensors '${a.name}' (bytes ${a.start}..${a.end} of the data) and '${b.name}' (bytes ${b.start}..${b.end}) overlap; ${hints.fix ?? DEFAULT_FIX}.`,
      );
    }
    a = b;
  }
}

/** A metadata entry to write (scalars only). */
export interface GgufKvEntry {
  readonly key: string;
  readonly type: GgufType;
  readonly value: GgufScalar;
}

/** An F32 tensor to write; `dims` in ggml order (default `[data.length]`). */
export interface GgufF32Tensor {
  readonly name: string;
  readonly data: Float32Array;
  readonly dims?: readonly number[];
}

/**
 * Encodes a GGUF v3 file (little-endian, alignment 32): the metadata in order, then the tensors, each at the
 * next multiple of 32 in the data section.
 */
export function encodeGguf(kv: readonly GgufKvEntry[], tensors: readonly GgufF32Tensor[]): Buffer {
  const w = new GgufWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(kv.length);
  for (const { key, type, value } of kv) {
    w.str(key);
    w.u32(type);
    w.scalar(type, value, key);
  }
  let offset = 0;
  for (const t of tensors) {
    const dims = t.dims ?? [t.data.length];
    w.str(t.name);
    w.u32(dims.length);
    for (const d of dims) w.u64(d);
    w.u32(GGML_TYPE_F32);
    w.u64(offset);
    offset += alignUp(t.data.byteLength, GGUF_DEFAULT_ALIGNMENT);
  }
  w.pad(GGUF_DEFAULT_ALIGNMENT);
  for (const t of tensors) {
    w.f32(t.data);
    w.pad(GGUF_DEFAULT_ALIGNMENT);
  }
  return w.finish();
}

/** Bytes of each scalar metadata type (strings: their length prefix and bytes, written apart). */
const SCALAR_BYTES: Partial<Record<GgufType, number>> = {
  [GgufType.UINT8]: 1,
  [GgufType.INT8]: 1,
  [GgufType.BOOL]: 1,
  [GgufType.UINT16]: 2,
  [GgufType.INT16]: 2,
  [GgufType.UINT32]: 4,
  [GgufType.INT32]: 4,
  [GgufType.FLOAT32]: 4,
  [GgufType.UINT64]: 8,
  [GgufType.INT64]: 8,
  [GgufType.FLOAT64]: 8,
  [GgufType.STRING]: 0,
};

/** A growing little-endian byte buffer. */
class GgufWriter {
  private buf = Buffer.alloc(4096);
  private at = 0;

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v, this.at);
    this.at += 4;
  }
  u64(v: number): void {
    this.room(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.at);
    this.at += 8;
  }
  /** A metadata value of a scalar type. */
  scalar(type: GgufType, v: GgufScalar, key: string): void {
    const size = SCALAR_BYTES[type];
    if (size === undefined) throw new Error(`GGUF metadata '${key}': cannot write a value of type ${type}`);
    if (type === GgufType.STRING) {
      this.str(v as string);
      return;
    }
    this.room(size);
    const b = this.buf;
    const at = this.at;
    switch (type) {
      case GgufType.UINT8:
        b.writeUInt8(v as number, at);
        break;
      case GgufType.INT8:
        b.writeInt8(v as number, at);
        break;
      case GgufType.BOOL:
        b.writeUInt8(v ? 1 : 0, at);
        break;
      case GgufType.UINT16:
        b.writeUInt16LE(v as number, at);
        break;
      case GgufType.INT16:
        b.writeInt16LE(v as number, at);
        break;
      case GgufType.UINT32:
        b.writeUInt32LE(v as number, at);
        break;
      case GgufType.INT32:
        b.writeInt32LE(v as number, at);
        break;
      case GgufType.FLOAT32:
        b.writeFloatLE(v as number, at);
        break;
      case GgufType.UINT64:
        b.writeBigUInt64LE(BigInt(v as number | bigint), at);
        break;
      case GgufType.INT64:
        b.writeBigInt64LE(BigInt(v as number | bigint), at);
        break;
      case GgufType.FLOAT64:
        b.writeDoubleLE(v as number, at);
        break;
    }
    this.at += size;
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.room(b.length);
    b.copy(this.buf, this.at);
    this.at += b.length;
  }
  f32(v: Float32Array): void {
    this.room(v.byteLength);
    const view = new DataView(this.buf.buffer, this.buf.byteOffset);
    for (let i = 0; i < v.length; i++) view.setFloat32(this.at + 4 * i, v[i]!, true); // i < v.length
    this.at += v.byteLength;
  }
  /** Zero bytes up to the next multiple of `alignment`. */
  pad(alignment: number): void {
    const n = alignUp(this.at, alignment) - this.at;
    this.room(n);
    this.buf.fill(0, this.at, this.at + n);
    this.at += n;
  }
  finish(): Buffer {
    return this.buf.subarray(0, this.at);
  }
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
