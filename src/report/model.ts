/**
 * The report's content model: sections of tables, plots, facts and text, independent of the output format
 * (HTML page or markdown), plus the small formatting helpers every section builder shares.
 */
import { isAbsolute, relative } from 'node:path';

/** What an input to `emlens report` was recognised as. */
export type InputKind =
  | 'demo'
  | 'eval'
  | 'summarize'
  | 'directions'
  | 'comparison'
  | 'mediation'
  | 'sweep'
  | 'transfer'
  | 'lora-trajectory'
  | 'projection'
  | 'store'
  | 'benchmark';

/** Section order on the page, and each kind's heading. */
export const KIND_TITLES: Readonly<Record<InputKind, string>> = {
  demo: 'Demo runs',
  eval: 'Evaluation: EM rate',
  summarize: 'Judged files: EM rate',
  directions: 'Directions',
  comparison: 'Direction comparisons',
  mediation: 'Mediation',
  sweep: 'Steering sweeps',
  transfer: 'Transfer across finetunes',
  'lora-trajectory': 'LoRA trajectories',
  projection: 'Projections on a direction',
  store: 'Activation stores',
  benchmark: 'Benchmarks and results',
};

export const KIND_ORDER: readonly InputKind[] = [
  'demo',
  'eval',
  'summarize',
  'directions',
  'comparison',
  'mediation',
  'sweep',
  'transfer',
  'lora-trajectory',
  'projection',
  'store',
  'benchmark',
];

export interface ReportTable {
  readonly caption?: string;
  readonly header: readonly string[];
  readonly rows: readonly (readonly string[])[];
  /** Per column; default: the first column left, the others right (numbers). */
  readonly align?: readonly ('left' | 'right')[];
  /** Rows that are random controls (drawn muted, marked in markdown). */
  readonly controlRows?: readonly number[];
  /** Shown folded on the page (details the summary does not need). */
  readonly collapsed?: boolean;
}

export interface ReportPlot {
  readonly title: string;
  readonly mime: 'image/svg+xml' | 'image/png';
  readonly data: Buffer;
  /** The file it was read from, when it was not drawn for the report. */
  readonly file?: string;
}

export interface ReportText {
  readonly title: string;
  readonly body: string;
  /** Markdown (rendered) or plain text (preformatted). */
  readonly format: 'markdown' | 'plain';
  /** Shown expanded (default: collapsed). */
  readonly open?: boolean;
}

export interface ReportSection {
  /** Unique on the page (an HTML id and a plot file prefix). */
  id: string;
  readonly kind: InputKind;
  readonly title: string;
  /** The inputs it was built from, as given. */
  readonly sources: readonly string[];
  /** One-line results for the summary at the top of the page. */
  readonly highlights: readonly string[];
  /** What was run: model, adapter, command, ... */
  readonly facts: readonly (readonly [string, string])[];
  readonly paragraphs: readonly string[];
  readonly tables: readonly ReportTable[];
  readonly plots: readonly ReportPlot[];
  readonly texts: readonly ReportText[];
  readonly notes: readonly string[];
  readonly children: readonly ReportSection[];
}

/** A section with empty defaults for the fields not given. */
export function section(
  s: Pick<ReportSection, 'kind' | 'title' | 'sources'> & Partial<ReportSection>,
): ReportSection {
  return {
    id: '',
    highlights: [],
    facts: [],
    paragraphs: [],
    tables: [],
    plots: [],
    texts: [],
    notes: [],
    children: [],
    ...s,
  };
}

/** An input that was not recognised, and why. */
export interface Unrecognised {
  readonly path: string;
  readonly reason: string;
}

/** The whole report. */
export interface ReportPage {
  readonly title: string;
  readonly generated: string;
  readonly emlensVersion: string;
  readonly nodeVersion: string;
  readonly platform: string;
  readonly inputs: readonly {
    readonly path: string;
    readonly kind: InputKind | null;
    readonly note?: string;
  }[];
  readonly unrecognised: readonly Unrecognised[];
  readonly sections: readonly ReportSection[];
}

// ---------------------------------------------------------------------------------------------------------
// Formatting

const isNum = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

/** A number with `digits` decimals; `n/a` for null, undefined, NaN or infinities. */
export function fixed(x: unknown, digits = 3): string {
  return isNum(x) ? x.toFixed(digits) : 'n/a';
}

/** A share as a percentage; `n/a` where missing. */
export function percent(x: unknown, digits = 1): string {
  return isNum(x) ? `${(100 * x).toFixed(digits)}%` : 'n/a';
}

/** A number for a generic table: integers as they are, others to 4 significant digits. */
export function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e9)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
}

/** Any JSON value as one table cell. */
export function cell(v: unknown): string {
  if (v === null || v === undefined) return 'n/a';
  if (typeof v === 'number') return num(v);
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (Array.isArray(v)) {
    if (v.every((x) => typeof x === 'number')) {
      const xs = v as number[];
      if (xs.length <= 8) return xs.map(num).join(', ');
      const sorted = [...xs].sort((a, b) => a - b);
      return `${xs.length} values, median ${num(sorted[Math.floor(sorted.length / 2)]!)}`; // more than 8 values
    }
    if (v.every((x) => typeof x !== 'object' || x === null)) return v.map(cell).join(', ');
  }
  return JSON.stringify(v);
}

/**
 * A path for display: relative to the working folder when it lies under it (so a committed report does not
 * carry one machine's absolute paths), as recorded otherwise.
 */
export function displayPath(p: string, cwd = process.cwd()): string {
  if (!isAbsolute(p)) return p;
  const rel = relative(cwd, p);
  return rel === '' ? '.' : rel.startsWith('..') || isAbsolute(rel) ? p : rel;
}

/** `general ~ medical` and friends as HTML ids. */
export function slug(s: string): string {
  return (
    s
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 48) || 'section'
  );
}

/** `0, 1, 2, 3, 7` -> `0–3, 7`. */
export function compressRange(xs: readonly number[]): string {
  const sorted = [...new Set(xs)].sort((a, b) => a - b);
  const parts: string[] = [];
  // i <= j < sorted.length throughout.
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(j - i >= 2 ? `${sorted[i]}–${sorted[j]}` : sorted.slice(i, j + 1).join(', '));
    i = j + 1;
  }
  return parts.join(', ');
}

/** `blocks.0.hook_resid_post` ... -> `hook_resid_post at blocks 0–3`. */
export function hookSummary(hooks: readonly string[]): string {
  const byKind = new Map<string, number[]>();
  const other: string[] = [];
  for (const h of hooks) {
    const [, layer, kind] = /^blocks\.(\d+)\.(.+)$/.exec(h) ?? [];
    if (kind !== undefined) byKind.set(kind, [...(byKind.get(kind) ?? []), Number(layer)]);
    else other.push(h);
  }
  return [...[...byKind].map(([k, ls]) => `${k} at blocks ${compressRange(ls)}`), ...other].join('; ');
}
