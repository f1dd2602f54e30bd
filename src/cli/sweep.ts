import type { Command } from 'commander';
import { responsesToRecords, textsToRecords } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { EmlensError } from '../errors.js';
import { loadDirectionsFor, parseLayerList } from '../interventions/compose.js';
import { readNeutralTexts } from '../interventions/scoring.js';
import { SWEEP_FILES, steeringSweep, sweepMarkdown, writeSweep } from '../interventions/sweep.js';
import { claimOutputFiles } from '../io/outputs.js';
import { loadModel, type Model } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
  positiveInt,
} from './common.js';
import { addRandomControlOptions, parseScales } from './interventionCommon.js';
import { createProgress } from './progress.js';

interface SweepFlags extends ModelFlags, ChatTemplateFlags {
  readonly direction: string;
  readonly scales: string;
  readonly layers: string;
  readonly data: string;
  readonly out: string;
  readonly target?: string;
  readonly targetAdapter?: string;
  readonly neutral?: string;
  readonly unit?: boolean;
  readonly seed: number;
  readonly randomControls: number;
  readonly batchSize: number;
  readonly overwrite?: boolean;
}

export function registerSweep(program: Command): void {
  addRandomControlOptions(
    addChatTemplateOptions(
      addModelOptions(
        program
          .command('sweep')
          .description(
            'steer over scale x layer and measure the judge-free effect (log-prob margin, KL to a target), with norm-matched random controls',
          ),
      ),
    ),
  )
    .requiredOption('--direction <file>', 'direction file (direction.{layer} tensors)')
    .requiredOption('--scales <list>', 'steering scales, e.g. 0,2,4,8')
    .requiredOption('--layers <list>', 'layers whose hook_resid_post is steered, e.g. 1,2,3 or all')
    .requiredOption('--data <file>', 'responses (.csv or .jsonl; label or aligned score for the margin)')
    .requiredOption('--out <dir>', 'folder for sweep.json, sweep.md and the plots')
    .option('--overwrite', 'replace the sweep.* files of an earlier run in --out')
    .option('--target <dir>', 'a model to steer toward (KL(target || steered) per cell); default --model')
    .option('--target-adapter <dir>', 'LoRA adapter of the target (e.g. the finetune of --model)')
    .option('--neutral <file>', 'neutral text (.jsonl of {"text": ...}) for the side effect per cell')
    .option('--unit', 'steer by the unit vector (scales in residual-stream units)')
    .option('--batch-size <n>', 'records per forward pass', positiveInt, 8)
    .action(async (flags: SweepFlags) => {
      // Before the models load and the grid runs, so a refused --out costs nothing; writeSweep checks again.
      await claimOutputFiles(flags.out, SWEEP_FILES, { overwrite: flags.overwrite });
      if (flags.target !== undefined && flags.targetAdapter === undefined && flags.target === flags.model) {
        throw new EmlensError(
          '--target is the steered model itself; give another model or a --target-adapter.',
        );
      }
      const models: Model[] = [];
      try {
        const model = await loadModel(flags.model, loadOptions(flags));
        models.push(model);
        let target: Model | undefined;
        if (flags.target !== undefined || flags.targetAdapter !== undefined) {
          target = await loadModel(flags.target ?? flags.model, {
            ...loadOptions(flags),
            adapter: flags.targetAdapter,
          });
          models.push(target);
        }
        const directions = await loadDirectionsFor(flags.direction, model.spec);
        const tokenizer = await loadTokenizer(flags.model);
        const records = responsesToRecords(tokenizer, await readResponses(flags.data), {
          templateVars: flags.chatTemplateKwargs,
        });
        const neutral = flags.neutral
          ? textsToRecords(tokenizer, await readNeutralTexts(flags.neutral))
          : undefined;
        const labelled = ['misaligned', 'aligned'].every((l) => records.some((x) => x.label === l));
        if (!labelled && !target) {
          throw new EmlensError(
            `${flags.data} has no misaligned and aligned answers (a label column or aligned scores) and no --target was given, so there is no effect to measure; add one of them.`,
          );
        }
        const bar = createProgress('sweeping', records.length);
        const r = await steeringSweep({
          model,
          target,
          directions,
          layers: parseLayerList(flags.layers),
          scales: parseScales(flags.scales),
          records,
          neutral,
          unit: flags.unit ?? false,
          seed: flags.seed,
          randomControls: flags.randomControls,
          label: flags.direction,
          batchSize: flags.batchSize,
          onProgress: (done) => bar.update(done),
        });
        bar.stop();
        console.log(sweepMarkdown(r, `Steering sweep: ${flags.direction}`));
        const written = await writeSweep(r, flags.out, 'Steering sweep', { overwrite: flags.overwrite });
        console.log(`wrote ${written.join(', ')}`);
      } finally {
        for (const m of models) await m.dispose();
      }
    });
}
