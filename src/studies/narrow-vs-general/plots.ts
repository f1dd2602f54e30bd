/**
 * The study's plots, drawn from its result alone (so they can be redrawn from the JSON): the cosine
 * heatmap (pair x layer), the cross-mediation matrices (ablation and patch), the steering-efficiency curves
 * and the stability curves, each with the norm-matched random control.
 */
import { join } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { heatmap, lineChart } from '../../plot/charts.js';
import { renderVegaLite } from '../../plot/render.js';
import type { NarrowVsGeneralResult } from './types.js';

/** Writes every plot as `{name}.svg` and `{name}.png` into `outDir`; returns the PNG paths. */
export async function writeNarrowVsGeneralPlots(r: NarrowVsGeneralResult, outDir: string): Promise<string[]> {
  const pngs: string[] = [];
  const draw = async (spec: Parameters<typeof renderVegaLite>[0], name: string) => {
    pngs.push((await renderVegaLite(spec, join(outDir, name))).png);
  };

  await draw(
    heatmap(
      r.cosine.pairs.flatMap((p) =>
        // One cosine per common layer.
        r.cosine.layers.map((l, k) => ({ x: l, y: `${p.a} ~ ${p.b}`, value: p.cosines[k]! })),
      ),
      {
        title: 'Cosine similarity between directions, per layer',
        xTitle: 'layer',
        yTitle: 'pair',
        valueTitle: 'cosine',
        domain: [-1, 1],
      },
    ),
    'cosine',
  );

  for (const [field, randomField, name, what] of [
    ['ablated', 'randomAblated', 'cross-mediation', 'ablating'],
    ['patched', 'randomPatched', 'cross-mediation-patch', "patching the base's component along"],
  ] as const) {
    const cells = r.crossMediation.flatMap((c) => {
      const x = `${c.finetune} (${c.prompts})`;
      return [
        { x, y: c.direction, value: c[field] },
        { x, y: `random(${c.direction})`, value: c[randomField] },
      ];
    });
    await draw(
      heatmap(cells, {
        title: `Fraction of each finetune's divergence removed by ${what} each direction`,
        xTitle: 'finetune (prompts in / out of its domain)',
        yTitle: 'direction',
        valueTitle: 'fraction mediated',
        domain: [-1, 1],
        cellWidth: 90,
      }),
      name,
    );
  }

  for (const [field, name, yTitle] of [
    ['klClosed', 'efficiency-kl', 'fraction of KL(finetune || base) closed'],
    ['marginGain', 'efficiency-margin', 'misaligned - aligned log-prob margin gained'],
  ] as const) {
    const rows = r.steering.flatMap((c) =>
      c.points
        .filter((p) => p.vector === 'direction' || c.direction === c.finetune)
        .filter((p) => p[field] !== null)
        .map((p) => ({
          addedNorm: p.addedNorm,
          value: p[field] as number,
          series: `${p.vector === 'random' ? `random(${c.direction})` : c.direction} -> ${c.finetune}`,
        })),
    );
    const spec = lineChart(rows, {
      x: 'addedNorm',
      y: 'value',
      series: 'series',
      title: `Steering the base at layer ${r.setup.steerLayer}: ${yTitle} per added norm`,
      xTitle: 'added norm (|scale| x |v|)',
      yTitle: field === 'klClosed' ? `${yTitle} (clipped to [-1, 1])` : yTitle,
      seriesTitle: 'direction -> finetune',
      ...(field === 'klClosed' ? { yDomain: [-1, 1] as const } : {}),
    });
    await draw(readableLines(spec), name);
  }

  for (const [kind, name, how] of [
    ['ablated', 'stability', 'ablated'],
    ['patched', 'stability-patch', 'patched'],
  ] as const) {
    const rows = r.stability.flatMap((c) => {
      if (c.unperturbed === null) return [];
      const noises = [0, ...c.points.map((p) => p.noise)];
      const random = c.random;
      return [
        { noise: 0, value: c.unperturbed[kind], series: c.direction },
        ...c.points.map((p) => ({ noise: p.noise, value: p[kind].mean, series: c.direction })),
        ...(random
          ? noises.map((noise) => ({ noise, value: random[kind].mean, series: `random(${c.direction})` }))
          : []),
      ];
    });
    await draw(
      readableLines(
        lineChart(rows, {
          x: 'noise',
          y: 'value',
          series: 'series',
          title: `Mediation surviving random perturbation of the direction (${how} in its own finetune, in-domain)`,
          xTitle: 'relative noise norm |noise| / |v|',
          yTitle: 'fraction mediated (mean over seeds)',
          seriesTitle: 'direction',
        }),
      ),
      name,
    );
  }
  return pngs;
}

/** A line chart whose lines stay inside a fixed y domain and whose legend shows whole series names. */
function readableLines(spec: TopLevelSpec): TopLevelSpec {
  const s = spec as unknown as {
    mark: Record<string, unknown>;
    encoding: { color?: Record<string, unknown> };
  };
  return {
    ...spec,
    mark: { ...s.mark, clip: true },
    encoding: {
      ...s.encoding,
      ...(s.encoding.color ? { color: { ...s.encoding.color, legend: { labelLimit: 400 } } } : {}),
    },
  } as unknown as TopLevelSpec;
}
