import type { Command } from 'commander';
import { writeReport } from '../eval/report.js';

interface ReportFlags {
  readonly out: string;
  readonly baseline?: string;
  readonly title?: string;
}

export function registerReport(program: Command): void {
  program
    .command('report')
    .description(
      'compare emlens eval folders: EM rate with 95% CIs per condition (report.md, report.json, em-rate.svg/png)',
    )
    .argument('<dirs...>', 'emlens eval output folders (one per condition)')
    .option('--out <dir>', 'where the report goes', 'report')
    .option('--baseline <condition>', 'condition the EM changes are measured against (default: the first)')
    .option('--title <text>', 'title of the report and the chart')
    .action(async (dirs: string[], flags: ReportFlags) => {
      const r = await writeReport(dirs, flags.out, { baseline: flags.baseline, title: flags.title });
      process.stdout.write(r.markdown);
      process.stderr.write(`emlens: wrote ${r.files.join(', ')}\n`);
    });
}
