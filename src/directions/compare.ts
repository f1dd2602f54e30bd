/**
 * Comparing direction sets (e.g. a "general" EM direction against narrow, per-domain ones): cosine similarity
 * per layer for every pair, as a table, a JSON record and a heatmap.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles } from '../io/outputs.js';
import { heatmap } from '../plot/charts.js';
import { renderVegaLite } from '../plot/render.js';
import { cosine, type DirectionSet, directionDModel, norm } from './direction.js';

export interface NamedDirections {
  readonly name: string;
  readonly set: DirectionSet;
}

/** The cosines of one pair of sets, one entry per common layer. */
export interface PairComparison {
  readonly a: string;
  readonly b: string;
  /** `a ~ b` */
  readonly label: string;
  /** Signed cosine per common layer (NaN where a vector is zero). */
  readonly cosines: readonly number[];
  readonly absCosines: readonly number[];
  /** Means over the common layers (NaN entries skipped). */
  readonly meanCosine: number;
  readonly meanAbsCosine: number;
}

export interface DirectionComparison {
  readonly names: readonly string[];
  /** Layers every set holds, ascending; the per-layer arrays follow this order. */
  readonly layers: readonly number[];
  readonly dModel: number;
  /** Every pair (i < j in input order). */
  readonly pairs: readonly PairComparison[];
  /** L2 norm of each set's vector per common layer. */
  readonly norms: readonly { readonly name: string; readonly norms: readonly number[] }[];
  /** Layers some set holds that are not common to all, per set (left out of the comparison). */
  readonly dropped: readonly { readonly name: string; readonly layers: readonly number[] }[];
  /** Common layers where a set's vector is all zeros, per set: its cosines there are NaN (`n/a`). */
  readonly zero: readonly { readonly name: string; readonly layers: readonly number[] }[];
}

/**
 * Signed and absolute cosine similarity (float64) of every pair of sets at every layer they all hold.
 *
 * @example
 * const cmp = compareDirections([{ name: 'general', set: g }, { name: 'medical', set: m }]);
 * console.log(formatCompareTable(cmp));
 */
export function compareDirections(sets: readonly NamedDirections[]): DirectionComparison {
  const [first] = sets;
  if (first === undefined || sets.length < 2) {
    throw new EmlensError(
      `Comparing directions needs at least two sets but got ${sets.length}; pass two or more.`,
    );
  }
  const names = sets.map((s) => s.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) {
    throw new EmlensError(`Two direction sets are both named '${dup}'; give each set a distinct name.`);
  }
  const dModel = directionDModel(first.set);
  for (const s of sets) {
    const d = directionDModel(s.set);
    if (d !== dModel) {
      throw new EmlensError(
        `Direction set '${s.name}' has d_model ${d} but '${first.name}' has ${dModel}; only directions from the same base model can be compared.`,
      );
    }
  }
  const layers = [...first.set.vectors.keys()]
    .filter((l) => sets.every((s) => s.set.vectors.has(l)))
    .sort((a, b) => a - b);
  if (layers.length === 0) {
    throw new EmlensError(
      `The direction sets share no layer (${sets.map((s) => `${s.name}: [${[...s.set.vectors.keys()].join(', ')}]`).join('; ')}); compute them at common layers.`,
    );
  }
  const common = new Set(layers);
  // The `vectors.get(l)!` below read layers in `layers`, which every set holds.
  const zero = sets
    .map((s) => ({ name: s.name, layers: layers.filter((l) => norm(s.set.vectors.get(l)!) === 0) }))
    .filter((z) => z.layers.length > 0);
  // A zero vector has no direction, so no cosine. At some layers that is a gap in the table (control vectors
  // often leave layers at zero); at every layer the whole comparison would be n/a, which is a wrong input.
  const empty = zero.find((z) => z.layers.length === layers.length);
  if (empty !== undefined) {
    throw new EmlensError(
      `Direction set '${empty.name}' is all zeros at every common layer (${layers.join(', ')}), so it has no cosine with anything; recompute it (were --pos and --neg the same?).`,
    );
  }
  const pairs: PairComparison[] = [];
  for (const [i, a] of sets.entries()) {
    for (const b of sets.slice(i + 1)) {
      const cosines = layers.map((l) => cosine(a.set.vectors.get(l)!, b.set.vectors.get(l)!));
      const absCosines = cosines.map(Math.abs);
      pairs.push({
        a: a.name,
        b: b.name,
        label: `${a.name} ~ ${b.name}`,
        cosines,
        absCosines,
        meanCosine: mean(cosines),
        meanAbsCosine: mean(absCosines),
      });
    }
  }
  return {
    names,
    layers,
    dModel,
    pairs,
    norms: sets.map((s) => ({ name: s.name, norms: layers.map((l) => norm(s.set.vectors.get(l)!)) })),
    dropped: sets
      .map((s) => ({ name: s.name, layers: [...s.set.vectors.keys()].filter((l) => !common.has(l)) }))
      .filter((d) => d.layers.length > 0),
    zero,
  };
}

