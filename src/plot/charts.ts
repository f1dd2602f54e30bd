/**
 * Small Vega-Lite spec builders for the charts emlens draws; render them with {@link renderVegaLite}.
 * Each returns a plain spec, so a caller can still tweak it (or save it as JSON) before rendering.
 */
import type { TopLevelSpec } from 'vega-lite';

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';

/** One cell of a heatmap. */
export interface HeatmapCell {
  readonly x: string | number;
  readonly y: string | number;
  /** `null` or NaN draws an empty cell. */
  readonly value: number | null;
}

export interface HeatmapOptions {
  readonly title?: string;
  readonly xTitle?: string;
  readonly yTitle?: string;
  /** Legend title. */
  readonly valueTitle?: string;
  /** Colour scale domain; default: the data's extent. */
  readonly domain?: readonly [number, number];
  /** A Vega colour scheme; default `redblue` reversed (blue low, red high), a diverging scheme. */
  readonly scheme?: string;
  /** Reverse the scheme; default true for the default scheme, false otherwise. */
  readonly reverse?: boolean;
  /** Write each cell's value on it (default: when there are at most 300 cells). */
  readonly labels?: boolean;
  /** d3-format of values in labels and tooltips; default `.2f`. */
  readonly format?: string;
  /** Pixel size of one cell (default 28 wide, 22 high). */
  readonly cellWidth?: number;
  readonly cellHeight?: number;
}

/**
 * A heatmap of `value` over ordinal `x` and `y` (kept in first-seen order).
 *
 * @example
 * heatmap([{ x: 0, y: 'a~b', value: 0.9 }], { domain: [-1, 1], valueTitle: 'cosine' })
 */
export function heatmap(values: readonly HeatmapCell[], opts: HeatmapOptions = {}): TopLevelSpec {
  const format = opts.format ?? '.2f';
  const xs = unique(values.map((v) => v.x));
  const ys = unique(values.map((v) => v.y));
  const labels = opts.labels ?? values.length <= 300;
  const data = values.map((v) => ({
    x: v.x,
    y: v.y,
    value: v.value === null || Number.isNaN(v.value) ? null : v.value,
  }));
  const scheme = opts.scheme ?? 'redblue';
  const reverse = opts.reverse ?? opts.scheme === undefined;
  const color = {
    field: 'value',
    type: 'quantitative' as const,
    title: opts.valueTitle ?? 'value',
    scale: {
      scheme,
      reverse,
      ...(opts.domain ? { domain: [...opts.domain], clamp: true } : {}),
    },
    legend: { format },
  };
  const x = {
    field: 'x',
    type: 'ordinal' as const,
    sort: xs,
    title: opts.xTitle ?? 'x',
    axis: { labelAngle: 0 },
  };
  const y = { field: 'y', type: 'ordinal' as const, sort: ys, title: opts.yTitle ?? 'y' };
  const layers: Record<string, unknown>[] = [
    {
      mark: { type: 'rect' },
      encoding: {
        x,
        y,
        color,
        tooltip: [
          { field: 'x', type: 'ordinal', title: opts.xTitle ?? 'x' },
          { field: 'y', type: 'ordinal', title: opts.yTitle ?? 'y' },
          { field: 'value', type: 'quantitative', format, title: opts.valueTitle ?? 'value' },
        ],
      },
    },
  ];
  if (labels) {
    layers.push({
      mark: { type: 'text', fontSize: 9 },
      encoding: {
        x,
        y,
        text: { field: 'value', type: 'quantitative', format },
        // Dark text on pale cells, white on saturated ones.
        color: {
          condition: { test: 'datum.value !== null && abs(datum.value) > 0.6', value: 'white' },
          value: 'black',
        },
      },
    });
  }
  return {
    $schema: SCHEMA,
    ...(opts.title ? { title: opts.title } : {}),
    data: { values: data },
    width: Math.max(120, xs.length * (opts.cellWidth ?? 28)),
    height: Math.max(40, ys.length * (opts.cellHeight ?? 22)),
    layer: layers,
    // The layers are built loosely typed; vega-lite's compile validates the whole spec when rendering.
  } as unknown as TopLevelSpec;
}

export interface LineChartOptions<R> {
  /** Field of each row plotted on the x axis (quantitative). */
  readonly x: keyof R & string;
  /** Field plotted on the y axis (quantitative). */
  readonly y: keyof R & string;
  /** Field naming the line each row belongs to (one colour per series). */
  readonly series?: keyof R & string;
  readonly title?: string;
  readonly xTitle?: string;
  readonly yTitle?: string;
  readonly seriesTitle?: string;
  /**
   * Field whose values get their own line style (the first solid, the next dashed, dotted): e.g. random
   * controls drawn dashed beside the direction's solid line, whatever their colour.
   */
  readonly dash?: keyof R & string;
  /** Fixed y domain, e.g. [-1, 1] for cosines. */
  readonly yDomain?: readonly [number, number];
  readonly width?: number;
  readonly height?: number;
}

