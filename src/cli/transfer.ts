import { type Command, Option } from 'commander';
import { responsesToRecords, type TokenizedRecord } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { EmlensError } from '../errors.js';
import { loadDirectionsFor, parseLayerList } from '../interventions/compose.js';
import { formatTransfer, TRANSFER_FILES, transferMatrix, writeTransfer } from '../interventions/transfer.js';
import { claimOutputFiles } from '../io/outputs.js';
import { loadModel, type Model } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { addChatTemplateOptions, deviceOption, loadOptions, type ModelFlags, positiveInt } from './common.js';
import { addRandomControlOptions } from './interventionCommon.js';
import { createProgress } from './progress.js';

interface TransferFlags extends ModelFlags {
  readonly finetune: string[];
  readonly directions: string[];
  readonly data: string[];
  readonly layers: string;
  readonly seed: number;
  readonly randomControls: number;
  readonly span: 'after-user' | 'content';
  readonly batchSize: number;
  readonly out: string;
  readonly overwrite?: boolean;
  readonly chatTemplateKwargs?: Record<string, unknown>;
}

/** `NAME=VALUE` -> [NAME, VALUE]; `flag` names the option in the message. */
export function parseNamed(s: string, flag: string): [string, string] {
  const at = s.indexOf('=');
  if (at <= 0 || at === s.length - 1) {
    throw new EmlensError(
      `${flag} ${s} is not NAME=PATH; write it as e.g. ${flag} medical=adapters/medical.`,
    );
  }
  return [s.slice(0, at), s.slice(at + 1)];
}

const collect = (v: string, acc: string[] = []) => [...acc, v];

export function registerTransfer(program: Command): void {
  addRandomControlOptions(addChatTemplateOptions(program.command('transfer')))
    .description(
      "transfer across finetunes: for every direction A and finetune B, the fraction of B's divergence from the base that patching A out of B removes, with norm-matched random controls, beside the directions' layerwise cosines",
    )
    .requiredOption('--model <dir>', 'the base model folder')
    .requiredOption('--finetune <name=adapter>', 'a finetune: NAME=PEFT adapter folder (repeat)', collect)
    .requiredOption('--directions <name=file>', 'a direction: NAME=direction file (repeat)', collect)
    .requiredOption(
      '--data <file>',
      'responses scored: one FILE for every finetune, or NAME=FILE per finetune (repeat)',
      collect,
    )
    .option('--layers <list>', 'layers whose residual sites are patched (e.g. 1,2,3)', 'all')
    .addOption(
      new Option('--span <span>', 'answer tokens scored')
        .choices(['after-user', 'content'])
        .default('after-user'),
    )
    .option('--batch-size <n>', 'records per forward pass', positiveInt, 8)
    .option('--out <dir>', 'folder for transfer.json, transfer.csv, transfer.svg/png', './transfer-out')
    .option('--overwrite', 'replace the files of an earlier run in --out')
    .addOption(deviceOption())
    .option('--threads <n>', 'intra-op threads (default: one per core)', positiveInt)
    .option('--cache-dir <dir>', 'where built graphs are kept (default $EMLENS_CACHE_DIR or ~/.cache/emlens)')
    .action(async (flags: TransferFlags) => {
      const finetunes = flags.finetune.map((s) => parseNamed(s, '--finetune'));
      const dirs = flags.directions.map((s) => parseNamed(s, '--directions'));
      const shared = flags.data.length === 1 && !flags.data[0]!.includes('=');
      const perFinetune = shared ? [] : flags.data.map((s) => parseNamed(s, '--data'));
      for (const [name] of shared ? [] : finetunes) {
        if (!perFinetune.some(([n]) => n === name)) {
          throw new EmlensError(`--data names no file for finetune ${name}; add --data ${name}=FILE.`);
        }
      }
      await claimOutputFiles(flags.out, TRANSFER_FILES, { overwrite: flags.overwrite });
      const load = loadOptions(flags);
      const models: Model[] = [];
      try {
        const base = await loadModel(flags.model, load);
        models.push(base);
        const tuned: { name: string; model: Model }[] = [];
        for (const [name, adapter] of finetunes) {
          const model = await loadModel(flags.model, { ...load, adapter });
          models.push(model);
          tuned.push({ name, model });
        }
        const directions = [];
        for (const [name, file] of dirs)
          directions.push({ name, set: await loadDirectionsFor(file, base.spec) });
        const tokenizer = await loadTokenizer(flags.model);
        const read = async (file: string): Promise<TokenizedRecord[]> =>
          responsesToRecords(tokenizer, await readResponses(file), {
            span: flags.span,
            templateVars: flags.chatTemplateKwargs,
          });
        const records = shared
          ? await read(flags.data[0]!)
          : new Map(await Promise.all(perFinetune.map(async ([n, f]) => [n, await read(f)] as const)));
        const bar = createProgress('direction x finetune', directions.length * tuned.length);
        const r = await transferMatrix({
          base,
          finetunes: tuned,
          directions,
          records,
          layers: parseLayerList(flags.layers),
          seed: flags.seed,
          randomControls: flags.randomControls,
          batchSize: flags.batchSize,
          onProgress: (done) => bar.update(done),
        });
        bar.stop();
        for (const line of formatTransfer(r)) console.log(line);
        const out = await writeTransfer(r, flags.out, { overwrite: flags.overwrite });
        console.log(`\nwrote ${out.json}, ${out.csv}, ${out.svg}, ${out.png}`);
      } finally {
        for (const m of models) await m.dispose();
      }
    });
}
