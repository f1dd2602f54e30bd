import type { Command } from 'commander';
import { runFoundationDemo } from '../demo/foundation.js';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('the main job on an embedded default: build a tiny model, trace it, steer and ablate it')
    .option('--out <dir>', 'where the demo writes its model and outputs', 'emlens-demo')
    .action(async (flags: { out: string }) => {
      await runFoundationDemo(flags.out, (line) => console.log(line));
    });
}
