import { basename, extname, join } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { type CollectOptions, collectToStore, planCollect } from '../activations/collect.js';
import { REDUCTIONS, type Reduction } from '../activations/reduce.js';
import { checkStoreOut, preflightStore } from '../activations/store.js';
import { responsesToRecords, type TokenizedRecord } from '../data/record.js';
import { type ResponseRecord, readResponses } from '../data/response.js';
import { EmlensError } from '../errors.js';
import { readConfig } from '../model/config.js';
import { sha256File, tokenizerFingerprint } from '../model/fingerprint.js';
import { parseHookPatterns } from '../model/hooks.js';
import { defaultMaxPositions, loadModel } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
  positiveInt,
} from './common.js';
import { createProgress } from './progress.js';

interface CollectFlags extends ModelFlags, ChatTemplateFlags {
  readonly data: string;
  readonly out?: string;
  readonly hooks: string;
  readonly reduce: Reduction;
  readonly span: 'after-user' | 'content';
  readonly batchSize: number;
  readonly shardSize: number;
  readonly resume?: boolean;
  readonly overwrite?: boolean;
  readonly shard?: { index: number; count: number };
  readonly adapter?: string;
}

/**
 * Where `emlens collect` writes without `--out`: `activations/<data file name without extension>`, relative to
 * the working directory (the repository's activations/ folder, ignored by git but for its README).
 */
export function defaultStoreDir(data: string): string {
  return join('activations', basename(data, extname(data)));
}

/** `2/8` -> { index: 2, count: 8 }. */
export function parseSlice(value: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(value);
  if (!m || Number(m[1]) >= Number(m[2]))
    throw new InvalidArgumentError('expected i/N with 0 <= i < N, e.g. 0/4.');
  return { index: Number(m[1]), count: Number(m[2]) };
}

/**
 * Refuses the first response whose chat-rendered tokens exceed what the model is loaded for. The CLI has no flag
 * to raise the limit (beyond max_position_embeddings the model has never seen positions anyway), so the message
 * says what a CLI user can change: the data.
 */
function checkLengths(
  file: string,
  responses: readonly ResponseRecord[],
  records: readonly TokenizedRecord[],
  limit: number,
): void {
  const i = records.findIndex((r) => r.ids.length > limit);
  const record = records[i];
  if (record === undefined) return;
  // records were made from responses, one each, in order.
  const where = /\.csv$/i.test(file) ? `row ${i + 1}` : `record ${i + 1}`;
  throw new EmlensError(
    `${file} ${where} (question_id '${responses[i]!.questionId}') is ${record.ids.length} tokens long with its chat template, but the model takes at most ${limit} positions; shorten or drop that answer.`,
  );
}

export function registerCollect(program: Command): void {
  addChatTemplateOptions(
    addModelOptions(
      program.command('collect').description('collect residual activations of responses into a store'),
    ),
  )
    .requiredOption('--data <file>', 'responses (.csv or .jsonl with question and answer columns)')
    .option(
      '--out <dir>',
      'activation store folder (default: activations/<data file name without extension>, e.g. activations/misaligned for misaligned.csv)',
    )
    .option('--hooks <patterns>', 'hooks to keep, comma-separated', 'blocks.*.hook_resid_post')
    .addOption(
      new Option('--reduce <how>', 'per-record reduction').choices([...REDUCTIONS]).default('answer_mean'),
    )
    .addOption(
      new Option('--span <span>', 'answer tokens: after the user turn, or the content only')
        .choices(['after-user', 'content'])
        .default('after-user'),
    )
    .option('--batch-size <n>', 'records per forward pass', positiveInt, 8)
    .option('--shard-size <n>', 'records per shard file', positiveInt, 256)
    .option('--resume', 'continue an interrupted run in --out (same model, data and options)')
    .option('--overwrite', 'replace what is in --out (the old folder stays until the new store is complete)')
    .option(
      '--shard <i/N>',
      'process only slice i of N (merge the slices with `emlens store merge`)',
      parseSlice,
    )
    .action(async (flags: CollectFlags) => {
      const out = flags.out ?? defaultStoreDir(flags.data);
      // Refused before the model loads: a wrong --out (given or default) should not cost a graph build.
      await checkStoreOut(out, { resume: flags.resume, overwrite: flags.overwrite });
      const hooks = parseHookPatterns(flags.hooks);
      const responses = await readResponses(flags.data);
      const tokenizer = await loadTokenizer(flags.model);
      const records = responsesToRecords(tokenizer, responses, {
        span: flags.span,
        templateVars: flags.chatTemplateKwargs,
      });
      const write = { resume: flags.resume, overwrite: flags.overwrite };
      const opts: CollectOptions = {
        hooks,
        reduce: flags.reduce,
        batchSize: flags.batchSize,
        shardSize: flags.shardSize,
        ...write,
        slice: flags.shard,
        adapter: flags.adapter ?? null,
        cacheDir: flags.cacheDir,
        provenance: {
          data: await sha256File(flags.data),
          tokenizer: await tokenizerFingerprint(flags.model),
          span: flags.span,
        },
      };
      // A resume of another job, or of a damaged or locked store, is refused before the model loads. Precision
      // and sequence limit are known only once it has; they are checked then.
      const spec = await readConfig(flags.model);
      // Before the graph is built (minutes for a real model): a record too long for it fails the run anyway.
      const maxPositions = defaultMaxPositions(spec);
      checkLengths(flags.data, responses, records, maxPositions);
      const planned = await planCollect(
        { dir: flags.model, spec, device: flags.device, profile: flags.profile ?? 'fp32', maxPositions },
        records,
        opts,
      );
      await preflightStore(out, planned, {
        ...write,
        ignore: flags.profile ? ['maxPositions'] : ['profile', 'maxPositions'],
      });
      const model = await loadModel(flags.model, loadOptions(flags));
      const progress = createProgress('collect', records.length);
      try {
        const m = await collectToStore(model, records, out, {
          ...opts,
          onProgress: (done) => progress.update(done),
        });
        progress.stop();
        console.log(
          `${out}: ${m.records} records x ${m.hooks.length} hooks (${m.reduce}) in ${m.shards.length} shards${m.slice ? `, slice ${m.slice.index}/${m.slice.count}` : ''}`,
        );
      } finally {
        progress.stop();
        await model.dispose();
      }
    });
}
