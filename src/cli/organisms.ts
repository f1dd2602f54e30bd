import type { Command } from 'commander';
import { makeOrganisms } from '../organisms/make.js';
import { nonNegativeInt, positiveInt } from './args.js';

export function registerOrganisms(program: Command): void {
  program
    .command('organisms')
    .description(
      'write synthetic model organisms: a base model, misaligned LoRA finetunes with planted directions, labelled responses',
    )
    .requiredOption('--out <dir>', 'output folder')
    .option('--seed <n>', 'random seed', nonNegativeInt, 0)
    .option('--responses <n>', 'aligned and misaligned answers per topic', positiveInt, 24)
    .option('--overwrite', 'replace --out if it exists and is not empty (the whole folder, atomically)')
    .action(async (flags: { out: string; seed: number; responses: number; overwrite?: boolean }) => {
      const m = await makeOrganisms(flags.out, {
        seed: flags.seed,
        responsesPerLabel: flags.responses,
        overwrite: flags.overwrite,
      });
      console.log(
        `wrote ${flags.out}: base model (${m.numLayers} layers, d_model ${m.dModel}), adapters at block ${m.adapterLayer}:`,
      );
      for (const o of m.organisms) console.log(`  ${o.name.padEnd(8)} ${o.kind.padEnd(7)} ${o.adapter}`);
      console.log(
        `  responses: ${Object.values(m.responses).join(', ')}; planted directions: ${m.plantedFile}`,
      );
    });
}
