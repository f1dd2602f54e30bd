/**
 * Transfer of directions across finetunes: for every direction A (made from one finetune, or any file) and
 * every finetune B of the same base, how much of B's divergence from the base A's direction carries — the
 * fraction mediated when A is patched out of B (and when it is ablated) — beside norm-matched random
 * controls of A measured the same way, and beside the layerwise cosines of the directions themselves.
 *
 * One road: each cell is a {@link mediation} run (same KL scoring, same controls); this file only loops over
 * the pairs and lays the results out as a matrix.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'csv-stringify/sync';
import type { TokenizedRecord } from '../data/record.js';
import { compareDirections, comparisonToJson, type DirectionComparison } from '../directions/compare.js';
import type { DirectionSet } from '../directions/direction.js';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles } from '../io/outputs.js';
import type { Model } from '../model/model.js';
import { heatmap } from '../plot/charts.js';
import { renderVegaLite } from '../plot/render.js';
import type { LayerSelection } from './compose.js';
import { mediation } from './mediation.js';

export interface TransferOptions {
  readonly base: Model;
  /** The finetunes (B), each with a name. */
  readonly finetunes: readonly { readonly name: string; readonly model: Model }[];
  /** The directions (A), each with a name (usually the finetune it came from). */
  readonly directions: readonly { readonly name: string; readonly set: DirectionSet }[];
  /** Records scored for every finetune, or per finetune name (each B on its own data). */
  readonly records: readonly TokenizedRecord[] | ReadonlyMap<string, readonly TokenizedRecord[]>;
  readonly layers?: LayerSelection;
  /** User seed of the random controls (default 0). */
  readonly seed?: number;
  /** Norm-matched random controls per cell (default 3). */
  readonly randomControls?: number;
  readonly batchSize?: number;
  /** Called after each cell with (cells done, cells in all). */
  readonly onProgress?: (done: number, total: number) => void;
}

/** One cell: direction A in finetune B. */
export interface TransferCell {
  readonly direction: string;
  readonly finetune: string;
  /** KL(B || base), nats per token: what there is to explain. */
  readonly divergence: number;
  /** 1 - KL(B with its change along A set to the base's || base) / KL(B || base). */
  readonly patched: number;
  /** Mean over the random controls of the same. */
  readonly randomPatched: number;
  /** The largest |random control| of the same: a cell below this is not told apart from chance. */
  readonly randomPatchedMaxAbs: number;
  /** 1 - KL(B with A ablated || base) / KL(B || base). */
  readonly ablated: number;
  readonly randomAblated: number;
}

export interface TransferResult {
  readonly directions: readonly string[];
  readonly finetunes: readonly string[];
  /** Row-major: directions x finetunes. */
  readonly cells: readonly TransferCell[];
  readonly randomControls: number;
  readonly seed: number;
  /** Layerwise cosines of the directions (null with one direction). */
  readonly cosine: DirectionComparison | null;
}

/**
 * The transfer matrix (see the module comment).
 *
 * @example
 * const r = await transferMatrix({ base, finetunes: [{ name: 'medical', model: med }, ...],
 *   directions: [{ name: 'medical', set: medDir }, ...], records });
 * r.cells.find((c) => c.direction === 'medical' && c.finetune === 'sports')!.patched; // e.g. 0.9
 */
