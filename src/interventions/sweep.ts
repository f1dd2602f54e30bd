/**
 * `steeringSweep`: the judge-free effect of steering over scale x layer, beside K norm-matched random controls
 * (their mean and spread per cell).
 */

import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { TokenizedRecord } from '../data/record.js';
import type { DirectionSet } from '../directions/direction.js';
import {
  type ControlSpread,
  checkControlCount,
  controlSpread,
  formatSpread,
  randomControls,
} from '../directions/randomControl.js';
import { EmlensError } from '../errors.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles } from '../io/outputs.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { lineChart } from '../plot/charts.js';
import { renderVegaLite } from '../plot/render.js';
import { checkDirectionsFit, type LayerSelection, selectLayers, steerInterventions } from './compose.js';
import { formatNumber } from './mediationFormat.js';
import {
  type Condition,
  checkRecords,
  type EvalOptions,
  evaluatePlan,
  logprobMargin,
  type PlanResult,
} from './scoring.js';

export interface SweepOptions extends EvalOptions {
  readonly model: Model;
  /** A model to steer toward (e.g. the finetune): adds KL(target || model+steer) to each row. */
  readonly target?: Model;
  readonly directions: DirectionSet;
  readonly layers: LayerSelection;
  readonly scales: readonly number[];
  readonly records: readonly TokenizedRecord[];
  /** Neutral text: adds the side effect KL(model+steer || model) to each row. */
  readonly neutral?: readonly TokenizedRecord[];
  /** Steer by the unit vector (scales in residual units) instead of the stored vector. */
  readonly unit?: boolean;
  /** User seed of the random controls (default 0); each control's own seed derives from it. */
  readonly seed?: number;
  /** How many norm-matched random controls (default 1). */
  readonly randomControls?: number;
  /** Name of the direction for the controls' metadata (e.g. its file). */
  readonly label?: string;
}

export interface SweepRow {
  readonly layer: number;
  readonly scale: number;
  /** `direction`, or `random` for a norm-matched control. */
  readonly vector: 'direction' | 'random';
  /** Which control (0-based) for `random` rows; null for the direction's. */
  readonly control: number | null;
  /** Misaligned - aligned log-prob margin (null without labels). */
  readonly margin: number | null;
  /** KL(target || model+steer) (null without a target). */
  readonly klToTarget: number | null;
  /** KL(model+steer || model) on neutral text (null without it). */
  readonly sideEffect: number | null;
}

export interface SweepResult {
  readonly rows: readonly SweepRow[];
  /** The unsteered model's margin and KL to the target. */
  readonly baseline: { readonly margin: number | null; readonly klToTarget: number | null };
  /** The target's own margin (null without target or labels). */
  readonly targetMargin: number | null;
  /** User seed of the random controls. */
  readonly seed: number;
  /** Number of random controls (K): every cell has K `random` rows, summarised in `controls`. */
  readonly randomControls: number;
  /** Per layer x scale, the controls' mean and spread of each measure (see {@link sweepControls}). */
  readonly controls: readonly SweepControlCell[];
  readonly unit: boolean;
}

/** One layer x scale cell over the random controls. */
export interface SweepControlCell {
  readonly layer: number;
  readonly scale: number;
  readonly margin: ControlSpread | null;
  readonly klToTarget: ControlSpread | null;
  readonly sideEffect: ControlSpread | null;
}

/**
 * The random rows of a sweep summarised per layer x scale (mean, sd, min, max over the controls), in the
 * order the cells first appear. Also reads rows written before sweeps had several controls (one per cell).
 */
export function sweepControls(rows: readonly SweepRow[]): SweepControlCell[] {
  const cells = new Map<string, SweepRow[]>();
  for (const row of rows) {
    if (row.vector !== 'random') continue;
    const key = `${row.layer}/${row.scale}`;
    cells.set(key, [...(cells.get(key) ?? []), row]);
  }
  const over = (rs: SweepRow[], f: 'margin' | 'klToTarget' | 'sideEffect') =>
    rs.some((r) => r[f] === null) ? null : controlSpread(rs.map((r) => r[f] as number));
  // Every cell holds at least the row that made it.
  return [...cells.values()].map((rs) => ({
    layer: rs[0]!.layer,
    scale: rs[0]!.scale,
    margin: over(rs, 'margin'),
    klToTarget: over(rs, 'klToTarget'),
    sideEffect: over(rs, 'sideEffect'),
  }));
}

/**
 * Steers `model` at `blocks.L.hook_resid_post` by `scale * v_L` for every layer x scale (and the same with a
 * norm-matched random vector), and measures the judge-free effect: the misaligned-vs-aligned log-prob margin,
 * KL to a target model, and the side effect on neutral text.
 */
