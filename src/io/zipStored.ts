/**
 * A minimal zip reader and writer for archives of *stored* (uncompressed) entries: what `torch.save` writes
 * (PyTorch's inline_container, miniz underneath, never compresses). Enough of the format for that job and no
 * more: the end-of-central-directory record (and its zip64 form, which torch writes past 4 GiB or 65535
 * entries), central-directory entries with zip64 sizes, and local headers whose extra field torch uses as
 * padding to align each record's data to 64 bytes. Compressed, encrypted or multi-disk archives are refused.
 *
 * Every offset and length read from the file is checked against the file before use, so a truncated or
 * corrupt archive is refused with one sentence instead of reading past the end.
 */
import { EmlensError } from '../errors.js';

/** One stored entry: its name and where its bytes lie in the archive. */
export interface ZipEntry {
  readonly name: string;
  /** Offset of the entry's data (after its local header) in the archive. */
  readonly dataOffset: number;
  readonly size: number;
  readonly crc32: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
/** Largest EOCD search window: its fixed 22 bytes plus the longest archive comment. */
const EOCD_WINDOW = 22 + 0xffff;

let crcTable: Uint32Array | null = null;

/** CRC-32 (the zip polynomial), table-driven; zlib.crc32 is missing from early Node 20 releases. */
export function crc32(bytes: Uint8Array): number {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const t = crcTable;
  let c = 0xffffffff;
  // (c ^ byte) & 0xff < 256 = t.length
  for (let i = 0; i < bytes.length; i++) c = t[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Lists the entries of a stored-only zip archive held in memory. `what` names the file in messages, `fix`
 * says how to get a good one.
 */
export function readZipEntries(bytes: Uint8Array, what: string, fix: string): Map<string, ZipEntry> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = (why: string) => new EmlensError(`${what} is not a readable zip archive (${why}); ${fix}.`);
  const u16 = (o: number) => dv.getUint16(o, true);
  const u32 = (o: number) => dv.getUint32(o, true);
  const u64 = (o: number) => {
    const v = dv.getBigUint64(o, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('a zip64 field is too large');
    return Number(v);
  };
  const need = (o: number, n: number, part: string) => {
    if (o < 0 || o + n > bytes.length) throw bad(`${part} lies past the end of the file: it is truncated`);
  };

  let eocd = -1;
  for (let o = bytes.length - 22; o >= Math.max(0, bytes.length - EOCD_WINDOW); o--) {
    if (u32(o) === SIG_EOCD) {
      eocd = o;
      break;
    }
  }
  if (eocd < 0) throw bad('no end-of-central-directory record: the file is truncated or not a zip');
  if (u16(eocd + 4) !== 0 || u16(eocd + 6) !== 0) throw bad('it spans several disks');
  let count = u16(eocd + 10);
  let cdSize = u32(eocd + 12);
  let cdOffset = u32(eocd + 16);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // zip64: the locator sits just before the classic record and points at the zip64 record.
    const loc = eocd - 20;
    need(loc, 20, 'the zip64 locator');
    if (u32(loc) !== SIG_EOCD64_LOCATOR) throw bad('its zip64 end-of-central-directory locator is missing');
    const rec = u64(loc + 8);
    need(rec, 56, 'the zip64 end-of-central-directory record');
    if (u32(rec) !== SIG_EOCD64) throw bad('its zip64 end-of-central-directory record is missing');
    count = u64(rec + 32);
    cdSize = u64(rec + 40);
    cdOffset = u64(rec + 48);
  }
  need(cdOffset, cdSize, 'the central directory');

  const entries = new Map<string, ZipEntry>();
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    need(p, 46, 'a central-directory entry');
    if (u32(p) !== SIG_CENTRAL) throw bad(`central-directory entry ${i} has a wrong signature`);
    const flags = u16(p + 8);
    const method = u16(p + 10);
    const crc = u32(p + 16);
    let compressed = u32(p + 20);
    let size = u32(p + 24);
    const nameLen = u16(p + 28);
    const extraLen = u16(p + 30);
    const commentLen = u16(p + 32);
    let localOffset = u32(p + 42);
    need(p + 46, nameLen + extraLen + commentLen, 'a central-directory entry');
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLen));
    if (flags & 1) throw bad(`entry ${name} is encrypted`);
    if (method !== 0) {
      throw bad(`entry ${name} is compressed (method ${method}), but torch.save writes stored entries`);
    }
    // zip64 extra field: the 0xffffffff fields, in order size, compressed size, local header offset.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = u16(e);
      const len = u16(e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff && q + 8 <= e + 4 + len) {
          size = u64(q);
          q += 8;
        }
        if (compressed === 0xffffffff && q + 8 <= e + 4 + len) {
          compressed = u64(q);
          q += 8;
        }
        if (localOffset === 0xffffffff && q + 8 <= e + 4 + len) localOffset = u64(q);
      }
      e += 4 + len;
    }
    if (compressed !== size) throw bad(`entry ${name} has different stored and compressed sizes`);
    need(localOffset, 30, `the local header of ${name}`);
    if (u32(localOffset) !== SIG_LOCAL) throw bad(`the local header of ${name} has a wrong signature`);
    const dataOffset = localOffset + 30 + u16(localOffset + 26) + u16(localOffset + 28);
    need(dataOffset, size, `the data of ${name}`);
    if (entries.has(name)) throw bad(`it holds entry ${name} twice`);
    entries.set(name, { name, dataOffset, size, crc32: crc });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

