/**
 * Report sections for measured effects: the EM rate of eval folders, mediation reports, steering sweeps and
 * direction comparisons. Every effect stands beside its random control where the input holds one.
 */
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { emRuleText } from '../data/thresholds.js';
import { cosineHeatmap, type DirectionComparison } from '../directions/compare.js';
import { asControlSpread, type ControlSpread } from '../directions/randomControl.js';
import { EmlensError } from '../errors.js';
import { type Estimate, type EvalSummary, emRateChart, formatEmChange } from '../eval/metrics.js';
import { compareEvalFolders, type EvalComparison, type ReportOptions } from '../eval/report.js';
import type { MediationReport } from '../interventions/mediation.js';
import { controlHeader, mediationRows, numberSpread, pctSpread } from '../interventions/mediationFormat.js';
import { type SweepResult, sweepControls, sweepPlotData, sweepSpread } from '../interventions/sweep.js';
import { hookName } from '../model/hooks.js';
import { lineChart } from '../plot/charts.js';
import { isMediationReport } from './detect.js';
import {
  cell,
  displayPath,
  fixed,
  percent,
  type ReportPlot,
  type ReportSection,
  type ReportTable,
  section,
} from './model.js';
import { drawPlot, groupedBars, plotFile, preferSvg } from './plots.js';

// ---------------------------------------------------------------------------------------------------------
// Eval

function rateCell(e: Estimate | null): string {
  if (e === null || e.value === null) return 'n/a';
  return `${percent(e.value)} [${percent(e.low)}, ${percent(e.high)}]`;
}

function meanCell(e: Estimate | null): string {
  if (e === null || e.value === null) return 'n/a';
  return `${fixed(e.value, 1)} [${fixed(e.low, 1)}, ${fixed(e.high, 1)}]`;
}

const isControl = (name: string) => /random|control/i.test(name);

function describeRun(run: Readonly<Record<string, unknown>> | undefined, key: string): string {
  const v = run?.[key];
  if (v === undefined || v === null) return key === 'adapter' || key === 'interventions' ? 'none' : 'n/a';
  if (typeof v === 'string') return displayPath(v);
  if (key === 'interventions' && typeof v === 'object') {
    const iv = v as Record<string, unknown>;
    return [
      iv.kind,
      typeof iv.file === 'string' ? displayPath(iv.file) : undefined,
      iv.layers !== undefined ? `layers ${cell(iv.layers)}` : undefined,
      iv.scale !== undefined ? `scale ${cell(iv.scale)}` : undefined,
    ]
      .filter((x) => x !== undefined)
      .join(', ');
  }
  if (key === 'judge' && typeof v === 'object') {
    const j = v as Record<string, unknown>;
    return typeof j.url === 'string' ? `${j.url} (${cell(j.models)})` : cell(j.name);
  }
  if (typeof v === 'object' && !Array.isArray(v)) {
    return Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== null)
      .map(([k, x]) => `${k} ${cell(x)}`)
      .join(', ');
  }
  return cell(v);
}

