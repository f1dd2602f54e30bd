import type { Command } from 'commander';
import { ablateInterventions, loadDirectionsFor, parseLayerList } from '../interventions/compose.js';
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
    const model = await loadModel(flags.model, loadOptions(flags));
    try {
      const set = await loadDirectionsFor(flags.direction, model.spec);
      const from = parseFrom(flags.from);
      const ivs = ablateInterventions(set, model.spec, { layers: parseLayerList(flags.layers), from });
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
