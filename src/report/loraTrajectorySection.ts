/** The report section of an `emlens lora-trajectory` output: each module's sharpest turn, norms and plots. */
import { readFile } from 'node:fs/promises';
import { EmlensError } from '../errors.js';
import type { LoraTrajectory } from '../model/lora/trajectory.js';
import { lineChart } from '../plot/charts.js';
import { displayPath, type ReportSection, section } from './model.js';
import { drawPlot } from './plots.js';

export async function loraTrajectorySection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  let t: LoraTrajectory;
  try {
    t = JSON.parse(await readFile(json, 'utf8')) as LoraTrajectory;
  } catch {
    throw new EmlensError(`${json} is not valid JSON; rerun emlens lora-trajectory.`);
  }
  const k = String(t.ks[0]);
  const turn = (lc: readonly (number | null)[]) => {
    let best = -1;
    lc.forEach((v, i) => {
      if (v !== null && (best < 0 || v > lc[best]!)) best = i;
    });
    return best < 0 || lc[best]! < -0.99 ? null : best;
  };
  const rows = t.modules.flatMap((m) =>
    t.steps.map((step, i) => ({ step, module: m.module, local_cosine: m.localCosine[k]?.[i] ?? null })),
  );
  return section({
    kind: 'lora-trajectory',
    title: `LoRA trajectory: ${displayPath(path)}`,
    sources,
    highlights: t.modules.slice(0, 6).map((m) => {
      const i = turn(m.localCosine[k] ?? []);
      return `${m.module}: ${i === null ? 'no turn' : `sharpest turn at step ${t.steps[i]} (local cosine ${m.localCosine[k]![i]!.toFixed(2)})`}`;
    }),
    facts: [
      ['checkpoints', `${t.steps.length} (steps ${t.steps.join(', ')})`],
      ['modules', String(t.modules.length)],
      ['local-cosine k', t.ks.join(', ')],
    ],
    tables: [
      {
        caption: 'Per module (first / last step)',
        header: [
          'module',
          'rank',
          '|A|',
          '|B|',
          'cos(B, B final) at first step',
          'PC1 share',
          'sharpest turn',
        ],
        rows: t.modules.map((m) => {
          const i = turn(m.localCosine[k] ?? []);
          return [
            m.module,
            String(m.rank),
            `${m.normA[0]!.toFixed(3)} / ${m.normA.at(-1)!.toFixed(3)}`,
            `${m.normB[0]!.toFixed(3)} / ${m.normB.at(-1)!.toFixed(3)}`,
            m.cosToFinal[0]!.toFixed(3),
            (m.pca.explained[0] ?? 0).toFixed(3),
            i === null ? '-' : `step ${t.steps[i]}`,
          ];
        }),
        collapsed: t.modules.length > 12,
      },
    ],
    plots: [
      await drawPlot(
        `Local cosine (k = ${k}): -1 straight, higher where B turns`,
        lineChart(
          rows.filter((r) => r.local_cosine !== null),
          { x: 'step', y: 'local_cosine', series: 'module', yDomain: [-1, 1] },
        ),
      ),
    ],
  });
}
