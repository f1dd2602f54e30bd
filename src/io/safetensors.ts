/**
 * The safetensors format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON describing each
 * tensor (dtype, shape, data_offsets relative to the data section), then the raw little-endian data.
 * Reading is lazy (header at open, one positioned read per tensor) so multi-GB checkpoints never sit in
 * memory whole; validation is as strict as the reference Rust implementation.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { distance } from 'fastest-levenshtein';
import { EmlensError } from '../errors.js';
import { writeAll, writeStreamAtomic } from './files.js';
import { bf16ToF32, f16ToF32 } from './halfFloat.js';
import { openInputFile } from './inputFiles.js';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Bytes per element of each supported dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Same limit as the Rust implementation: a larger header is a corrupt file, not a real model. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Typed array returned by {@link SafetensorsFile.readTyped}; F16/BF16 come back as raw bits. */
export type SafetensorsTypedArray =
  | Float64Array
  | Float32Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** absolute byte offset in the file */
  readonly fileOffset: number;
  readonly byteLength: number;
}

/** A parsed header: everything needed to locate each tensor's bytes. */
export interface SafetensorsHeader {
  readonly metadata: Readonly<Record<string, string>>;
  /** In data order (ascending offset). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Absolute offset of the data section (8 + header length). */
  readonly dataStart: number;
  readonly dataLength: number;
}

export interface TensorToWrite {
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /**
   * The bytes, or a function that produces them when the tensor is written: `writeSafetensors` then holds one
   * such tensor in memory at a time (a 0.5B model in F32 is 2 GB).
   */
  readonly data: ArrayBufferView | (() => ArrayBufferView);
}

export type TensorsToWrite = Record<string, TensorToWrite> | ReadonlyMap<string, TensorToWrite>;

const FIX = 're-download or re-export the file';
/** Node's fs refuses single reads of 2 GiB or more, so big tensors are read in chunks. */
const READ_CHUNK = 1 << 30;

function isDtype(x: unknown): x is SafetensorsDtype {
  return typeof x === 'string' && Object.hasOwn(DTYPE_BYTES, x);
}