/** The bytes of one entry, checked against its CRC-32 (a flipped bit in a storage would change a weight). */
export function zipEntryData(bytes: Uint8Array, entry: ZipEntry, what: string, fix: string): Uint8Array {
  const data = bytes.subarray(entry.dataOffset, entry.dataOffset + entry.size);
  if (crc32(data) !== entry.crc32) {
    throw new EmlensError(
      `${what} is corrupt: the CRC-32 of its entry ${entry.name} does not match its bytes; ${fix}.`,
    );
  }
  return data;
}

/** What {@link encodeZipStored} writes: a name and its bytes. */
export interface ZipInput {
  readonly name: string;
  readonly data: Uint8Array;
}

/**
 * Writes a stored-only zip archive, each entry's data aligned to `align` bytes (torch aligns to 64 so that
 * storages can be memory-mapped) by padding the local header's extra field, as torch does. Classic (non-zip64)
 * records only: archives past 4 GiB are refused (a direction file is kilobytes).
 */
export function encodeZipStored(files: readonly ZipInput[], align = 64): Uint8Array {
  const enc = new TextEncoder();
  const chunks: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const f of files) {
    const name = enc.encode(f.name);
    const crc = crc32(f.data);
    // 4 bytes of extra-field header (id 'FB', length) plus the padding itself.
    let pad = (align - ((offset + 30 + name.length + 4) % align)) % align;
    const extraLen = 4 + pad;
    if (extraLen > 0xffff) pad = 0;
    const local = new Uint8Array(30 + name.length + extraLen);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, SIG_LOCAL, true);
    lv.setUint16(4, 20, true); // version needed
    lv.setUint32(14, crc, true);
    lv.setUint32(18, f.data.length, true);
    lv.setUint32(22, f.data.length, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, extraLen, true);
    local.set(name, 30);
    lv.setUint16(30 + name.length, 0x4246, true); // 'FB', torch's padding field id
    lv.setUint16(32 + name.length, pad, true);
    const cd = new Uint8Array(46 + name.length);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, SIG_CENTRAL, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, f.data.length, true);
    cv.setUint32(24, f.data.length, true);
    cv.setUint16(28, name.length, true);
    cv.setUint32(42, offset, true);
    cd.set(name, 46);
    chunks.push(local, f.data);
    central.push(cd);
    offset += local.length + f.data.length;
    if (offset > 0xffffffff) {
      throw new EmlensError(
        'The archive would pass 4 GiB, which this writer does not support; write fewer tensors.',
      );
    }
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, SIG_EOCD, true);
  ev.setUint16(8, files.length, true);
  ev.setUint16(10, files.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  const out = new Uint8Array(offset + cdSize + 22);
  let o = 0;
  for (const c of [...chunks, ...central, eocd]) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}
