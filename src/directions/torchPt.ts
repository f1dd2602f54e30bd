/**
 * Direction files to and from PyTorch `torch.save` files, in the layouts that research code saves per-layer
 * directions in (the model-organisms-for-EM code saves a list of per-layer mean differences):
 * - a list or tuple of 1-D `[d_model]` tensors, element i = block i;
 * - one 2-D `[layers, d_model]` tensor, row i = block i;
 * - a dict from layer to 1-D tensor, keys ints (`3`) or strings ending in the layer number (`'3'`, `'layer_3'`,
 *   `'model.layers.3'`).
 * With `hiddenStates`, index i is HF `hidden_states[i]` instead (index 0 = the embeddings, dropped; i = block
 * i - 1), for code that saved one vector per entry of `output_hidden_states`.
 *
 * A .pt file has no place for emlens's provenance: import fills `model`/`method` with 'unknown' and records the
 * source file and layout in the metadata; export writes only the vectors.
 */
import { EmlensError } from '../errors.js';
import { PickleTuple } from '../io/pickle.js';
import {
  readTorchPt,
  type TorchDtype,
  TorchTensor,
  type TorchValue,
  torchTensor,
  writeTorchPt,
} from '../io/torchPt.js';
import { type DirectionSet, directionSet } from './direction.js';

/** How the vectors lie in the .pt file. */
export type PtLayout = 'list' | 'stacked' | 'dict';

export interface PtImportOptions {
  /** Index i is `hidden_states[i]` (0 = embeddings, dropped), i.e. block i - 1; default false (index = block). */
  readonly hiddenStates?: boolean;
  /** Block of a file that holds a single 1-D tensor (required for such a file). */
  readonly layer?: number;
}

export interface PtImport {
  readonly set: DirectionSet;
  readonly layout: PtLayout | 'single';
  /** One line saying what was found, e.g. "a list of 4 tensors [8]". */
  readonly description: string;
}

/** '3', 'layer_3', 'layer3', 'model.layers.3' (not 'f32': the number must stand apart or follow 'layer'). */
const LAYER_KEY = /^(?:.*[^A-Za-z0-9])?(?:layers?)?(\d+)$/;

const FIX =
  'save a list of per-layer [d_model] tensors, a [layers, d_model] tensor or a dict layer -> tensor with torch.save';

/** Turns the value of a torch file into per-layer vectors (see the module comment for the layouts). */
export function directionsFromTorchValue(
  value: TorchValue,
  file: string,
  opts: PtImportOptions = {},
): PtImport {
  const what = `PyTorch file ${file}`;
  const vec = (t: TorchValue, where: string): Float32Array => {
    if (!(t instanceof TorchTensor)) {
      throw new EmlensError(`${what} holds something other than a tensor at ${where}; ${FIX}.`);
    }
    if (t.shape.length !== 1) {
      throw new EmlensError(
        `${what} holds a tensor of shape [${t.shape.join(', ')}] at ${where}, but a direction is 1-D [d_model]; ${FIX}.`,
      );
    }
    return Float32Array.from(t.toFloat32());
  };
  let indexed: [number, Float32Array][];
  let layout: PtImport['layout'];
  let description: string;
  if (value instanceof TorchTensor && value.shape.length === 2) {
    const [rows, d] = value.shape as [number, number];
    const all = value.toFloat32();
    indexed = Array.from({ length: rows }, (_, i) => [
      i,
      Float32Array.from(all.subarray(i * d, (i + 1) * d)),
    ]);
    layout = 'stacked';
    description = `one [${rows}, ${d}] tensor (${value.dtype}), row i = layer i`;
  } else if (value instanceof TorchTensor && value.shape.length === 1) {
    if (opts.layer === undefined) {
      throw new EmlensError(
        `${what} holds a single [${value.shape[0]}] tensor, which names no layer; pass --layer N to say which block it belongs to.`,
      );
    }
    return {
      set: directionSet([[opts.layer, vec(value, 'the top level')]], meta(file, 'single'), what),
      layout: 'single',
      description: `one [${value.shape[0]}] tensor (${value.dtype}), given block ${opts.layer}`,
    };
  } else if (Array.isArray(value) || value instanceof PickleTuple) {
    const items = value instanceof PickleTuple ? value.items : value;
    indexed = items.map((t, i) => [i, vec(t, `index ${i}`)]);
    layout = 'list';
    const first = items[0];
    description = `a ${value instanceof PickleTuple ? 'tuple' : 'list'} of ${items.length} tensors${first instanceof TorchTensor ? ` [${first.shape.join(', ')}] (${first.dtype})` : ''}, element i = layer i`;
  } else if (value instanceof Map) {
    indexed = [...value].map(([k, t]) => {
      const m =
        typeof k === 'number' ? [String(k), String(k)] : typeof k === 'string' ? LAYER_KEY.exec(k) : null;
      if (m === null || m[1] === undefined) {
        throw new EmlensError(
          `${what} is a dict with key ${JSON.stringify(String(k))}, which does not end in a layer number; ${FIX}.`,
        );
      }
      return [Number(m[1]), vec(t, `key ${JSON.stringify(k)}`)];
    });
    layout = 'dict';
    description = `a dict of ${value.size} tensors keyed by layer (${[...value.keys()].slice(0, 3).map(String).join(', ')}${value.size > 3 ? ', ...' : ''})`;
  } else {
    throw new EmlensError(`${what} holds neither a list, a tensor nor a dict of tensors; ${FIX}.`);
  }
  if (opts.hiddenStates) {
    indexed = indexed.filter(([i]) => i > 0).map(([i, v]) => [i - 1, v]);
    description += '; as hidden_states: index 0 (embeddings) dropped, index i = block i - 1';
  }
  return { set: directionSet(indexed, meta(file, layout), what), layout, description };
}

