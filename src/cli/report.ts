import type { Command } from 'commander';
import { mergeEvalFolders } from '../eval/report.js';
import { writeHtmlReport } from '../report/build.js';
import { pct } from '../util/format.js';

interface ReportFlags {
  readonly out: string;
  readonly baseline?: string;
  readonly title?: string;
  readonly overwrite?: boolean;
}

export function registerReport(program: Command): void {
  program
    .command('report')
    .description(
      'one report of any emlens outputs (demo, eval, direction files, stores, mediation, sweeps, benchmarks): report.html (self-contained), report.md, report.json; eval folders also get em-rate.svg/png',
    )
    .argument(
      '<inputs...>',
      'emlens output folders or files: eval folders (one per condition), .safetensors direction files, activation stores, mediation.json/sweep.json folders, benchmark results, the demo folder',
    )
    .option('--out <dir>', 'where the report goes', 'report')
    .option(
      '--baseline <condition>',
      'eval condition the EM changes are measured against (default: the first)',
    )
    .option('--title <text>', 'title of the report (and of the EM rate chart)')
    .option(
      '--overwrite',
      'replace the report files (report.*, plots/, em-rate.*) of an earlier run in --out',
    )
    .action(async (inputs: string[], flags: ReportFlags) => {
      const r = await writeHtmlReport(inputs, flags.out, {
        baseline: flags.baseline,
        title: flags.title,
        overwrite: flags.overwrite,
      });
      process.stdout.write(r.markdown);
      for (const u of r.unrecognised)
        process.stderr.write(`emlens: not recognised: ${u.path} (${u.reason})\n`);
      process.stderr.write(`emlens: wrote ${r.files.filter((f) => !f.includes('/plots/')).join(', ')}\n`);
    });

  program
    .command('eval-merge')
    .description(
      'join the eval folders of one run split by question (emlens eval --include <slice> on each machine) into one, summary recomputed',
    )
    .requiredOption('--out <dir>', 'new eval folder')
    .argument('<dirs...>', 'the shards: emlens eval --out folders of the same model, settings and judge')
    .action(async (dirs: string[], flags: { out: string }) => {
      const s = await mergeEvalFolders(dirs, flags.out);
      console.log(
        `${flags.out}: ${s.condition}, ${s.n} answers from ${dirs.length} shards; EM rate ${
          s.emRate.value === null
            ? 'n/a'
            : `${pct(s.emRate.value)} [${pct(s.emRate.low)}, ${pct(s.emRate.high)}]`
        }`,
      );
    });
}
