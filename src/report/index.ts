/**
 * `emlens/report`: one self-contained HTML (and Markdown) report from any mix of emlens outputs, input
 * detection, and the Vega-Lite charts and renderer (SVG, PNG) behind every plot.
 */
export {
  type HeatmapCell,
  type HeatmapOptions,
  heatmap,
  type LineChartOptions,
  lineChart,
  quadrantChart,
} from '../plot/charts.js';
export { renderVegaLite } from '../plot/render.js';
export {
  emlensVersion,
  type HtmlReport,
  type HtmlReportOptions,
  REPORT_FILES,
  writeHtmlReport,
} from './build.js';
export { type Detected, detectInput } from './detect.js';
export type { InputKind, ReportPage, ReportPlot, ReportSection, ReportTable, ReportText } from './model.js';