/**
 * A plain-text table: one row per common layer, one column per pair, signed cosines, then rows with the mean
 * cosine and the mean |cosine| over layers.
 */
export function formatCompareTable(cmp: DirectionComparison, digits = 3): string {
  const fmt = (x: number) => (Number.isNaN(x) ? 'n/a' : x.toFixed(digits));
  const header = ['layer', ...cmp.pairs.map((p) => p.label)];
  // Each pair has one cosine per common layer, and every row has one cell per header column (widths has one
  // per column): the indexes below are in range.
  const rows: string[][] = cmp.layers.map((l, k) => [String(l), ...cmp.pairs.map((p) => fmt(p.cosines[k]!))]);
  rows.push(['mean', ...cmp.pairs.map((p) => fmt(p.meanCosine))]);
  rows.push(['mean |cos|', ...cmp.pairs.map((p) => fmt(p.meanAbsCosine))]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]) =>
    `| ${cells.map((s, c) => (c === 0 ? s.padEnd(widths[c]!) : s.padStart(widths[c]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, c) => (c === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  const out = [
    `cosine similarity per layer (${cmp.layers.length} common layers, d_model ${cmp.dModel})`,
    '',
    line(header),
    rule,
    ...rows.slice(0, -2).map(line),
    rule,
    ...rows.slice(-2).map(line),
  ];
  for (const z of cmp.zero) {
    out.push('', `note: '${z.name}' is all zeros at layers [${z.layers.join(', ')}] (no cosine there: n/a)`);
  }
  for (const d of cmp.dropped) {
    out.push(
      '',
      `note: '${d.name}' also holds layers [${d.layers.join(', ')}], not common to all sets (left out)`,
    );
  }
  return out.join('\n');
}

/** The heatmap spec: x = layer, y = pair, colour = signed cosine on [-1, 1] (diverging, blue to red). */
export function cosineHeatmap(
  cmp: DirectionComparison,
  title = 'Cosine similarity between directions',
): TopLevelSpec {
  const cells = cmp.pairs.flatMap(
    (p) => cmp.layers.map((l, k) => ({ x: l, y: p.label, value: p.cosines[k]! })), // one cosine per common layer
  );
  return heatmap(cells, {
    title,
    xTitle: 'layer',
    yTitle: 'pair',
    valueTitle: 'cosine',
    domain: [-1, 1],
  });
}

/** The comparison as JSON-ready data (NaN becomes null). */
export function comparisonToJson(cmp: DirectionComparison): unknown {
  return JSON.parse(
    JSON.stringify(cmp, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)),
  );
}

/** The files {@link writeComparison} writes into its folder. */
export const COMPARISON_FILES = ['cosine.svg', 'cosine.png', 'compare.json'] as const;

/**
 * Writes `cosine.svg`, `cosine.png` and `compare.json` into `outDir` (created if needed). Refuses if any of
 * them is there already, unless `overwrite`; other files in `outDir` are left alone.
 */
export async function writeComparison(
  cmp: DirectionComparison,
  outDir: string,
  opts: { readonly overwrite?: boolean } = {},
): Promise<{ readonly svg: string; readonly png: string; readonly json: string }> {
  await claimOutputFiles(outDir, COMPARISON_FILES, opts);
  await mkdir(outDir, { recursive: true });
  const { svg, png } = await renderVegaLite(cosineHeatmap(cmp), join(outDir, 'cosine'));
  const json = join(outDir, 'compare.json');
  await writeAtomic(json, `${JSON.stringify(comparisonToJson(cmp), null, 2)}\n`);
  return { svg, png, json };
}

function mean(xs: readonly number[]): number {
  const ok = xs.filter((x) => !Number.isNaN(x));
  return ok.length === 0 ? Number.NaN : ok.reduce((a, b) => a + b, 0) / ok.length;
}
