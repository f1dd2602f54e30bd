/**
 * Recognising what each input of `emlens report` is, from its files alone: a demo output folder, an eval
 * folder, direction files, an activation store, a mediation or sweep output, a direction comparison, a
 * benchmark/results folder, or a folder that holds several of these. Anything else is reported with the
 * reason it was not recognised.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { MANIFEST_FILE, STORE_FORMAT } from '../activations/manifest.js';
import { EVAL_FILES } from '../eval/sample.js';
import { SUMMARIZE_FORMAT } from '../eval/summarizeFiles.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { InputKind } from './model.js';

/** A recognised input, or the reason it was not. */
export type Detected =
  | { readonly kind: 'demo'; readonly path: string }
  | { readonly kind: 'eval'; readonly path: string }
  /** A direction file, or a folder of them (`files`). */
  | { readonly kind: 'directions'; readonly path: string; readonly files: readonly string[] }
  | {
      readonly kind:
        | 'comparison'
        | 'mediation'
        | 'sweep'
        | 'summarize'
        | 'transfer'
        | 'lora-trajectory'
        | 'projection';
      readonly path: string;
      readonly json: string;
    }
  /** A store, or a folder of stores (`stores`). */
  | { readonly kind: 'store'; readonly path: string; readonly stores: readonly string[] }
  /** A benchmark JSON file or a results folder (JSON, plots, markdown), with what its subfolders hold. */
  | {
      readonly kind: 'benchmark';
      readonly path: string;
      readonly files: readonly string[];
      readonly children: readonly Detected[];
    }
  /** A folder that is none of these but holds some. */
  | { readonly kind: 'collection'; readonly path: string; readonly children: readonly Detected[] }
  | { readonly kind: null; readonly path: string; readonly reason: string };

/** Files the report itself writes; a results folder's copies of them are not inputs. */
const OWN_OUTPUTS = /^(report\.(html|md|json)|report-screenshot\.png)$/;
const IMAGE = /\.(svg|png)$/i;
const DIRECTION_TENSOR = /^direction\.(0|[1-9][0-9]*)$/;

async function kindOfPath(p: string): Promise<'file' | 'dir' | null> {
  try {
    const s = await stat(p);
    return s.isDirectory() ? 'dir' : s.isFile() ? 'file' : null;
  } catch {
    return null;
  }
}