function isSafeNonNegInt(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function describe(x: unknown): string {
  if (x === null) return 'null';
  if (Array.isArray(x)) return 'an array';
  return typeof x === 'object' ? 'an object' : `a ${typeof x}`;
}

function show(x: unknown): string {
  const s = JSON.stringify(x) ?? String(x);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Product of a shape times the element size, or NaN when it is not a safe integer. */
function byteSize(dtype: SafetensorsDtype, shape: readonly number[]): number {
  let n = DTYPE_BYTES[dtype];
  for (const d of shape) n *= d;
  return Number.isSafeInteger(n) ? n : Number.NaN;
}

/** Up to `count` candidates nearest to `name` by edit distance, for "did you mean" hints. */
export function closestNames(name: string, candidates: Iterable<string>, count = 3): string[] {
  const scored: [number, string][] = [];
  for (const c of candidates) scored.push([distance(name, c), c]);
  scored.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
  return scored.slice(0, count).map(([, c]) => c);
}

/** "'a', 'b' or 'c'" — a readable list for error messages. */
export function quoteList(names: readonly string[]): string {
  const q = names.map((n) => `'${n}'`);
  return q.length <= 1 ? (q[0] ?? '') : `${q.slice(0, -1).join(', ')} or ${q[q.length - 1]}`;
}

/** The first key that occurs twice at the top level of `text`, which must be a valid JSON object, or null. */
function duplicateTopLevelKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      const start = i;
      for (i++; text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++;
      if (depth !== 1) continue;
      let j = i + 1;
      while (j < text.length && (text[j] === ' ' || text[j] === '\t' || text[j] === '\n' || text[j] === '\r'))
        j++;
      if (text[j] !== ':') continue; // a string value, not a key
      const key = JSON.parse(text.slice(start, i + 1)) as string;
      if (seen.has(key)) return key;
      seen.add(key);
    } else if (c === 0x7b || c === 0x5b) depth++;
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return null;
}

/**
 * Parses and validates the JSON header. `file` names the source in error messages; `headerLength` and
 * `fileSize` locate the data section. Throws EmlensError for every way the header can be wrong.
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  file: string,
): SafetensorsHeader {
  const bad = (what: string): EmlensError =>
    new EmlensError(`Safetensors file ${file} is malformed: ${what}; ${FIX}.`);
  const dataStart = 8 + headerBytes.length;
  const dataLength = fileSize - dataStart;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw bad('its header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw bad(`its header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw bad(`its header is ${describe(json)}, not a JSON object`);
  }
  // JSON.parse keeps the last of two equal keys, which would then surface as a baffling gap in the data.
  const twice = duplicateTopLevelKey(text);
  if (twice !== null) {
    throw bad(
      twice === '__metadata__'
        ? 'its header holds __metadata__ twice'
        : `its header lists tensor '${twice}' twice`,
    );
  }

  const metadata: [string, string][] = [];
  const entries: TensorInfo[] = [];
  const offsets = new Map<string, readonly [number, number]>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (entry === null) continue; // Rust accepts an explicit null (Option)
      if (typeof entry !== 'object' || Array.isArray(entry)) {
        throw bad(`__metadata__ is ${describe(entry)} but must be an object mapping strings to strings`);
      }
      for (const [k, v] of Object.entries(entry as object)) {
        if (typeof v !== 'string') {
          throw bad(`__metadata__ must map strings to strings but key '${k}' holds ${describe(v)}`);
        }
        metadata.push([k, v]);
      }
      continue;
    }
    if (
      typeof entry !== 'object' ||
      entry === null ||
      Array.isArray(entry) ||
      !('dtype' in entry) ||
      !('shape' in entry) ||
      !('data_offsets' in entry)
    ) {
      throw bad(`entry '${name}' is not an object with dtype, shape and data_offsets`);
    }
    const { dtype, shape, data_offsets: range } = entry as Record<string, unknown>;
    if (!isDtype(dtype)) {
      throw bad(
        `tensor '${name}' has unsupported dtype ${show(dtype)} (emlens reads ${Object.keys(DTYPE_BYTES).join(', ')})`,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isSafeNonNegInt)) {
      throw bad(`tensor '${name}' has shape ${show(shape)}, which is not an array of non-negative integers`);
    }
    if (
      !Array.isArray(range) ||
      range.length !== 2 ||
      !isSafeNonNegInt(range[0]) ||
      !isSafeNonNegInt(range[1]) ||
      range[0] > range[1]
    ) {
      throw bad(
        `tensor '${name}' has data_offsets ${show(range)}, which is not [begin, end] with 0 <= begin <= end`,
      );
    }
    const [begin, end] = range as [number, number];
    if (end > dataLength) {
      throw bad(`tensor '${name}' ends at byte ${end} but the file has ${dataLength} bytes of data`);
    }
    const need = byteSize(dtype, shape);
    if (end - begin !== need) {
      throw bad(
        `tensor '${name}' spans ${end - begin} bytes but dtype ${dtype} with shape [${shape.join(', ')}] needs ${Number.isNaN(need) ? 'more than 2^53' : need}`,
      );
    }
    offsets.set(name, [begin, end]);
    entries.push({
      name,
      dtype,
      shape: Object.freeze([...shape]),
      fileOffset: dataStart + begin,
      byteLength: need,
    });
  }

  // Like the reference implementation: sorted by offset, the tensors must tile the data section exactly.
  entries.sort((a, b) => a.fileOffset - b.fileOffset || a.byteLength - b.byteLength);
  let cursor = 0;
  for (const t of entries) {
    const [begin, end] = offsets.get(t.name)!; // set for every entry above
    if (begin < cursor) {
      throw bad(
        `tensor '${t.name}' starts at byte ${begin}, overlapping the previous tensor, which ends at ${cursor}`,
      );
    }
    if (begin > cursor) {
      throw bad(
        `tensor '${t.name}' starts at byte ${begin}, leaving a gap after the previous tensor, which ends at ${cursor}`,
      );
    }
    cursor = end;
  }
  if (cursor !== dataLength) {
    throw bad(`its tensors cover ${cursor} bytes but the data section holds ${dataLength} bytes`);
  }

  return {
    // fromEntries defines own properties, so even a '__proto__' key stays plain data.
    metadata: Object.freeze(Object.fromEntries(metadata)),
    tensors: new Map(entries.map((t) => [t.name, Object.freeze(t)])),
    dataStart,
    dataLength,
  };
}

/** Reads exactly `length` bytes at `position`, in chunks, failing clearly if the file shrank. */
async function readExact(
  fh: FileHandle,
  file: string,
  position: number,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const want = Math.min(READ_CHUNK, length - done);
    const { bytesRead } = await fh.read(out, done, want, position + done);
    if (bytesRead === 0) {
      throw new EmlensError(
        `Safetensors file ${file} ended at byte ${position + done} while ${position + length} were expected; it was truncated or replaced while open, so ${FIX}.`,
      );
    }
    done += bytesRead;
  }
  return out;
}

