import type { Command } from 'commander';
import { loadDirectionsFor, parseLayerList, steerInterventions } from '../interventions/compose.js';
import { loadModel } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { addModelOptions, loadOptions, type ModelFlags } from './common.js';
import {
  type AnswerFlags,
  addAnswerOptions,
  answerPair,
  finiteNumber,
  sideBySide,
} from './interventionCommon.js';

interface SteerFlags extends ModelFlags, AnswerFlags {
  readonly direction: string;
  readonly layers: string;
  readonly scale: number;
  readonly unit?: boolean;
}

export function registerSteer(program: Command): void {
  addAnswerOptions(
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
      .option('--unit', 'add the unit vector (the scale is then in residual-stream units)'),
  ).action(async (flags: SteerFlags) => {
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
