/**
 * PyTorch `torch.save` files (the zip format of torch >= 1.6), read without running any pickled code and
 * written so that `torch.load(path, weights_only=True)` accepts them.
 *
 * The archive holds `<prefix>/data.pkl` (a protocol-2 pickle of the saved object), `<prefix>/data/<key>` (one
 * raw little-endian storage per key), `<prefix>/byteorder` and `<prefix>/version`. Tensors in the pickle are
 * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` calls whose storage is
 * a persistent id `('storage', torch.FloatStorage, key, location, numel)`. The reader allows exactly those
 * globals (plus `collections.OrderedDict` and `torch._utils._rebuild_parameter`, for `nn.Parameter`) and the
 * storage types of f32, f16, bf16 and f64; anything else is refused by name (see io/pickle.ts).
 *
 * Tensors come back contiguous (row-major) in their own dtype, whatever the strides and storage offset of
 * the saved view; two tensors that shared a storage in Python come back as separate copies, with the same
 * `storageKey`.
 */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from './files.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './halfFloat.js';
import { readUserFile } from './inputFiles.js';
import { claimOutputFile } from './outputs.js';
import { PickleGlobal, type PickleObject, PickleTuple, type PickleValue, unpickle } from './pickle.js';
import { encodeZipStored, readZipEntries, type ZipInput, zipEntryData } from './zipStored.js';

export type TorchDtype = 'F32' | 'F16' | 'BF16' | 'F64';

/** Elements of a tensor: float values for F32/F64, raw 16-bit patterns for F16/BF16. */
export type TorchData = Float32Array | Float64Array | Uint16Array;

/** A tensor read from (or to be written to) a torch file; `data` is contiguous, row-major, `shape` long. */
export class TorchTensor implements PickleObject {
  readonly pickleObject = true as const;
  constructor(
    readonly dtype: TorchDtype,
    readonly shape: readonly number[],
    readonly data: TorchData,
    /** The storage it was a view of (reader only): tensors with one key shared memory in Python. */
    readonly storageKey = '',
  ) {}
  /** Number of elements. */
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  /** The values as float32 (exact for F16/BF16; F64 is rounded). */
  toFloat32(): Float32Array {
    switch (this.dtype) {
      case 'F32':
        return this.data as Float32Array;
      case 'F16':
        return f16ToF32(this.data as Uint16Array);
      case 'BF16':
        return bf16ToF32(this.data as Uint16Array);
      case 'F64':
        return Float32Array.from(this.data as Float64Array);
    }
  }
  /** `nn.Parameter(...)` state is dropped: a parameter loads as its plain tensor. */
  build(): void {}
}

/** What a torch file may hold here: tensors in lists, tuples and dicts, and plain Python scalars and strings. */
export type TorchValue = PickleValue;
export { PickleTuple };

const STORAGE_DTYPES: Readonly<Record<string, TorchDtype>> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
};
const STORAGE_NAMES: Readonly<Record<TorchDtype, string>> = {
  F32: 'FloatStorage',
  F16: 'HalfStorage',
  BF16: 'BFloat16Storage',
  F64: 'DoubleStorage',
};
/** Storage types torch has that this reader recognises only to name them in the refusal. */
const OTHER_STORAGES =
  /^(Long|Int|Short|Char|Byte|Bool|ComplexFloat|ComplexDouble|QInt8|QUInt8|QInt32|Untyped)Storage$/;
const DTYPE_BYTES: Readonly<Record<TorchDtype, number>> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

const FIX = 're-save it with torch.save(obj, path) holding only float tensors in lists, tuples and dicts';

/** A storage type named in a persistent id. */
class StorageType extends PickleGlobal {
  constructor(
    readonly dtype: TorchDtype,
    name: string,
  ) {
    super(`torch.${name}`, () => {
      throw new EmlensError(
        `A torch file calls torch.${name} directly, which torch.save never does; ${FIX}.`,
      );
    });
  }
}

/** A loaded storage: raw bytes of `numel` elements of `dtype`. */
class Storage implements PickleObject {
  readonly pickleObject = true as const;
  constructor(
    readonly key: string,
    readonly dtype: TorchDtype,
    readonly numel: number,
    readonly bytes: Uint8Array,
  ) {}
}

