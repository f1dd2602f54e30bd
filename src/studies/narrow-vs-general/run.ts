/**
 * The narrow-vs-general study (`npm run bench:directions`): for each finetune's misaligned-vs-aligned
 * direction and each finetune, the layerwise cosines between directions, the cross-mediation matrix (in and
 * out of domain), steering efficiency per unit of added norm, stability under random perturbation, side
 * effects per unit of mediation, and with a judge the EM rate and coherence per condition; every figure beside
 * a norm-matched random control. Writes JSON, markdown and plots.
 *
 * @example
 * const config = await loadNarrowVsGeneralConfig('bench.yaml');
 * const { result } = await runNarrowVsGeneral(config, { out: 'results', work: '.work' });
 */

import { mkdir, rm } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join, relative } from 'node:path';
import { responsesToRecords, type TokenizedRecord, textsToRecords } from '../../data/record.js';
import { type ResponseRecord, readResponses } from '../../data/response.js';
import { compareDirections } from '../../directions/compare.js';
import { type DirectionSet, norm, saveDirections } from '../../directions/direction.js';
import { randomControl } from '../../directions/randomControl.js';
import { selectLayers } from '../../interventions/compose.js';
import { readNeutralTexts } from '../../interventions/scoring.js';
import { writeAtomic } from '../../io/files.js';
import { loadModel, type Model } from '../../model/model.js';
import { loadTokenizer } from '../../text/tokenizer.js';
import type { NarrowVsGeneralConfig } from './config.js';
import { finetuneDirection, plantedCosines } from './directions.js';
import { evalConditions, judgedEval } from './eval.js';
import { type BenchDirection, crossMediation, type PromptSet } from './mediation.js';
import { writeNarrowVsGeneralPlots } from './plots.js';
import { narrowVsGeneralMarkdown } from './report.js';
import { sideEffectRow } from './sideEffects.js';
import { stability } from './stability.js';
import { steeringEfficiency } from './steering.js';
import type {
  CosineResult,
  DirectionInfo,
  EvalResult,
  NarrowVsGeneralResult,
  SideEffectRow,
  StabilityCurve,
  SteeringCurve,
} from './types.js';

/** File names inside the output folder. */
export const NARROW_VS_GENERAL_FILES = {
  json: 'narrow-vs-general.json',
  markdown: 'narrow-vs-general.md',
} as const;

export interface RunNarrowVsGeneralOptions {
  /** Results: JSON, markdown, plots, direction files, and the judged eval folders. */
  readonly out: string;
  /** Scratch: activation stores and the graph cache (not results). */
  readonly work: string;
  readonly onProgress?: (message: string) => void;
}

/** The name of a direction's norm-matched random control. */
export const randomName = (direction: string) => `random(${direction})`;

/** JSON with NaN and infinities as null. */
export function resultToJson(r: NarrowVsGeneralResult): string {
  return `${JSON.stringify(r, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`;
}

