import type { Command } from 'commander';
import { DEMO_RANDOM_CONTROLS, runDemo } from '../demo/em.js';
import { nonNegativeInt, positiveInt } from './args.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'the main job on synthetic model organisms: directions, comparison, mediation, steering, orthogonalisation',
    )
    .option('--out <dir>', 'where the demo writes its organisms and outputs', 'emlens-demo')
    .option('--seed <n>', 'organisms seed, also the user seed of the random controls', nonNegativeInt, 0)
    .option(
      '--random-controls <k>',
      'norm-matched random controls per direction (the report gives their mean ± sd)',
      positiveInt,
      DEMO_RANDOM_CONTROLS,
    )
    .option('--threads <n>', 'intra-op threads per model (default 1: the organisms are tiny)', positiveInt)
    .option('--overwrite', 'run into a non-empty --out, replacing an earlier demo there')
    .action(async (flags: DemoFlags) => {
      await runDemo(flags.out, (line) => console.log(line), {
        seed: flags.seed,
        threads: flags.threads,
        randomControls: flags.randomControls,
        overwrite: flags.overwrite,
      });
    });
}

interface DemoFlags {
  readonly out: string;
  readonly seed: number;
  readonly randomControls: number;
  readonly threads?: number;
  readonly overwrite?: boolean;
}