/** Reads a torch file held in memory; `file` names it in messages. */
export function decodeTorchPt(bytes: Uint8Array, file = '<buffer>'): TorchValue {
  const what = `PyTorch file ${file}`;
  if (bytes.length >= 2 && bytes[0] === 0x80 && bytes[1] === 0x02) {
    throw new EmlensError(
      `${what} uses torch's legacy (pre-1.6, non-zip) format, which emlens does not read; load it in Python and re-save it with torch.save(obj, path) (the zip format, the default since torch 1.6).`,
    );
  }
  if (bytes.length < 4 || bytes[0] !== 0x50 || bytes[1] !== 0x4b) {
    throw new EmlensError(
      `${what} is not a torch.save file (it does not start with a zip header); pass a file written by torch.save.`,
    );
  }
  const entries = readZipEntries(bytes, what, FIX);
  const pkl = [...entries.keys()].find((n) => /^[^/]+\/data\.pkl$/.test(n) || n === 'data.pkl');
  if (pkl === undefined) {
    throw new EmlensError(
      `${what} is a zip archive without a data.pkl record, so it is not a torch.save file (TorchScript archives and others are not read); ${FIX}.`,
    );
  }
  const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length);
  const order = entries.get(`${prefix}byteorder`);
  if (order !== undefined) {
    const o = new TextDecoder().decode(zipEntryData(bytes, order, what, FIX)).trim();
    if (o !== 'little') {
      throw new EmlensError(`${what} stores its tensors ${o}-endian; re-save it on a little-endian machine.`);
    }
  }
  const storages = new Map<string, Storage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!(pid instanceof PickleTuple) || pid.items[0] !== 'storage' || pid.items.length < 5) {
      throw new EmlensError(`${what} holds a persistent id that is not a torch storage; ${FIX}.`);
    }
    const [, type, key, , numel] = pid.items;
    if (!(type instanceof StorageType) || typeof key !== 'string' || typeof numel !== 'number') {
      throw new EmlensError(`${what} holds a malformed storage reference; ${FIX}.`);
    }
    const have = storages.get(key);
    if (have !== undefined) return have;
    const entry = entries.get(`${prefix}data/${key}`);
    if (entry === undefined) {
      throw new EmlensError(
        `${what} refers to storage ${key}, but the archive has no ${prefix}data/${key}; ${FIX}.`,
      );
    }
    const need = numel * DTYPE_BYTES[type.dtype];
    if (entry.size < need) {
      throw new EmlensError(
        `${what} has storage ${key} of ${entry.size} bytes, but its ${numel} ${type.dtype} elements need ${need}; the file is truncated or corrupt.`,
      );
    }
    const s = new Storage(key, type.dtype, numel, zipEntryData(bytes, entry, what, FIX));
    storages.set(key, s);
    return s;
  };
  const pickleEntry = entries.get(pkl)!; // pkl is a key of entries
  return unpickle(zipEntryData(bytes, pickleEntry, what, FIX), {
    what,
    fix: FIX,
    persistentLoad,
    resolveGlobal: (module, name) => resolveGlobal(module, name, what),
  });
}

/** Reads a `torch.save` file (see the module comment for what it accepts). */
export async function readTorchPt(path: string): Promise<TorchValue> {
  return decodeTorchPt(await readUserFile(path, 'PyTorch file', null), path);
}

/** The allow-list: the globals a weights-only torch file of float tensors uses, as TypeScript stand-ins. */
function resolveGlobal(module: string, name: string, what: string): PickleGlobal | undefined {
  const qual = `${module}.${name}`;
  if (module === 'torch' || module === 'torch.storage') {
    const dtype = STORAGE_DTYPES[name];
    if (dtype !== undefined) return new StorageType(dtype, name);
    if (OTHER_STORAGES.test(name)) {
      throw new EmlensError(
        `${what} holds a ${qual} (a non-float tensor), but emlens reads only float32, float16, bfloat16 and float64 tensors; convert it with .float() before torch.save.`,
      );
    }
    return undefined;
  }
  if (qual === 'collections.OrderedDict') return new PickleGlobal(qual, () => new Map());
  if (qual === 'torch._utils._rebuild_tensor_v2')
    return new PickleGlobal(qual, (a) => rebuildTensor(a, what));
  if (qual === 'torch._utils._rebuild_parameter' || qual === 'torch._utils._rebuild_parameter_with_state') {
    return new PickleGlobal(qual, (a) => {
      if (!(a[0] instanceof TorchTensor))
        throw new EmlensError(`${what} has a parameter without a tensor; ${FIX}.`);
      return a[0];
    });
  }
  return undefined;
}