/** Runs the whole study on a configuration and writes its outputs (see the module comment). */
export async function runNarrowVsGeneral(
  config: NarrowVsGeneralConfig,
  opts: RunNarrowVsGeneralOptions,
): Promise<{ readonly result: NarrowVsGeneralResult; readonly files: readonly string[] }> {
  const t0 = performance.now();
  const log = (m: string) => opts.onProgress?.(`[${((performance.now() - t0) / 1000).toFixed(1)}s] ${m}`);
  await mkdir(opts.out, { recursive: true });
  const cacheDir = join(opts.work, 'cache');
  const load = { cacheDir, threads: config.threads, device: config.device };
  const rel = (p: string) => relative(process.cwd(), p) || '.';

  log(`loading the base and ${config.finetunes.length} finetunes`);
  const base = await loadModel(config.base, load);
  const finetunes = new Map<string, Model>();
  const models: Model[] = [base];
  let evalResult: EvalResult | null = null;
  let partial: Omit<NarrowVsGeneralResult, 'eval' | 'seconds' | 'date'>;
  let layers: number[];
  let steerLayer: number;
  let directions: Map<string, BenchDirection>;
  try {
    for (const f of config.finetunes) {
      const m = await loadModel(config.base, { ...load, adapter: f.adapter });
      finetunes.set(f.name, m);
      models.push(m);
    }
    const tokenizer = await loadTokenizer(config.base);
    const spec = base.spec;
    layers = selectLayers(config.layers, spec.numLayers);
    // selectLayers returns at least one layer.
    steerLayer = config.steering.layer ?? layers[Math.floor((layers.length - 1) / 2)]!;
    selectLayers([steerLayer], spec.numLayers);
    const responses = new Map<string, ResponseRecord[]>();
    for (const [domain, file] of Object.entries(config.responses)) {
      responses.set(domain, await readResponses(file));
    }

    log('directions: misaligned minus aligned answer means of each finetune on its own domain');
    const storeDir = join(opts.work, 'activations');
    await rm(storeDir, { recursive: true, force: true });
    directions = new Map();
    const infos: DirectionInfo[] = [];
    // The maps below are keyed by the config's finetunes and domains, and readConfig checks every finetune's
    // domain has responses: each lookup finds its entry.
    for (const [i, f] of config.finetunes.entries()) {
      const d = await finetuneDirection(finetunes.get(f.name)!, tokenizer, f, responses.get(f.domain)!, {
        storeDir,
        layers,
        span: config.span,
        batchSize: config.batchSize,
        seed: config.seed,
      });
      const randomSeed = config.seed + i;
      directions.set(f.name, { set: d.set, randomSeed });
      // Paths in the files' metadata relative to the working folder, so committed files carry no home paths.
      const portable = (set: DirectionSet): DirectionSet => ({
        ...set,
        meta: {
          ...set.meta,
          model: `${rel(config.base)} + ${rel(f.adapter)}`,
          // a random control has no source stores: keep its empty ones empty (rel('') would say '.')
          sourcePos: set.meta.sourcePos && rel(set.meta.sourcePos),
          sourceNeg: set.meta.sourceNeg && rel(set.meta.sourceNeg),
        },
      });
      const dirOut = join(opts.out, 'directions');
      await saveDirections(join(dirOut, `${f.name}.safetensors`), portable(d.set), { overwrite: true });
      await saveDirections(
        join(dirOut, `${f.name}-random.safetensors`),
        portable(randomControl(d.set, { seed: randomSeed, name: f.name })),
        { overwrite: true },
      );
      infos.push({
        name: f.name,
        domain: f.domain,
        kind: f.kind,
        layers,
        norms: layers.map((l) => norm(d.set.vectors.get(l)!)), // computed at these layers
        misaligned: d.misaligned,
        aligned: d.aligned,
        randomSeed,
        plantedCosine: null,
      });
    }
    const sets = new Map<string, DirectionSet>([...directions].map(([n, d]) => [n, d.set]));
    const planted = config.planted ? await plantedCosines(config.planted, sets) : new Map<string, number[]>();
    const directionInfos = infos.map((d) => ({ ...d, plantedCosine: planted.get(d.name) ?? null }));

    log('cosine similarity between directions, per layer');
    const cosine = cosines(directions);

    const scored = new Map<string, TokenizedRecord[]>();
    for (const [domain, rs] of responses) scored.set(domain, responsesToRecords(tokenizer, rs, config.span));
    const prompts = new Map<string, { in: PromptSet; out: PromptSet | null }>();
    for (const f of config.finetunes) {
      const others = [...scored.keys()].filter((d) => d !== f.domain);
      prompts.set(f.name, {
        in: { domains: [f.domain], records: scored.get(f.domain)! },
        out: others.length === 0 ? null : { domains: others, records: others.flatMap((d) => scored.get(d)!) },
      });
    }
    const neutral = textsToRecords(tokenizer, await readNeutralTexts(config.neutral));

    log('cross-mediation: every direction ablated and patched in every finetune, in and out of domain');
    const cross = await crossMediation({
      base,
      finetunes,
      directions,
      prompts,
      neutral,
      layers,
      steerLayer,
      minDivergence: config.minDivergence,
      batchSize: config.batchSize,
      onProgress: (m) => log(`  ${m}`),
    });

    log(
      `steering efficiency: the base steered at layer ${steerLayer} along every direction toward every finetune`,
    );
    const steering: SteeringCurve[] = [];
    for (const [x, dir] of directions) {
      for (const f of config.finetunes) {
        steering.push(
          await steeringEfficiency({
            base,
            finetune: finetunes.get(f.name)!,
            finetuneName: f.name,
            direction: dir,
            directionName: x,
            layer: steerLayer,
            scales: config.steering.scales,
            records: prompts.get(f.name)!.in.records,
            neutral,
            batchSize: config.batchSize,
          }),
        );
      }
    }

    log(
      `stability: noise ${config.stability.noise.join(', ')} x ${config.stability.seeds} seeds per direction`,
    );
    const stab: StabilityCurve[] = [];
    for (const [x, dir] of directions) {
      stab.push(
        await stability({
          base,
          finetune: finetunes.get(x)!,
          finetuneName: x,
          direction: dir,
          directionName: x,
          records: prompts.get(x)!.in.records,
          layers,
          steerLayer,
          noise: config.stability.noise,
          seeds: config.stability.seeds,
          minDivergence: config.minDivergence,
          batchSize: config.batchSize,
        }),
      );
    }

    const sideEffects: SideEffectRow[] = [];
    for (const x of directions.keys()) {
      const own = cross.own.get(x);
      const curve = steering.find((c) => c.direction === x && c.finetune === x) ?? null;
      const row = own ? sideEffectRow(x, x, own, curve) : null;
      if (row) sideEffects.push(row);
    }

    partial = {
      benchmark: 'narrow-vs-general',
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version },
      source: config.source === 'synthetic' ? 'synthetic' : rel(config.source),
      setup: {
        base: rel(config.base),
        finetunes: config.finetunes.map((f) => ({
          name: f.name,
          domain: f.domain,
          kind: f.kind,
          adapter: rel(f.adapter),
        })),
        layers,
        steerLayer,
        scales: config.steering.scales,
        noise: config.stability.noise,
        seeds: config.stability.seeds,
        minDivergence: config.minDivergence,
      },
      directions: directionInfos,
      cosine,
      crossMediation: cross.cells,
      steering,
      stability: stab,
      sideEffects,
    };
  } finally {
    for (const m of models) await m.dispose();
  }

  if (config.judge) {
    log('judged evaluation: EM rate and coherence per condition');
    const conditions = evalConditions(config, directions, base.spec, layers, steerLayer);
    evalResult = await judgedEval({
      config,
      conditions,
      outDir: join(opts.out, 'eval'),
      cacheDir,
      onProgress: (m) => log(`  ${m}`),
    });
  }

  const result: NarrowVsGeneralResult = {
    ...partial,
    date: new Date().toISOString(),
    seconds: (performance.now() - t0) / 1000,
    eval: evalResult,
  };
  const json = join(opts.out, NARROW_VS_GENERAL_FILES.json);
  const markdown = join(opts.out, NARROW_VS_GENERAL_FILES.markdown);
  const files = [json, markdown];
  await writeAtomic(json, resultToJson(result));
  await writeAtomic(markdown, narrowVsGeneralMarkdown(result));
  files.push(...(await writeNarrowVsGeneralPlots(result, opts.out)));
  log(`wrote ${files.join(', ')}`);
  return { result, files };
}

/** Cosines per layer between every pair of directions, and between each direction and its random control. */
function cosines(directions: ReadonlyMap<string, BenchDirection>): CosineResult {
  const named = [
    ...[...directions].map(([name, d]) => ({ name, set: d.set })),
    ...[...directions].map(([name, d]) => ({
      name: randomName(name),
      set: randomControl(d.set, { seed: d.randomSeed, name }),
    })),
  ];
  const cmp = compareDirections(named);
  const isRandom = (n: string) => n.startsWith('random(');
  const pairs = cmp.pairs
    .filter((p) => !isRandom(p.a) && (!isRandom(p.b) || p.b === randomName(p.a)))
    .map((p) => ({ a: p.a, b: p.b, cosines: p.cosines, meanAbsCosine: p.meanAbsCosine }));
  return { layers: cmp.layers, pairs };
}
