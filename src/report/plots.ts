/**
 * Plots of the report: drawn from data with Vega-Lite (SVG, no browser), or read from the files an input
 * already holds.
 */
import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { renderSvg } from '../plot/render.js';
import type { ReportPlot } from './model.js';

/** Renders a Vega-Lite spec to an SVG plot. */
export async function drawPlot(title: string, spec: TopLevelSpec): Promise<ReportPlot> {
  return { title, mime: 'image/svg+xml', data: Buffer.from(await renderSvg(spec), 'utf8') };
}

/** A plot file (.svg or .png) as it is. */
export async function plotFile(file: string, title?: string): Promise<ReportPlot> {
  const svg = extname(file).toLowerCase() === '.svg';
  return {
    title: title ?? basename(file, extname(file)).replace(/[-_]+/g, ' '),
    mime: svg ? 'image/svg+xml' : 'image/png',
    data: await readFile(file),
    file,
  };
}

/**
 * Of plot files, the ones to show: an SVG where there is one, the PNG of the same name only where there is
 * no SVG (emlens writes both).
 */
export function preferSvg(files: readonly string[]): string[] {
  const images = files.filter((f) => /\.(svg|png)$/i.test(f));
  const stems = new Set(images.filter((f) => /\.svg$/i.test(f)).map((f) => f.slice(0, -4)));
  return images.filter((f) => /\.svg$/i.test(f) || !stems.has(f.slice(0, -4)));
}

export interface GroupedBar {
  /** The group (one band on the y axis). */
  readonly group: string;
  /** The bar within the group (colour), e.g. `direction` or `random control`. */
  readonly series: string;
  readonly value: number | null;
}

/**
 * Horizontal grouped bars: one band per group, one bar per series in it, values in percent (e.g. the fraction
 * of a divergence a direction mediates, beside its random control).
 */
export function groupedBars(
  rows: readonly GroupedBar[],
  opts: { readonly title: string; readonly xTitle: string; readonly seriesTitle?: string },
): TopLevelSpec {
  const groups = [...new Set(rows.map((r) => r.group))];
  const series = [...new Set(rows.map((r) => r.series))];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    data: { values: rows.filter((r) => r.value !== null && Number.isFinite(r.value)).map((r) => ({ ...r })) },
    width: 420,
    height: { step: Math.max(8, 26 / Math.max(1, series.length)) },
    mark: { type: 'bar' },
    encoding: {
      y: { field: 'group', type: 'nominal', sort: groups, title: null, axis: { labelLimit: 520 } },
      yOffset: { field: 'series', type: 'nominal', sort: series },
      x: { field: 'value', type: 'quantitative', title: opts.xTitle },
      color: {
        field: 'series',
        type: 'nominal',
        sort: series,
        title: opts.seriesTitle ?? null,
        scale: { range: ['#c0504d', '#9e9e9e', '#4f81bd', '#f2a93b'] },
        legend: { orient: 'bottom' },
      },
      tooltip: [
        { field: 'group', type: 'nominal' },
        { field: 'series', type: 'nominal' },
        { field: 'value', type: 'quantitative', format: '.1f' },
      ],
    },
  } as unknown as TopLevelSpec;
}

/** Whole-number ticks on the x axis (layers, blocks). */
export function integerX(spec: TopLevelSpec): TopLevelSpec {
  const s = spec as unknown as { encoding?: { x?: Record<string, unknown> } };
  if (s.encoding?.x) s.encoding.x.axis = { tickMinStep: 1, format: 'd', ...(s.encoding.x.axis ?? {}) };
  return spec;
}

/** Axis labels up to `limit` pixels before they are cut (long pair names). */
export function wideLabels(spec: TopLevelSpec, limit = 320): TopLevelSpec {
  const s = spec as unknown as { config?: Record<string, unknown> };
  return { ...spec, config: { ...(s.config ?? {}), axis: { labelLimit: limit } } } as TopLevelSpec;
}
