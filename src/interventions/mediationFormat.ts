/** A mediation report as text: console lines, the metric table, markdown, and the files `writeMediation` writes. */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type ControlSpread, formatSpread } from '../directions/randomControl.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFiles } from '../io/outputs.js';
import { hookName } from '../model/hooks.js';
import { pct } from '../util/format.js';
import type { SourceLayers } from './compose.js';
import type { MediationReport } from './mediation.js';

export const formatNumber = (x: number | null | undefined, digits = 4) =>
  x === null || x === undefined || Number.isNaN(x) ? 'n/a' : x.toFixed(digits);
export { pct };

/** A control summary as a percentage cell: `mean ± sd (min..max, n=K)`, or `x (n=1)`. */
export const pctSpread = (s: ControlSpread | null | undefined) => formatSpread(s, pct);
/** A control summary as a number cell with `digits` decimals. */
export const numberSpread = (s: ControlSpread | null | undefined, digits = 4) =>
  formatSpread(s, (x) => formatNumber(x, digits));

/** The header of a control column: what its cells are. */
export const controlHeader = (n: number) =>
  n === 1 ? 'random control (n=1)' : `random controls: mean ± sd (min..max), n=${n}`;

/** One sentence on what the controls are, for the text above a table. */
export function describeControls(n: number, seed: number): string {
  return `Control: ${n === 1 ? 'one norm-matched random direction' : `${n} norm-matched random directions`} (user seed ${seed}; control k's own seed derives from the direction's content, the user seed and k)${n === 1 ? ', so the control column is one draw (n=1) with no spread' : '; the control column gives their mean ± sample sd (min..max, n)'}.`;
}

export function describeFrom(from: SourceLayers): string {
  return from === 'own' ? "each layer's own vector" : `the vector of layer ${[from].flat().join(', ')}`;
}

