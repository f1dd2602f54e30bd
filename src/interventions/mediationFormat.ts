/** A mediation report as text: console lines, the metric table, markdown, and the files `writeMediation` writes. */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles } from '../io/outputs.js';
import { pct } from '../util/format.js';
import type { SourceLayers } from './compose.js';
import type { MediationReport } from './mediation.js';

export const formatNumber = (x: number | null | undefined, digits = 4) =>
  x === null || x === undefined || Number.isNaN(x) ? 'n/a' : x.toFixed(digits);
export { pct };

export function describeFrom(from: SourceLayers): string {
  return from === 'own' ? "each layer's own vector" : `the vector of layer ${[from].flat().join(', ')}`;
}

/** The report as lines of plain text (what `emlens mediate` prints). */
export function formatMediation(r: MediationReport): string[] {
  const k = r.kl;
  const lines = [
    `direction: ${r.direction}`,
    `records: ${r.records} (${r.positions} answer positions); ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)})`,
    `KL(finetune || base) = ${formatNumber(k.finetuneBase)} nats/token${k.finetuneBase < r.minDivergence ? ' (below the minimum: nothing to mediate)' : ''}`,
    `fraction mediated, ablating in the finetune: ${pct(r.fractionMediated)}   random control: ${pct(r.randomFractionMediated)}`,
    `  KL(finetune+ablate || base) = ${formatNumber(k.ablatedBase)} (random ${formatNumber(k.randomAblatedBase)}); the ablation alone moves the base by KL ${formatNumber(k.baseAblatedBase)} (random ${formatNumber(k.baseRandomAblatedBase)})`,
    `fraction mediated, patching the base's component into the finetune: ${pct(r.patchedFractionMediated)}   random control: ${pct(r.randomPatchedFractionMediated)}`,
    `  KL(finetune+patch || base) = ${formatNumber(k.patchedBase)} (random ${formatNumber(k.randomPatchedBase)})`,
    `steering the base (blocks.${r.steer.layer}.hook_resid_post, scale ${r.steer.scale}, |v| = ${formatNumber(r.steer.norm, 3)}): closes ${pct(r.steeringClosed)} of the divergence   random control: ${pct(r.randomSteeringClosed)}`,
    `  KL(finetune || base+steer) = ${formatNumber(k.finetuneSteered)} (random ${formatNumber(k.finetuneRandomSteered)})`,
  ];
  if (r.margins) {
    const m = r.margins;
    lines.push(
      'misaligned - aligned log-prob margin (nats/token):',
      `  base ${formatNumber(m.base, 3)}, finetune ${formatNumber(m.finetune, 3)}, finetune+ablate ${formatNumber(m.finetuneAblated, 3)} (random ${formatNumber(m.finetuneRandomAblated, 3)}), finetune+patch ${formatNumber(m.finetunePatched, 3)}, base+steer ${formatNumber(m.baseSteered, 3)} (random ${formatNumber(m.baseRandomSteered, 3)})`,
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    lines.push(
      `side effects on neutral text (KL to the unmodified model, ${s.positions} positions):`,
      `  ablate in base ${formatNumber(s.ablateBase)} (random ${formatNumber(s.randomAblateBase)}), ablate in finetune ${formatNumber(s.ablateFinetune)} (random ${formatNumber(s.randomAblateFinetune)}), steer base ${formatNumber(s.steerBase)} (random ${formatNumber(s.randomSteerBase)})`,
    );
  }
  return lines;
}

/**
 * The report as rows of (metric, direction, random control), as text: the one table the markdown file and the
 * HTML report both show.
 */
export function mediationRows(r: MediationReport): [string, string, string][] {
  const k = r.kl;
  const rows: [string, string, string][] = [
    ['KL(finetune ‖ base)', formatNumber(k.finetuneBase), ''],
    ['fraction mediated (ablate in finetune)', pct(r.fractionMediated), pct(r.randomFractionMediated)],
    ['KL(finetune+ablate ‖ base)', formatNumber(k.ablatedBase), formatNumber(k.randomAblatedBase)],
    ['KL(base+ablate ‖ base)', formatNumber(k.baseAblatedBase), formatNumber(k.baseRandomAblatedBase)],
    [
      'fraction mediated (patch base component)',
      pct(r.patchedFractionMediated),
      pct(r.randomPatchedFractionMediated),
    ],
    ['KL(finetune+patch ‖ base)', formatNumber(k.patchedBase), formatNumber(k.randomPatchedBase)],
    ['fraction closed (steer the base)', pct(r.steeringClosed), pct(r.randomSteeringClosed)],
    ['KL(finetune ‖ base+steer)', formatNumber(k.finetuneSteered), formatNumber(k.finetuneRandomSteered)],
  ];
  if (r.margins) {
    const m = r.margins;
    rows.push(
      ['margin: base', formatNumber(m.base, 3), ''],
      ['margin: finetune', formatNumber(m.finetune, 3), ''],
      [
        'margin: finetune+ablate',
        formatNumber(m.finetuneAblated, 3),
        formatNumber(m.finetuneRandomAblated, 3),
      ],
      ['margin: finetune+patch', formatNumber(m.finetunePatched, 3), ''],
      ['margin: base+steer', formatNumber(m.baseSteered, 3), formatNumber(m.baseRandomSteered, 3)],
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    rows.push(
      ['side effect: ablate in base', formatNumber(s.ablateBase), formatNumber(s.randomAblateBase)],
      [
        'side effect: ablate in finetune',
        formatNumber(s.ablateFinetune),
        formatNumber(s.randomAblateFinetune),
      ],
      ['side effect: steer base', formatNumber(s.steerBase), formatNumber(s.randomSteerBase)],
    );
  }
  return rows;
}

/** The report as a markdown table. */
export function mediationMarkdown(r: MediationReport): string {
  const rows = mediationRows(r);
  return [
    `# Mediation: ${r.direction}`,
    '',
    `${r.records} records, ${r.positions} answer positions. Ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)}); the base steered at blocks.${r.steer.layer}.hook_resid_post with scale ${r.steer.scale}. Control: a norm-matched random direction (seed ${r.seed}). KL in nats per answer token; margins are mean log p(misaligned answer) - mean log p(aligned answer) per token; side effects are KL(model+intervention ‖ model) on neutral text.`,
    '',
    '| metric | direction | random control |',
    '| --- | ---: | ---: |',
    ...rows.map(([a, b, c]) => `| ${a} | ${b} | ${c} |`),
    '',
  ].join('\n');
}

/** The files {@link writeMediation} writes into its folder. */
export const MEDIATION_FILES = ['mediation.json', 'mediation.md'] as const;

/**
 * Writes `mediation.json` and `mediation.md` into `outDir`. Refuses if either is there already, unless
 * `overwrite`; other files in `outDir` are left alone.
 */
export async function writeMediation(
  r: MediationReport,
  outDir: string,
  opts: { readonly overwrite?: boolean } = {},
): Promise<{ readonly json: string; readonly markdown: string }> {
  await claimOutputFiles(outDir, MEDIATION_FILES, opts);
  await mkdir(outDir, { recursive: true });
  const json = join(outDir, 'mediation.json');
  const markdown = join(outDir, 'mediation.md');
  await writeAtomic(json, `${JSON.stringify(r, null, 2)}\n`);
  await writeAtomic(markdown, mediationMarkdown(r));
  return { json, markdown };
}

// ---------------------------------------------------------------------------------------------------------
// Steering sweep