export async function steeringSweep(opts: SweepOptions): Promise<SweepResult> {
  const { model, directions } = opts;
  const spec = model.spec;
  checkDirectionsFit(directions, spec);
  checkRecords(opts.records, 'prompt/response');
  if (opts.neutral) checkRecords(opts.neutral, 'neutral');
  if (opts.scales.length === 0 || opts.scales.some((s) => !Number.isFinite(s))) {
    throw new EmlensError('The sweep needs a list of finite scales; pass e.g. 0,2,4,8.');
  }
  const layers = selectLayers(opts.layers, spec.numLayers);
  const seed = opts.seed ?? 0;
  const count = opts.randomControls ?? 1;
  checkControlCount(count);
  const randoms = randomControls(directions, count, { seed, name: opts.label });
  const unit = opts.unit ?? false;
  const cells: {
    name: string;
    layer: number;
    scale: number;
    vector: 'direction' | 'random';
    control: number | null;
    ivs: Intervention[];
  }[] = [];
  const vectors = [
    { vector: 'direction' as const, control: null, set: directions },
    ...randoms.map((set, k) => ({ vector: 'random' as const, control: k, set })),
  ];
  for (const layer of layers) {
    for (const scale of opts.scales) {
      for (const { vector, control, set } of vectors) {
        const ivs = scale === 0 ? [] : steerInterventions(set, spec, { layers: [layer], scale, unit });
        const name = `${control === null ? vector : `${vector}${control}`}/${layer}/${scale}`;
        cells.push({ name, layer, scale, vector, control, ivs });
      }
    }
  }
  const steered = cells.filter((c) => c.ivs.length > 0);
  const nameOf = (c: (typeof cells)[number]) => (c.ivs.length === 0 ? 'model' : c.name);
  const conditions: (Condition & { name: string })[] = [
    ...(opts.target ? [{ name: 'target', model: opts.target }] : []),
    { name: 'model', model },
    ...steered.map((c) => ({ name: c.name, model, interventions: c.ivs })),
  ];
  const pairs: [string, string][] = opts.target ? conditions.slice(1).map((c) => ['target', c.name]) : [];
  const main = await evaluatePlan(
    { conditions, pairs, logprobs: conditions.map((c) => c.name) },
    opts.records,
    { batchSize: opts.batchSize, onProgress: opts.onProgress },
  );
  let side: PlanResult | null = null;
  if (opts.neutral) {
    side = await evaluatePlan(
      {
        conditions: [
          { name: 'model', model },
          ...steered.map((c) => ({ name: c.name, model, interventions: c.ivs })),
        ],
        pairs: steered.map((c) => [c.name, 'model'] as const),
        logprobs: [],
      },
      opts.neutral,
      { batchSize: opts.batchSize },
    );
  }
  // margin, klTo and the side effects read log-probs and pairs the plans above asked for.
  const margin = (name: string) => logprobMargin(main.logprob.get(name)!, opts.records);
  const klTo = (name: string) => (opts.target ? main.kl.get(`target||${name}`)! : null);
  const rows: SweepRow[] = cells.map((c) => ({
    layer: c.layer,
    scale: c.scale,
    vector: c.vector,
    control: c.control,
    margin: margin(nameOf(c)),
    klToTarget: klTo(nameOf(c)),
    sideEffect: side === null ? null : c.ivs.length === 0 ? 0 : side.kl.get(`${c.name}||model`)!,
  }));
  return {
    rows,
    baseline: { margin: margin('model'), klToTarget: klTo('model') },
    targetMargin: opts.target ? margin('target') : null,
    seed,
    randomControls: count,
    controls: sweepControls(rows),
    unit,
  };
}

/** The controls' cell of a sweep row: `mean ± sd (min..max, n=K)`, or `x (n=1)`. */
export const sweepSpread = (x: ControlSpread | null | undefined, digits: number) =>
  formatSpread(x, (v) => formatNumber(v, digits));

/**
 * The sweep as a markdown table: one row per layer x scale, the direction's value beside the random
 * controls' mean ± sd (min..max, n).
 */
