/**
 * Writes every golden of test/goldens/pt/expected.json again with emlens's own torch writer, into DIR, each
 * as DIR/<name>.pt beside DIR/<name>.json (its expected value), so that real torch can check them:
 *
 *   npx tsx test/goldens/write_pt_for_torch.ts /tmp/pt-check
 *   python test/goldens/make_pt_goldens.py --verify /tmp/pt-check
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PickleTuple, type PickleValue } from '../../src/io/pickle.js';
import { encodeTorchPt, type TorchDtype, type TorchWritable, torchTensor } from '../../src/io/torchPt.js';

type Expected =
  | null
  | boolean
  | number
  | string
  | Expected[]
  | { tensor: { dtype: TorchDtype; shape: number[]; values: number[] } }
  | { dict: [string | number, Expected][] }
  | { tuple: Expected[] };

function writable(want: Expected): TorchWritable {
  if (want !== null && typeof want === 'object' && 'tensor' in want) {
    return torchTensor(Float64Array.from(want.tensor.values), want.tensor.shape, want.tensor.dtype);
  }
  if (want !== null && typeof want === 'object' && 'dict' in want) {
    return new Map(want.dict.map(([k, v]) => [k, writable(v)] as const));
  }
  if (want !== null && typeof want === 'object' && 'tuple' in want)
    return new PickleTuple(want.tuple.map(writable) as PickleValue[]);
  if (Array.isArray(want)) return want.map(writable);
  return want;
}

const out = process.argv[2];
if (out === undefined) throw new Error('usage: write_pt_for_torch.ts DIR');
mkdirSync(out, { recursive: true });
const { files } = JSON.parse(readFileSync(join(import.meta.dirname, 'pt', 'expected.json'), 'utf8')) as {
  files: Record<string, Expected>;
};
for (const [name, want] of Object.entries(files)) {
  writeFileSync(join(out, `${name}.pt`), encodeTorchPt(writable(want)));
  writeFileSync(join(out, `${name}.json`), JSON.stringify(want));
}
console.log(`wrote ${Object.keys(files).length} files to ${out}`);
