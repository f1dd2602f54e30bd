/**
 * The judged part of the study (only with a judge and a question file): EM rate and coherence with
 * bootstrap CIs per condition (the base, each finetune, each finetune with its own direction ablated and with
 * the random control ablated, optionally with every other direction ablated, and the base steered along each
 * direction and its random control), through the eval library's runEval and writeReport.
 */
import { join } from 'node:path';
import { randomControl } from '../../directions/randomControl.js';
import { createJudge, type Judge } from '../../eval/judge/index.js';
import { writeReport } from '../../eval/report.js';
import { runEval } from '../../eval/run.js';
import { ablateInterventions, type ModelShape, steerInterventions } from '../../interventions/compose.js';
import type { Intervention } from '../../model/interventions.js';
import type { NarrowVsGeneralConfig } from './config.js';
import type { BenchDirection } from './mediation.js';
import type { EvalResult } from './types.js';

/** One evaluated condition: a model (the base or a finetune) with optional interventions. */
export interface EvalCondition {
  readonly name: string;
  /** Folder name under the eval output folder. */
  readonly folder: string;
  /** The finetune's adapter (none: the base). */
  readonly adapter?: string;
  readonly interventions?: readonly Intervention[];
  readonly info?: Readonly<Record<string, unknown>>;
}

const slug = (s: string) =>
  s
    .replace(/[^A-Za-z0-9_.-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .toLowerCase();

/** The conditions the study evaluates (see the module comment). */
export function evalConditions(
  config: NarrowVsGeneralConfig,
  directions: ReadonlyMap<string, BenchDirection>,
  shape: ModelShape,
  layers: readonly number[],
  steerLayer: number,
): EvalCondition[] {
  const j = config.judge!; // called only when the config has a judge (run.ts)
  const out: EvalCondition[] = [];
  const add = (c: Omit<EvalCondition, 'folder'>) => out.push({ ...c, folder: slug(c.name) });
  add({ name: 'base' });
  // The same control (index 0 of the direction's seed) as the judge-free measurements use.
  const control = (dir: BenchDirection) => randomControl(dir.set, { seed: dir.randomSeed });
  const ablate = (dir: BenchDirection, random: boolean) =>
    ablateInterventions(random ? control(dir) : dir.set, shape, { layers });
  for (const f of config.finetunes) {
    add({ name: f.name, adapter: f.adapter });
    for (const [x, dir] of directions) {
      if (x !== f.name && !j.cross) continue;
      add({
        name: `${f.name} ablate ${x}`,
        adapter: f.adapter,
        interventions: ablate(dir, false),
        info: { kind: 'ablate', direction: x, layers },
      });
    }
    const own = directions.get(f.name);
    if (own) {
      add({
        name: `${f.name} ablate random(${f.name})`,
        adapter: f.adapter,
        interventions: ablate(own, true),
        info: { kind: 'ablate', direction: `random(${f.name})`, seed: own.randomSeed, layers },
      });
    }
  }
  for (const [x, dir] of directions) {
    for (const random of [false, true]) {
      const set = random ? control(dir) : dir.set;
      const label = random ? `random(${x})` : x;
      add({
        name: `base steer ${label}`,
        interventions: steerInterventions(set, shape, { layers: [steerLayer], scale: j.steerScale }),
        info: { kind: 'steer', direction: label, layer: steerLayer, scale: j.steerScale },
      });
    }
  }
  return out;
}

export interface JudgedEvalOptions {
  readonly config: NarrowVsGeneralConfig;
  readonly conditions: readonly EvalCondition[];
  /** The eval output folder: one folder per condition, plus report.{md,json} and em-rate.{svg,png}. */
  readonly outDir: string;
  readonly cacheDir: string;
  readonly onProgress?: (message: string) => void;
}

/** Samples, judges and summarises every condition, then compares them against the base. */
export async function judgedEval(opts: JudgedEvalOptions): Promise<EvalResult> {
  const { config } = opts;
  const j = config.judge!; // called only when the config has a judge (run.ts)
  const load = { cacheDir: opts.cacheDir, threads: config.threads, device: config.device };
  // A local judge is loaded once for every condition; a URL judge is set up by runEval (with its cache).
  const judge: string | Judge = j.spec.startsWith('local:')
    ? await createJudge(j.spec, { local: load })
    : j.spec;
  const dirs: string[] = [];
  try {
    for (const c of opts.conditions) {
      const out = join(opts.outDir, c.folder);
      const s = await runEval({
        model: config.base,
        load: { ...load, ...(c.adapter ? { adapter: c.adapter } : {}) },
        questions: j.questions,
        filter: { include: j.include, exclude: j.exclude },
        judge,
        judgeModel: j.model,
        apiKeyEnv: j.apiKeyEnv,
        out,
        condition: c.name,
        sampling: {
          n: j.samples,
          maxNewTokens: j.maxNewTokens,
          temperature: j.temperature,
          topP: j.topP,
          seed: j.seed,
          batchSize: j.batchSize,
        },
        interventions: c.interventions,
        interventionInfo: c.info,
      });
      dirs.push(out);
      const em = s.emRate.value;
      opts.onProgress?.(
        `eval ${c.name}: EM rate ${em === null ? 'n/a' : `${(100 * em).toFixed(1)}%`} of ${s.judged} judged`,
      );
    }
  } finally {
    if (typeof judge !== 'string') await judge.close?.();
  }
  const report = await writeReport(dirs, opts.outDir, {
    baseline: 'base',
    title: 'EM rate by condition (narrow vs general directions)',
    // The study owns its work folder and resumes its evals there, so a rerun refreshes its report.
    overwrite: true,
  });
  return {
    conditions: opts.conditions.map((c) => ({ name: c.name, folder: c.folder })),
    comparison: report.comparison,
  };
}
