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
import {
  checkDisjoint,
  encodeGguf,
  GGML_TYPE_F32,
  type GgufHints,
  type GgufKvEntry,
  type GgufSpan,
  GgufType,
  parseGguf,
  tensorData,
} from '../io/gguf.js';
import { readUserFile } from '../io/inputFiles.js';
import { claimOutputFile } from '../io/outputs.js';
import {
  type DirectionMeta,
  type DirectionSet,
  directionMetadata,
  directionSet,
  PROVENANCE_KEYS,
} from './direction.js';

const FIX = 're-export it (emlens direction export-gguf, or llama.cpp cvector-generator)';
/** How container errors read for a control vector. */
const HINTS: GgufHints = {
  kind: 'GGUF control vector',
  fix: FIX,
  want: 'pass a llama.cpp control vector (.gguf)',
};

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
  const kv: GgufKvEntry[] = [{ key: 'general.architecture', type: GgufType.STRING, value: 'controlvector' }];
  if (modelHint !== undefined)
    kv.push({ key: 'controlvector.model_hint', type: GgufType.STRING, value: modelHint });
  kv.push({ key: 'controlvector.layer_count', type: GgufType.UINT32, value: layers.length });
  if (opts.provenance ?? true) {
    for (const [k, v] of Object.entries(directionMetadata(set))) {
      if (!PROVENANCE_SKIP.has(k)) kv.push({ key: `emlens.${k}`, type: GgufType.STRING, value: v });
    }
  }
  // layers are keys of set.vectors.
  const tensors = layers.map((layer) => ({ name: `direction.${layer}`, data: set.vectors.get(layer)! }));
  return { bytes: encodeGguf(kv, tensors), layers, skipped, modelHint };
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
  const g = parseGguf(bytes, file, HINTS);
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
  const spans: GgufSpan[] = [];
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
    const data = tensorData(g, t, n * 4, file, HINTS);
    const v = new Float32Array(n);
    new Uint8Array(v.buffer).set(data);
    vectors.push([layer, v]);
    spans.push({ name: t.name, start: t.offset, end: t.offset + n * 4 });
  }
  checkDisjoint(spans, file, HINTS);
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