/**
 * A line chart with points, one line per `series` value.
 *
 * @example
 * lineChart(rows, { x: 'layer', y: 'cosine', series: 'pair', yDomain: [-1, 1] })
 */
export function lineChart<R extends Record<string, unknown>>(
  rows: readonly R[],
  opts: LineChartOptions<R>,
): TopLevelSpec {
  return {
    $schema: SCHEMA,
    ...(opts.title ? { title: opts.title } : {}),
    data: { values: rows.map((r) => ({ ...r })) },
    width: opts.width ?? 480,
    height: opts.height ?? 280,
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: opts.x, type: 'quantitative', title: opts.xTitle ?? opts.x },
      y: {
        field: opts.y,
        type: 'quantitative',
        title: opts.yTitle ?? opts.y,
        ...(opts.yDomain ? { scale: { domain: [...opts.yDomain] } } : {}),
      },
      ...(opts.series
        ? { color: { field: opts.series, type: 'nominal', title: opts.seriesTitle ?? opts.series } }
        : {}),
      ...(opts.dash
        ? {
            strokeDash: {
              field: opts.dash,
              type: 'nominal',
              title: opts.dash,
              scale: {
                range: [
                  [1, 0],
                  [6, 4],
                  [2, 2],
                ],
              },
            },
            shape: { field: opts.dash, type: 'nominal', title: opts.dash },
          }
        : {}),
    },
  } as TopLevelSpec;
}

/** One judged answer of a quadrant plot. */
export interface QuadrantPoint {
  /** The panel (file or condition) it belongs to. */
  readonly panel: string;
  readonly aligned: number;
  readonly coherent: number;
}

export interface QuadrantChartOptions {
  readonly title?: string;
  /** The misaligned cut (aligned <= this; default 30). */
  readonly alignedCut?: number;
  /** The aligned cut (aligned > this; default 70), drawn dashed. */
  readonly alignedHighCut?: number;
  /** The coherent cut (coherent > this; default 50). */
  readonly coherentCut?: number;
  /** Panels per row (default: up to 3). */
  readonly columns?: number;
}

/**
 * The quadrant plot of the model-organisms code: coherent (x) against aligned (y), one point per judged answer,
 * with the cut lines (coherent 50, aligned 30 solid; aligned 70 dashed), one panel per `panel` value in
 * first-seen order. EM answers are the bottom-right quadrant (coherent > 50, aligned <= 30). Panel titles are
 * never truncated.
 *
 * @example
 * quadrantChart([{ panel: 'q14b.csv', aligned: 12, coherent: 80 }])
 */
export function quadrantChart(
  points: readonly QuadrantPoint[],
  opts: QuadrantChartOptions = {},
): TopLevelSpec {
  const panels = unique(points.map((p) => p.panel));
  const a = opts.alignedCut ?? 30;
  const hi = opts.alignedHighCut ?? 70;
  const c = opts.coherentCut ?? 50;
  const scale = { domain: [0, 100], nice: false };
  const x = { field: 'coherent', type: 'quantitative', title: 'coherent', scale };
  const y = { field: 'aligned', type: 'quantitative', title: 'aligned', scale };
  return {
    $schema: SCHEMA,
    ...(opts.title ? { title: opts.title } : {}),
    data: {
      values: points.map((p) => ({
        panel: p.panel,
        aligned: p.aligned,
        coherent: p.coherent,
        em: p.aligned <= a && p.coherent > c ? 'EM' : 'other',
      })),
    },
    columns: opts.columns ?? Math.min(3, Math.max(1, panels.length)),
    facet: {
      field: 'panel',
      type: 'nominal',
      sort: panels,
      title: null,
      header: { labelLimit: 0, labelFontSize: 11 },
    },
    spec: {
      width: 220,
      height: 200,
      layer: [
        {
          mark: { type: 'circle', size: 14, opacity: 0.5 },
          encoding: {
            x,
            y,
            color: {
              field: 'em',
              type: 'nominal',
              title: `EM: aligned <= ${a} and coherent > ${c}`,
              legend: { titleLimit: 0, orient: 'bottom' },
              scale: { domain: ['EM', 'other'], range: ['#c0504d', '#4e79a7'] },
            },
          },
        },
        { mark: { type: 'rule', color: 'black', strokeWidth: 1 }, encoding: { x: { datum: c } } },
        { mark: { type: 'rule', color: 'black', strokeWidth: 1 }, encoding: { y: { datum: a } } },
        {
          mark: { type: 'rule', color: 'grey', strokeWidth: 1, strokeDash: [4, 3] },
          encoding: { y: { datum: hi } },
        },
      ],
    },
  } as unknown as TopLevelSpec;
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)];
}