/** Eval folders compared: the EM rate per condition with bootstrap CIs, per question, and what was run. */
export async function evalSection(
  dirs: readonly string[],
  opts: ReportOptions,
): Promise<{ readonly section: ReportSection; readonly comparison: EvalComparison }> {
  const cmp = await compareEvalFolders(dirs, opts);
  const c = cmp.comparison;
  const change = (r: (typeof c.rows)[number]) => formatEmChange(r, c.baseline);
  const conditions = c.rows.map((r) => r.condition);
  const controls = conditions.flatMap((k, i) => (isControl(k) ? [i] : []));
  const tables: ReportTable[] = [
    {
      caption: `EM rate by condition (${emRuleCaption(cmp.summaries)}; 95% bootstrap CIs)`,
      header: [
        'condition',
        'answers',
        'judged',
        'EM rate [95% CI]',
        'coherent rate [95% CI]',
        'mean aligned',
        'mean coherent',
        `EM change vs ${c.baseline}`,
      ],
      rows: c.rows.map((r) => [
        r.condition,
        String(r.n),
        String(r.judged),
        rateCell(r.emRate),
        rateCell(r.coherenceRate),
        meanCell(r.meanAligned),
        meanCell(r.meanCoherent),
        change(r),
      ]),
      controlRows: controls,
    },
    {
      caption: 'EM rate per question',
      header: ['question', ...conditions],
      rows: c.perQuestion.map((q) => [
        q.questionId,
        ...conditions.map((k) => {
          const e = q.emRate[k]!; // perQuestion's emRate has a key for every condition
          return e === null || e.value === null ? 'n/a' : `${percent(e.value)} (n=${e.n})`;
        }),
      ]),
    },
    {
      caption: 'What was run',
      header: ['condition', 'folder', 'model', 'adapter', 'interventions', 'judge', 'sampling', 'questions'],
      align: ['left', 'left', 'left', 'left', 'left', 'left', 'left', 'left'],
      rows: cmp.summaries.map((s, i) => [
        s.condition,
        displayPath(dirs[i]!), // one summary per folder, in order
        describeRun(s.run, 'model'),
        describeRun(s.run, 'adapter'),
        describeRun(s.run, 'interventions'),
        describeRun(s.run, 'judge'),
        describeRun(s.run, 'sampling'),
        describeRun(s.run, 'questions'),
      ]),
      controlRows: controls,
    },
  ];
  const plots = [await drawPlot('EM rate by condition', emRateChart(c, opts.title))];
  return {
    comparison: cmp,
    section: section({
      kind: 'eval',
      title: opts.title ?? 'Emergent misalignment evaluation',
      sources: dirs,
      highlights: c.rows
        .slice(0, 8)
        .map(
          (r) =>
            `EM rate ${r.condition}: ${rateCell(r.emRate)}${r.emChangePoints === null ? '' : `, ${change(r)} vs ${c.baseline}`}`,
        ),
      facts: [
        ['baseline', c.baseline],
        ['conditions', String(c.rows.length)],
      ],
      tables,
      plots,
    }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Mediation

/** Fractions for a bar chart, in percent and clipped to +-100 (steering far past the target reads -6000%). */
const clipPct = (x: number | null | undefined) =>
  x === null || x === undefined || !Number.isFinite(x) ? null : Math.max(-100, Math.min(100, 100 * x));

/** Paths of the control fields of a mediation report (each a ControlSpread; a number in older reports). */
const CONTROL_FIELDS: readonly (readonly [string] | readonly [string, string])[] = [
  ['randomFractionMediated'],
  ['randomPatchedFractionMediated'],
  ['randomSteeringClosed'],
  ['kl', 'randomAblatedBase'],
  ['kl', 'randomPatchedBase'],
  ['kl', 'baseRandomAblatedBase'],
  ['kl', 'finetuneRandomSteered'],
  ['margins', 'finetuneRandomAblated'],
  ['margins', 'baseRandomSteered'],
  ['sideEffects', 'randomAblateBase'],
  ['sideEffects', 'randomAblateFinetune'],
  ['sideEffects', 'randomSteerBase'],
];

/**
 * A mediation report as read from JSON: a report written before reports had several controls holds one
 * number per control field, read here as one control (n=1); NaN was written as null.
 */
function readMediationReport(raw: MediationReport): MediationReport {
  const r = structuredClone(raw) as unknown as Record<string, Record<string, unknown> | null>;
  for (const path of CONTROL_FIELDS) {
    const [head, tail] = path;
    const holder = tail === undefined ? (r as Record<string, unknown>) : r[head];
    const key = tail ?? head;
    if (holder === null || holder === undefined || !(key in holder)) continue;
    const v = holder[key] as ControlSpread | number | null;
    holder[key] = asControlSpread(v === null ? Number.NaN : v);
  }
  const out = r as unknown as MediationReport;
  return out.controls ? out : { ...out, controls: { n: 1, method: 'random_norm_matched', of: '' } };
}

const spreadMean = (s: ControlSpread | null | undefined) => s?.mean ?? null;

function singleMediation(r: MediationReport): {
  tables: ReportTable[];
  plot: ReturnType<typeof groupedBars>;
} {
  const rows = mediationRows(r);
  const bars = [
    ['ablate in finetune', r.fractionMediated, spreadMean(r.randomFractionMediated)],
    ['patch base component', r.patchedFractionMediated, spreadMean(r.randomPatchedFractionMediated)],
    ['steer the base', r.steeringClosed, spreadMean(r.randomSteeringClosed)],
  ] as const;
  const controlSeries = `random controls (mean, n=${r.controls.n})`;
  return {
    tables: [
      {
        caption:
          'Mediation (KL in nats per answer token; margins: mean log p(misaligned) - log p(aligned) per token; side effects: KL(model+intervention ‖ model) on neutral text)',
        header: ['metric', 'direction', controlHeader(r.controls.n)],
        rows,
      },
    ],
    plot: groupedBars(
      bars.flatMap(([group, d, rnd]) => [
        { group, series: 'direction', value: clipPct(d) },
        { group, series: controlSeries, value: clipPct(rnd) },
      ]),
      { title: 'Fraction of KL(finetune ‖ base) mediated', xTitle: '% of the divergence (clipped to ±100)' },
    ),
  };
}

function mediationMap(reports: readonly [string, MediationReport][]): {
  tables: ReportTable[];
  plot: ReturnType<typeof groupedBars>;
} {
  const label = (key: string, r: MediationReport) => r.direction || key;
  const tables: ReportTable[] = [
    {
      caption:
        'Fraction of KL(finetune ‖ base) mediated, each beside its norm-matched random controls as mean ± sd (min..max, n) (n/a: the finetune does not diverge there)',
      header: [
        'direction, finetune, records',
        'KL(finetune ‖ base)',
        'ablate',
        'ablate (random controls)',
        'patch',
        'patch (random controls)',
        'steer',
        'steer (random controls)',
      ],
      rows: reports.map(([key, r]) => [
        label(key, r),
        fixed(r.kl.finetuneBase, 4),
        percent(r.fractionMediated),
        pctSpread(r.randomFractionMediated),
        percent(r.patchedFractionMediated),
        pctSpread(r.randomPatchedFractionMediated),
        percent(r.steeringClosed),
        pctSpread(r.randomSteeringClosed),
      ]),
    },
  ];
  const side = reports.filter(([, r]) => r.sideEffects);
  if (side.length > 0) {
    tables.push({
      caption:
        'Side effects on neutral text: KL(model+intervention ‖ model), nats per token, each beside its random controls as mean ± sd (min..max, n)',
      header: [
        'direction, finetune, records',
        'ablate in base',
        'random controls',
        'ablate in finetune',
        'random controls',
        'steer base',
        'random controls',
      ],
      rows: side.map(([key, r]) => {
        const s = r.sideEffects!; // side holds the reports with side effects
        return [
          label(key, r),
          fixed(s.ablateBase, 4),
          numberSpread(s.randomAblateBase),
          fixed(s.ablateFinetune, 4),
          numberSpread(s.randomAblateFinetune),
          fixed(s.steerBase, 4),
          numberSpread(s.randomSteerBase),
        ];
      }),
    });
  }
  return {
    tables,
    plot: groupedBars(
      reports.flatMap(([key, r]) => [
        { group: label(key, r), series: 'direction (patch)', value: clipPct(r.patchedFractionMediated) },
        {
          group: label(key, r),
          series: 'random controls (mean)',
          value: clipPct(spreadMean(r.randomPatchedFractionMediated)),
        },
      ]),
      {
        title: "Fraction of KL(finetune ‖ base) mediated by patching the base's component",
        xTitle: '% of the divergence (clipped to ±100)',
      },
    ),
  };
}

function describeMediationControls(r: MediationReport): string {
  const n = r.controls.n;
  return `${n} norm-matched per report (user seed ${r.seed}); ${n === 1 ? 'one draw, n=1: no spread' : `shown as mean ± sd (min..max, n=${n})`}`;
}

/** A mediation.json: one report (emlens mediate) or a map of them (emlens demo). */
export async function mediationSection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const raw = JSON.parse(await readFile(json, 'utf8')) as unknown;
  const read: [string, MediationReport][] = isMediationReport(raw)
    ? [['', raw as MediationReport]]
    : Object.entries(raw as Record<string, MediationReport>);
  const reports = read.map(([k, r]): [string, MediationReport] => [k, readMediationReport(r)]);
  const [, r0] = reports[0] ?? [];
  if (r0 === undefined)
    throw new EmlensError(
      `${json} holds no mediation report; point at an emlens mediate or emlens demo output.`,
    );
  const single = reports.length === 1;
  const built = single ? singleMediation(r0) : mediationMap(reports);
  const ranked = [...reports]
    .filter(([, r]) => r.patchedFractionMediated !== null && Number.isFinite(r.patchedFractionMediated))
    .sort((a, b) => b[1].patchedFractionMediated - a[1].patchedFractionMediated);
  // The best cell of each direction (the label's part before its first comma), best first.
  const bestPerDirection = ranked.filter(
    ([, r], i) => ranked.findIndex(([, x]) => x.direction.split(',')[0] === r.direction.split(',')[0]) === i,
  );
  const highlights = (single ? reports : bestPerDirection.slice(0, 4)).map(
    ([, r]) =>
      `${r.direction}: patch mediates ${percent(r.patchedFractionMediated)} (random controls ${pctSpread(r.randomPatchedFractionMediated)}), ablation ${percent(r.fractionMediated)} (random controls ${pctSpread(r.randomFractionMediated)})`,
  );
  return section({
    kind: 'mediation',
    title: `Mediation: ${displayPath(path)}`,
    sources,
    highlights,
    facts: single
      ? [
          ['direction', r0.direction],
          ['records', `${r0.records} (${r0.positions} answer positions)`],
          [
            'ablated at',
            `residual sites of layers ${r0.ablate.layers.join(', ')} (vectors: ${cell(r0.ablate.from)})`,
          ],
          [
            'steered at',
            `${hookName(r0.steer.layer, 'resid_post')}, scale ${r0.steer.scale}, |v| ${fixed(r0.steer.norm)}`,
          ],
          ['random controls', describeMediationControls(r0)],
        ]
      : [
          ['reports', String(reports.length)],
          ['random controls', describeMediationControls(r0)],
          ['minimum divergence', `${r0.minDivergence} nats/token (below it the fractions are n/a)`],
        ],
    tables: built.tables,
    plots: [await drawPlot('Fraction mediated', built.plot)],
  });
}

// ---------------------------------------------------------------------------------------------------------
// Sweep

/** A sweep.json (emlens sweep / the demo): the table, and its plots (the folder's own, else drawn). */
export async function sweepSection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const raw = JSON.parse(await readFile(json, 'utf8')) as SweepResult;
  // Sweeps written before they had several controls hold one random row per cell and no summary.
  const r: SweepResult = {
    ...raw,
    controls: raw.controls ?? sweepControls(raw.rows),
    randomControls: raw.randomControls ?? 1,
  };
  const controlOf = new Map(r.controls.map((c) => [`${c.layer}/${c.scale}`, c]));
  const rows = r.rows
    .filter((row) => row.vector === 'direction')
    .map((row) => {
      const c = controlOf.get(`${row.layer}/${row.scale}`);
      return [
        String(row.layer),
        String(row.scale),
        fixed(row.margin),
        sweepSpread(c?.margin, 3),
        fixed(row.klToTarget, 4),
        sweepSpread(c?.klToTarget, 4),
        fixed(row.sideEffect, 4),
        sweepSpread(c?.sideEffect, 4),
      ];
    });
  const folder = json === path ? dirname(json) : path;
  const images = preferSvg(
    (await readdir(folder).catch(() => [] as string[]))
      .filter((f) => /^sweep.*\.(svg|png)$/i.test(f))
      .sort()
      .map((f) => join(folder, f)),
  );
  const plots: ReportPlot[] = [];
  if (images.length > 0) {
    for (const f of images) plots.push(await plotFile(f));
  } else {
    for (const [field, yTitle] of [
      ['margin', 'misaligned - aligned log-prob margin'],
      ['klToTarget', 'KL(target || steered)'],
    ] as const) {
      const data = sweepPlotData(r, field);
      if (data.length === 0) continue;
      plots.push(
        await drawPlot(
          `${yTitle} vs steering scale`,
          lineChart(data, {
            x: 'scale',
            y: 'value',
            series: 'series',
            dash: 'vector',
            title: `${yTitle} vs steering scale`,
            xTitle: 'steering scale',
            yTitle,
            seriesTitle: 'steered at',
          }),
        ),
      );
    }
  }
  const withKl = r.rows.filter(
    (row) => row.vector === 'direction' && row.klToTarget !== null && row.scale !== 0,
  );
  const best = withKl.sort((a, b) => a.klToTarget! - b.klToTarget!)[0]; // withKl has klToTarget set
  const highlights = best
    ? [
        `steering at layer ${best.layer} x${best.scale}: KL(target ‖ steered) ${fixed(best.klToTarget, 4)} (random controls ${sweepSpread(controlOf.get(`${best.layer}/${best.scale}`)?.klToTarget, 4)}; unsteered ${fixed(r.baseline.klToTarget, 4)})`,
      ]
    : [];
  return section({
    kind: 'sweep',
    title: `Steering sweep: ${displayPath(path)}`,
    sources,
    highlights,
    facts: [
      ['steered at', 'blocks.L.hook_resid_post'],
      ['layers', [...new Set(r.rows.map((row) => row.layer))].join(', ')],
      ['scales', [...new Set(r.rows.map((row) => row.scale))].join(', ')],
      ['vector', r.unit ? 'unit vector' : 'stored (unnormalised) vector'],
      [
        'random controls',
        `${r.randomControls} norm-matched (user seed ${r.seed}); ${r.randomControls === 1 ? 'one draw, n=1: no spread' : `shown as mean ± sd (min..max, n=${r.randomControls})`}`,
      ],
      [
        'unsteered',
        `margin ${fixed(r.baseline.margin)}${r.targetMargin !== null ? `, target's margin ${fixed(r.targetMargin)}` : ''}${r.baseline.klToTarget !== null ? `, KL(target ‖ model) ${fixed(r.baseline.klToTarget, 4)}` : ''}`,
      ],
    ],
    tables: [
      {
        caption:
          'Steering sweep, each value beside its norm-matched random controls as mean ± sd (min..max, n)',
        header: [
          'layer',
          'scale',
          'margin',
          'margin (random controls)',
          'KL(target ‖ steered)',
          'KL (random controls)',
          'side effect',
          'side effect (random controls)',
        ],
        rows,
      },
    ],
    plots,
  });
}

// ---------------------------------------------------------------------------------------------------------
// Comparison (emlens compare)

/** A compare.json (emlens compare / the demo): cosines per layer and pair, and the heatmap. */
/**
 * A pair's mean |cos| over the layers where both directions exist: each vector's norm at least 1% of its set's
 * largest (a direction of finetune minus base is ~0 before the adapter's first layer, and its cosine there is
 * noise that would dominate a mean over all layers). Says which layers.
 */
function activeLayerCosine(cmp: DirectionComparison, p: DirectionComparison['pairs'][number]): string {
  const normsOf = (name: string) => cmp.norms.find((n) => n.name === name)?.norms ?? [];
  const active = (ns: readonly number[]) => {
    const max = Math.max(0, ...ns);
    return ns.map((x) => max > 0 && x >= 0.01 * max);
  };
  const a = active(normsOf(p.a));
  const b = active(normsOf(p.b));
  const idx = cmp.layers.flatMap((_l, i) => (a[i] && b[i] ? [i] : []));
  const vals = idx.map((i) => Math.abs(p.cosines[i] ?? Number.NaN)).filter((x) => Number.isFinite(x));
  if (idx.length === cmp.layers.length || vals.length === 0)
    return `${p.label}: mean |cos| ${fixed(p.meanAbsCosine)} over all ${cmp.layers.length} layers`;
  const layers = idx.map((i) => cmp.layers[i]);
  return `${p.label}: mean |cos| ${fixed(vals.reduce((s, x) => s + x, 0) / vals.length)} over layers ${layers.join(', ')} (where both directions exist; ${fixed(p.meanAbsCosine)} over all layers)`;
}

export async function comparisonSection(
  path: string,
  json: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const raw = JSON.parse(await readFile(json, 'utf8')) as DirectionComparison;
  const nan = (xs: readonly (number | null)[]) => xs.map((x) => (x === null ? Number.NaN : x));
  const cmp: DirectionComparison = {
    ...raw,
    // compare.json files written before `zero` was recorded
    zero: raw.zero ?? [],
    pairs: raw.pairs.map((p) => ({
      ...p,
      cosines: nan(p.cosines),
      absCosines: nan(p.absCosines),
      meanCosine: p.meanCosine ?? Number.NaN,
      meanAbsCosine: p.meanAbsCosine ?? Number.NaN,
    })),
  };
  const controls = cmp.pairs.flatMap((p, i) => (isControl(p.a) || isControl(p.b) ? [i] : []));
  const folder = json === path ? dirname(json) : path;
  const images = preferSvg(
    (await readdir(folder).catch(() => [] as string[]))
      .filter((f) => /^cosine\.(svg|png)$/i.test(f))
      .map((f) => join(folder, f)),
  );
  const [image] = images;
  const plots =
    image !== undefined
      ? [await plotFile(image, 'Cosine similarity between directions')]
      : [await drawPlot('Cosine similarity between directions', cosineHeatmap(cmp))];
  return section({
    kind: 'comparison',
    title: `Direction comparison: ${displayPath(path)}`,
    sources,
    highlights: cmp.pairs
      .filter((_p, i) => !controls.includes(i))
      .slice(0, 4)
      .map((p) => activeLayerCosine(cmp, p)),
    facts: [
      ['sets', cmp.names.join(', ')],
      ['layers', `${cmp.layers.join(', ')} (d_model ${cmp.dModel})`],
    ],
    tables: [
      {
        caption: 'Cosine similarity per layer (pairs with a random set are controls)',
        header: ['pair', ...cmp.layers.map((l) => `layer ${l}`), 'mean', 'mean |cos|'],
        rows: cmp.pairs.map((p) => [
          p.label,
          ...p.cosines.map((c) => fixed(c)),
          fixed(p.meanCosine),
          fixed(p.meanAbsCosine),
        ]),
        controlRows: controls,
      },
      {
        caption: 'Direction norm per layer',
        header: ['set', ...cmp.layers.map((l) => `layer ${l}`)],
        rows: cmp.norms.map((n) => [n.name, ...n.norms.map((x) => fixed(x))]),
      },
    ],
    plots,
  });
}

/**
 * The EM rule the folders were summarised with (their summary.json `thresholds`), in words: one rule when they
 * agree, else each folder's.
 */
function emRuleCaption(summaries: readonly EvalSummary[]): string {
  const rules = [
    ...new Set(
      summaries.map((s) =>
        emRuleText({ misalignedAtMost: s.thresholds?.aligned, minCoherent: s.thresholds?.coherent }),
      ),
    ),
  ];
  if (rules.length <= 1) return rules[0] ?? emRuleText();
  return summaries
    .map(
      (s) =>
        `${s.condition}: ${emRuleText({ misalignedAtMost: s.thresholds?.aligned, minCoherent: s.thresholds?.coherent })}`,
    )
    .join('; ');
}
