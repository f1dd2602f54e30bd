/**
 * Renders a Vega-Lite spec to `<base>.svg` and `<base>.png` without a browser: Vega's headless View
 * (renderer 'none') produces the SVG, resvg rasterises it with the system fonts.
 */
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Resvg } from '@resvg/resvg-js';
// vega is ESM with top-level await: a namespace import works where require() does not.
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';

/** Width of the PNG in pixels; the height follows the chart's aspect ratio. */
export const PNG_WIDTH = 900;

/**
 * Font list used when a spec sets none. Vega's default is the bare `sans-serif`, which resvg maps to Arial and,
 * where Arial is missing (most Linux machines), silently to a serif face; an explicit list picks the first
 * family that is installed.
 */
export const DEFAULT_FONT =
  'Helvetica Neue, Helvetica, Arial, DejaVu Sans, Liberation Sans, Noto Sans, sans-serif';

/** Compiles a Vega-Lite spec and renders it to SVG text (no files written). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  let view: vega.View;
  try {
    const withFont = { ...spec, config: { font: DEFAULT_FONT, ...spec.config } } as TopLevelSpec;
    view = new vega.View(vega.parse(compile(withFont).spec), { renderer: 'none' });
  } catch (e) {
    throw new EmlensError(
      `The chart specification is invalid (${(e as Error).message}); fix the spec passed to renderVegaLite.`,
    );
  }
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterises SVG text to a PNG {@link PNG_WIDTH} pixels wide. */
export function svgToPng(svg: string, width = PNG_WIDTH): Buffer {
  const resvg = new Resvg(svg, {
    fitTo: { mode: 'width', value: width },
    background: 'white',
    font: { loadSystemFonts: true },
  });
  return resvg.render().asPng();
}

/**
 * Renders `spec` and writes `<outBase>.svg` and `<outBase>.png` (each atomically, creating the folder).
 *
 * @example
 * const { png } = await renderVegaLite(heatmap(values, { title: 'cosine' }), 'out/cosine');
 */
export async function renderVegaLite(
  spec: TopLevelSpec,
  outBase: string,
): Promise<{ readonly svg: string; readonly png: string }> {
  const svgText = await renderSvg(spec);
  const png = svgToPng(svgText);
  const svgPath = `${outBase}.svg`;
  const pngPath = `${outBase}.png`;
  await mkdir(dirname(svgPath), { recursive: true });
  await writeAtomic(svgPath, svgText);
  await writeAtomic(pngPath, png);
  return { svg: svgPath, png: pngPath };
}
