/** The report section of a transfer matrix (`emlens transfer`'s transfer.json and its heatmap). */
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { TransferCell } from '../interventions/transfer.js';
import { displayPath, fixed, percent, type ReportSection, section } from './model.js';
import { plotFile, preferSvg } from './plots.js';

/** JSON null (an n/a fraction) back to NaN. */
type StoredCell = {
  [K in keyof TransferCell]: TransferCell[K] extends number ? number | null : TransferCell[K];
};

export async function transferSection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const raw = JSON.parse(await readFile(json, 'utf8')) as {
    directions: string[];
    finetunes: string[];
    randomControls: number;
    cells: StoredCell[];
  };
  const num = (x: number | null) => (x === null ? Number.NaN : x);
  const cell = (a: string, b: string) => raw.cells.find((c) => c.direction === a && c.finetune === b);
  const folder = json === path ? dirname(json) : path;
  const images = preferSvg(
    (await readdir(folder).catch(() => [] as string[]))
      .filter((f) => /^transfer\.(svg|png)$/i.test(f))
      .map((f) => join(folder, f)),
  );
  const maxRandom = Math.max(...raw.cells.map((c) => Math.abs(num(c.randomPatched))));
  return section({
    kind: 'transfer',
    title: `Transfer across finetunes: ${displayPath(path)}`,
    sources,
    highlights: [
      `${raw.directions.length} directions x ${raw.finetunes.length} finetunes; largest |random control| ${percent(maxRandom)} (${raw.randomControls} per cell)`,
    ],
    facts: [
      ['directions', raw.directions.join(', ')],
      ['finetunes', raw.finetunes.join(', ')],
    ],
    tables: [
      {
        caption:
          "Fraction of finetune B's divergence mediated by patching direction A (rows) out of B (columns); random control mean in brackets",
        header: ['direction \\ finetune', ...raw.finetunes],
        rows: raw.directions.map((a) => [
          a,
          ...raw.finetunes.map((b) => {
            const c = cell(a, b);
            return c === undefined ? 'n/a' : `${percent(num(c.patched))} (${percent(num(c.randomPatched))})`;
          }),
        ]),
      },
      {
        caption: 'KL(finetune || base) on its scored answer tokens, nats per token',
        header: ['finetune', 'KL'],
        rows: raw.finetunes.map((b) => [b, fixed(num(cell(raw.directions[0]!, b)?.divergence ?? null), 4)]),
      },
    ],
    plots: await Promise.all(images.map((f) => plotFile(f, 'Transfer matrix (patched fraction mediated)'))),
  });
}
