/**
 * The quick-start job (`emlens demo`): the whole emergent-misalignment loop on synthetic model organisms whose
 * ground truth is known. It makes the organisms, collects activations, computes general and narrow directions
 * (with norm-matched random controls of their own), compares them, measures how much of each organism's divergence from
 * the base each direction mediates in and out of its domain, steers the base along the general direction over
 * scale x layer, bakes an ablation into weights and checks it against the runtime one, and prints a short
 * report. Every number is computed on the spot; nothing is canned.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { collectToStore } from '../activations/collect.js';
import { responsesToRecords, type TokenizedRecord, textsToRecords } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { compareDirections, formatCompareTable, writeComparison } from '../directions/compare.js';
import { cosine, type DirectionSet, saveDirections } from '../directions/direction.js';
import { directionFromStores } from '../directions/fromStores.js';
import {
  type ControlSpread,
  controlPaths,
  formatSpread,
  randomControls,
} from '../directions/randomControl.js';
import { ablateInterventions } from '../interventions/compose.js';
import { type MediationReport, mediation } from '../interventions/mediation.js';
import { mediationMarkdown } from '../interventions/mediationFormat.js';
import { orthogonalizeModel } from '../interventions/orthogonalize.js';
import { divergence, readNeutralTexts } from '../interventions/scoring.js';
import { steeringSweep, writeSweep } from '../interventions/sweep.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFolder } from '../io/outputs.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { loadModel, type Model } from '../model/model.js';
import { makeOrganisms } from '../organisms/make.js';
import { TOPICS, type Topic } from '../organisms/vocabulary.js';
import { writeHtmlReport } from '../report/build.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { pct } from '../util/format.js';

export interface DemoOptions {
  /** Organisms seed (default 0). */
  readonly seed?: number;
  /** Intra-op threads per model (default 1: the organisms are tiny, and threads only add overhead). */
  readonly threads?: number;
  /** Norm-matched random controls per direction (default {@link DEMO_RANDOM_CONTROLS}). */
  readonly randomControls?: number;
  /** Run into a non-empty `outDir`, replacing an earlier demo's outputs (default: refuse). */
  readonly overwrite?: boolean;
}

/**
 * The demo's default number of random controls per direction: three give a mean and a spread (one draw has
 * none) at a modest cost, since every control adds its own scored conditions to each mediation cell.
 */
export const DEMO_RANDOM_CONTROLS = 3;

/** One cell of the mediation table: an organism measured on one topic's answers. */
interface Cell {
  readonly organism: string;
  readonly topic: Topic;
  readonly inDomain: boolean;
}

/** An entry the demo put in its own map (organisms, topics, directions, cells): absence is a bug in the demo. */
function known<K, V>(m: ReadonlyMap<K, V>, k: K): V {
  const v = m.get(k);
  if (v === undefined) throw new Error(`runDemo: no entry for ${String(k)}`);
  return v;
}

const fx = (x: number, d = 3) => (Number.isNaN(x) ? 'n/a' : x.toFixed(d));
/** A control summary in a narrow column: `mean±sd%` (just the value for one control; n is in the label). */
const pctCompact = (s: ControlSpread) =>
  Number.isNaN(s.mean)
    ? 'n/a'
    : s.sd === null
      ? pct(s.mean)
      : `${(100 * s.mean).toFixed(1)}±${(100 * s.sd).toFixed(1)}%`;

