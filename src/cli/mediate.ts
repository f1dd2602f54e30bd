import { type Command, Option } from 'commander';
import { responsesToRecords, textsToRecords } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { loadDirectionsFor, parseLayerList } from '../interventions/compose.js';
import { mediation } from '../interventions/mediation.js';
import { formatMediation, MEDIATION_FILES, writeMediation } from '../interventions/mediationFormat.js';
import { readNeutralTexts } from '../interventions/scoring.js';
import { claimOutputFiles } from '../io/outputs.js';
import { loadModel, type Model } from '../model/model.js';
import type { Device } from '../model/session.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { addChatTemplateOptions, deviceOption, loadOptions, nonNegativeInt, positiveInt } from './common.js';
import { addRandomControlOptions, finiteNumber, parseFrom } from './interventionCommon.js';
import { createProgress } from './progress.js';

interface MediateFlags {
  readonly base: string;
  readonly adapter: string;
  readonly direction: string;
  readonly data: string;
  readonly neutral?: string;
  readonly layers: string;
  readonly from: string;
  readonly steerLayer?: number;
  readonly steerScale: number;
  readonly seed: number;
  readonly randomControls: number;
  readonly span: 'after-user' | 'content';
  readonly batchSize: number;
  readonly out: string;
  readonly device: Device;
  readonly threads?: number;
  readonly cacheDir?: string;
  readonly overwrite?: boolean;
  readonly chatTemplateKwargs?: Record<string, unknown>;
}

export function registerMediate(program: Command): void {
  addRandomControlOptions(addChatTemplateOptions(program.command('mediate')))
    .description(
      "how much of a finetune's divergence from its base a direction carries (judge-free: KL, log-prob margins), with norm-matched random controls",
    )
    .requiredOption('--base <dir>', 'the base model folder')
    .requiredOption('--adapter <dir>', 'the finetune: a PEFT LoRA adapter of the base')
    .requiredOption('--direction <file>', 'direction file (direction.{layer} tensors)')
    .requiredOption(
      '--data <file>',
      'responses (.csv or .jsonl: question, answer; label or aligned score for margins)',
    )
    .option('--neutral <file>', 'neutral text (.jsonl of {"text": ...}) for the side effects')
    .option('--layers <list>', 'layers whose residual sites lose the direction (e.g. 1,2,3)', 'all')
    .option('--from <layer>', "ablate this layer's vector everywhere instead of each layer's own", 'own')
    .option(
      '--steer-layer <l>',
      "layer whose hook_resid_post the base is steered at (default: the file's middle layer)",
      nonNegativeInt,
    )
    .option('--steer-scale <a>', 'steering scale on the stored vector', finiteNumber, 1)
    .addOption(
      new Option('--span <span>', 'answer tokens scored')
        .choices(['after-user', 'content'])
        .default('after-user'),
    )
    .option('--batch-size <n>', 'records per forward pass', positiveInt, 8)
    .option('--out <dir>', 'folder for mediation.json and mediation.md', './mediation-out')
    .option('--overwrite', 'replace the mediation.json and mediation.md of an earlier run in --out')
    .addOption(deviceOption())
    .option('--threads <n>', 'intra-op threads (default: one per core)', positiveInt)
    .option('--cache-dir <dir>', 'where built graphs are kept (default $EMLENS_CACHE_DIR or ~/.cache/emlens)')
    .action(async (flags: MediateFlags) => {
      // Before the models load and score, so a refused --out costs nothing; writeMediation checks again.
      await claimOutputFiles(flags.out, MEDIATION_FILES, { overwrite: flags.overwrite });
      const load = loadOptions({ ...flags, model: flags.base, adapter: undefined });
      const models: Model[] = [];
      try {
        const base = await loadModel(flags.base, load);
        models.push(base);
        const finetune = await loadModel(flags.base, { ...load, adapter: flags.adapter });
        models.push(finetune);
        const directions = await loadDirectionsFor(flags.direction, base.spec);
        const tokenizer = await loadTokenizer(flags.base);
        const records = responsesToRecords(tokenizer, await readResponses(flags.data), {
          span: flags.span,
          templateVars: flags.chatTemplateKwargs,
        });
        const neutral = flags.neutral
          ? textsToRecords(tokenizer, await readNeutralTexts(flags.neutral))
          : undefined;
        const bar = createProgress('scoring', records.length);
        const r = await mediation({
          base,
          finetune,
          directions,
          records,
          neutral,
          layers: parseLayerList(flags.layers),
          from: parseFrom(flags.from),
          steerLayer: flags.steerLayer,
          steerScale: flags.steerScale,
          seed: flags.seed,
          randomControls: flags.randomControls,
          batchSize: flags.batchSize,
          label: flags.direction,
          onProgress: (done) => bar.update(done),
        });
        bar.stop();
        for (const line of formatMediation(r)) console.log(line);
        const out = await writeMediation(r, flags.out, { overwrite: flags.overwrite });
        console.log(`\nwrote ${out.json}, ${out.markdown}`);
      } finally {
        for (const m of models) await m.dispose();
      }
    });
}