export async function transferMatrix(opts: TransferOptions): Promise<TransferResult> {
  const unique = (names: string[], what: string) => {
    const dup = names.find((n, i) => names.indexOf(n) !== i);
    if (dup !== undefined) throw new EmlensError(`Two ${what} are named ${dup}; give each its own NAME=.`);
    if (names.length === 0) throw new EmlensError(`The transfer matrix needs at least one of the ${what}.`);
  };
  unique(
    opts.finetunes.map((f) => f.name),
    'finetunes',
  );
  unique(
    opts.directions.map((d) => d.name),
    'directions',
  );
  const randomControls = opts.randomControls ?? 3;
  const seed = opts.seed ?? 0;
  const cells: TransferCell[] = [];
  const total = opts.directions.length * opts.finetunes.length;
  for (const d of opts.directions) {
    for (const f of opts.finetunes) {
      const records = isRecordMap(opts.records) ? opts.records.get(f.name) : opts.records;
      if (records === undefined) {
        throw new EmlensError(`No records were given for finetune ${f.name}; pass data for every finetune.`);
      }
      const r = await mediation({
        base: opts.base,
        finetune: f.model,
        directions: d.set,
        records,
        layers: opts.layers,
        seed,
        randomControls,
        batchSize: opts.batchSize,
        label: d.name,
      });
      cells.push({
        direction: d.name,
        finetune: f.name,
        divergence: r.kl.finetuneBase,
        patched: r.patchedFractionMediated,
        randomPatched: r.randomPatchedFractionMediated.mean,
        randomPatchedMaxAbs: Math.max(...r.randomPatchedFractionMediated.values.map(Math.abs)),
        ablated: r.fractionMediated,
        randomAblated: r.randomFractionMediated.mean,
      });
      opts.onProgress?.(cells.length, total);
    }
  }
  const cosine =
    opts.directions.length >= 2
      ? compareDirections(opts.directions.map((d) => ({ name: d.name, set: d.set })))
      : null;
  return {
    directions: opts.directions.map((d) => d.name),
    finetunes: opts.finetunes.map((f) => f.name),
    cells,
    randomControls,
    seed,
    cosine,
  };
}

function isRecordMap(
  r: readonly TokenizedRecord[] | ReadonlyMap<string, readonly TokenizedRecord[]>,
): r is ReadonlyMap<string, readonly TokenizedRecord[]> {
  return r instanceof Map;
}

/** The files {@link writeTransfer} writes into its folder. */
export const TRANSFER_FILES = ['transfer.json', 'transfer.csv', 'transfer.svg', 'transfer.png'] as const;

/** Writes transfer.json (cells + cosines), transfer.csv (one row per cell) and the heatmap (SVG, PNG). */
export async function writeTransfer(
  r: TransferResult,
  outDir: string,
  opts: { readonly overwrite?: boolean } = {},
): Promise<{ json: string; csv: string; svg: string; png: string }> {
  await claimOutputFiles(outDir, TRANSFER_FILES, opts);
  await mkdir(outDir, { recursive: true });
  const json = join(outDir, 'transfer.json');
  await writeAtomic(
    json,
    `${JSON.stringify(
      {
        format: 'emlens.transfer/1',
        directions: r.directions,
        finetunes: r.finetunes,
        randomControls: r.randomControls,
        seed: r.seed,
        cells: r.cells.map((c) => ({ ...c, ...nulls(c) })),
        cosine: r.cosine === null ? null : comparisonToJson(r.cosine),
      },
      null,
      2,
    )}\n`,
  );
  const csv = join(outDir, 'transfer.csv');
  const cols = [
    'direction',
    'finetune',
    'divergence',
    'patched',
    'randomPatched',
    'randomPatchedMaxAbs',
    'ablated',
    'randomAblated',
  ] as const;
  await writeAtomic(
    csv,
    stringify([cols as unknown as string[], ...r.cells.map((c) => cols.map((k) => String(c[k])))]),
  );
  const spec = heatmap(
    r.cells.map((c) => ({ x: c.finetune, y: c.direction, value: c.patched })),
    {
      title: 'Fraction of finetune B divergence mediated by direction A (patched)',
      xTitle: 'finetune B',
      yTitle: 'direction A',
      valueTitle: 'fraction',
      domain: [-1, 1],
    },
  );
  const { svg, png } = await renderVegaLite(spec, join(outDir, 'transfer'));
  return { json, csv, svg, png };
}

/** JSON has no NaN: n/a fractions (nothing to mediate) become null. */
function nulls(c: TransferCell): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const [k, v] of Object.entries(c)) if (typeof v === 'number') out[k] = Number.isNaN(v) ? null : v;
  return out;
}

/** One line per cell, for the terminal. */
export function formatTransfer(r: TransferResult): string[] {
  const pct = (x: number) => (Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);
  return r.cells.map(
    (c) =>
      `${c.direction} in ${c.finetune}: patched ${pct(c.patched)} (random ${pct(c.randomPatched)}, max |random| ${pct(c.randomPatchedMaxAbs)}), ablated ${pct(c.ablated)} (random ${pct(c.randomAblated)}); KL ${c.divergence.toFixed(4)}`,
  );
}