/** Reads and validates the header of an open file (only the first 8 + N bytes are read). */
async function readHeaderFrom(fh: FileHandle, file: string): Promise<SafetensorsHeader> {
  const { size } = await fh.stat();
  if (size < 8) checkHeaderLength(new Uint8Array(8), size, file);
  const n = checkHeaderLength(await readExact(fh, file, 0, 8), size, file);
  return parseSafetensorsHeader(await readExact(fh, file, 8, n), size, file);
}

/** Validates the 8-byte length prefix of a file of `size` bytes and returns the header length. */
function checkHeaderLength(prefix: Uint8Array, size: number, file: string): number {
  if (size < 8) {
    throw new EmlensError(
      `Safetensors file ${file} is ${size} bytes long, too short to hold the 8-byte header length; ${FIX}.`,
    );
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  const malformed = (what: string) =>
    new EmlensError(`Safetensors file ${file} is malformed: ${what}; ${FIX}.`);
  if (n === 0n) throw malformed('its header length is 0');
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw malformed(`its header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  if (n > BigInt(size - 8)) {
    throw malformed(
      `its header length ${n} runs past the end of the file, which has ${size - 8} bytes after the length`,
    );
  }
  return Number(n);
}

/** Reads and validates just the header of a safetensors file on disk. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const fh = await openForRead(path);
  try {
    return await readHeaderFrom(fh, path);
  } finally {
    await fh.close();
  }
}

function openForRead(path: string): Promise<FileHandle> {
  return openInputFile(path, {
    missing: () =>
      new EmlensError(`Safetensors file ${path} does not exist; check the path or re-download the model.`),
    directory: () =>
      new EmlensError(
        `${path} is a directory, not a safetensors file; give the path of a .safetensors file (in a model folder, replace it with the file itself).`,
      ),
  });
}

function typedView(dtype: SafetensorsDtype, bytes: Uint8Array): SafetensorsTypedArray {
  // Safetensors data is little-endian, like every platform Node supports in practice.
  const { buffer, byteOffset, byteLength } = bytes;
  switch (dtype) {
    case 'F64':
      return new Float64Array(buffer, byteOffset, byteLength / 8);
    case 'F32':
      return new Float32Array(buffer, byteOffset, byteLength / 4);
    case 'F16':
    case 'BF16':
      return new Uint16Array(buffer, byteOffset, byteLength / 2);
    case 'I64':
      return new BigInt64Array(buffer, byteOffset, byteLength / 8);
    case 'I32':
      return new Int32Array(buffer, byteOffset, byteLength / 4);
    case 'I16':
      return new Int16Array(buffer, byteOffset, byteLength / 2);
    case 'I8':
      return new Int8Array(buffer, byteOffset, byteLength);
    case 'U8':
    case 'BOOL':
      return new Uint8Array(buffer, byteOffset, byteLength);
  }
}

/** Converts a float tensor's raw bytes to float32; throws for integer dtypes. */
export function bytesToFloat32(dtype: SafetensorsDtype, bytes: Uint8Array, what: string): Float32Array {
  const view = typedView(dtype, bytes);
  switch (dtype) {
    case 'F32':
      return view as Float32Array;
    case 'F16':
      return f16ToF32(view as Uint16Array);
    case 'BF16':
      return bf16ToF32(view as Uint16Array);
    case 'F64':
      return Float32Array.from(view as Float64Array);
    default:
      throw new EmlensError(
        `Tensor ${what} has dtype ${dtype}, which is not a float type; only F32, F16, BF16 and F64 tensors can be read as float32.`,
      );
  }
}

/** A safetensors file opened for lazy, per-tensor reads. */
export class SafetensorsFile {
  private closed = false;

  private constructor(
    private readonly fh: FileHandle,
    /** The path as given to {@link SafetensorsFile.open}. */
    readonly path: string,
    private readonly header: SafetensorsHeader,
  ) {}

  /** Opens a file and validates its header strictly; reads nothing but the header. */
  static async open(path: string): Promise<SafetensorsFile> {
    const fh = await openForRead(path);
    try {
      return new SafetensorsFile(fh, path, await readHeaderFrom(fh, path));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** The `__metadata__` map (empty when absent). */
  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** Every tensor, in data order. */
  get tensors(): ReadonlyMap<string, TensorInfo> {
    return this.header.tensors;
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  /** Location and type of a tensor; an unknown name throws an EmlensError suggesting the closest names. */
  info(name: string): TensorInfo {
    const t = this.header.tensors.get(name);
    if (t !== undefined) return t;
    const near = closestNames(name, this.header.tensors.keys());
    const hint = near.length > 0 ? `did you mean ${quoteList(near)}?` : 'the file holds no tensors.';
    throw new EmlensError(`Tensor '${name}' is not in ${this.path}; ${hint}`);
  }

  /** The tensor's raw little-endian bytes, in a fresh (hence aligned) buffer. */
  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    if (this.closed) {
      throw new EmlensError(
        `Safetensors file ${this.path} was already closed; open it again to read '${name}'.`,
      );
    }
    return readExact(this.fh, this.path, t.fileOffset, t.byteLength);
  }

  /** The tensor as float32 (F32, F16, BF16 and F64 are converted); integer dtypes throw. */
  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    return bytesToFloat32(t.dtype, await this.readBytes(name), `'${name}' in ${this.path}`);
  }

  /** The tensor in its own dtype's typed array; F16 and BF16 come back as raw Uint16Array bits. */
  async readTyped(name: string): Promise<SafetensorsTypedArray> {
    const t = this.info(name);
    return typedView(t.dtype, await this.readBytes(name));
  }

  /** Releases the file handle; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

/**
 * Decodes a whole safetensors file held in memory (small files, tests). Tensor bytes are views into
 * `bytes`, so they may be unaligned for their dtype.
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  file = '<buffer>',
): { metadata: Readonly<Record<string, string>>; tensors: Map<string, TensorInfo & { bytes: Uint8Array }> } {
  const n = checkHeaderLength(bytes.length < 8 ? new Uint8Array(8) : bytes, bytes.length, file);
  const header = parseSafetensorsHeader(bytes.subarray(8, 8 + n), bytes.length, file);
  const tensors = new Map<string, TensorInfo & { bytes: Uint8Array }>();
  for (const [name, t] of header.tensors) {
    tensors.set(name, { ...t, bytes: bytes.subarray(t.fileOffset, t.fileOffset + t.byteLength) });
  }
  return { metadata: header.metadata, tensors };
}

interface Plan {
  readonly header: Buffer;
  /** The tensors in file order: their data (or its producer) and the bytes it must hold. */
  readonly parts: readonly { readonly name: string; readonly t: TensorToWrite; readonly need: number }[];
  readonly totalBytes: number;
}

/** A tensor's bytes, produced now if lazy, checked against the size its dtype and shape need. */
function partBytes(part: Plan['parts'][number]): Uint8Array {
  const { name, t, need } = part;
  const data = typeof t.data === 'function' ? t.data() : t.data;
  if (data.byteLength !== need) {
    throw new EmlensError(
      `Tensor '${name}' holds ${data.byteLength} bytes but dtype ${t.dtype} with shape [${t.shape.join(', ')}] needs ${need}; fix the data or the shape.`,
    );
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Validates the tensors and builds the padded header plus the tensors in file order. */
function plan(tensors: TensorsToWrite, metadata: Record<string, string> | undefined): Plan {
  const entries =
    tensors instanceof Map ? [...tensors] : Object.entries(tensors as Record<string, TensorToWrite>);
  // Code-unit order, which matches Python's sorted() for the ASCII names real checkpoints use.
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  // Built as text rather than through an object so that no name (not even '__proto__') is special.
  const fields: string[] = [];
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') {
        throw new EmlensError(
          `Safetensors metadata key '${k}' holds ${describe(v)}; metadata values must be strings.`,
        );
      }
    }
    fields.push(`"__metadata__":${JSON.stringify(metadata)}`);
  }
  const parts: Plan['parts'][number][] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === '__metadata__' || name.length === 0) {
      throw new EmlensError(`Cannot write a tensor named '${name}' to safetensors; rename it.`);
    }
    if (!isDtype(t.dtype)) {
      throw new EmlensError(
        `Tensor '${name}' has unsupported dtype ${show(t.dtype)}; use one of ${Object.keys(DTYPE_BYTES).join(', ')}.`,
      );
    }
    if (!Array.isArray(t.shape) || !t.shape.every(isSafeNonNegInt)) {
      throw new EmlensError(
        `Tensor '${name}' has shape ${show(t.shape)}; a shape must be an array of non-negative integers.`,
      );
    }
    const need = byteSize(t.dtype, t.shape);
    if (typeof t.data !== 'function') partBytes({ name, t, need }); // eager data: checked before anything is written
    const entry = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] };
    fields.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    parts.push({ name, t, need });
    offset += need;
  }
  const text = Buffer.from(`{${fields.join(',')}}`, 'utf8');
  // Pad with spaces so the data section starts 8-byte aligned, as the reference implementation does.
  const padded = Math.ceil(text.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  text.copy(header, 8);
  return { header, parts, totalBytes: header.length + offset };
}

/**
 * Serialises tensors to a safetensors buffer: compact JSON header (metadata first, then tensors in sorted
 * name order), padded with spaces to a multiple of 8, followed by the data in the same order.
 */
export function encodeSafetensors(tensors: TensorsToWrite, metadata?: Record<string, string>): Buffer {
  const p = plan(tensors, metadata);
  const out = Buffer.allocUnsafe(p.totalBytes);
  p.header.copy(out, 0);
  let at = p.header.length;
  for (const part of p.parts) {
    out.set(partBytes(part), at);
    at += part.need;
  }
  return out;
}

/**
 * Writes a safetensors file atomically (`writeStreamAtomic`: temp file, fsync, rename). Tensors are streamed,
 * lazy ones produced one at a time, so the total may exceed the largest possible Buffer.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorsToWrite,
  metadata?: Record<string, string>,
): Promise<void> {
  const p = plan(tensors, metadata);
  await writeStreamAtomic(path, async (fh) => {
    await writeAll(fh, p.header);
    for (const part of p.parts) await writeAll(fh, partBytes(part));
  });
  await syncDir(dirname(path));
}

/** Makes the rename durable; not possible on every platform, so failures are ignored. */
async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // best effort
  }
}
