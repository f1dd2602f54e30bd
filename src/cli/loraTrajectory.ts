import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { EmlensError } from '../errors.js';
import { writeFolderAtomic } from '../io/outputs.js';
import { findCheckpoints, type LoraTrajectory, loraTrajectory } from '../model/lora/trajectory.js';
import { lineChart } from '../plot/charts.js';
import { renderVegaLite } from '../plot/render.js';

/** Files `emlens lora-trajectory` writes into --out (what the report picks up). */
export const TRAJECTORY_FILES = {
  csv: 'lora_trajectory.csv',
  json: 'lora_trajectory.json',
  localCosinePlot: 'lora_local_cosine',
  normPlot: 'lora_b_norm',
} as const;

function parseKs(value: string): number[] {
  const ks = value.split(',').map((s) => s.trim());
  if (ks.length === 0 || ks.some((k) => !/^[1-9]\d*$/.test(k))) {
    throw new EmlensError(`--k '${value}' is not a list of positive integers; write it like --k 1,2,4.`);
  }
  return ks.map(Number);
}

/** `emlens lora-trajectory`: weight-space analysis of a series of adapter checkpoints. */
export function registerLoraTrajectory(program: Command): void {
  program
    .command('lora-trajectory')
    .description(
      'per LoRA module over a series of adapter checkpoints: A/B norms, PCA of the B trajectory, local cosine, cosine to the final checkpoint (no forward pass)',
    )
    .requiredOption(
      '--checkpoints <dirs...>',
      'adapter folders in training order, or one parent folder of checkpoint-N folders (sorted by N)',
    )
    .requiredOption('--out <dir>', 'folder to write (CSV, JSON, plots)')
    .option('--k <list>', 'local-cosine offsets', '1,2,4')
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: { checkpoints: string[]; out: string; k: string; overwrite?: boolean }) => {
      const ks = parseKs(flags.k);
      const cps = await findCheckpoints(flags.checkpoints);
      const t = await loraTrajectory(cps, { ks });
      await writeFolderAtomic(flags.out, { overwrite: flags.overwrite }, async (dir) => {
        await writeFile(join(dir, TRAJECTORY_FILES.csv), trajectoryCsv(t));
        await writeFile(join(dir, TRAJECTORY_FILES.json), `${JSON.stringify(t, null, 1)}\n`);
        const k = String(ks[0]);
        const rows = t.modules.flatMap((m) =>
          t.steps.map((step, i) => ({
            step,
            module: m.module,
            local_cosine: m.localCosine[k]![i],
            norm_b: m.normB[i]!,
          })),
        );
        await renderVegaLite(
          lineChart(
            rows.filter((r) => r.local_cosine !== null),
            {
              x: 'step',
              y: 'local_cosine',
              series: 'module',
              yDomain: [-1, 1],
              title: `local cosine (k = ${k}): -1 straight, higher where B turns`,
            },
          ),
          join(dir, TRAJECTORY_FILES.localCosinePlot),
        );
        await renderVegaLite(
          lineChart(rows, { x: 'step', y: 'norm_b', series: 'module', title: '|B| (Frobenius) over steps' }),
          join(dir, TRAJECTORY_FILES.normPlot),
        );
      });
      const peaks = t.modules.map((m) => {
        const lc = m.localCosine[String(ks[0])]!;
        let best = -1;
        lc.forEach((v, i) => {
          if (v !== null && (best < 0 || v > lc[best]!)) best = i;
        });
        return best < 0 || lc[best]! < -0.99
          ? `${m.module}: none (straight)`
          : `${m.module}: step ${t.steps[best]}`;
      });
      console.log(
        `wrote ${flags.out}: ${t.modules.length} modules over ${t.steps.length} checkpoints (steps ${t.steps.join(', ')}); sharpest turn (local cosine k=${ks[0]}) ${peaks.slice(0, 8).join('; ')}${peaks.length > 8 ? '; ...' : ''}`,
      );
    });
}

/** One row per module and step. */
export function trajectoryCsv(t: LoraTrajectory): string {
  const kCols = t.ks.map((k) => `local_cos_k${k}`);
  const lines = [
    ['module', 'rank', 'step', 'norm_a', 'norm_b', 'cos_final', ...kCols, 'pc1', 'pc2'].join(','),
  ];
  for (const m of t.modules) {
    t.steps.forEach((step, i) => {
      const cell = (v: number | null | undefined) => (v === null || v === undefined ? '' : String(v));
      lines.push(
        [
          m.module,
          m.rank,
          step,
          m.normA[i],
          m.normB[i],
          m.cosToFinal[i],
          ...t.ks.map((k) => cell(m.localCosine[String(k)]![i])),
          cell(m.pca.coords[i]![0]),
          cell(m.pca.coords[i]![1]),
        ].join(','),
      );
    });
  }
  return `${lines.join('\n')}\n`;
}
