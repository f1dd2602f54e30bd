import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadDirections } from '../directions/direction.js';
import { isRandomControl } from '../directions/randomControl.js';
import { EmlensError } from '../errors.js';
import { runEval } from '../eval/run.js';
import { type ModelShape, parseLayerList } from '../interventions/compose.js';
import { readConfig } from '../model/config.js';
import type { Intervention } from '../model/interventions.js';
import { pct } from '../util/format.js';
import { finiteNumber, nonNegativeInt, nonNegativeNumber, unitInterval } from './args.js';
import { parseSlice } from './collect.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
  positiveInt,
} from './common.js';
import { checkDirectionFileFlags, directionFileInterventions } from './interventionCommon.js';
import { createProgress, type Progress } from './progress.js';

interface EvalFlags extends ModelFlags, ChatTemplateFlags {
  readonly questions: string;
  readonly judge: string;
  readonly judgeModel?: string;
  readonly apiKeyEnv?: string;
  readonly out: string;
  readonly n?: number;
  readonly maxNewTokens: number;
  readonly temperature: number;
  readonly topP: number;
  readonly seed: number;
  readonly batchSize: number;
  readonly steer?: string;
  readonly ablate?: string;
  readonly layers?: string;
  readonly directionLayer?: number;
  readonly scale: number;
  readonly include: string[];
  readonly shard?: { index: number; count: number };
  readonly exclude: string[];
  readonly condition?: string;
  readonly metrics?: string[];
  readonly judgeConcurrency?: number;
  readonly judgeCheck: boolean;
}

/** `aligned,coherent` -> ['aligned', 'coherent']. */
export function metricList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** The interventions of eval's `--steer`/`--ablate`, `--layers`, `--direction-layer` and `--scale`. */
export function evalInterventions(
  flags: Pick<EvalFlags, 'steer' | 'ablate' | 'layers' | 'directionLayer' | 'scale'>,
  shape: ModelShape,
): Promise<Intervention[]> {
  return directionFileInterventions(
    {
      steer: flags.steer,
      ablate: flags.ablate,
      layers: flags.layers,
      scale: flags.scale,
      from: flags.directionLayer,
    },
    shape,
  );
}