/** The report as lines of plain text (what `emlens mediate` prints). */
export function formatMediation(r: MediationReport): string[] {
  const k = r.kl;
  const lines = [
    `direction: ${r.direction}`,
    `random controls: ${r.controls.n} norm-matched (user seed ${r.seed}); each control figure is ${r.controls.n === 1 ? 'one draw (n=1)' : `their mean ± sd (min..max, n=${r.controls.n})`}`,
    `records: ${r.records} (${r.positions} answer positions); ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)})`,
    `KL(finetune || base) = ${formatNumber(k.finetuneBase)} nats/token${k.finetuneBase < r.minDivergence ? ' (below the minimum: nothing to mediate)' : ''}`,
    `fraction mediated, ablating in the finetune: ${pct(r.fractionMediated)}   random control: ${pctSpread(r.randomFractionMediated)}`,
    `  KL(finetune+ablate || base) = ${formatNumber(k.ablatedBase)} (random ${numberSpread(k.randomAblatedBase)}); the ablation alone moves the base by KL ${formatNumber(k.baseAblatedBase)} (random ${numberSpread(k.baseRandomAblatedBase)})`,
    `fraction mediated, patching the base's component into the finetune: ${pct(r.patchedFractionMediated)}   random control: ${pctSpread(r.randomPatchedFractionMediated)}`,
    `  KL(finetune+patch || base) = ${formatNumber(k.patchedBase)} (random ${numberSpread(k.randomPatchedBase)})`,
    `steering the base (${hookName(r.steer.layer, 'resid_post')}, scale ${r.steer.scale}, |v| = ${formatNumber(r.steer.norm, 3)}): closes ${pct(r.steeringClosed)} of the divergence   random control: ${pctSpread(r.randomSteeringClosed)}`,
    `  KL(finetune || base+steer) = ${formatNumber(k.finetuneSteered)} (random ${numberSpread(k.finetuneRandomSteered)})`,
  ];
  if (r.margins) {
    const m = r.margins;
    lines.push(
      'misaligned - aligned log-prob margin (nats/token):',
      `  base ${formatNumber(m.base, 3)}, finetune ${formatNumber(m.finetune, 3)}, finetune+ablate ${formatNumber(m.finetuneAblated, 3)} (random ${numberSpread(m.finetuneRandomAblated, 3)}), finetune+patch ${formatNumber(m.finetunePatched, 3)}, base+steer ${formatNumber(m.baseSteered, 3)} (random ${numberSpread(m.baseRandomSteered, 3)})`,
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    lines.push(
      `side effects on neutral text (KL to the unmodified model, ${s.positions} positions):`,
      `  ablate in base ${formatNumber(s.ablateBase)} (random ${numberSpread(s.randomAblateBase)}), ablate in finetune ${formatNumber(s.ablateFinetune)} (random ${numberSpread(s.randomAblateFinetune)}), steer base ${formatNumber(s.steerBase)} (random ${numberSpread(s.randomSteerBase)})`,
    );
  }
  return lines;
}

/**
 * The report as rows of (metric, direction, random controls' mean ± sd (min..max, n)), as text: the one table
 * the markdown file and the HTML report both show (its control column's header: {@link controlHeader}).
 */
export function mediationRows(r: MediationReport): [string, string, string][] {
  const k = r.kl;
  const rows: [string, string, string][] = [
    ['KL(finetune ‖ base)', formatNumber(k.finetuneBase), ''],
    ['fraction mediated (ablate in finetune)', pct(r.fractionMediated), pctSpread(r.randomFractionMediated)],
    ['KL(finetune+ablate ‖ base)', formatNumber(k.ablatedBase), numberSpread(k.randomAblatedBase)],
    ['KL(base+ablate ‖ base)', formatNumber(k.baseAblatedBase), numberSpread(k.baseRandomAblatedBase)],
    [
      'fraction mediated (patch base component)',
      pct(r.patchedFractionMediated),
      pctSpread(r.randomPatchedFractionMediated),
    ],
    ['KL(finetune+patch ‖ base)', formatNumber(k.patchedBase), numberSpread(k.randomPatchedBase)],
    ['fraction closed (steer the base)', pct(r.steeringClosed), pctSpread(r.randomSteeringClosed)],
    ['KL(finetune ‖ base+steer)', formatNumber(k.finetuneSteered), numberSpread(k.finetuneRandomSteered)],
  ];
  if (r.margins) {
    const m = r.margins;
    rows.push(
      ['margin: base', formatNumber(m.base, 3), ''],
      ['margin: finetune', formatNumber(m.finetune, 3), ''],
      [
        'margin: finetune+ablate',
        formatNumber(m.finetuneAblated, 3),
        numberSpread(m.finetuneRandomAblated, 3),
      ],
      ['margin: finetune+patch', formatNumber(m.finetunePatched, 3), ''],
      ['margin: base+steer', formatNumber(m.baseSteered, 3), numberSpread(m.baseRandomSteered, 3)],
    );
  }
  if (r.sideEffects) {
    const s = r.sideEffects;
    rows.push(
      ['side effect: ablate in base', formatNumber(s.ablateBase), numberSpread(s.randomAblateBase)],
      [
        'side effect: ablate in finetune',
        formatNumber(s.ablateFinetune),
        numberSpread(s.randomAblateFinetune),
      ],
      ['side effect: steer base', formatNumber(s.steerBase), numberSpread(s.randomSteerBase)],
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
    `${r.records} records, ${r.positions} answer positions. Ablated at the residual sites of layers ${r.ablate.layers.join(', ')} (${describeFrom(r.ablate.from)}); the base steered at ${hookName(r.steer.layer, 'resid_post')} with scale ${r.steer.scale}. ${describeControls(r.controls.n, r.seed)} KL in nats per answer token; margins are mean log p(misaligned answer) - mean log p(aligned answer) per token; side effects are KL(model+intervention ‖ model) on neutral text.`,
    '',
    `| metric | direction | ${controlHeader(r.controls.n)} |`,
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
