/**
 * llama.cpp control vectors: GGUF files with `general.architecture = controlvector` and one F32 tensor
 * `direction.N` per layer, which llama.cpp (`--control-vector FILE`) adds to the residual stream.
 *
 * Layer convention. emlens block `i` (0-based, `blocks.{i}.hook_resid_post`, = HF `hidden_states[i + 1]`)
 * maps to GGUF `direction.{i}`, the same number:
 * - llama.cpp's loader (`llama_control_vector_load_one`, common/common.cpp) parses N from `direction.N`,
 *   rejects N = 0 ("invalid (zero) direction tensor layer index") and stores the vector at `data[N - 1]`;
 *   `llama_adapter_cvec::apply` copies `data[il - 1]` into `tensors[il]` for il >= 1 (there is never a tensor
 *   for layer 0); each model's graph calls `cvec.apply_to(cur, il)` (`build_cvec`) on `cur` at the very end of
 *   the loop body of layer `il` (0-based), after the FFN residual add — the output of block `il`.
 *   So `direction.N` is added to the output of block N (0-based), which is emlens `blocks.{N}.hook_resid_post`.
 * - repeng agrees: its `ControlModel` adds `directions[i]` to the output of `model.layers[i]` and
 *   `export_gguf` names it `direction.{i}`; llama.cpp's own `cvector-generator` writes `direction.{il + 1}`
 *   for the output of block `il + 1` (it never writes block 0).
 * - Consequence: block 0 cannot be expressed in a control vector; {@link exportGguf} leaves it out and
 *   reports it in `skipped`, and {@link importGguf} rejects `direction.0` as llama.cpp does.
 *
 * Besides the llama.cpp keys, the exporter writes the direction file's provenance as `emlens.*` strings
 * (llama.cpp ignores unknown keys), so export -> import restores the metadata too.
 */

import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { readUserFile } from '../io/inputFiles.js';
import { claimOutputFile } from '../io/outputs.js';
import {
  type DirectionMeta,
  type DirectionSet,
  directionMetadata,
  directionSet,
  PROVENANCE_KEYS,
} from './direction.js';

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

const FIX = 're-export it (emlens direction export-gguf, or llama.cpp cvector-generator)';

