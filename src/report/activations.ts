/**
 * Report sections for direction files (norms per layer, cosines between them beside norm-matched random
 * controls) and activation stores (what they hold, and the norm of the mean activation per layer).
 */
import { basename, dirname, extname } from 'node:path';
import { readManifest } from '../activations/manifest.js';
import { ActivationStore } from '../activations/store.js';
import { compareDirections, cosineHeatmap, type PairComparison } from '../directions/compare.js';
import {
  type DirectionSet,
  directionDModel,
  directionLayers,
  directionNorms,
  loadDirections,
} from '../directions/direction.js';
import {
  controlSpread,
  controlStem,
  directionSha256,
  formatSpread,
  isRandomControl,
  randomControls,
} from '../directions/randomControl.js';
import { EmlensError } from '../errors.js';
import { lineChart } from '../plot/charts.js';
import { norm } from '../util/vector.js';
import {
  compressRange,
  displayPath,
  fixed,
  hookSummary,
  num,
  type ReportPlot,
  type ReportSection,
  type ReportTable,
  section,
} from './model.js';
import { drawPlot, integerX, wideLabels } from './plots.js';

/** Controls drawn per direction where the input holds none of its own: cosines are cheap, so several. */
export const REPORT_RANDOM_CONTROLS = 5;

interface Named {
  readonly name: string;
  readonly file: string;
  readonly set: DirectionSet;
}

/** File names without extension, with the parent folder where two collide. */
function setNames(files: readonly string[]): string[] {
  const short = files.map((f) => basename(f, extname(f)));
  return files.map((f) => {
    const s = basename(f, extname(f));
    return short.indexOf(s) === short.lastIndexOf(s) ? s : `${basename(dirname(f))}/${s}`;
  });
}

function uniqueValues(xs: readonly string[]): string {
  return [...new Set(xs.filter((x) => x !== ''))].join(', ') || 'n/a';
}

/**
 * Direction files: where they came from, their norm per layer, and the cosine between every pair of
 * (non-random) sets per layer, each pair beside its norm-matched random controls as mean ± sd (min..max, n):
 * the input's own controls of it where it holds some (`general-random`, `general-random.r0`, ..., or any
 * control whose metadata names it by sha256), else {@link REPORT_RANDOM_CONTROLS} drawn with user seed 0.
 */