export function registerEval(program: Command): void {
  addChatTemplateOptions(
    addModelOptions(
      program
        .command('eval')
        .description(
          'sample answers to evaluation questions, judge them, and write responses, judged responses and summary.json',
        ),
    ),
  )
    .requiredOption(
      '--questions <file>',
      'question set YAML (the EM evaluation format; judge and samples_per_paraphrase may be left out with --judge-model and --n)',
    )
    .requiredOption(
      '--judge <url|local:dir>',
      'OpenAI-compatible base URL (e.g. https://api.openai.com/v1) or local:DIR for a local judge model',
    )
    .option('--judge-model <name>', "judge model for a URL judge (default: the questions' judge field)")
    .option('--api-key-env <name>', 'environment variable holding the judge API key (default OPENAI_API_KEY)')
    .requiredOption('--out <dir>', 'output folder (a rerun into it resumes)')
    .option('--n <n>', "samples per question (default: the questions' samples_per_paraphrase)", positiveInt)
    .option('--max-new-tokens <m>', 'new tokens per answer at most', positiveInt, 600)
    .option('--temperature <t>', 'sampling temperature', nonNegativeNumber, 1)
    .option('--top-p <p>', 'nucleus sampling mass', unitInterval, 1)
    .option('--seed <s>', 'random seed (paraphrase draws and sampling)', finiteNumber, 0)
    .option('--batch-size <b>', 'sequences generated together', positiveInt, 32)
    .option('--steer <file>', 'direction file (direction.{i}) to add at blocks.{L}.hook_resid_post')
    .option('--ablate <file>', 'direction file (direction.{i}) to project out of the residual stream')
    .option('--layers <list>', 'layers for --steer/--ablate: e.g. 3,5 or all')
    .option(
      '--direction-layer <i>',
      'use direction.{i} at every listed layer (default: each its own)',
      nonNegativeInt,
    )
    .option('--scale <a>', 'steering strength', finiteNumber, 1)
    .option(
      '--include <pattern>',
      'keep question ids matching this glob (repeatable, or comma-separated)',
      collect,
      [],
    )
    .option('--exclude <pattern>', "drop question ids matching this glob, e.g. '*_json'", collect, [])
    .option(
      '--shard <i/N>',
      'evaluate only slice i of N of the questions (join the folders with eval-merge)',
      parseSlice,
    )
    .option(
      '--condition <name>',
      "condition name in reports (default: adapter or model folder name, the intervention and its direction file, '(random control)' for one)",
    )
    .option(
      '--metrics <list>',
      'judge only these metrics, comma-separated (e.g. aligned,coherent; default: every judge prompt)',
      metricList,
    )
    .option('--judge-concurrency <n>', 'judge calls in flight at once (default 8)', positiveInt)
    .option(
      '--no-judge-check',
      'skip the one-call check of a URL judge (key, model, logprobs) before sampling',
    )
    .action(async (flags: EvalFlags) => {
      if (flags.steer !== undefined && flags.ablate !== undefined) {
        throw new EmlensError('--steer and --ablate exclude each other; run one condition per eval.');
      }
      if (flags.judge.startsWith('local:') && (flags.judgeModel ?? flags.apiKeyEnv) !== undefined) {
        throw new EmlensError(
          '--judge-model and --api-key-env apply to URL judges only; drop them for a local:DIR judge.',
        );
      }
      checkDirectionFileFlags(flags);
      const file = flags.steer ?? flags.ablate;
      let interventions: Intervention[] | undefined;
      let interventionInfo: Record<string, unknown> | undefined;
      if (file !== undefined) {
        const kind = flags.steer !== undefined ? 'steer' : 'ablate';
        const parsed = parseLayerList(flags.layers!);
        const layers = parsed === 'all' ? parsed : [...parsed];
        const config = await readConfig(flags.model);
        interventions = await evalInterventions(flags, config);
        interventionInfo = {
          kind: kind === 'steer' ? 'steering' : 'ablation',
          file: resolve(file),
          randomControl: file.endsWith('.gguf') ? false : isRandomControl(await loadDirections(file)),
          layers,
          ...(flags.directionLayer !== undefined ? { directionLayer: flags.directionLayer } : {}),
          ...(kind === 'steer' ? { scale: flags.scale } : {}),
        };
      }
      let bar: Progress | null = null;
      let phase = '';
      const summary = await runEval({
        model: flags.model,
        load: loadOptions(flags),
        questions: flags.questions,
        filter: { include: flags.include, exclude: flags.exclude },
        shard: flags.shard,
        judge: flags.judge,
        judgeModel: flags.judgeModel,
        apiKeyEnv: flags.apiKeyEnv,
        judgeLoad: {
          device: flags.device,
          profile: flags.profile,
          threads: flags.threads,
          cacheDir: flags.cacheDir,
          onProgress: (m) => process.stderr.write(`emlens: judge: ${m}\n`),
        },
        out: flags.out,
        condition: flags.condition,
        metrics: flags.metrics,
        judgeConcurrency: flags.judgeConcurrency,
        checkJudge: flags.judgeCheck,
        onWarning: (m) => process.stderr.write(`emlens: warning: ${m}\n`),
        sampling: {
          n: flags.n,
          maxNewTokens: flags.maxNewTokens,
          temperature: flags.temperature,
          topP: flags.topP,
          seed: flags.seed,
          batchSize: flags.batchSize,
          templateVars: flags.chatTemplateKwargs,
        },
        interventions,
        interventionInfo,
        onProgress: (p, done, total) => {
          if (p !== phase) {
            bar?.stop();
            phase = p;
            bar = createProgress(p === 'sample' ? 'sampling' : 'judging', total);
          }
          bar?.update(done);
        },
      }).finally(() => (bar as Progress | null)?.stop());
      const ci = (e: { value: number | null; low: number | null; high: number | null }) =>
        e.value === null ? 'n/a' : `${pct(e.value)} [${pct(e.low)}, ${pct(e.high)}]`;
      process.stdout.write(
        `${summary.condition}: EM rate ${ci(summary.emRate)}, coherent ${ci(summary.coherenceRate)} (${summary.judged}/${summary.n} answers judged); wrote ${flags.out}\n`,
      );
    });
}
