/**
 * The study's result as markdown: a headline table (one row per direction), then the cosines, the
 * cross-mediation matrices, steering efficiency, stability, side effects and (with a judge) the EM rates, each
 * with the norm-matched random control beside the number.
 */
import { formatComparisonMarkdown } from '../../eval/metrics.js';
import { hookName } from '../../model/hooks.js';
import { pct } from '../../util/format.js';
import type { CrossCell, NarrowVsGeneralResult, SteeringCurve } from './types.js';

const fx = (x: number | null | undefined, d = 3) =>
  x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(d);
const withRandom = (a: string, b: string) => `${a} [${b}]`;

function table(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  return [
    `| ${header.join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
}

/** The in-domain cell of direction x in finetune y (undefined when not measured). */
export function cellOf(
  r: NarrowVsGeneralResult,
  direction: string,
  finetune: string,
  prompts: 'in' | 'out' = 'in',
): CrossCell | undefined {
  return r.crossMediation.find(
    (c) => c.direction === direction && c.finetune === finetune && c.prompts === prompts,
  );
}

function ownCurve(r: NarrowVsGeneralResult, d: string): SteeringCurve | undefined {
  return r.steering.find((c) => c.direction === d && c.finetune === d);
}

/** One row per direction: the numbers a reader looks for first. */
export function headlineTable(r: NarrowVsGeneralResult, noise = 0.5): string[] {
  const rows = r.directions.map((d) => {
    const own = cellOf(r, d.name, d.name, 'in');
    const out = cellOf(r, d.name, d.name, 'out');
    const others = r.directions
      .filter((o) => o.name !== d.name)
      .map((o) => cellOf(r, d.name, o.name, 'in'))
      .filter((c): c is CrossCell => c?.ablated !== null && c?.ablated !== undefined);
    // others keeps the cells with an ablated fraction.
    const meanOther = others.length === 0 ? null : others.reduce((a, c) => a + c.ablated!, 0) / others.length;
    const curve = ownCurve(r, d.name);
    const best = curve?.best;
    const ref = curve?.reference;
    const st = r.stability.find((s) => s.direction === d.name);
    const stPoint =
      st?.points.find((p) => p.noise === noise) ?? st?.points[Math.floor((st.points.length - 1) / 2)];
    const se = r.sideEffects.find((s) => s.direction === d.name);
    return [
      `${d.name} (${d.kind})`,
      withRandom(pct(own?.ablated), pct(own?.randomAblated)),
      withRandom(pct(own?.patched), pct(own?.randomPatched)),
      withRandom(pct(out?.ablated), pct(out?.randomAblated)),
      pct(meanOther),
      best
        ? withRandom(`${pct(best.direction.klClosed)} at x${best.direction.scale}`, pct(best.random.klClosed))
        : 'n/a',
      ref
        ? withRandom(
            `${fx(ref.direction.marginGainPerNorm)} at x${ref.direction.scale}`,
            fx(ref.random.marginGainPerNorm),
          )
        : 'n/a',
      stPoint
        ? `${pct(stPoint.retainedAblated)} / ${pct(stPoint.retainedPatched)} at ${stPoint.noise}`
        : 'n/a',
      se ? withRandom(fx(se.perUnitMediation, 4), fx(se.randomPerUnitMediation, 4)) : 'n/a',
    ];
  });
  return table(
    [
      'direction',
      'own finetune, in-domain: ablated [random]',
      'patched [random]',
      'own finetune, out-of-domain: ablated [random]',
      "other finetunes' in-domain: ablated (mean)",
      'steering the base: best KL closed [random]',
      'margin gained per unit norm [random]',
      'mediation retained under noise (ablated / patched)',
      'neutral-text KL per unit mediation [random]',
    ],
    rows,
  );
}

function crossTable(r: NarrowVsGeneralResult, field: 'ablated' | 'patched'): string[] {
  const randomField = field === 'ablated' ? 'randomAblated' : 'randomPatched';
  const cols = [...new Map(r.crossMediation.map((c) => [`${c.finetune}/${c.prompts}`, c] as const)).values()];
  const header = ['direction', ...cols.map((c) => `${c.finetune} (${c.prompts})`)];
  const rows: string[][] = [['KL(finetune ‖ base)', ...cols.map((c) => fx(c.divergence, 4))]];
  for (const d of r.directions) {
    for (const random of [false, true]) {
      rows.push([
        random ? `random(${d.name})` : d.name,
        ...cols.map((c) => {
          const cell = cellOf(r, d.name, c.finetune, c.prompts);
          return pct(cell?.[random ? randomField : field]);
        }),
      ]);
    }
  }
  return table(header, rows);
}

/** The whole report as markdown. */
export function narrowVsGeneralMarkdown(r: NarrowVsGeneralResult): string {
  const s = r.setup;
  const lines: string[] = [
    '# Narrow vs general directions',
    '',
    `Source: ${r.source}. ${r.directions.length} directions (misaligned minus aligned answer means of each finetune on its own domain's responses, blocks.L.hook_resid_post for L in ${s.layers.join(', ')}), ablated at the residual sites of those layers; the base steered at layer ${s.steerLayer} with scales ${s.scales.join(', ')}. Every figure in [brackets] is the direction's norm-matched random control: one draw per direction (n=1, no spread; each direction's control has its own seed, derived from its content and the benchmark seed), while the stability table's random row spreads over one control per seed. Fractions are of KL(finetune ‖ base) per answer token; n/a where the finetune diverges by less than ${s.minDivergence} nats/token (nothing to mediate). Run: ${r.date}, ${r.seconds.toFixed(0)} s on ${r.machine.cpus} cores.`,
    '',
    '## Headline',
    '',
    ...headlineTable(r),
    '',
  ];
  if (r.directions.some((d) => d.plantedCosine !== null)) {
    lines.push(
      '## Recovered vs planted directions (cosine per layer)',
      '',
      ...table(
        ['direction', ...s.layers.map(String)],
        r.directions
          .filter((d) => d.plantedCosine !== null)
          .map((d) => [d.name, ...d.plantedCosine!.map((c) => fx(c))]), // filtered to non-null just above
      ),
      '',
    );
  }
  lines.push(
    '## Cosine similarity per layer',
    '',
    ...table(
      ['layer', ...r.cosine.pairs.map((p) => `${p.a} ~ ${p.b}`)],
      [
        ...r.cosine.layers.map((l, k) => [String(l), ...r.cosine.pairs.map((p) => fx(p.cosines[k]))]),
        ['mean abs', ...r.cosine.pairs.map((p) => fx(p.meanAbsCosine))],
      ],
    ),
    '',
    '## Cross-mediation: ablating direction (row) in finetune (column)',
    '',
    "Fraction of the finetune's divergence from the base removed; `in`/`out`: prompts in/out of the finetune's domain. Plain ablation also removes the base's own use of the direction, which counts as unexplained (a small negative fraction where the divergence is small).",
    '',
    ...crossTable(r, 'ablated'),
    '',
    "## Cross-mediation: patching the base's component along the direction into the finetune",
    '',
    ...crossTable(r, 'patched'),
    '',
    '## Steering efficiency',
    '',
    `The base steered by scale x v at ${hookName(s.steerLayer, 'resid_post')} toward each finetune (its in-domain prompts): the fraction of KL(finetune ‖ base) closed and the misaligned - aligned log-prob margin gained, per unit of added norm; side effect: KL(base+steer ‖ base) on neutral text. Steering adds the vector at every position: a finetune that changes only some tokens (a narrow one, on its domain's words) is overshot on all the others, so KL(finetune ‖ base+steer) can grow while the margin still moves toward the finetune's.`,
    '',
    ...table(
      [
        'direction -> finetune',
        'scale',
        'added norm',
        'KL closed [random]',
        'per unit norm [random]',
        'margin gain [random]',
        'per unit norm [random]',
        'side effect [random]',
      ],
      r.steering.flatMap((c) =>
        c.points
          .filter((p) => p.vector === 'direction' && p.scale !== 0)
          .map((p) => {
            // The sweep has a random row at every scale it has a direction row at.
            const q = c.points.find((x) => x.vector === 'random' && x.scale === p.scale)!;
            return [
              `${c.direction} -> ${c.finetune}`,
              String(p.scale),
              fx(p.addedNorm),
              withRandom(pct(p.klClosed), pct(q.klClosed)),
              withRandom(fx(p.klClosedPerNorm), fx(q.klClosedPerNorm)),
              withRandom(fx(p.marginGain), fx(q.marginGain)),
              withRandom(fx(p.marginGainPerNorm), fx(q.marginGainPerNorm)),
              withRandom(fx(p.sideEffect, 4), fx(q.sideEffect, 4)),
            ];
          }),
      ),
    ),
    '',
    '## Stability under random perturbation',
    '',
    `Each layer's vector plus Gaussian noise of norm (relative noise) x |v|, ${s.seeds} seeds, ablated (and patched) in its own finetune on in-domain prompts: fraction mediated, mean [min, max] over seeds, and the mean cosine of the perturbed direction with the original. The random control is a norm-matched random direction per seed.`,
    '',
    ...(['ablated', 'patched'] as const).flatMap((kind) => [
      ...table(
        [`direction (${kind})`, 'unperturbed', ...s.noise.map((n) => `noise ${n}`), 'random control'],
        r.stability.map((c) => [
          c.direction,
          pct(c.unperturbed?.[kind]),
          ...s.noise.map((n) => {
            const p = c.points.find((x) => x.noise === n);
            return p
              ? `${pct(p[kind].mean)} [${pct(p[kind].min)}, ${pct(p[kind].max)}] cos ${fx(p.cosine, 2)}`
              : 'n/a';
          }),
          c.random
            ? `${pct(c.random[kind].mean)} [${pct(c.random[kind].min)}, ${pct(c.random[kind].max)}]`
            : 'n/a',
        ]),
      ),
      '',
    ]),
    '## Side effects on neutral text',
    '',
    "KL(model+ablation ‖ model) per token on neutral text, in the base and in the direction's own finetune, and per unit of in-domain mediation (n/a below 5% mediated); steering: side effect per unit of KL closed at the best scale. Ablating in a finetune that is misaligned on neutral text too (a general one) also removes that misalignment, which counts here.",
    '',
    ...table(
      [
        'direction',
        'mediated [random]',
        'ablate in base [random]',
        'ablate in finetune [random]',
        'per unit mediation [random]',
        'steering per unit KL closed [random]',
      ],
      r.sideEffects.map((e) => [
        e.direction,
        withRandom(pct(e.mediated), pct(e.randomMediated)),
        withRandom(fx(e.ablateBase, 4), fx(e.randomAblateBase, 4)),
        withRandom(fx(e.ablateFinetune, 4), fx(e.randomAblateFinetune, 4)),
        withRandom(fx(e.perUnitMediation, 4), fx(e.randomPerUnitMediation, 4)),
        withRandom(fx(e.steerPerKlClosed, 4), fx(e.randomSteerPerKlClosed, 4)),
      ]),
    ),
    '',
  );
  if (r.eval) {
    lines.push('## EM rate and coherence (judged)', '', formatComparisonMarkdown(r.eval.comparison));
  }
  return `${lines.join('\n')}\n`;
}