/** `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`. */
function rebuildTensor(args: readonly PickleValue[], what: string): TorchTensor {
  const [storage, offset, size, stride] = args;
  const ints = (v: PickleValue): number[] | null =>
    v instanceof PickleTuple &&
    v.items.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0)
      ? (v.items as number[])
      : null;
  const shape = ints(size ?? null);
  const strides = ints(stride ?? null);
  if (
    !(storage instanceof Storage) ||
    typeof offset !== 'number' ||
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    shape === null ||
    strides === null ||
    shape.length !== strides.length
  ) {
    throw new EmlensError(
      `${what} has a malformed tensor (storage, offset, size and stride do not fit together); ${FIX}.`,
    );
  }
  const n = shape.reduce((a, b) => a * b, 1);
  // The last element a view touches must lie inside its storage.
  const last = n === 0 ? offset : offset + shape.reduce((a, d, i) => a + (d - 1) * strides[i]!, 0);
  if (n > 0 && last >= storage.numel) {
    throw new EmlensError(
      `${what} has a tensor view of shape [${shape.join(', ')}] that reaches element ${last} of storage ${storage.key}, which has ${storage.numel}; the file is corrupt.`,
    );
  }
  const es = DTYPE_BYTES[storage.dtype];
  // Copy the storage into an aligned buffer of its element type, then gather the view's elements in order.
  // A fresh copy: Buffer#slice would share memory (and the pool's offset) instead.
  const raw = new Uint8Array(storage.numel * es);
  raw.set(storage.bytes.subarray(0, raw.length));
  const src: TorchData =
    storage.dtype === 'F32'
      ? new Float32Array(raw.buffer, 0, storage.numel)
      : storage.dtype === 'F64'
        ? new Float64Array(raw.buffer, 0, storage.numel)
        : new Uint16Array(raw.buffer, 0, storage.numel);
  const out: TorchData =
    storage.dtype === 'F32'
      ? new Float32Array(n)
      : storage.dtype === 'F64'
        ? new Float64Array(n)
        : new Uint16Array(n);
  const idx = new Array<number>(shape.length).fill(0);
  let at = offset;
  for (let i = 0; i < n; i++) {
    out[i] = src[at]!; // at <= last < storage.numel (checked above)
    // Odometer over the shape, last dimension fastest, keeping `at` = offset + sum(idx * stride).
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d]!++;
      at += strides[d]!;
      if (idx[d]! < shape[d]!) break;
      at -= idx[d]! * strides[d]!;
      idx[d] = 0;
    }
  }
  return new TorchTensor(storage.dtype, shape, out, storage.key);
}

/** What {@link encodeTorchPt} writes: tensors in lists, tuples, dicts (string or int keys), and scalars. */
export type TorchWritable =
  | TorchTensor
  | null
  | boolean
  | number
  | string
  | readonly TorchWritable[]
  | PickleTuple
  | ReadonlyMap<string | number, TorchWritable>
  | { readonly [key: string]: TorchWritable };

/** A float32 tensor to write, optionally stored as `dtype` (rounded to nearest even for F16/BF16). */
export function torchTensor(
  values: Float32Array | Float64Array,
  shape?: readonly number[],
  dtype: TorchDtype = 'F32',
): TorchTensor {
  const s = shape ?? [values.length];
  if (s.reduce((a, b) => a * b, 1) !== values.length) {
    throw new EmlensError(
      `A tensor of shape [${s.join(', ')}] needs ${s.reduce((a, b) => a * b, 1)} values, not ${values.length}.`,
    );
  }
  const f32 = values instanceof Float32Array ? values : Float32Array.from(values);
  const data: TorchData =
    dtype === 'F64'
      ? values instanceof Float64Array
        ? values
        : Float64Array.from(values)
      : dtype === 'F16'
        ? f32ToF16(f32)
        : dtype === 'BF16'
          ? f32ToBf16(f32)
          : f32;
  return new TorchTensor(dtype, s, data);
}

/**
 * Encodes a value as a `torch.save` zip archive (protocol-2 pickle, archive prefix `archive/`): each tensor
 * gets its own contiguous storage. `torch.load(path, weights_only=True)` accepts the result.
 */
export function encodeTorchPt(value: TorchWritable): Uint8Array {
  const w = new PickleWriter();
  const storages: ZipInput[] = [];
  w.byte(0x80, 2); // PROTO 2
  w.value(value, (t) => {
    const key = String(storages.length);
    storages.push({
      name: `archive/data/${key}`,
      data: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength).slice(),
    });
    return key;
  });
  w.byte(0x2e); // STOP
  const enc = new TextEncoder();
  return encodeZipStored([
    { name: 'archive/data.pkl', data: w.bytes() },
    { name: 'archive/.format_version', data: enc.encode('1') },
    { name: 'archive/.storage_alignment', data: enc.encode('64') },
    { name: 'archive/byteorder', data: enc.encode('little') },
    ...storages,
    { name: 'archive/version', data: enc.encode('3\n') },
  ]);
}

/** Emits the pickle opcodes of protocol 2 for {@link TorchWritable} values (no memo: nothing repeats). */
class PickleWriter {
  private readonly parts: number[] = [];
  private readonly chunks: Uint8Array[] = [];

