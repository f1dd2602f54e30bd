import type { Command } from 'commander';
import { judgeFile } from '../eval/judgeFile.js';
import type { Device } from '../model/session.js';
import { pct } from '../util/format.js';
import { positiveInt } from './args.js';
import { deviceOption } from './common.js';
import { metricList } from './eval.js';
import { createProgress, type Progress } from './progress.js';

interface JudgeFlags {
  readonly responses: string;
  readonly questions: string;
  readonly judge: string;
  readonly judgeModel?: string;
  readonly apiKeyEnv?: string;
  readonly out: string;
  readonly metrics?: string[];
  readonly judgeConcurrency?: number;
  readonly condition?: string;
  readonly device: Device;
  readonly threads?: number;
  readonly cacheDir?: string;
}

export function registerJudge(program: Command): void {
  program
    .command('judge')
    .description(
      'judge responses made elsewhere with the EM judge prompts of a question file: judged.csv/jsonl and summary.json (resumable through judge-cache.jsonl)',
    )
    .requiredOption(
      '--responses <file>',
      'responses .csv or .jsonl: question_id (or question text matching a paraphrase), question, response (or answer)',
    )
    .requiredOption('--questions <file>', 'question set YAML whose judge_prompts are used')
    .requiredOption(
      '--judge <url|local:dir>',
      'OpenAI-compatible base URL (e.g. https://api.openai.com/v1) or local:DIR for a local judge model',
    )
    .option('--judge-model <name>', "judge model for a URL judge (default: the questions' judge field)")
    .option('--api-key-env <name>', 'environment variable holding the judge API key (default OPENAI_API_KEY)')
    .requiredOption('--out <dir>', 'output folder (a rerun into it sends only what the cache lacks)')
    .option(
      '--metrics <list>',
      'judge only these metrics, comma-separated (default: every judge prompt)',
      metricList,
    )
    .option('--judge-concurrency <n>', 'judge calls in flight at once (default 8)', positiveInt)
    .option('--condition <name>', 'condition name in summary.json (default: the responses file name)')
    .addOption(deviceOption('execution provider of a local judge'))
    .option('--threads <n>', 'intra-op threads of a local judge', positiveInt)
    .option('--cache-dir <dir>', 'where a local judge keeps its built graphs')
    .action(async (flags: JudgeFlags) => {
      let bar: Progress | null = null;
      const s = await judgeFile({
        responses: flags.responses,
        questions: flags.questions,
        judge: flags.judge,
        judgeModel: flags.judgeModel,
        apiKeyEnv: flags.apiKeyEnv,
        out: flags.out,
        metrics: flags.metrics,
        concurrency: flags.judgeConcurrency,
        condition: flags.condition,
        judgeLoad: {
          device: flags.device,
          threads: flags.threads,
          cacheDir: flags.cacheDir,
          onProgress: (m) => process.stderr.write(`emlens: judge: ${m}\n`),
        },
        onWarning: (m) => process.stderr.write(`emlens: warning: ${m}\n`),
        onProgress: (done, total) => {
          bar ??= createProgress('judging', total);
          bar.update(done);
        },
      }).finally(() => (bar as Progress | null)?.stop());
      const ci = (e: { value: number | null; low: number | null; high: number | null }) =>
        e.value === null ? 'n/a' : `${pct(e.value)} [${pct(e.low)}, ${pct(e.high)}]`;
      process.stdout.write(
        `${s.condition}: EM rate ${ci(s.emRate)}, coherent ${ci(s.coherenceRate)} (${s.judged}/${s.n} answers judged); wrote ${flags.out}\n`,
      );
    });
}
