import type { Command } from 'commander';
import { loadDirections } from '../directions/direction.js';
import { orthogonalizeModel } from '../interventions/orthogonalize.js';
import { nonNegativeInt } from './args.js';

interface OrthogonalizeFlags {
  readonly model: string;
  readonly adapter?: string;
  readonly direction: string;
  readonly layer: number;
  readonly out: string;
  readonly overwrite?: boolean;
}

export function registerOrthogonalize(program: Command): void {
  program
    .command('orthogonalize')
    .description(
      'write a new model folder whose weights have a direction projected out of everything that writes to the residual stream',
    )
    .requiredOption('--model <dir>', 'Hugging Face model folder')
    .option('--adapter <dir>', 'PEFT LoRA adapter merged in first')
    .requiredOption('--direction <file>', 'direction file (direction.{layer} tensors)')
    .requiredOption(
      '--layer <l>',
      'the layer of the file whose (unit) vector is projected out',
      nonNegativeInt,
    )
    .requiredOption('--out <dir>', 'the new model folder (refused if it exists and is not empty)')
    .option(
      '--overwrite',
      'replace --out if it exists (the whole folder, atomically, once the new one is complete)',
    )
    .action(async (flags: OrthogonalizeFlags) => {
      const set = await loadDirections(flags.direction);
      const r = await orthogonalizeModel(flags.model, flags.out, {
        adapter: flags.adapter,
        direction: set,
        layer: flags.layer,
        source: flags.direction,
        overwrite: flags.overwrite,
        onProgress: (m) => process.stderr.write(`emlens: ${m}\n`),
      });
      console.log(
        `wrote ${r.outDir}: direction.${flags.layer} of ${flags.direction} projected out of ${r.modified.length} weights (embed_tokens, ${r.spec.numLayers} o_proj and ${r.spec.numLayers} down_proj${r.spec.oBias || r.spec.mlpBias ? ', and their biases' : ''}); lm_head unchanged${r.untied ? ' (untied from embed_tokens)' : ''}`,
      );
    });
}
