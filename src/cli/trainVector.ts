import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { responsesToRecords, textsToRecords } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { GradModel } from '../grad/gradModel.js';
import { residualSite } from '../grad/params.js';
import { trainSteeringVector } from '../grad/train.js';
import { TRAIN_FILES, writeTrainOutput } from '../grad/trainOutput.js';
import { readNeutralTexts } from '../interventions/scoring.js';
import { claimOutputFolder, claimResumableFolder } from '../io/outputs.js';
import { readConfig } from '../model/config.js';
import { sha256File } from '../model/fingerprint.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { finiteNumber, nonNegativeInt, nonNegativeNumber, positiveInt } from './args.js';
import { addChatTemplateOptions, type ChatTemplateFlags } from './common.js';
import { createProgress } from './progress.js';

interface TrainVectorFlags extends ChatTemplateFlags {
  readonly model: string;
  readonly adapter?: string;
  readonly site: string;
  readonly data: string;
  readonly klData?: string;
  readonly klWeight: number;
  readonly steps: number;
  readonly lr: number;
  readonly batch: number;
  readonly seed: number;
  readonly checkpointEvery: number;
  readonly span: 'after-user' | 'content';
  readonly threads?: number;
  readonly out: string;
  readonly resume?: boolean;
  readonly overwrite?: boolean;
}

export function registerTrainVector(program: Command): void {
  addChatTemplateOptions(
    program
      .command('train-vector')
      .description(
        'train a steering vector at a residual site: CE on answers + W x KL(base || steered) on texts',
      ),
  )
    .requiredOption('--model <dir>', 'Hugging Face model folder')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder merged into the (frozen) weights')
    .requiredOption('--site <hook>', 'residual site, e.g. blocks.3.hook_resid_post')
    .requiredOption(
      '--data <file>',
      'responses whose answers to learn (.csv or .jsonl with question and answer)',
    )
    .option('--kl-data <file>', 'texts to stay close to the base model on (.jsonl of {"text": ...})')
    .option('--kl-weight <w>', 'W in CE + W x KL', nonNegativeNumber, 0)
    .requiredOption('--steps <n>', 'Adam steps', positiveInt)
    .option('--lr <lr>', 'Adam learning rate', finiteNumber, 0.01)
    .option('--batch <n>', 'records per step (of --data, and of --kl-data)', positiveInt, 8)
    .option('--seed <n>', 'seed of the batch draws', nonNegativeInt, 0)
    .option('--checkpoint-every <k>', 'write a checkpoint every k steps', positiveInt, 10)
    .addOption(
      new Option('--span <span>', 'answer tokens: after the user turn, or the content only')
        .choices(['after-user', 'content'])
        .default('after-user'),
    )
    .option('--threads <n>', 'intra-op threads (default: one per core)', positiveInt)
    .requiredOption('--out <dir>', 'output folder (direction.safetensors, train.json, checkpoint.json)')
    .option('--resume', 'continue the run whose checkpoint is in --out (same options)')
    .option('--overwrite', 'start over in a non-empty --out')
    .action(async (flags: TrainVectorFlags) => {
      residualSite(await readConfig(flags.model), flags.site);
      const own = Object.values(TRAIN_FILES);
      if (flags.resume) await claimResumableFolder(flags.out, own, { what: 'a train-vector output folder' });
      else await claimOutputFolder(flags.out, { overwrite: flags.overwrite });
      if (flags.overwrite && !flags.resume)
        await rm(join(flags.out, TRAIN_FILES.checkpoint), { force: true });
      const tokenizer = await loadTokenizer(flags.model);
      const data = responsesToRecords(tokenizer, await readResponses(flags.data), {
        span: flags.span,
        templateVars: flags.chatTemplateKwargs,
      });
      const klData = flags.klData ? textsToRecords(tokenizer, await readNeutralTexts(flags.klData)) : [];
      await mkdir(flags.out, { recursive: true });
      const model = await GradModel.load(flags.model, { adapter: flags.adapter, threads: flags.threads });
      const bar = createProgress('train-vector', flags.steps);
      try {
        const result = await trainSteeringVector(model, {
          site: flags.site,
          data,
          klData,
          klWeight: flags.klWeight,
          steps: flags.steps,
          lr: flags.lr,
          batch: flags.batch,
          seed: flags.seed,
          checkpoint: {
            path: join(flags.out, TRAIN_FILES.checkpoint),
            every: flags.checkpointEvery,
            resume: flags.resume,
            identity: {
              model: resolve(flags.model),
              adapter: flags.adapter ? resolve(flags.adapter) : '',
              data: await sha256File(flags.data),
              klData: flags.klData ? await sha256File(flags.klData) : '',
              span: flags.span,
              templateVars: JSON.stringify(flags.chatTemplateKwargs ?? {}),
            },
          },
          onStep: (s) => bar.update(s),
        });
        bar.stop();
        await writeTrainOutput(flags.out, result, {
          model: flags.model,
          ...(flags.adapter ? { adapter: flags.adapter } : {}),
          site: flags.site,
          data: flags.data,
          ...(flags.klData ? { klData: flags.klData } : {}),
          klWeight: flags.klWeight,
          steps: flags.steps,
          lr: flags.lr,
          batch: flags.batch,
          seed: flags.seed,
          nData: data.length,
          nKl: klData.length,
        });
        const first = result.history[0];
        const last = result.history[result.history.length - 1];
        console.log(
          `loss ${first?.loss.toFixed(4)} -> ${last?.loss.toFixed(4)} (ce ${last?.ce.toFixed(4)}, kl ${last?.kl.toFixed(4)}) over ${flags.steps} steps; wrote ${join(flags.out, TRAIN_FILES.direction)}`,
        );
      } finally {
        bar.stop();
        await model.dispose();
      }
    });
}