  byte(...b: number[]): void {
    this.parts.push(...b);
  }
  private flush(): void {
    if (this.parts.length > 0) this.chunks.push(Uint8Array.from(this.parts.splice(0)));
  }
  private raw(b: Uint8Array): void {
    this.flush();
    this.chunks.push(b);
  }
  bytes(): Uint8Array {
    this.flush();
    const out = new Uint8Array(this.chunks.reduce((a, c) => a + c.length, 0));
    let o = 0;
    for (const c of this.chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
  global(module: string, name: string): void {
    this.byte(0x63);
    this.raw(new TextEncoder().encode(`${module}\n${name}\n`));
  }
  str(s: string): void {
    const b = new TextEncoder().encode(s);
    const n = new Uint8Array(4);
    new DataView(n.buffer).setUint32(0, b.length, true);
    this.byte(0x58, ...n); // BINUNICODE
    this.raw(b);
  }
  int(v: number): void {
    if (v >= 0 && v < 256) this.byte(0x4b, v);
    else if (v >= -(2 ** 31) && v < 2 ** 31) {
      const n = new Uint8Array(4);
      new DataView(n.buffer).setInt32(0, v, true);
      this.byte(0x4a, ...n);
    } else {
      // LONG1: little-endian two's complement, 8 bytes is enough for a safe integer.
      const n = new Uint8Array(8);
      new DataView(n.buffer).setBigInt64(0, BigInt(v), true);
      this.byte(0x8a, 8, ...n);
    }
  }
  float(v: number): void {
    const n = new Uint8Array(8);
    new DataView(n.buffer).setFloat64(0, v, false);
    this.byte(0x47, ...n);
  }
  tuple(items: readonly number[]): void {
    if (items.length === 0) {
      this.byte(0x29);
      return;
    }
    this.byte(0x28);
    for (const v of items) this.int(v);
    this.byte(0x74);
  }
  tensor(t: TorchTensor, storageKey: (t: TorchTensor) => string): void {
    const stride = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    this.global('torch._utils', '_rebuild_tensor_v2');
    this.byte(0x28); // MARK of the argument tuple
    this.byte(0x28); // persistent id tuple
    this.str('storage');
    this.global('torch', STORAGE_NAMES[t.dtype]);
    this.str(storageKey(t));
    this.str('cpu');
    this.int(t.numel);
    this.byte(0x74, 0x51); // TUPLE, BINPERSID
    this.int(0);
    this.tuple(t.shape);
    this.tuple(stride);
    this.byte(0x89); // requires_grad False
    this.global('collections', 'OrderedDict');
    this.byte(0x29, 0x52); // OrderedDict()
    this.byte(0x74, 0x52); // TUPLE, REDUCE
  }
  value(v: TorchWritable, storageKey: (t: TorchTensor) => string): void {
    if (v instanceof TorchTensor) {
      if (v.data.length !== v.numel) {
        throw new EmlensError(
          `A tensor of shape [${v.shape.join(', ')}] holds ${v.data.length} values; it needs ${v.numel}.`,
        );
      }
      this.tensor(v, storageKey);
    } else if (v === null) this.byte(0x4e);
    else if (v === true) this.byte(0x88);
    else if (v === false) this.byte(0x89);
    else if (typeof v === 'number') {
      if (Number.isSafeInteger(v)) this.int(v);
      else this.float(v);
    } else if (typeof v === 'string') this.str(v);
    else if (v instanceof PickleTuple) {
      this.byte(0x28);
      for (const x of v.items) this.value(x as TorchWritable, storageKey);
      this.byte(0x74);
    } else if (Array.isArray(v)) {
      this.byte(0x5d, 0x28); // EMPTY_LIST, MARK
      for (const x of v) this.value(x, storageKey);
      this.byte(0x65); // APPENDS
    } else {
      const entries: [string | number, TorchWritable][] =
        v instanceof Map ? [...(v as ReadonlyMap<string | number, TorchWritable>)] : Object.entries(v);
      this.byte(0x7d, 0x28); // EMPTY_DICT, MARK
      for (const [k, x] of entries) {
        if (typeof k === 'number') this.int(k);
        else this.str(k);
        this.value(x, storageKey);
      }
      this.byte(0x75); // SETITEMS
    }
  }
}

/**
 * Writes a value as a `torch.save` file, atomically; refuses to replace a file unless `overwrite`.
 *
 * @example
 * await writeTorchPt('dirs.pt', [torchTensor(v0), torchTensor(v1)]); // torch.load('dirs.pt', weights_only=True)
 */
export async function writeTorchPt(
  path: string,
  value: TorchWritable,
  opts: { readonly overwrite?: boolean; readonly flag?: string } = {},
): Promise<void> {
  const bytes = encodeTorchPt(value);
  await claimOutputFile(path, { overwrite: opts.overwrite, createParent: true, flag: opts.flag });
  await mkdir(dirname(path), { recursive: true });
  await writeAtomic(path, bytes);
}
