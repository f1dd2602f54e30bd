import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PickleTuple, type PickleValue } from '../../src/io/pickle.js';
import {
  decodeTorchPt,
  encodeTorchPt,
  readTorchPt,
  TorchTensor,
  type TorchWritable,
  torchTensor,
  writeTorchPt,
} from '../../src/io/torchPt.js';

const GOLDENS = join(import.meta.dirname, '..', 'goldens', 'pt');

type Expected =
  | null
  | boolean
  | number
  | string
  | Expected[]
  | { tensor: { dtype: string; shape: number[]; values: number[]; storage: string } }
  | { dict: [string | number, Expected][] }
  | { tuple: Expected[] };

/** Compares a value read by emlens with torch's own view of it; `keys` maps expected storage -> read storage. */
function check(got: PickleValue, want: Expected, where: string, keys: Map<string, string>): void {
  if (want !== null && typeof want === 'object' && 'tensor' in want) {
    expect(got, where).toBeInstanceOf(TorchTensor);
    const t = got as TorchTensor;
    expect(t.dtype, where).toBe(want.tensor.dtype);
    expect(t.shape, where).toEqual(want.tensor.shape);
    const values = t.dtype === 'F64' ? [...(t.data as Float64Array)] : [...t.toFloat32()];
    expect(values, where).toEqual(want.tensor.values);
    // Tensors that shared a storage in torch share its key here, and only those.
    const seen = keys.get(want.tensor.storage);
    if (seen === undefined) {
      expect([...keys.values()], where).not.toContain(t.storageKey);
      keys.set(want.tensor.storage, t.storageKey);
    } else expect(t.storageKey, where).toBe(seen);
  } else if (want !== null && typeof want === 'object' && 'dict' in want) {
    expect(got, where).toBeInstanceOf(Map);
    const m = got as Map<PickleValue, PickleValue>;
    expect([...m.keys()], where).toEqual(want.dict.map(([k]) => k));
    for (const [k, v] of want.dict) check(m.get(k)!, v, `${where}[${k}]`, keys);
  } else if (want !== null && typeof want === 'object' && 'tuple' in want) {
    expect(got, where).toBeInstanceOf(PickleTuple);
    const items = (got as PickleTuple).items;
    expect(items.length, where).toBe(want.tuple.length);
    for (const [i, w] of want.tuple.entries()) check(items[i]!, w, `${where}[${i}]`, keys);
  } else if (Array.isArray(want)) {
    expect(Array.isArray(got), where).toBe(true);
    const items = got as PickleValue[];
    expect(items.length, where).toBe(want.length);
    for (const [i, w] of want.entries()) check(items[i]!, w, `${where}[${i}]`, keys);
  } else {
    expect(got, where).toEqual(want);
  }
}

/** Rebuilds a writable value (torch's view) from the expected JSON, for round trips through emlens's writer. */
function writable(want: Expected): TorchWritable {
  if (want !== null && typeof want === 'object' && 'tensor' in want) {
    const { dtype, shape, values } = want.tensor;
    return torchTensor(Float64Array.from(values), shape, dtype as 'F32');
  }
  if (want !== null && typeof want === 'object' && 'dict' in want) {
    return new Map(want.dict.map(([k, v]) => [k, writable(v)] as const));
  }
  if (want !== null && typeof want === 'object' && 'tuple' in want)
    return new PickleTuple(want.tuple.map(writable) as PickleValue[]);
  if (Array.isArray(want)) return want.map(writable);
  return want;
}

const expected = JSON.parse(await readFile(join(GOLDENS, 'expected.json'), 'utf8')) as {
  files: Record<string, Expected>;
};

describe('torch.save files written by real torch', () => {
  for (const [name, want] of Object.entries(expected.files)) {
    it(`reads ${name}.pt as torch does`, async () => {
      check(await readTorchPt(join(GOLDENS, `${name}.pt`)), want, name, new Map());
    });
  }

  it('reads shared storages and strided views with their offsets', async () => {
    const v = (await readTorchPt(join(GOLDENS, 'shared.pt'))) as Map<string, TorchTensor>;
    expect([...v.get('tail')!.toFloat32()]).toEqual([1.5, 2.5, 3.5, 4.5]);
    expect(v.get('head')!.storageKey).toBe(v.get('base')!.storageKey);
  });
});