/** Reads the header, metadata and tensor infos of a GGUF file; strict about every length and offset. */
export function parseGguf(bytes: Uint8Array, file = '<buffer>'): GgufFile {
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
      `File ${file} is not a GGUF file: it starts with bytes [${head}] instead of 'GGUF'; pass a llama.cpp control vector (.gguf).`,
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

/** Options of {@link encodeControlVector} and {@link exportGguf}. */
export interface GgufExportOptions {
  /**
   * `controlvector.model_hint`, e.g. `qwen2` (the HF `model_type`); default: `meta.extra.model_hint` (kept by
   * {@link importGguf}), else guessed from `meta.model`, else omitted.
   */
  readonly modelHint?: string;
  /** Write the direction file's provenance as `emlens.*` keys (default true); false gives the bare llama.cpp keys. */
  readonly provenance?: boolean;
}

/** What an export wrote. */
export interface GgufExportResult {
  readonly path: string;
  /** emlens blocks written, each as `direction.{block}`. */
  readonly layers: readonly number[];
  /** Blocks that a control vector cannot hold (block 0). */
  readonly skipped: readonly number[];
  readonly modelHint: string | undefined;
}

/**
 * Direction metadata keys that do not travel as `emlens.*` strings: the derived ones are recomputed, and
 * `model_hint` (kept by an import) is `controlvector.model_hint` itself.
 */
const PROVENANCE_SKIP = new Set(['d_model', 'layers', 'norms', 'format', 'model_hint']);

/**
 * Encodes a direction set as a llama.cpp control-vector GGUF (v3, little-endian, alignment 32): block `i`
 * becomes `direction.{i}`; block 0 is left out (see the module comment).
 */
export function encodeControlVector(
  set: DirectionSet,
  opts: GgufExportOptions = {},
): { bytes: Buffer; layers: number[]; skipped: number[]; modelHint: string | undefined } {
  checkHook(set.meta.hook);
  const layers = [...set.vectors.keys()].filter((l) => l >= 1);
  const skipped = [...set.vectors.keys()].filter((l) => l < 1);
  if (layers.length === 0) {
    throw new EmlensError(
      'The direction set holds only block 0, which llama.cpp control vectors cannot hold (they start at block 1); compute directions at later layers.',
    );
  }
  const modelHint = opts.modelHint ?? set.meta.extra?.model_hint ?? guessModelHint(set.meta.model);
  const w = new GgufWriter();
  const kvs: [string, GgufType, GgufScalar][] = [['general.architecture', GgufType.STRING, 'controlvector']];
  if (modelHint !== undefined) kvs.push(['controlvector.model_hint', GgufType.STRING, modelHint]);
  kvs.push(['controlvector.layer_count', GgufType.UINT32, layers.length]);
  if (opts.provenance ?? true) {
    for (const [k, v] of Object.entries(directionMetadata(set))) {
      if (!PROVENANCE_SKIP.has(k)) kvs.push([`emlens.${k}`, GgufType.STRING, v]);
    }
  }
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(layers.length);
  w.u64(kvs.length);
  for (const [key, type, v] of kvs) {
    w.str(key);
    w.u32(type);
    if (type === GgufType.STRING) w.str(v as string);
    else w.u32(v as number);
  }
  let offset = 0;
  for (const layer of layers) {
    const v = set.vectors.get(layer)!;
    w.str(`direction.${layer}`);
    w.u32(1); // n_dims
    w.u64(v.length); // [d_model]
    w.u32(GGML_TYPE_F32);
    w.u64(offset);
    offset += alignUp(v.byteLength, GGUF_DEFAULT_ALIGNMENT);
  }
  w.pad(GGUF_DEFAULT_ALIGNMENT);
  for (const layer of layers) {
    const v = set.vectors.get(layer)!;
    w.f32(v);
    w.pad(GGUF_DEFAULT_ALIGNMENT);
  }
  return { bytes: w.finish(), layers, skipped, modelHint };
}

/**
 * Writes a direction set as a llama.cpp control vector (atomically; refuses to replace a file unless
 * `overwrite`).
 *
 * @example
 * await exportGguf(await loadDirections('em.safetensors'), 'em.gguf', { modelHint: 'qwen2' });
 * // llama-cli -m qwen2.5-7b-instruct.gguf --control-vector-scaled em.gguf 1.0
 */
export async function exportGguf(
  set: DirectionSet,
  path: string,
  opts: GgufExportOptions & { readonly overwrite?: boolean } = {},
): Promise<GgufExportResult> {
  const checked = directionSet(set.vectors, set.meta);
  const { bytes, layers, skipped, modelHint } = encodeControlVector(checked, opts);
  await claimOutputFile(path, { overwrite: opts.overwrite, createParent: true });
  await mkdir(dirname(path), { recursive: true });
  await writeAtomic(path, bytes);
  return { path, layers, skipped, modelHint };
}

/** Decodes a control-vector GGUF held in memory; `direction.N` becomes emlens block N (hook_resid_post). */
export function decodeControlVector(bytes: Uint8Array, file = '<buffer>'): DirectionSet {
  const g = parseGguf(bytes, file);
  const arch = g.kv.get('general.architecture');
  if (arch === undefined || arch.type !== GgufType.STRING) {
    throw new EmlensError(
      `GGUF file ${file} has no general.architecture string, so it is not a control vector; pass a file written by emlens, repeng or llama.cpp cvector-generator.`,
    );
  }
  if (arch.value !== 'controlvector') {
    throw new EmlensError(
      `GGUF file ${file} is a '${arch.value}' file, not a control vector (general.architecture must be 'controlvector'); pass a control-vector GGUF, not a model.`,
    );
  }
  if (g.tensors.length === 0) {
    throw new EmlensError(`GGUF control vector ${file} holds no tensors; ${FIX}.`);
  }
  const vectors: [number, Float32Array][] = [];
  const spans: { name: string; start: number; end: number }[] = [];
  let dModel = -1;
  for (const t of g.tensors) {
    const m = /^direction\.(0|[1-9][0-9]*)$/.exec(t.name);
    if (m === null) {
      throw new EmlensError(
        `GGUF control vector ${file} holds tensor '${t.name}', which is not named direction.N; ${FIX}.`,
      );
    }
    const layer = Number(m[1]);
    if (layer === 0) {
      throw new EmlensError(
        `GGUF control vector ${file} holds direction.0, which llama.cpp rejects (its layers start at 1, the output of block 1); ${FIX}.`,
      );
    }
    if (t.type !== GGML_TYPE_F32) {
      throw new EmlensError(
        `GGUF control vector ${file} stores '${t.name}' as ggml type ${t.type}, but control vectors must be F32 (type 0); ${FIX}.`,
      );
    }
    const n = t.dims.reduce((a, b) => a * b, 1);
    if (t.dims.length === 0 || t.dims.slice(1).some((d) => d !== 1) || n === 0) {
      throw new EmlensError(
        `GGUF control vector ${file} stores '${t.name}' with shape [${t.dims.join(', ')}], but a direction must be 1-D [n_embd]; ${FIX}.`,
      );
    }
    if (dModel >= 0 && n !== dModel) {
      throw new EmlensError(
        `GGUF control vector ${file} has '${t.name}' of length ${n} but earlier directions of length ${dModel}; all layers need the same n_embd.`,
      );
    }
    dModel = n;
    if (t.offset % g.alignment !== 0) {
      throw new EmlensError(
        `GGUF control vector ${file} has '${t.name}' at data offset ${t.offset}, not a multiple of the alignment ${g.alignment}; ${FIX}.`,
      );
    }
    const start = g.dataStart + t.offset;
    if (start + n * 4 > bytes.length) {
      throw new EmlensError(
        `GGUF file ${file} is truncated: '${t.name}' needs bytes ${start}..${start + n * 4} but the file has ${bytes.length}; ${FIX}.`,
      );
    }
    const v = new Float32Array(n);
    new Uint8Array(v.buffer).set(bytes.subarray(start, start + n * 4));
    vectors.push([layer, v]);
    spans.push({ name: t.name, start: t.offset, end: t.offset + n * 4 });
  }
  // Two tensors over the same bytes would both read as valid directions (one holding the other's values): a
  // writer bug or a tampered file, never a layout llama.cpp writes.
  spans.sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    const [a, b] = [spans[i - 1], spans[i]];
    if (b.start < a.end) {
      throw new EmlensError(
        `GGUF control vector ${file} is corrupt: tensors '${a.name}' (bytes ${a.start}..${a.end} of the data) and '${b.name}' (bytes ${b.start}..${b.end}) overlap; ${FIX}.`,
      );
    }
  }
  const s = (key: string): string | undefined => {
    const e = g.kv.get(key);
    return e !== undefined && e.type === GgufType.STRING ? (e.value as string) : undefined;
  };
  const count = (key: string): number => {
    const v = s(key);
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : 0;
  };
  const known = new Set<string>(PROVENANCE_KEYS);
  const extra: Record<string, string> = {};
  for (const [key, e] of g.kv) {
    if (key.startsWith('emlens.') && e.type === GgufType.STRING && !known.has(key.slice(7))) {
      if (!PROVENANCE_SKIP.has(key.slice(7))) extra[key.slice(7)] = e.value as string;
    }
  }
  const modelHint = s('controlvector.model_hint');
  // Kept so that re-exporting writes the same hint even when `model` is a local folder.
  if (modelHint !== undefined) extra.model_hint = modelHint;
  const meta: DirectionMeta = {
    model: s('emlens.model') ?? modelHint ?? 'unknown',
    // What llama.cpp does with direction.N: add it to the output of block N.
    hook: 'hook_resid_post',
    method: s('emlens.method') ?? 'unknown',
    positions: s('emlens.positions') ?? 'unknown',
    nPos: count('emlens.n_pos'),
    nNeg: count('emlens.n_neg'),
    sourcePos: s('emlens.source_pos') ?? '',
    sourceNeg: s('emlens.source_neg') ?? '',
    extra,
  };
  return directionSet(vectors, meta, `GGUF control vector ${file}`);
}

