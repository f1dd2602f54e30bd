import type { Command } from 'commander';
import { runDemo } from '../demo/em.js';
import { nonNegativeInt, positiveInt } from './args.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'the main job on synthetic model organisms: directions, comparison, mediation, steering, orthogonalisation',
    )
    .option('--out <dir>', 'where the demo writes its organisms and outputs', 'emlens-demo')
    .option('--seed <n>', 'organisms seed', nonNegativeInt, 0)
    .option('--threads <n>', 'intra-op threads per model (default 1: the organisms are tiny)', positiveInt)
    .option('--overwrite', 'run into a non-empty --out, replacing an earlier demo there')
    .action(async (flags: { out: string; seed: number; threads?: number; overwrite?: boolean }) => {
      await runDemo(flags.out, (line) => console.log(line), {
        seed: flags.seed,
        threads: flags.threads,
        overwrite: flags.overwrite,
      });
    });
}