describe('round trip through emlens writer and reader', () => {
  for (const [name, want] of Object.entries(expected.files)) {
    it(`${name}: write then read gives torch's values`, () => {
      const bytes = encodeTorchPt(writable(want));
      // Every tensor gets its own storage when written, so storage keys are not compared here.
      const strip = (w: Expected): Expected =>
        w !== null && typeof w === 'object' && 'tensor' in w
          ? { tensor: { ...w.tensor, storage: Math.random().toString() } }
          : w !== null && typeof w === 'object' && 'dict' in w
            ? { dict: w.dict.map(([k, x]) => [k, strip(x)]) }
            : w !== null && typeof w === 'object' && 'tuple' in w
              ? { tuple: w.tuple.map(strip) }
              : Array.isArray(w)
                ? w.map(strip)
                : w;
      check(decodeTorchPt(bytes, name), strip(want), name, new Map());
    });
  }

  it('writes a file and refuses to overwrite it without overwrite', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'emlens-pt-'));
    const path = join(dir, 'd.pt');
    await writeTorchPt(path, [torchTensor(Float32Array.of(1, -2.5)), torchTensor(Float32Array.of(0.25, 3))]);
    const got = (await readTorchPt(path)) as TorchTensor[];
    expect([...got[1]!.toFloat32()]).toEqual([0.25, 3]);
    await expect(writeTorchPt(path, [])).rejects.toThrow(/--overwrite/);
    await writeTorchPt(path, { a: torchTensor(Float32Array.of(7)) }, { overwrite: true });
    expect([...((await readTorchPt(path)) as Map<string, TorchTensor>).get('a')!.toFloat32()]).toEqual([7]);
  });
});

describe('refusals', () => {
  it('refuses GLOBAL posix.system without running it', async () => {
    await expect(readTorchPt(join(GOLDENS, 'evil_system.pt'))).rejects.toThrow(
      /refused: its pickle names the global posix\.system, which is not on emlens's allow-list/,
    );
  });
  it('refuses builtins.eval', async () => {
    await expect(readTorchPt(join(GOLDENS, 'evil_eval.pt'))).rejects.toThrow(
      /global (builtins|__builtin__)\.eval/,
    );
  });
  it('refuses int64 tensors by naming their storage type', async () => {
    await expect(readTorchPt(join(GOLDENS, 'int64.pt'))).rejects.toThrow(
      /torch\.LongStorage \(a non-float tensor\).*\.float\(\)/,
    );
  });
  it('refuses a truncated archive', async () => {
    const bytes = await readFile(join(GOLDENS, 'list.pt'));
    expect(() => decodeTorchPt(bytes.subarray(0, bytes.length - 30), 'cut.pt')).toThrow(
      /not a readable zip archive .*truncated/,
    );
    expect(() => decodeTorchPt(bytes.subarray(0, 1000), 'cut.pt')).toThrow(/truncated/);
  });
  it('refuses a flipped bit in a storage (CRC-32)', async () => {
    const bytes = Uint8Array.from(encodeTorchPt([torchTensor(Float32Array.of(1, 2, 3))]));
    const at = Buffer.from(bytes).indexOf(Buffer.from(Float32Array.of(1, 2, 3).buffer));
    bytes[at + 1]! ^= 1;
    expect(() => decodeTorchPt(bytes, 'flip.pt')).toThrow(
      /corrupt: the CRC-32 of its entry archive\/data\/0/,
    );
  });
  it('refuses a legacy (non-zip) file and a non-torch file', async () => {
    expect(() => decodeTorchPt(Uint8Array.of(0x80, 0x02, 0x8a, 0x0a), 'old.pt')).toThrow(/legacy/);
    expect(() => decodeTorchPt(new TextEncoder().encode('hello'), 'x.pt')).toThrow(/not a torch\.save file/);
  });
});