/** Reads a llama.cpp control vector; `direction.N` becomes emlens block N (`blocks.{N}.hook_resid_post`). */
export async function importGguf(path: string): Promise<DirectionSet> {
  const bytes = await readUserFile(path, 'GGUF file', null);
  return decodeControlVector(bytes, path);
}

/**
 * The llama.cpp model hint (HF `model_type`) for a model id or folder name, when it is recognisable:
 * `Qwen/Qwen2.5-7B-Instruct` -> `qwen2`. Undefined when unknown.
 */
export function guessModelHint(model: string): string | undefined {
  const m = model.toLowerCase();
  const rules: [RegExp, string][] = [
    [/qwen-?3/, 'qwen3'],
    [/qwen-?2/, 'qwen2'],
    [/gemma-?3/, 'gemma3'],
    [/gemma-?2/, 'gemma2'],
    [/gemma/, 'gemma'],
    [/mistral|mixtral/, 'mistral'],
    [/llama/, 'llama'],
  ];
  for (const [re, hint] of rules) if (re.test(m)) return hint;
  return undefined;
}

/** The hook must be a block output: that is where llama.cpp adds control vectors. */
function checkHook(hook: string): void {
  if (hook === 'unknown' || hook === '' || hook.endsWith('hook_resid_post')) return;
  throw new EmlensError(
    `These directions were read at ${hook}, but llama.cpp adds control vectors to each block's output (hook_resid_post); recompute them at hook_resid_post to export them.`,
  );
}

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
    for (let i = 0; i < v.length; i++) view.setFloat32(this.at + 4 * i, v[i], true);
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

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
