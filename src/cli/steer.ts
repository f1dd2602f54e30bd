import type { Command } from 'commander';
import { loadDirectionsFor, parseLayerList, steerInterventions } from '../interventions/compose.js';
import { loadModel } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { addModelOptions, loadOptions, type ModelFlags, positiveInt } from './common.js';
import { answerPair, finiteNumber, sideBySide } from './interventionCommon.js';

interface SteerFlags extends ModelFlags {
  readonly direction: string;
  readonly layers: string;
  readonly scale: number;
  readonly prompt: string;
  readonly system?: string;
  readonly maxNewTokens: number;
  readonly seed: number;
  readonly temperature: number;
  readonly unit?: boolean;
}

export function registerSteer(program: Command): void {
  addModelOptions(
    program
      .command('steer')
      .description(
        'answer a prompt with and without adding a direction to the residual stream, side by side',
      ),
  )
    .requiredOption(
      '--direction <file>',
      'direction file (direction.{layer} tensors, as emlens direction writes)',
    )
    .requiredOption(
      '--layers <list>',
      'layers whose hook_resid_post gets the direction, e.g. 2 or 1,2 or all',
    )
    .requiredOption('--scale <a>', "multiplies each layer's (unnormalised) vector", finiteNumber)
    .requiredOption('--prompt <text>', 'the user message (the chat template is applied)')
    .option('--system <text>', 'system message')
    .option('--unit', 'add the unit vector (the scale is then in residual-stream units)')
    .option('--max-new-tokens <n>', 'new tokens at most', positiveInt, 40)
    .option('--temperature <t>', 'sampling temperature (0: greedy)', finiteNumber, 0)
    .option('--seed <s>', 'sampling seed (both answers use it)', finiteNumber, 0)
    .action(async (flags: SteerFlags) => {
      const model = await loadModel(flags.model, loadOptions(flags));
      try {
        const set = await loadDirectionsFor(flags.direction, model.spec);
        const ivs = steerInterventions(set, model.spec, {
          layers: parseLayerList(flags.layers),
          scale: flags.scale,
          unit: flags.unit ?? false,
        });
        const tokenizer = await loadTokenizer(flags.model);
        const pair = await answerPair(model, tokenizer, flags.prompt, ivs, flags);
        const where = ivs.map((iv) => iv.hooks[0]).join(', ');
        console.log(`prompt: ${flags.prompt}`);
        console.log(`steering: +${flags.scale} x ${flags.unit ? 'unit ' : ''}direction at ${where}\n`);
        console.log(sideBySide('baseline', pair.baseline, `steered (scale ${flags.scale})`, pair.changed));
      } finally {
        await model.dispose();
      }
    });
}
