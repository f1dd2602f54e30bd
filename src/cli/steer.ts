import type { Command } from 'commander';
import type { DirectionSet } from '../directions/direction.js';
import {
  composeInterventions,
  loadDirectionsFor,
  type ModelShape,
  parseLayerList,
} from '../interventions/compose.js';
import { readConfig } from '../model/config.js';
import type { Intervention } from '../model/interventions.js';
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

/** The interventions of `emlens steer`: `--scale` times each chosen layer's vector at its `hook_resid_post`. */
export function steerCommandInterventions(
  set: DirectionSet,
  shape: ModelShape,
  flags: Pick<SteerFlags, 'layers' | 'scale' | 'unit'>,
): Intervention[] {
  const request = {
    steer: [{ direction: set, layers: parseLayerList(flags.layers), scale: flags.scale, unit: flags.unit }],
  };
  return composeInterventions(request, shape);
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
    // the direction is checked against config.json first, so a bad file is refused before a model is built
    const shape = await readConfig(flags.model);
    const set = await loadDirectionsFor(flags.direction, shape);
    const ivs = steerCommandInterventions(set, shape, flags);
    const model = await loadModel(flags.model, loadOptions(flags));
    try {
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
