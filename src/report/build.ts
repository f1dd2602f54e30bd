/**
 * `emlens report`: one report from any mix of emlens outputs. Each input's kind is recognised from its files
 * (see detectInput); the report is written as a self-contained HTML page (report.html), as markdown with its
 * plots as files (report.md, plots/), and as JSON (report.json). Eval folders are also compared as before:
 * report.json holds their comparison, and em-rate.svg/png the EM rate chart.
 */

import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { EmlensError } from '../errors.js';
import { emRateChart } from '../eval/metrics.js';
import type { EvalComparison, ReportOptions } from '../eval/report.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles, writeFolderAtomic } from '../io/outputs.js';
import { renderVegaLite } from '../plot/render.js';
import { directionsSection, storesSection } from './activations.js';
import { type Detected, detectInput } from './detect.js';
import { comparisonSection, evalSection, mediationSection, sweepSection } from './effects.js';
import { renderHtml } from './html.js';
import { loraTrajectorySection } from './loraTrajectorySection.js';
import { renderMarkdown } from './markdown.js';
import {
  type InputKind,
  KIND_TITLES,
  type ReportPage,
  type ReportPlot,
  type ReportSection,
  slug,
  type Unrecognised,
} from './model.js';
import { projectionSection } from './projectionSection.js';
import { benchmarkSection, demoSection } from './results.js';
import { summarizeSection } from './summarizeSection.js';
import { transferSection } from './transfer.js';

/** The version in emlens's package.json (`unknown` where it cannot be read). */
export function emlensVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      name?: string;
      version?: string;
    };
    return pkg.name === 'emlens' && pkg.version ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export interface HtmlReportOptions extends ReportOptions {
  /** The time stamped on the report (default: now). */
  readonly now?: Date;
}

export interface HtmlReport {
  readonly page: ReportPage;
  /** report.md's text. */
  readonly markdown: string;
  readonly html: string;
  /** Every file written. */
  readonly files: readonly string[];
  readonly unrecognised: readonly Unrecognised[];
  /** The eval folders' comparison, when there were any. */
  readonly evaluation: EvalComparison | null;
}

/** Recognised inputs pooled by kind: eval folders, single direction files and single stores are combined. */
interface Pools {
  evalDirs: string[];
  directionFiles: string[];
  stores: string[];
  others: Detected[];
}

function pool(d: Detected, p: Pools): void {
  if (d.kind === 'eval') p.evalDirs.push(d.path);
  else if (d.kind === 'directions' && d.files.length === 1 && d.files[0] === d.path)
    p.directionFiles.push(d.path);
  else if (d.kind === 'store' && d.stores.length === 1) p.stores.push(...d.stores);
  else if (d.kind === 'collection') for (const c of d.children) pool(c, p);
  else if (d.kind !== null) p.others.push(d);
}

function describe(d: Detected): { kind: InputKind | null; note?: string } {
  if (d.kind === null) return { kind: null };
  if (d.kind !== 'collection') {
    if (d.kind === 'directions' && d.files.length > 1)
      return { kind: d.kind, note: `(${d.files.length} files)` };
    if (d.kind === 'store' && d.stores.length > 1)
      return { kind: d.kind, note: `(${d.stores.length} stores)` };
    return { kind: d.kind };
  }
  const counts = new Map<string, number>();
  for (const c of d.children)
    if (c.kind && c.kind !== 'collection') counts.set(c.kind, (counts.get(c.kind) ?? 0) + 1);
  return {
    kind: null,
    note: `a folder holding ${[...counts].map(([k, n]) => `${KIND_TITLES[k as InputKind].toLowerCase()} x${n}`).join(', ')}`,
  };
}

