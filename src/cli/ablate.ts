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
  parseFrom,
  sideBySide,
} from './interventionCommon.js';

interface AblateFlags extends ModelFlags, AnswerFlags {
  readonly direction: string;
  readonly layers: string;
  readonly from?: string;
}

/** The interventions of `emlens ablate`: the chosen blocks' residual sites, each once, lose the direction. */
export function ablateCommandInterventions(
  set: DirectionSet,
  shape: ModelShape,
  flags: Pick<AblateFlags, 'layers' | 'from'>,
): Intervention[] {
  const request = {
    ablate: [{ direction: set, layers: parseLayerList(flags.layers), from: parseFrom(flags.from) }],
  };
  return composeInterventions(request, shape);
}

export function registerAblate(program: Command): void {
  addAnswerOptions(
    addModelOptions(
      program
        .command('ablate')
        .description(
          'answer a prompt with and without a direction projected out of the residual stream, side by side',
        ),
    )
      .requiredOption(
        '--direction <file>',
        'direction file (direction.{layer} tensors, as emlens direction writes)',
      )
      .requiredOption(
        '--layers <list>',
        'layers whose residual sites lose the direction, e.g. 1,2 or all (each layer its own vector unless --from)',
      )
      .option(
        '--from <layer>',
        "ablate this layer's vector at every chosen site instead of each layer's own",
        'own',
      ),
  ).action(async (flags: AblateFlags) => {
    // the direction is checked against config.json first, so a bad file is refused before a model is built
    const shape = await readConfig(flags.model);
    const set = await loadDirectionsFor(flags.direction, shape);
    const ivs = ablateCommandInterventions(set, shape, flags);
    const model = await loadModel(flags.model, loadOptions(flags));
    try {
      const from = parseFrom(flags.from);
      const tokenizer = await loadTokenizer(flags.model);
      const pair = await answerPair(model, tokenizer, flags.prompt, ivs, flags);
      console.log(`prompt: ${flags.prompt}`);
      console.log(
        `ablating ${from === 'own' ? "each layer's direction" : `the direction of layer ${from}`} at ${ivs.length} residual sites\n`,
      );
      console.log(sideBySide('baseline', pair.baseline, 'ablated', pair.changed));
    } finally {
      await model.dispose();
    }
  });
}
