/**
 * Report sections for benchmark and results folders (JSON files as tables, their plots, their markdown) and
 * for the demo's output folder, which holds several of the other kinds.
 */
import { readdir, readFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { directionsSection, storesSection } from './activations.js';
import { classifyJson, type Detected, detectInput } from './detect.js';
import { comparisonSection, mediationSection, sweepSection } from './effects.js';
import {
  cell,
  displayPath,
  type ReportPlot,
  type ReportSection,
  type ReportTable,
  type ReportText,
  section,
} from './model.js';
import { plotFile, preferSvg } from './plots.js';

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

/** One line for an object of scalars: `cpus 2, cpuModel AMD EPYC`. */
function inline(v: unknown): string {
  if (!isObject(v)) return cell(v);
  return Object.entries(v)
    .map(([k, x]) => `${k} ${isObject(x) ? `(${inline(x)})` : cell(x)}`)
    .join(', ');
}

function flatten(v: Record<string, unknown>, prefix = ''): [string, unknown][] {
  return Object.entries(v).flatMap(([k, x]) =>
    isObject(x) ? flatten(x, `${prefix}${k}.`) : [[`${prefix}${k}`, x] as [string, unknown]],
  );
}

/**
 * Tables of any JSON object: its scalar values (nested keys joined by dots) in one key/value table, and every
 * array of objects as a table of its own (one row per element).
 */
export function jsonTables(x: Record<string, unknown>, skip: ReadonlySet<string> = new Set()): ReportTable[] {
  const values: string[][] = [];
  const tables: ReportTable[] = [];
  const walk = (v: unknown, path: string) => {
    if (Array.isArray(v) && v.length > 0 && v.every(isObject)) {
      const rows = v.map((o) => new Map(flatten(o)));
      const columns = [...new Set(rows.flatMap((r) => [...r.keys()]))];
      tables.push({
        caption: path,
        header: columns,
        rows: rows.map((r) => columns.map((c) => (r.has(c) ? cell(r.get(c)) : ''))),
        align: columns.map((c) => (rows.every((r) => typeof r.get(c) !== 'number') ? 'left' : 'right')),
      });
      return;
    }
    if (isObject(v)) {
      for (const [k, c] of Object.entries(v))
        if (!skip.has(path ? `${path}.${k}` : k)) walk(c, path ? `${path}.${k}` : k);
      return;
    }
    values.push([path, cell(v)]);
  };
  walk(x, '');
  return [
    ...(values.length > 0
      ? [
          {
            caption: 'Values',
            header: ['key', 'value'],
            rows: values,
            align: ['left', 'right'],
          } as ReportTable,
        ]
      : []),
    ...tables,
  ];
}

/** A benchmark (or any other) JSON file: what was run, then its values and tables. */
async function jsonFileSection(
  file: string,
  plots: ReportPlot[],
  texts: ReportText[],
  collapse = false,
): Promise<ReportSection> {
  const x = JSON.parse(await readFile(file, 'utf8')) as unknown;
  const name = basename(file, extname(file));
  if (!isObject(x)) {
    return section({
      kind: 'benchmark',
      title: name,
      sources: [file],
      tables: [{ caption: 'Values', header: ['value'], rows: [[cell(x)]], align: ['left'] }],
      plots,
      texts,
    });
  }
  const facts: [string, string][] = [];
  const skip = new Set<string>();
  for (const key of ['benchmark', 'command', 'date', 'machine', 'model', 'models', 'adapter', 'adapters']) {
    if (x[key] === undefined) continue;
    facts.push([key, typeof x[key] === 'string' ? displayPath(x[key] as string) : inline(x[key])]);
    skip.add(key);
  }
  const title = typeof x.benchmark === 'string' ? `${x.benchmark} (${basename(file)})` : basename(file);
  const when = typeof x.date === 'string' ? `, ${x.date.slice(0, 10)}` : '';
  return section({
    kind: 'benchmark',
    title,
    sources: [file],
    highlights: [`${title}: ${typeof x.command === 'string' ? x.command : 'results'}${when}`],
    facts,
    tables: jsonTables(x, skip).map((t) => ({ ...t, collapsed: collapse })),
    plots,
    texts,
  });
}

/**
 * A benchmark JSON file, or a results folder: one subsection per JSON file (emlens outputs among them drawn
 * as such), each with the plots and markdown named after it; the remaining plots and markdown at the top;
 * subfolders that hold emlens outputs as subsections.
 */
export async function benchmarkSection(
  d: Extract<Detected, { kind: 'benchmark' }>,
  build: (d: Detected) => Promise<ReportSection[]>,
): Promise<ReportSection> {
  const jsons = d.files.filter((f) => /\.json$/i.test(f));
  const images = preferSvg(d.files);
  const mds = d.files.filter((f) => /\.md$/i.test(f));
  const stem = (f: string) => basename(f, extname(f));
  const owner = (f: string) =>
    jsons
      .map(stem)
      .filter((s) => stem(f) === s || stem(f).startsWith(`${s}-`) || stem(f).startsWith(`${s}_`))
      .sort((a, b) => b.length - a.length)[0];
  const readMd = async (md: string): Promise<ReportText> => ({
    title: basename(md),
    body: await readFile(md, 'utf8'),
    format: 'markdown',
    open: true,
  });
  const kinds = await Promise.all(
    jsons.map(async (f) => classifyJson(JSON.parse(await readFile(f, 'utf8')) as unknown)),
  );
  const [first] = jsons;
  if (
    first !== undefined &&
    d.path !== first &&
    jsons.length === 1 &&
    (kinds[0] === null || kinds[0] === 'benchmark')
  ) {
    // A results folder of one run (one JSON, its markdown and plots): one section, the markdown first and the
    // JSON's tables folded when there is markdown to read.
    const plots: ReportPlot[] = [];
    for (const img of images) plots.push(await plotFile(img));
    const texts: ReportText[] = [];
    for (const md of mds) texts.push(await readMd(md));
    const own = await jsonFileSection(first, plots, texts, texts.length > 0);
    const children: ReportSection[] = [];
    for (const c of d.children) children.push(...(await build(c)));
    return section({
      ...own,
      title: `Results: ${displayPath(d.path)}`,
      sources: [d.path],
      highlights: [...own.highlights, ...children.flatMap((c) => c.highlights)].slice(0, 6),
      children,
    });
  }
  const children: ReportSection[] = [];
  for (const file of jsons) {
    const own = stem(file);
    const plots: ReportPlot[] = [];
    for (const img of images.filter((f) => owner(f) === own)) plots.push(await plotFile(img));
    const texts: ReportText[] = [];
    for (const md of mds.filter((f) => owner(f) === own)) texts.push(await readMd(md));
    const kind = kinds[jsons.indexOf(file)];
    if (kind === 'mediation') children.push(await mediationSection(file, file, [file]));
    else if (kind === 'sweep') children.push(await sweepSection(file, file, [file]));
    else if (kind === 'comparison') children.push(await comparisonSection(file, file, [file]));
    else children.push(await jsonFileSection(file, plots, texts, texts.length > 0));
  }
  if (jsons.length === 1 && d.path === jsons[0]) return children[0]!; // one child per JSON file
  const plots: ReportPlot[] = [];
  for (const img of images.filter((f) => owner(f) === undefined)) plots.push(await plotFile(img));
  const texts: ReportText[] = [];
  for (const md of mds.filter((f) => owner(f) === undefined)) texts.push(await readMd(md));
  for (const c of d.children) children.push(...(await build(c)));
  return section({
    kind: 'benchmark',
    title: `Results: ${displayPath(d.path)}`,
    sources: [d.path],
    highlights: children.flatMap((c) => c.highlights).slice(0, 6),
    facts: [['files', `${jsons.length} JSON, ${images.length} plots, ${mds.length} markdown`]],
    plots,
    texts,
    children,
  });
}

/**
 * The demo's output folder (emlens demo): what was made (the organisms), the demo's own printed report, and a
 * subsection for each output in it: directions, activation stores, comparison, mediation, sweep.
 */
export async function demoSection(dir: string): Promise<ReportSection> {
  const report = await readFile(join(dir, 'report.md'), 'utf8');
  const facts: [string, string][] = [['made by', 'emlens demo (synthetic model organisms; see report.md)']];
  const tables: ReportTable[] = [];
  try {
    const org = JSON.parse(await readFile(join(dir, 'organisms', 'organisms.json'), 'utf8')) as {
      seed: number;
      base: string;
      adapterLayer: number;
      numLayers: number;
      dModel: number;
      organisms: { name: string; kind: string; domain: string; adapter: string }[];
    };
    facts.push(
      [
        'base model',
        `${displayPath(join(dir, 'organisms', org.base))} (${org.numLayers} blocks, d_model ${org.dModel})`,
      ],
      [
        'adapters',
        `${org.organisms.map((o) => o.adapter).join(', ')} (rank-1 LoRA at block ${org.adapterLayer})`,
      ],
      ['organisms seed', String(org.seed)],
    );
    tables.push({
      caption: 'Model organisms',
      header: ['organism', 'kind', 'domain', 'adapter'],
      align: ['left', 'left', 'left', 'left'],
      rows: org.organisms.map((o) => [o.name, o.kind, o.domain, o.adapter]),
    });
  } catch {
    // an older or partial demo folder: the report text still tells
  }
  const highlights = report
    .split('\n')
    .filter((l) => /cos with the planted direction|max \|logit difference\|/.test(l))
    .map((l) => l.trim().replace(/\s+/g, ' '));
  const children: ReportSection[] = [];
  const order = ['directions', 'activations', 'compare', 'mediation', 'sweep'];
  const entries = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isDirectory() && !['organisms', 'cache'].includes(e.name))
    .map((e) => e.name)
    .sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99) || a.localeCompare(b));
  for (const name of entries) {
    const d = await detectInput(join(dir, name), 1);
    if (d.kind === 'directions')
      children.push(await directionsSection(d.files, `Directions (${name}/)`, [d.path]));
    else if (d.kind === 'store')
      children.push(await storesSection(d.stores, `Activation stores (${name}/)`, [d.path]));
    else if (d.kind === 'comparison') children.push(await comparisonSection(d.path, d.json, [d.path]));
    else if (d.kind === 'mediation') children.push(await mediationSection(d.path, d.json, [d.path]));
    else if (d.kind === 'sweep') children.push(await sweepSection(d.path, d.json, [d.path]));
  }
  return section({
    kind: 'demo',
    title: `Demo: ${displayPath(dir)}`,
    sources: [dir],
    // The demo's planted-vs-recovered lines, then each part's (the comparison repeats the directions' cosines).
    highlights: [
      ...highlights,
      ...children.flatMap((c) =>
        c.highlights.slice(0, { comparison: 0, store: 1, sweep: 1 }[c.kind as string] ?? 3),
      ),
    ],
    facts,
    tables,
    texts: [{ title: "The demo's printed report (report.md)", body: report, format: 'plain' }],
    children,
  });
}