/** Sections for one recognised input on its own (inside results folders). */
async function buildOne(d: Detected, opts: ReportOptions): Promise<ReportSection[]> {
  switch (d.kind) {
    case 'demo':
      return [await demoSection(d.path)];
    case 'eval':
      return [(await evalSection([d.path], opts)).section];
    case 'directions':
      return [await directionsSection(d.files, `Directions: ${d.path}`, [d.path])];
    case 'store':
      return [await storesSection(d.stores, `Activation stores: ${d.path}`, [d.path])];
    case 'comparison':
      return [await comparisonSection(d.path, d.json, [d.path])];
    case 'mediation':
      return [await mediationSection(d.path, d.json, [d.path])];
    case 'sweep':
      return [await sweepSection(d.path, d.json, [d.path])];
    case 'transfer':
      return [await transferSection(d.path, d.json, [d.path])];
    case 'summarize':
      return [await summarizeSection(d.path, d.json, [d.path])];
    case 'lora-trajectory':
      return [await loraTrajectorySection(d.path, d.json, [d.path])];
    case 'projection':
      return [await projectionSection(d.path, d.json, [d.path])];
    case 'benchmark':
      return [await benchmarkSection(d, (c) => buildOne(c, opts))];
    case 'collection': {
      const out: ReportSection[] = [];
      for (const c of d.children) out.push(...(await buildOne(c, opts)));
      return out;
    }
    default:
      return [];
  }
}

/** Gives every section a unique id (for links and plot file names). */
function assignIds(sections: readonly ReportSection[], used = new Set<string>()): void {
  for (const s of sections) {
    const base = `${s.kind}-${slug(s.title.replace(/^[^:]*:\s*/, '') || s.title)}`;
    let id = base;
    for (let k = 2; used.has(id); k++) id = `${base}-${k}`;
    used.add(id);
    s.id = id;
    assignIds(s.children, used);
  }
}

function strip(s: ReportSection): unknown {
  return {
    id: s.id,
    kind: s.kind,
    title: s.title,
    sources: s.sources,
    highlights: s.highlights,
    facts: Object.fromEntries(s.facts),
    notes: s.notes,
    tables: s.tables,
    plots: s.plots.map((p) => p.title),
    children: s.children.map(strip),
  };
}

/** What {@link writeHtmlReport} writes into its folder (`plots` is a folder of its own). */
export const REPORT_FILES = [
  'report.html',
  'report.md',
  'report.json',
  'plots',
  'em-rate.svg',
  'em-rate.png',
] as const;

/**
 * Builds the report of `inputs` (any mix of emlens outputs; folders are looked into) and writes report.html,
 * report.md, plots/ and report.json into `out` (plus em-rate.svg/png when eval folders are among them).
 * Inputs that are not recognised are listed in the report and returned; when none is recognised it throws.
 * Refuses if any of {@link REPORT_FILES} is in `out` already, unless `overwrite`; other files are left alone.
 *
 * @example
 * const r = await writeHtmlReport(['emlens-demo', 'eval/base', 'eval/general', 'benchmarks/results'], 'report');
 * r.unrecognised; // [] when every input was understood
 */