export async function directionsSection(
  files: readonly string[],
  title: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const names = setNames(files);
  const sets: Named[] = [];
  // setNames gives one name per file.
  for (const [i, file] of files.entries())
    sets.push({ name: names[i]!, file, set: await loadDirections(file) });
  const isRandom = (s: Named) => isRandomControl(s.set);
  const real = sets.some((s) => !isRandom(s)) ? sets.filter((s) => !isRandom(s)) : sets;
  const given = sets.filter((s) => isRandom(s) && !real.includes(s));

  // Real sets first, then their random controls (the order given otherwise).
  sets.sort((a, b) => Number(!real.includes(a)) - Number(!real.includes(b)));
  const layers = [...new Set(sets.flatMap((s) => directionLayers(s.set)))].sort((a, b) => a - b);
  const models = new Set(sets.map((s) => s.set.meta.model));
  const short = (p: string) => (p ? basename(p) : '');
  const fileTable: ReportTable = {
    caption: 'Direction files',
    header: [
      'set',
      'method',
      'positions',
      'samples (pos / neg)',
      'from (pos vs neg)',
      ...(models.size > 1 ? ['model'] : []),
      'layers',
      'd_model',
    ],
    align: [
      'left',
      'left',
      'left',
      'right',
      'left',
      ...(models.size > 1 ? ['left' as const] : []),
      'left',
      'right',
    ],
    rows: sets.map((s) => {
      const m = s.set.meta;
      // A control was computed from no samples: whatever counts or stores its file carries (older emlens
      // versions copied the mimicked direction's) are not shown as its data.
      const control = isRandom(s);
      const x = m.extra ?? {};
      return [
        s.name,
        control
          ? `${m.method} (of ${x.random_of ?? x.random_of_method ?? '?'}, seed ${x.seed ?? '?'}${x.control_index !== undefined ? `, control ${x.control_index}` : ''})`
          : m.method,
        control ? 'none (random control)' : m.positions,
        control ? 'none (random control)' : `${m.nPos} / ${m.nNeg}`,
        control
          ? 'none (random control)'
          : m.sourcePos || m.sourceNeg
            ? `${short(m.sourcePos)} vs ${short(m.sourceNeg)}`
            : 'n/a',
        ...(models.size > 1 ? [displayPath(m.model)] : []),
        compressRange(directionLayers(s.set)),
        String(directionDModel(s.set)),
      ];
    }),
    controlRows: sets.flatMap((s, i) => (real.includes(s) ? [] : [i])),
  };
  const normTable: ReportTable = {
    caption: 'L2 norm of each direction per layer (the vectors are not normalised: the norm is information)',
    header: ['set', ...layers.map((l) => `layer ${l}`)],
    rows: sets.map((s) => {
      const norms = new Map(directionLayers(s.set).map((l, k) => [l, directionNorms(s.set)[k]]));
      return [s.name, ...layers.map((l) => (norms.has(l) ? num(norms.get(l)!) : ''))]; // has() just checked
    }),
    controlRows: fileTable.controlRows,
  };
  const plots: ReportPlot[] = [];
  plots.push(
    await drawPlot(
      'Direction norm per layer',
      integerX(
        lineChart(
          real.flatMap((s) =>
            directionLayers(s.set).map((l, k) => ({ layer: l, norm: directionNorms(s.set)[k], set: s.name })),
          ),
          {
            x: 'layer',
            y: 'norm',
            series: 'set',
            title: 'Direction norm per layer',
            yTitle: 'L2 norm',
            seriesTitle: 'set',
            width: 340,
            height: 220,
          },
        ),
      ),
    ),
  );

  const tables: ReportTable[] = [fileTable, normTable];
  const notes: string[] = [];
  const highlights: string[] = [];
  // Cosines within each group of sets of one d_model.
  const byDim = new Map<number, Named[]>();
  for (const s of real) byDim.set(directionDModel(s.set), [...(byDim.get(directionDModel(s.set)) ?? []), s]);
  if (byDim.size > 1) {
    notes.push(
      `The sets come from models of different widths (d_model ${[...byDim.keys()].join(', ')}); only sets of one d_model are compared.`,
    );
  }
  for (const [dModel, group] of byDim) {
    const controlsOf = new Map<string, Named[]>();
    const controlsFor = (b: Named): Named[] => {
      const cached = controlsOf.get(b.name);
      if (cached) return cached;
      const sha = directionSha256(b.set);
      const stems = [`${b.name}-random`, `${b.name}_random`, `random-${b.name}`];
      const own = given.filter(
        (g) =>
          directionDModel(g.set) === dModel &&
          (stems.includes(controlStem(g.name)) || g.set.meta.extra?.random_of_sha256 === sha),
      );
      const list =
        own.length > 0
          ? own
          : randomControls(b.set, REPORT_RANDOM_CONTROLS, { seed: 0, name: b.name }).map((set, k) => ({
              name: `random(${b.name}).r${k}`,
              file: '',
              set,
            }));
      controlsOf.set(b.name, list);
      return list;
    };
    // Real pairs, each followed by the controls of its second set; a lone set gets its own controls.
    const pairs: [Named, Named | null][] = [];
    for (const [i, a] of group.entries()) for (const b of group.slice(i + 1)) pairs.push([a, b]);
    if (pairs.length === 0) pairs.push([group[0]!, null]); // byDim's groups are never empty
    const controls = new Map<string, Named>();
    for (const [a, b] of pairs) for (const c of controlsFor(b ?? a)) controls.set(c.name, c);
    let cmp: ReturnType<typeof compareDirections>;
    try {
      cmp = compareDirections([...group, ...controls.values()]);
    } catch (e) {
      if (!(e instanceof EmlensError)) throw e;
      notes.push(`Cosines not computed for d_model ${dModel}: ${e.message}`);
      continue;
    }
    const find = (a: string, b: string): PairComparison | undefined =>
      cmp.pairs.find((p) => (p.a === a && p.b === b) || (p.a === b && p.b === a));
    const rows: string[][] = [];
    const controlRows: number[] = [];
    const shown: PairComparison[] = [];
    const mean = (xs: readonly number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    const spreadOf = (xs: readonly number[]) => formatSpread(controlSpread(xs), (x) => fixed(x));
    for (const [a, b] of pairs) {
      if (b !== null) {
        const p = find(a.name, b.name);
        if (!p) continue;
        rows.push([
          `${a.name} ~ ${b.name}`,
          ...p.cosines.map((c) => fixed(c)),
          fixed(p.meanCosine),
          fixed(p.meanAbsCosine),
        ]);
        shown.push(p);
      }
      const target = b ?? a;
      const cs = controlsFor(target).flatMap((c) => find(a.name, c.name) ?? []);
      if (cs.length === 0) continue;
      // The controls as one row: per layer the mean over the K controls, then mean ± sd (min..max, n).
      const label = `${a.name} ~ random(${target.name}) (control, n=${cs.length})`;
      // Every pair's cosines have one entry per layer of the comparison.
      const perLayer = cmp.layers.map((_, i) => mean(cs.map((c) => c.cosines[i]!)));
      const perLayerAbs = cmp.layers.map((_, i) => mean(cs.map((c) => c.absCosines[i]!)));
      rows.push([
        label,
        ...perLayer.map((c) => fixed(c)),
        spreadOf(cs.map((c) => c.meanCosine)),
        spreadOf(cs.map((c) => c.meanAbsCosine)),
      ]);
      controlRows.push(rows.length - 1);
      shown.push({
        a: a.name,
        b: `random(${target.name})`,
        label: `${a.name} ~ random(${target.name}) (mean of ${cs.length})`,
        cosines: perLayer,
        absCosines: perLayerAbs,
        meanCosine: mean(cs.map((c) => c.meanCosine)),
        meanAbsCosine: mean(cs.map((c) => c.meanAbsCosine)),
      });
      const controlText = spreadOf(cs.map((c) => c.meanAbsCosine));
      const p = b === null ? undefined : find(a.name, b.name);
      highlights.push(
        // p is only found for a pair with a second set: the condition is p's alone.
        p && b !== null
          ? `${a.name} ~ ${b.name}: mean |cos| ${fixed(p.meanAbsCosine)} over ${cmp.layers.length} layers (random controls ${controlText})`
          : `${a.name} ~ its random controls: mean |cos| ${controlText}`,
      );
    }
    tables.push({
      caption: `Cosine similarity per layer (d_model ${dModel}); each pair is followed by its norm-matched random controls: per layer their mean, then mean ± sd (min..max, n) of the means over layers`,
      header: ['pair', ...cmp.layers.map((l) => `layer ${l}`), 'mean', 'mean |cos|'],
      rows,
      controlRows,
    });
    for (const d of cmp.dropped) {
      notes.push(`'${d.name}' also holds layers ${d.layers.join(', ')}, not common to all sets (left out).`);
    }
    plots.push(
      await drawPlot(
        'Cosine similarity between directions',
        wideLabels(
          cosineHeatmap({ ...cmp, pairs: shown }, `Cosine similarity between directions (d_model ${dModel})`),
        ),
      ),
    );
  }
  return section({
    kind: 'directions',
    title,
    sources,
    highlights: highlights.slice(0, 6),
    facts: [
      ['files', sets.map((s) => displayPath(s.file)).join(', ')],
      ['models', uniqueValues(sets.map((s) => displayPath(s.set.meta.model)))],
      ['hooks', uniqueValues(sets.map((s) => s.set.meta.hook))],
      ['methods', uniqueValues(sets.map((s) => s.set.meta.method))],
    ],
    tables,
    plots,
    notes,
  });
}

/** Stores bigger than this (hook data, bytes) get no activation plot: reading them would take long. */
const PLOT_BYTES_LIMIT = 256 * 1024 * 1024;

/** Activation stores: what each holds, and the norm of its mean activation per layer. */
export async function storesSection(
  stores: readonly string[],
  title: string,
  sources: readonly string[],
): Promise<ReportSection> {
  const names = setNames(stores.map((s) => `${s}.store`));
  const rows: string[][] = [];
  const points: { layer: number; norm: number; store: string }[] = [];
  const notes: string[] = [];
  let records = 0;
  const hooksSeen = new Set<string>();
  const reduces = new Set<string>();
  const models = new Set<string>();
  const adapters = new Set<string>();
  const createdWith = new Set<string>();
  for (const [i, dir] of stores.entries()) {
    const name = names[i]!; // setNames gives one name per store
    const m = await readManifest(dir);
    const store = await ActivationStore.open(dir);
    const recs = await store.records();
    const answerTokens = recs.map((r) => Number(r.answer_tokens)).filter(Number.isFinite);
    const labels = new Map<string, number>();
    for (const r of recs)
      if (typeof r.label === 'string') labels.set(r.label, (labels.get(r.label) ?? 0) + 1);
    records += m.records;
    for (const h of m.hooks) hooksSeen.add(h);
    reduces.add(m.reduce);
    models.add(displayPath(m.model));
    if (m.adapter) adapters.add(m.adapter);
    createdWith.add(m.createdWith);
    rows.push([
      name,
      m.adapter ?? 'none',
      hookSummary(m.hooks),
      m.reduce,
      `${m.records} / ${m.range[1] - m.range[0]}`,
      answerTokens.length ? fixed(answerTokens.reduce((a, b) => a + b, 0) / answerTokens.length, 1) : 'n/a',
      labels.size ? [...labels].map(([k, v]) => `${k} ${v}`).join(', ') : '',
      `${m.shards.length}${m.slice ? ` (slice ${m.slice.index}/${m.slice.count})` : ''}`,
      m.complete ? 'yes' : 'no (--resume)',
    ]);
    const rowsTotal = m.shards.reduce((a, s) => a + s.rows, 0);
    const bytes = rowsTotal * m.dModel * 4 * m.hooks.length;
    if (bytes > PLOT_BYTES_LIMIT) {
      notes.push(`${name}: ${(bytes / 2 ** 20).toFixed(0)} MiB of activations, too many to plot here.`);
      continue;
    }
    if (rowsTotal === 0) continue;
    for (const hook of m.hooks) {
      const layer = /^blocks\.(\d+)\./.exec(hook)?.[1];
      if (layer === undefined) continue;
      const data = await store.readHook(hook);
      const mean = new Float64Array(m.dModel);
      // The hook holds rowsTotal rows of dModel values and mean has dModel: the indexes are in range.
      for (let r = 0; r < rowsTotal; r++)
        for (let j = 0; j < m.dModel; j++) mean[j]! += data[r * m.dModel + j]!;
      for (let j = 0; j < m.dModel; j++) mean[j]! /= rowsTotal;
      const kinds = new Set(m.hooks.map((h) => h.replace(/^blocks\.\d+\./, '')));
      points.push({
        layer: Number(layer),
        norm: norm(mean),
        store: kinds.size > 1 ? `${name} ${hook.replace(/^blocks\.\d+\./, '')}` : name,
      });
    }
  }
  const plots: ReportPlot[] = [];
  if (points.length > 0) {
    plots.push(
      await drawPlot(
        'Norm of the mean activation per layer',
        integerX(
          lineChart(points, {
            width: 340,
            height: 220,
            x: 'layer',
            y: 'norm',
            series: 'store',
            title: 'Norm of the mean stored activation per layer',
            yTitle: '|mean activation|',
            seriesTitle: 'store',
          }),
        ),
      ),
    );
  }
  return section({
    kind: 'store',
    title,
    sources,
    highlights: [
      `${stores.length} store${stores.length === 1 ? '' : 's'}, ${records} records, ${hooksSeen.size} hooks, reduced by ${[...reduces].join(', ')}`,
    ],
    facts: [
      ['models', [...models].join(', ')],
      ['adapters', adapters.size ? [...adapters].join(', ') : 'none'],
      ['folders', stores.map((s) => displayPath(s)).join(', ')],
      ['created with', [...createdWith].join(', ')],
    ],
    tables: [
      {
        caption: 'Stores',
        header: [
          'store',
          'adapter',
          'hooks',
          'reduce',
          'records (done / range)',
          'answer tokens (mean)',
          'labels',
          'shards',
          'complete',
        ],
        align: ['left', 'left', 'left', 'left', 'right', 'right', 'left', 'right', 'left'],
        rows,
      },
    ],
    plots,
    notes,
  });
}