export function sweepMarkdown(r: SweepResult, title = 'Steering sweep'): string {
  const controls = new Map((r.controls ?? sweepControls(r.rows)).map((c) => [`${c.layer}/${c.scale}`, c]));
  const n = r.randomControls ?? 1;
  const lines = [
    `# ${title}`,
    '',
    `Steering at blocks.L.hook_resid_post by scale x ${r.unit ? 'the unit vector' : 'the stored vector'} of layer L; control: ${n === 1 ? 'one norm-matched random vector (n=1, no spread)' : `${n} norm-matched random vectors, as mean ± sample sd (min..max, n)`}, user seed ${r.seed} (control k's own seed derives from the direction's content, the seed and k). Margin: mean log p(misaligned answer) - mean log p(aligned answer) per token. Unsteered margin ${formatNumber(r.baseline.margin, 3)}${r.targetMargin !== null ? `, target's margin ${formatNumber(r.targetMargin, 3)}` : ''}${r.baseline.klToTarget !== null ? `, unsteered KL(target ‖ model) ${formatNumber(r.baseline.klToTarget)}` : ''}.`,
    '',
    '| layer | scale | margin | margin (random controls) | KL(target ‖ steered) | KL (random controls) | side effect | side effect (random controls) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const row of r.rows) {
    if (row.vector !== 'direction') continue;
    const c = controls.get(`${row.layer}/${row.scale}`);
    lines.push(
      `| ${row.layer} | ${row.scale} | ${formatNumber(row.margin, 3)} | ${sweepSpread(c?.margin, 3)} | ${formatNumber(row.klToTarget)} | ${sweepSpread(c?.klToTarget, 4)} | ${formatNumber(row.sideEffect)} | ${sweepSpread(c?.sideEffect, 4)} |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Every file {@link writeSweep} may write into its folder. */
export const SWEEP_FILES = [
  'sweep.json',
  'sweep.md',
  'sweep-margin.svg',
  'sweep-margin.png',
  'sweep-kl.svg',
  'sweep-kl.png',
] as const;

/**
 * The points of the sweep's plots: per layer, the direction's value and the controls' mean (series
 * `layer L (random mean, n=K)`), one point per scale.
 */
export function sweepPlotData(
  r: SweepResult,
  field: 'margin' | 'klToTarget',
): { scale: number; value: number; series: string; vector: 'direction' | 'random mean' }[] {
  const out: { scale: number; value: number; series: string; vector: 'direction' | 'random mean' }[] = [];
  for (const row of r.rows) {
    if (row.vector === 'direction' && row[field] !== null) {
      out.push({
        scale: row.scale,
        value: row[field] as number,
        series: `layer ${row.layer}`,
        vector: 'direction',
      });
    }
  }
  for (const c of r.controls ?? sweepControls(r.rows)) {
    const s = c[field];
    if (s !== null && s.mean !== null && Number.isFinite(s.mean)) {
      out.push({
        scale: c.scale,
        value: s.mean,
        series: `layer ${c.layer} (random mean, n=${s.n})`,
        vector: 'random mean',
      });
    }
  }
  return out;
}

/**
 * Writes `sweep.json`, `sweep.md` and the plots (effect vs scale, one line per layer, and the random
 * controls' mean per layer as its own series): `sweep-margin.{svg,png}`, and `sweep-kl.{svg,png}` with a target.
 * Refuses if any of {@link SWEEP_FILES} is there already, unless `overwrite`; other files in `outDir` are left
 * alone.
 */
export async function writeSweep(
  r: SweepResult,
  outDir: string,
  title = 'Steering sweep',
  opts: { readonly overwrite?: boolean } = {},
): Promise<string[]> {
  await claimOutputFiles(outDir, SWEEP_FILES, opts);
  await mkdir(outDir, { recursive: true });
  const json = join(outDir, 'sweep.json');
  const md = join(outDir, 'sweep.md');
  const written = [json, md];
  await writeAtomic(json, `${JSON.stringify(r, null, 2)}\n`);
  await writeAtomic(md, sweepMarkdown(r, title));
  const plot = async (field: 'margin' | 'klToTarget', file: string, yTitle: string) => {
    const data = sweepPlotData(r, field);
    if (data.length === 0) {
      // A plot this run has no data for may be left from an earlier run (--overwrite); it would be
      // read as this run's.
      for (const ext of ['svg', 'png']) await rm(join(outDir, `${file}.${ext}`), { force: true });
      return;
    }
    const out = await renderVegaLite(
      lineChart(data, {
        x: 'scale',
        y: 'value',
        series: 'series',
        dash: 'vector',
        title: `${title}: ${yTitle} vs steering scale`,
        xTitle: 'steering scale',
        yTitle,
        seriesTitle: 'steered at',
      }),
      join(outDir, file),
    );
    written.push(out.svg, out.png);
  };
  await plot('margin', 'sweep-margin', 'misaligned - aligned log-prob margin');
  await plot('klToTarget', 'sweep-kl', 'KL(target || steered)');
  return written;
}
