import type { Command } from 'commander';
import type { DirectionSet } from '../directions/direction.js';
import { loadDirectionOrSubspace } from '../directions/subspaceFiles.js';
import {
  checkDirectionsFit,
  composeInterventions,
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
  set: DirectionSet | readonly DirectionSet[],
  shape: ModelShape,
  flags: Pick<AblateFlags, 'layers' | 'from'>,
): Intervention[] {
  const sets = Array.isArray(set) ? (set as readonly DirectionSet[]) : [set as DirectionSet];
  const layers = parseLayerList(flags.layers);
  const from = parseFrom(flags.from);
  // one request per set: ablations at one site remove the span of all their directions together
  const request = { ablate: sets.map((direction) => ({ direction, layers, from })) };
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
        'direction file (direction.{layer} tensors, as emlens direction writes), or the --out name of emlens direction subspace (FILE.b0, FILE.b1, ... are read and their whole span is removed)',
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
    const loaded = await loadDirectionOrSubspace(flags.direction);
    loaded.sets.forEach((s, i) => {
      checkDirectionsFit(s, shape, `Direction file ${loaded.paths[i]}`);
    });
    if (loaded.partOfSubspace) {
      const { index, rank } = loaded.partOfSubspace;
      process.stderr.write(
        `emlens: note: ${flags.direction} is basis vector ${index} of a rank-${rank} subspace; only it is ablated (pass the name given to emlens direction subspace --out to ablate the whole subspace).\n`,
      );
    }
    const ivs = ablateCommandInterventions(loaded.sets, shape, flags);
    const model = await loadModel(flags.model, loadOptions(flags));
    try {
      const from = parseFrom(flags.from);
      const tokenizer = await loadTokenizer(flags.model);
      const pair = await answerPair(model, tokenizer, flags.prompt, ivs, flags);
      console.log(`prompt: ${flags.prompt}`);
      console.log(
        `ablating ${what(loaded.sets.length, from)} at ${new Set(ivs.flatMap((iv) => iv.hooks)).size} residual sites\n`,
      );
      console.log(sideBySide('baseline', pair.baseline, 'ablated', pair.changed));
    } finally {
      await model.dispose();
    }
  });
}

/** "each layer's direction", "the rank-2 subspace of layer 1", ... */
function what(rank: number, from: 'own' | number): string {
  const thing = rank === 1 ? 'direction' : `rank-${rank} subspace`;
  return from === 'own' ? `each layer's ${thing}` : `the ${thing} of layer ${from}`;
}