function meta(file: string, layout: string): DirectionSet['meta'] {
  return {
    model: 'unknown',
    hook: 'hook_resid_post',
    method: 'unknown',
    positions: 'unknown',
    nPos: 0,
    nNeg: 0,
    sourcePos: file,
    sourceNeg: '',
    extra: { imported_from: 'pt', pt_layout: layout },
  };
}

/** Reads per-layer directions from a `torch.save` file (never running pickled code). */
export async function importPt(path: string, opts: PtImportOptions = {}): Promise<PtImport> {
  return directionsFromTorchValue(await readTorchPt(path), path, opts);
}

export interface PtExportOptions {
  /** Default: 'list' when the layers are 0..n-1, else 'dict' (int keys). 'stacked' also needs 0..n-1. */
  readonly layout?: PtLayout;
  /** Element type written (default F32). */
  readonly dtype?: TorchDtype;
  readonly overwrite?: boolean;
}

/**
 * Writes a direction set as a `torch.save` file that `torch.load(path, weights_only=True)` reads.
 *
 * @example
 * await exportPt(await loadDirections('em.safetensors'), 'em.pt'); // python: torch.load('em.pt', weights_only=True)
 */
export async function exportPt(
  set: DirectionSet,
  path: string,
  opts: PtExportOptions = {},
): Promise<{ path: string; layout: PtLayout; layers: number[] }> {
  const layers = [...set.vectors.keys()];
  const dense = layers.every((l, i) => l === i);
  const layout = opts.layout ?? (dense ? 'list' : 'dict');
  const dtype = opts.dtype ?? 'F32';
  if (layout !== 'dict' && !dense) {
    throw new EmlensError(
      `The direction set holds layers ${layers.join(', ')}, not 0..${layers.length - 1}, so a ${layout} would lose which block each vector is; use --layout dict.`,
    );
  }
  const vectors = [...set.vectors.values()];
  const value =
    layout === 'list'
      ? vectors.map((v) => torchTensor(v, undefined, dtype))
      : layout === 'dict'
        ? new Map([...set.vectors].map(([l, v]) => [l, torchTensor(v, undefined, dtype)] as const))
        : stacked(vectors, dtype);
  await writeTorchPt(path, value, { overwrite: opts.overwrite });
  return { path, layout, layers };
}

/** [layers, d_model], row i = block i. */
function stacked(vectors: readonly Float32Array[], dtype: TorchDtype): TorchTensor {
  const d = vectors[0]?.length ?? 0;
  const all = new Float32Array(vectors.length * d);
  for (const [i, v] of vectors.entries()) all.set(v, i * d);
  return torchTensor(all, [vectors.length, d], dtype);
}