async function readJson(p: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(p, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

/** A mediation report (what `mediation` returns and writeMediation stores). */
export function isMediationReport(x: unknown): boolean {
  return isObject(x) && 'fractionMediated' in x && isObject(x.kl) && typeof x.direction === 'string';
}

/** What a parsed JSON document is, by its fields; null for none of the emlens outputs. */
export function classifyJson(x: unknown): InputKind | null {
  if (!isObject(x)) return null;
  if (x.format === STORE_FORMAT) return 'store';
  if (x.format === 'emlens.transfer/1' && Array.isArray(x.cells)) return 'transfer';
  if (x.format === SUMMARIZE_FORMAT && Array.isArray(x.files)) return 'summarize';
  if (typeof x.condition === 'string' && isObject(x.emRate) && Array.isArray(x.perQuestion)) return 'eval';
  if (isMediationReport(x)) return 'mediation';
  const values = Object.values(x);
  if (values.length > 0 && values.every(isMediationReport)) return 'mediation';
  if (Array.isArray(x.rows) && isObject(x.baseline) && 'unit' in x) return 'sweep';
  if (Array.isArray(x.names) && Array.isArray(x.pairs) && Array.isArray(x.layers)) return 'comparison';
  if (Array.isArray(x.steps) && Array.isArray(x.modules) && Array.isArray(x.ks)) return 'lora-trajectory';
  if (typeof x.benchmark === 'string') return 'benchmark';
  return null;
}

/** True for a safetensors file whose tensors are all `direction.{i}` (a direction file). */
export async function isDirectionFile(p: string): Promise<boolean> {
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(p);
  } catch {
    return false;
  }
  try {
    const names = [...f.tensors.keys()];
    return names.length > 0 && names.every((n) => DIRECTION_TENSOR.test(n));
  } finally {
    await f.close();
  }
}

async function isStore(dir: string): Promise<boolean> {
  const m = await readJson(join(dir, MANIFEST_FILE));
  return isObject(m) && m.format === STORE_FORMAT;
}

async function isDemo(dir: string): Promise<boolean> {
  try {
    const head = (await readFile(join(dir, 'report.md'), 'utf8')).slice(0, 200);
    return /emlens demo report/.test(head);
  } catch {
    return false;
  }
}

async function exists(p: string): Promise<boolean> {
  return (await kindOfPath(p)) !== null;
}

async function detectFile(p: string): Promise<Detected> {
  const ext = extname(p).toLowerCase();
  if (ext === '.safetensors') {
    return (await isDirectionFile(p))
      ? { kind: 'directions', path: p, files: [p] }
      : { kind: null, path: p, reason: 'a safetensors file without direction.{layer} tensors' };
  }
  if (ext === '.jsonl') {
    const first = (await readFile(p, 'utf8')).split('\n', 1)[0] ?? '';
    let x: unknown;
    try {
      x = JSON.parse(first);
    } catch {
      x = undefined;
    }
    if (isObject(x) && Array.isArray(x.tokens) && Array.isArray(x.answer_mask) && Array.isArray(x.layers)) {
      return { kind: 'projection', path: p, json: p };
    }
    return { kind: null, path: p, reason: 'a JSONL file that is not an emlens project output' };
  }
  if (ext === '.json') {
    const x = await readJson(p);
    if (x === undefined) return { kind: null, path: p, reason: 'not valid JSON' };
    const kind = classifyJson(x);
    switch (kind) {
      case 'store':
        return { kind: 'store', path: p, stores: [dirname(p)] };
      case 'eval':
        return { kind: 'eval', path: dirname(p) };
      case 'mediation':
      case 'sweep':
      case 'comparison':
      case 'summarize':
      case 'transfer':
      case 'lora-trajectory':
        return { kind, path: p, json: p };
      case 'benchmark':
        return { kind: 'benchmark', path: p, files: [p], children: [] };
      default:
        return {
          kind: null,
          path: p,
          reason:
            'a JSON file that is none of: eval summary, store manifest, mediation, sweep, comparison or benchmark',
        };
    }
  }
  return { kind: null, path: p, reason: `a ${ext || 'extensionless'} file, which the report does not read` };
}

/**
 * What `p` is. Folders are looked into: their own marker files first (manifest.json, the demo's report.md,
 * summary.json, mediation.json, sweep.json, compare.json), then their contents, up to `depth` levels down.
 */
export async function detectInput(p: string, depth = 2): Promise<Detected> {
  const what = await kindOfPath(p);
  if (what === null) return { kind: null, path: p, reason: 'it does not exist' };
  if (what === 'file') return detectFile(p);

  if (await isStore(p)) return { kind: 'store', path: p, stores: [p] };
  if (await isDemo(p)) return { kind: 'demo', path: p };
  if (classifyJson(await readJson(join(p, EVAL_FILES.summary))) === 'eval') return { kind: 'eval', path: p };
  for (const f of [EVAL_FILES.judgedJsonl, EVAL_FILES.judgedCsv]) {
    if (await exists(join(p, f))) return { kind: 'eval', path: p };
  }
  for (const [file, kind] of [
    ['mediation.json', 'mediation'],
    ['sweep.json', 'sweep'],
    ['compare.json', 'comparison'],
    ['summarize.json', 'summarize'],
    ['transfer.json', 'transfer'],
    ['lora_trajectory.json', 'lora-trajectory'],
  ] as const) {
    const json = join(p, file);
    if (classifyJson(await readJson(json)) === kind) return { kind, path: p, json };
  }

  const entries = (await readdir(p, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
  const files = entries.filter((e) => e.isFile() && !e.name.startsWith('.')).map((e) => join(p, e.name));
  const dirs = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => join(p, e.name));
  const names = new Set(entries.map((e) => e.name));
  if (names.has('config.json') && files.some((f) => f.endsWith('.safetensors'))) {
    return {
      kind: null,
      path: p,
      reason: 'a model folder (config.json and weights); the report reads outputs',
    };
  }

  const directionFiles: string[] = [];
  for (const f of files.filter((f) => f.endsWith('.safetensors'))) {
    if (await isDirectionFile(f)) directionFiles.push(f);
  }
  const results = files.filter(
    (f) => !OWN_OUTPUTS.test(basename(f)) && (/\.(json|md)$/i.test(f) || IMAGE.test(f)),
  );
  const children: Detected[] = [];
  if (depth > 0) {
    for (const d of dirs) {
      const c = await detectInput(d, depth - 1);
      if (c.kind !== null) children.push(c);
    }
  }
  const hasResults = results.some((f) => /\.json$/i.test(f) || IMAGE.test(f));
  if (hasResults) {
    if (directionFiles.length > 0) children.unshift({ kind: 'directions', path: p, files: directionFiles });
    return { kind: 'benchmark', path: p, files: results, children };
  }
  if (directionFiles.length > 0 && children.length === 0)
    return { kind: 'directions', path: p, files: directionFiles };
  if (children.length > 0 && children.every((c) => c.kind === 'store') && directionFiles.length === 0) {
    return { kind: 'store', path: p, stores: children.flatMap((c) => (c.kind === 'store' ? c.stores : [])) };
  }
  if (children.length > 0 || directionFiles.length > 0) {
    if (directionFiles.length > 0) children.unshift({ kind: 'directions', path: p, files: directionFiles });
    return { kind: 'collection', path: p, children };
  }
  const onlyReport = files.length > 0 && files.every((f) => OWN_OUTPUTS.test(basename(f)) || IMAGE.test(f));
  return {
    kind: null,
    path: p,
    reason: onlyReport
      ? 'an emlens report output; pass the inputs it was made from instead'
      : entries.length === 0
        ? 'an empty folder'
        : 'a folder with no eval summary, store manifest, direction file, mediation, sweep, comparison, benchmark JSON or plot',
  };
}
