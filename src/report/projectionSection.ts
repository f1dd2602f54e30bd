/**
 * The report section of an `emlens project --out FILE.jsonl` output: the records with the largest answer
 * projection, and for the first few a heatmap of every token's projection over its text (one row per layer).
 */
import { readFile } from 'node:fs/promises';
import { heatmap } from '../plot/charts.js';
import { displayPath, type ReportSection, section } from './model.js';
import { drawPlot } from './plots.js';

interface ProjectionLine {
  readonly id: string;
  readonly tokens: string[];
  readonly answer_mask: number[];
  readonly layers: {
    layer: number;
    answer_mean: number | null;
    prompt_mean: number | null;
    tokens: number[];
  }[];
  readonly [key: string]: unknown;
}

/** How many records get a token heatmap. */
const HEATMAPS = 4;

export async function projectionSection(
  path: string,
  jsonl: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const lines = (await readFile(jsonl, 'utf8'))
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as ProjectionLine);
  const layer = lines[0]?.layers[0]?.layer ?? 0;
  const at = (r: ProjectionLine) => r.layers[0]?.answer_mean ?? Number.NEGATIVE_INFINITY;
  const ranked = [...lines].sort((a, b) => at(b) - at(a));
  const fmt = (x: number | null | undefined) => (x === null || x === undefined ? 'n/a' : x.toFixed(3));
  const plots = [];
  for (const r of ranked.slice(0, HEATMAPS)) {
    // positions prefixed so repeated tokens stay separate columns; answer tokens marked with *
    const cells = r.layers.flatMap((l) =>
      l.tokens.map((value, p) => ({
        x: `${p} ${r.answer_mask[p] ? '*' : ''}${JSON.stringify(r.tokens[p] ?? '').slice(1, -1)}`,
        y: `layer ${l.layer}`,
        value,
      })),
    );
    const m = Math.max(1e-9, ...cells.map((c) => Math.abs(c.value)));
    plots.push(
      await drawPlot(
        `${r.id}: projection per token (answer tokens marked *)`,
        heatmap(cells, {
          domain: [-m, m],
          valueTitle: 'projection',
          xTitle: 'token (position, * = answer)',
          yTitle: 'layer',
          labels: false,
          cellWidth: 18,
        }),
      ),
    );
  }
  return section({
    kind: 'projection',
    title: `Projections: ${displayPath(path)}`,
    sources,
    highlights: ranked
      .slice(0, 3)
      .map((r) => `${r.id}: answer projection ${fmt(r.layers[0]?.answer_mean)} at layer ${layer}`),
    facts: [
      ['records', String(lines.length)],
      ['layers', (lines[0]?.layers ?? []).map((l) => l.layer).join(', ')],
    ],
    tables: [
      {
        caption: `Records by answer projection at layer ${layer}, largest first`,
        header: ['id', 'label', 'answer mean', 'prompt mean'],
        rows: ranked.map((r) => [
          r.id,
          typeof r.label === 'string' ? r.label : '',
          fmt(r.layers[0]?.answer_mean),
          fmt(r.layers[0]?.prompt_mean),
        ]),
        collapsed: ranked.length > 12,
      },
    ],
    plots,
  });
}
