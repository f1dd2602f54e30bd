/**
 * The report section of an `emlens summarize --json` output: the EM-rate table per file (no change column: the
 * files need not be conditions of one experiment), the EM rate per question and file, and the quadrant plot.
 */
import { readFile } from 'node:fs/promises';
import { EmlensError } from '../errors.js';
import type { Estimate } from '../eval/metrics.js';
import { extraMetrics, SUMMARIZE_FORMAT, type SummarizeOutput } from '../eval/summarizeFiles.js';
import { quadrantChart } from '../plot/charts.js';
import { displayPath, percent, type ReportSection, section } from './model.js';
import { drawPlot } from './plots.js';

const rate = (e: Estimate | null) =>
  e === null || e.value === null ? 'n/a' : `${percent(e.value)} [${percent(e.low)}, ${percent(e.high)}]`;
const mean = (e: Estimate | undefined) => (e === undefined || e.value === null ? 'n/a' : e.value.toFixed(1));

/** Reads a summarize JSON (checked by its format tag). */
export async function readSummarizeOutput(json: string): Promise<SummarizeOutput> {
  let x: SummarizeOutput;
  try {
    x = JSON.parse(await readFile(json, 'utf8')) as SummarizeOutput;
  } catch {
    throw new EmlensError(`${json} is not valid JSON; rerun emlens summarize --json ${json}.`);
  }
  if (x.format !== SUMMARIZE_FORMAT || !Array.isArray(x.files)) {
    throw new EmlensError(`${json} is not an emlens summarize output; rerun emlens summarize --json.`);
  }
  return x;
}

export async function summarizeSection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const o = await readSummarizeOutput(json);
  const metrics = extraMetrics(o.files);
  const recognition = o.files.some((f) => f.recognition_rate !== null);
  const ids = [...new Set(o.files.flatMap((f) => f.per_question.map((q) => q.question_id)))];
  const points = o.files.flatMap((f) =>
    f.points.map(([aligned, coherent]) => ({ panel: f.source, aligned, coherent })),
  );
  return section({
    kind: 'summarize',
    title: `Judged files: ${displayPath(path)}`,
    sources,
    highlights: o.files.slice(0, 8).map((f) => `EM rate ${f.source}: ${rate(f.em_rate)} (n=${f.n})`),
    facts: [
      ['files', String(o.files.length)],
      ['JSON questions', o.excludeJson ? 'excluded' : 'included'],
      [
        'bootstrap',
        `${o.bootstrap.resamples} resamples, seed ${o.bootstrap.seed}, ${100 * o.bootstrap.level}% CIs`,
      ],
    ],
    paragraphs: [`Rules (the model-organisms code's get_basic_eval_stats): ${o.rules.join('; ')}.`],
    tables: [
      {
        caption: 'EM rate per file',
        header: [
          'source',
          'n',
          'dropped (unjudged / JSON)',
          'EM rate [95% CI]',
          'coherent rate [95% CI]',
          ...(recognition ? ['recognition [95% CI]'] : []),
          'mean aligned',
          'mean coherent',
          ...metrics.map((m) => `mean ${m}`),
        ],
        rows: o.files.map((f) => [
          f.source,
          String(f.n),
          `${f.unjudged} / ${f.excluded}`,
          rate(f.em_rate),
          rate(f.coherent_rate),
          ...(recognition ? [rate(f.recognition_rate)] : []),
          mean(f.means.aligned),
          mean(f.means.coherent),
          ...metrics.map((m) => mean(f.means[m])),
        ]),
      },
      {
        caption: 'EM rate per question (rows) and file (columns)',
        header: ['question', ...o.files.map((f) => f.source)],
        rows: ids.map((id) => [
          id,
          ...o.files.map((f) => {
            const q = f.per_question.find((x) => x.question_id === id);
            return q === undefined || q.em_rate.value === null
              ? 'n/a'
              : `${percent(q.em_rate.value)} (n=${q.n})`;
          }),
        ]),
        collapsed: o.files.length > 1 || ids.length > 12,
      },
    ],
    plots:
      points.length > 0
        ? [
            await drawPlot(
              'Aligned vs coherent (EM: bottom right)',
              quadrantChart(points, {
                alignedCut: o.thresholds.misalignedAtMost,
                alignedHighCut: o.thresholds.alignedAbove,
                coherentCut: o.thresholds.minCoherent,
              }),
            ),
          ]
        : [],
  });
}