export async function writeHtmlReport(
  inputs: readonly string[],
  out: string,
  opts: HtmlReportOptions = {},
): Promise<HtmlReport> {
  if (inputs.length === 0) {
    throw new EmlensError(
      'No inputs were given; pass emlens output folders or files (eval, store, direction, benchmark, mediation, sweep or demo).',
    );
  }
  const detected: Detected[] = [];
  for (const p of inputs) detected.push(await detectInput(p));
  const unrecognised: Unrecognised[] = detected.flatMap((d) =>
    d.kind === null ? [{ path: d.path, reason: d.reason }] : [],
  );
  if (unrecognised.length === detected.length) {
    throw new EmlensError(
      `Nothing to report: ${unrecognised
        .map(
          (u) =>
            `${u.path} has neither summary.json nor judged responses nor any other emlens output (${u.reason})`,
        )
        .join(
          '; ',
        )}; pass emlens output folders or files (eval, store, direction, benchmark, mediation, sweep or demo).`,
    );
  }
  await claimOutputFiles(out, REPORT_FILES, opts);
  const pools: Pools = { evalDirs: [], directionFiles: [], stores: [], others: [] };
  for (const d of detected) pool(d, pools);

  const sections: ReportSection[] = [];
  let evaluation: EvalComparison | null = null;
  for (const d of pools.others.filter((x) => x.kind === 'demo')) sections.push(...(await buildOne(d, opts)));
  if (pools.evalDirs.length > 0) {
    const e = await evalSection(pools.evalDirs, opts);
    evaluation = e.comparison;
    sections.push(e.section);
  }
  if (pools.directionFiles.length > 0) {
    sections.push(
      await directionsSection(
        pools.directionFiles,
        pools.directionFiles.length === 1
          ? 'Direction file'
          : `${pools.directionFiles.length} direction files`,
        pools.directionFiles,
      ),
    );
  }
  if (pools.stores.length > 0) {
    sections.push(
      await storesSection(
        pools.stores,
        pools.stores.length === 1 ? 'Activation store' : `${pools.stores.length} activation stores`,
        pools.stores,
      ),
    );
  }
  for (const d of pools.others.filter((x) => x.kind !== 'demo')) sections.push(...(await buildOne(d, opts)));
  assignIds(sections);

  const page: ReportPage = {
    title: opts.title ?? 'emlens report',
    generated: (opts.now ?? new Date()).toISOString().replace(/\.\d+Z$/, 'Z'),
    emlensVersion: emlensVersion(),
    nodeVersion: process.version,
    platform: `${process.platform} ${process.arch}`,
    inputs: detected.flatMap((d) => (d.kind === null ? [] : [{ path: d.path, ...describe(d) }])),
    unrecognised,
    sections,
  };

  const files: string[] = [];
  const plotFiles = new Map<ReportPlot, string>();
  // plots/ is rebuilt whole, so an earlier report's plots that this one no longer has do not linger.
  await writeFolderAtomic(join(out, 'plots'), { overwrite: opts.overwrite }, async (tmp) => {
    const writePlots = async (s: ReportSection) => {
      for (const [k, p] of s.plots.entries()) {
        const file = `${s.id}-${k + 1}.${p.mime === 'image/svg+xml' ? 'svg' : 'png'}`;
        await writeAtomic(join(tmp, file), p.data);
        plotFiles.set(p, `plots/${file}`);
        files.push(join(out, 'plots', file));
      }
      for (const c of s.children) await writePlots(c);
    };
    for (const s of sections) await writePlots(s);
  });

  const markdown = renderMarkdown(page, (p) => plotFiles.get(p) ?? '');
  const html = renderHtml(page);
  const paths = {
    html: join(out, 'report.html'),
    md: join(out, 'report.md'),
    json: join(out, 'report.json'),
  };
  await writeAtomic(paths.md, markdown);
  await writeAtomic(paths.html, html);
  const summary = {
    ...(evaluation
      ? { ...evaluation.comparison, sources: pools.evalDirs, summaries: evaluation.summaries }
      : {}),
    report: {
      title: page.title,
      generated: page.generated,
      emlensVersion: page.emlensVersion,
      nodeVersion: page.nodeVersion,
      platform: page.platform,
      inputs: page.inputs,
      unrecognised,
      sections: sections.map(strip),
    },
  };
  await writeAtomic(paths.json, `${JSON.stringify(summary, null, 2)}\n`);
  files.unshift(paths.html, paths.md, paths.json);
  if (!evaluation) {
    // An earlier report's EM chart (--overwrite) would be read as this one's.
    for (const f of ['em-rate.svg', 'em-rate.png']) await rm(join(out, f), { force: true });
  } else {
    const chart = await renderVegaLite(emRateChart(evaluation.comparison, opts.title), join(out, 'em-rate'));
    files.push(chart.svg, chart.png);
  }
  return { page, markdown, html, files, unrecognised, evaluation };
}