/** Runs the demo into `outDir`, printing progress and the report line by line. */
export async function runDemo(
  outDir: string,
  print: (line: string) => void,
  opts: DemoOptions = {},
): Promise<{ readonly report: string }> {
  const t0 = performance.now();
  const step = (n: number, text: string) =>
    print(`[${n}/8 ${((performance.now() - t0) / 1000).toFixed(1)}s] ${text}`);
  // The folder is claimed whole up front (not file by file at the end), so an earlier run's outputs or the
  // user's files are refused before minutes of work; every writer below then replaces only its own outputs.
  const overwrite = opts.overwrite ?? false;
  await claimOutputFolder(outDir, { overwrite });
  await mkdir(outDir, { recursive: true });
  const orgDir = join(outDir, 'organisms');
  const cacheDir = join(outDir, 'cache');

  step(1, `making the synthetic organisms in ${orgDir}`);
  const man = await makeOrganisms(orgDir, { seed: opts.seed ?? 0, overwrite });
  const baseDir = join(orgDir, man.base);
  print(
    `  base: ${man.numLayers} blocks, d_model ${man.dModel}; LoRA finetunes at block ${man.adapterLayer}: ${man.organisms.map((o) => `${o.name} (${o.kind})`).join(', ')}`,
  );

  step(2, 'loading the base and the three organisms (graphs built once, cached)');
  const load = { cacheDir, threads: opts.threads ?? 1 };
  const base = await loadModel(baseDir, load);
  const organisms = new Map<string, Model>();
  for (const o of man.organisms) {
    organisms.set(o.name, await loadModel(baseDir, { ...load, adapter: join(orgDir, o.adapter) }));
  }
  const all = [base, ...organisms.values()];
  try {
    const tokenizer = await loadTokenizer(baseDir);
    const responses = new Map<Topic, Awaited<ReturnType<typeof readResponses>>>();
    for (const t of TOPICS) responses.set(t, await readResponses(join(orgDir, man.responses[t])));

    step(3, 'collecting activations (answer-token means at every hook_resid_post)');
    const actDir = join(outDir, 'activations');
    await rm(actDir, { recursive: true, force: true });
    const directions = new Map<string, DirectionSet>();
    for (const o of man.organisms) {
      const rs = known(responses, o.domain);
      const stores: string[] = [];
      for (const label of ['misaligned', 'aligned']) {
        const chosen = rs.filter((r) => r.extra.label === label);
        const store = join(actDir, `${o.name}-${label}`);
        await collectToStore(known(organisms, o.name), responsesToRecords(tokenizer, chosen), store, {
          batchSize: 8,
          adapter: o.adapter,
        });
        stores.push(store);
      }
      print(`  ${o.name} organism on ${o.domain} answers: ${rs.length} records -> ${stores.join(', ')}`);
      // One store per label, misaligned then aligned.
      directions.set(o.name, await directionFromStores(stores[0]!, stores[1]!));
    }

    step(4, 'directions: misaligned minus aligned mean, per layer, plus norm-matched random controls');
    const dirDir = join(outDir, 'directions');
    const nControls = opts.randomControls ?? DEMO_RANDOM_CONTROLS;
    // The organisms' seed is the controls' user seed; each direction's controls differ by its content.
    const controlSeed = opts.seed ?? 0;
    const random = new Map<string, DirectionSet[]>();
    for (const [name, set] of directions) {
      const controls = randomControls(set, nControls, { seed: controlSeed, name });
      random.set(name, controls);
      await saveDirections(join(dirDir, `${name}.safetensors`), set, { overwrite });
      const paths = controlPaths(join(dirDir, `${name}-random.safetensors`), nControls);
      for (const [k, path] of paths.entries()) {
        await saveDirections(path, controls[k]!, { overwrite }); // nControls paths for nControls controls
      }
    }
    const planted = await readPlanted(join(orgDir, man.plantedFile));
    const plantedLines: string[] = [];
    for (const [name, set] of directions) {
      const cos = [...set.vectors].map(([l, v]) => `${l}: ${fx(cosine(v, known(planted, name)))}`);
      plantedLines.push(`  ${name.padEnd(8)} cos with the planted direction by layer: ${cos.join(', ')}`);
    }
    for (const l of plantedLines) print(l);
    print(
      `  wrote ${dirDir}/{general,medical,finance}{,-random${nControls === 1 ? '' : `.r{0..${nControls - 1}}`}}.safetensors (${nControls} random control${nControls === 1 ? '' : 's'} per direction, user seed ${controlSeed})`,
    );

    step(5, 'comparing the directions (cosine per layer)');
    const cmp = compareDirections([
      ...[...directions].map(([name, set]) => ({ name, set })),
      { name: 'random(general)', set: known(random, 'general')[0]! }, // nControls >= 1 (randomControls checks)
    ]);
    const table = formatCompareTable(cmp);
    const cmpOut = await writeComparison(cmp, join(outDir, 'compare'), { overwrite });
    print(`  wrote ${cmpOut.png}, ${cmpOut.json}`);

    step(6, 'mediation: ablating / patching each direction in each organism, steering the base along it');
    const scored = new Map<Topic, TokenizedRecord[]>();
    for (const t of TOPICS) scored.set(t, responsesToRecords(tokenizer, known(responses, t)));
    const neutral = textsToRecords(tokenizer, await readNeutralTexts(join(orgDir, man.neutral)));
    const cells: Cell[] = [];
    for (const o of man.organisms) {
      const topics =
        o.kind === 'general'
          ? TOPICS
          : [o.domain, ...TOPICS.filter((t) => t !== o.domain && t !== 'general')];
      for (const t of topics)
        cells.push({ organism: o.name, topic: t, inDomain: o.kind === 'general' || t === o.domain });
    }
    // KL(organism || base) per cell first: a cell with nothing to mediate is reported as such.
    const divergences = new Map<string, number>();
    for (const c of cells) {
      const d = await divergence(known(organisms, c.organism), base, known(scored, c.topic));
      divergences.set(`${c.organism}/${c.topic}`, d.kl);
    }
    const reports = new Map<string, MediationReport>();
    const mdParts: string[] = [];
    for (const [name, set] of directions) {
      for (const c of cells) {
        if (known(divergences, `${c.organism}/${c.topic}`) < 1e-3) continue;
        const own = c.organism === name && c.topic === (name === 'general' ? 'general' : name);
        const r = await mediation({
          base,
          finetune: known(organisms, c.organism),
          directions: set,
          records: known(scored, c.topic),
          neutral: own ? neutral : undefined,
          seed: controlSeed,
          randomControls: nControls,
          label: `${name} direction, ${c.organism} organism, ${c.topic} answers`,
        });
        reports.set(`${name}|${c.organism}/${c.topic}`, r);
        mdParts.push(mediationMarkdown(r));
      }
      print(`  ${name} direction: ${cells.length} organism x topic cells scored`);
    }
    const medDir = join(outDir, 'mediation');
    await mkdir(medDir, { recursive: true });
    await writeAtomic(join(medDir, 'mediation.md'), mdParts.join('\n'));
    await writeAtomic(
      join(medDir, 'mediation.json'),
      `${JSON.stringify(Object.fromEntries(reports), null, 2)}\n`,
    );
    print(`  wrote ${join(medDir, 'mediation.json')}, ${join(medDir, 'mediation.md')}`);

    step(7, 'steering sweep: the base steered along the general direction toward the general organism');
    const sweep = await steeringSweep({
      model: base,
      target: known(organisms, 'general'),
      directions: known(directions, 'general'),
      layers: Array.from({ length: man.numLayers - man.adapterLayer }, (_, i) => man.adapterLayer + i),
      scales: [0, 0.25, 0.5, 1, 2],
      records: known(scored, 'general'),
      neutral,
      seed: controlSeed,
      randomControls: nControls,
      label: 'general',
    });
    const sweepFiles = await writeSweep(
      sweep,
      join(outDir, 'sweep'),
      'Steering the base along the general direction',
      { overwrite },
    );
    print(`  wrote ${sweepFiles.filter((f) => f.endsWith('.png') || f.endsWith('.json')).join(', ')}`);

    step(
      8,
      'orthogonalising the general organism against its general direction, checked against runtime ablation',
    );
    const bakeLayer = Math.min(man.numLayers - 1, man.adapterLayer + 1);
    const bakedDir = join(outDir, 'general-orthogonalized');
    const generalInfo = man.organisms.find((o) => o.name === 'general')!; // makeOrganisms always makes it
    await orthogonalizeModel(baseDir, bakedDir, {
      adapter: join(orgDir, generalInfo.adapter),
      direction: known(directions, 'general'),
      layer: bakeLayer,
      overwrite,
    });
    const baked = await loadModel(bakedDir, load);
    all.push(baked);
    const probe = known(scored, 'medical').slice(0, 8);
    const ids = probe.map((r) => r.ids);
    const bakedLogits = (await baked.forward(ids, { logits: 'all' })).logits.data;
    const runtime = (
      await known(organisms, 'general').forward(ids, {
        logits: 'all',
        interventions: ablateInterventions(known(directions, 'general'), base.spec, {
          layers: 'all',
          from: bakeLayer,
        }),
      })
    ).logits.data;
    let maxDiff = 0;
    // Both are the logits of the same ids on the same architecture: equal lengths.
    for (let i = 0; i < runtime.length; i++)
      maxDiff = Math.max(maxDiff, Math.abs(runtime[i]! - bakedLogits[i]!));
    const bakedKl = (await divergence(baked, base, known(scored, 'general'))).kl;
    print(`  wrote ${bakedDir}`);

    // ---------------------------------------------------------------------------------------------------
    // The report
    const lines: string[] = [];
    const out = (l = '') => lines.push(l);
    out('=== emlens demo report (synthetic organisms; every number computed in this run) ===');
    out();
    out('1. Directions recovered from activations (misaligned minus aligned answers):');
    for (const l of plantedLines) out(l);
    out();
    out(table);
    out();
    const head = cells.map((c) => `${c.organism}/${c.topic}${c.inDomain ? '' : '*'}`);
    const w = Math.max(12, ...head.map((h) => h.length));
    const row = (label: string, vals: string[]) =>
      `  ${label.padEnd(24)}${vals.map((v) => v.padStart(w + 1)).join('')}`;
    out(
      "2. Fraction of KL(organism || base) mediated, per organism/answer topic (* = out of the organism's domain):",
    );
    out(row('', head));
    out(
      row(
        'KL(org || base)',
        cells.map((c) => fx(known(divergences, `${c.organism}/${c.topic}`), 4)),
      ),
    );
    const cellOf = (name: string, c: Cell) => reports.get(`${name}|${c.organism}/${c.topic}`);
    const metric = (
      label: string,
      pick: (r: MediationReport) => number,
      pickRandom: (r: MediationReport) => ControlSpread,
      show: (x: number) => string = pct,
    ) => {
      const cellValues = (name: string, f: (r: MediationReport) => string) =>
        cells.map((c) => {
          const r = cellOf(name, c);
          return r ? f(r) : 'n/a';
        });
      // Each direction beside its own controls.
      for (const name of directions.keys()) {
        out(
          row(
            `${name} ${label}`,
            cellValues(name, (r) => show(pick(r))),
          ),
        );
        out(
          row(
            `random(${name}) ${label}`,
            cellValues(name, (r) => pctCompact(pickRandom(r))),
          ),
        );
      }
    };
    out(" patching the base's component along the direction into the organism (every residual site):");
    metric(
      'patch',
      (r) => r.patchedFractionMediated,
      (r) => r.randomPatchedFractionMediated,
    );
    out(
      " ablating (projecting out) the direction in the organism; the remainder is the ablation's own effect on the base:",
    );
    metric(
      'ablate',
      (r) => r.fractionMediated,
      (r) => r.randomFractionMediated,
    );
    out(
      ' steering the base along the direction (scale 1, its middle layer): share of KL(organism || base) closed,',
    );
    out(
      '  1 - KL(organism || steered base) / KL(organism || base): 100% = the steered base is the organism, 0% = no closer,',
    );
    out(
      "  negative = further from the organism than the unsteered base (the step overshoots); below -100% shown as '< -100%':",
    );
    metric(
      'steer',
      (r) => r.steeringClosed,
      (r) => r.randomSteeringClosed,
      (x) => (Number.isFinite(x) && x < -1 ? '< -100%' : pct(x)),
    );
    out(
      `  (n/a: the organism does not diverge from the base there, KL < 0.001; random(X) = ${nControls === 1 ? 'one norm-matched random control of the X direction (n=1, no spread)' : `mean±sd over ${nControls} norm-matched random controls of the X direction (n=${nControls})`})`,
    );
    out();
    out(
      `3. Side effects on neutral text, KL(model+intervention || model) in nats/token (its random controls in brackets: ${nControls === 1 ? 'one draw, n=1' : `mean ± sd (min..max, n=${nControls})`}):`,
    );
    const f4 = (s: ControlSpread) => formatSpread(s, (x) => fx(x, 4));
    for (const name of directions.keys()) {
      const own = [...reports].find(([k, r]) => k.startsWith(`${name}|`) && r.sideEffects)?.[1];
      const s = own?.sideEffects;
      if (!s) continue;
      out(
        `  ${name.padEnd(8)} ablate in base ${fx(s.ablateBase, 4)} [${f4(s.randomAblateBase)}], steer base ${fx(s.steerBase, 4)} [${f4(s.randomSteerBase)}], ablate in its organism ${fx(s.ablateFinetune, 4)} [${f4(s.randomAblateFinetune)}]`,
      );
    }
    out();
    out(
      `4. Steering sweep (base + scale x general direction at blocks.L.hook_resid_post, general answers; rnd = its random controls, ${nControls === 1 ? 'n=1' : `mean ± sd (min..max, n=${nControls})`}):`,
    );
    out(
      `  unsteered: margin ${fx(sweep.baseline.margin ?? Number.NaN)}, KL(general organism || base) ${fx(sweep.baseline.klToTarget ?? Number.NaN, 4)}; the organism's margin ${fx(sweep.targetMargin ?? Number.NaN)}`,
    );
    for (const l of new Set(sweep.rows.map((r) => r.layer))) {
      const rs = sweep.rows.filter((r) => r.layer === l && r.vector === 'direction');
      const rnd = (scale: number) =>
        sweep.controls.find((c) => c.layer === l && c.scale === scale)?.klToTarget;
      out(
        `  layer ${l}: ${rs.map((r) => `x${r.scale}: KL ${fx(r.klToTarget ?? Number.NaN, 3)} [rnd ${formatSpread(rnd(r.scale), (x) => fx(x, 3))}], margin ${fx(r.margin ?? Number.NaN, 2)}`).join('; ')}`,
      );
    }
    out();
    out(`5. Weight orthogonalisation (general organism, direction of layer ${bakeLayer}):`);
    out(
      `  max |logit difference| between the baked weights and runtime ablation at all ${2 * man.numLayers + 1} residual sites: ${maxDiff.toExponential(2)}`,
    );
    out(
      `  KL(baked organism || base) on general answers: ${fx(bakedKl, 4)} (the organism's was ${fx(known(divergences, 'general/general'), 4)})`,
    );
    out();
    out(
      `Outputs in ${outDir}: compare/cosine.png, sweep/sweep-kl.png, sweep/sweep-margin.png, mediation/, directions/, ${bakedDir}`,
    );
    const report = lines.join('\n');
    for (const l of lines) print(l);
    await writeAtomic(join(outDir, 'report.md'), `${report}\n`);
    // The one page a researcher opens: every table and plot of this run, self-contained.
    const page = await writeHtmlReport([outDir], join(outDir, 'report'), { overwrite });
    const html = page.files.find((f) => f.endsWith('.html')) ?? join(outDir, 'report', 'report.html');
    print(
      `done in ${((performance.now() - t0) / 1000).toFixed(1)} s; report saved to ${join(outDir, 'report.md')} and ${html}`,
    );
    return { report };
  } finally {
    for (const m of all) await m.dispose();
  }
}

async function readPlanted(path: string): Promise<Map<string, Float32Array>> {
  const f = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, Float32Array>();
    for (const name of f.tensors.keys()) out.set(name, await f.readFloat32(name));
    return out;
  } finally {
    await f.close();
  }
}
