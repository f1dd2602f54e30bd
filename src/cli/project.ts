import { extname } from 'node:path';
import { type Command, Option } from 'commander';
import { responsesToRecords } from '../data/record.js';
import { readResponses } from '../data/response.js';
import { loadDirections } from '../directions/direction.js';
import {
  projectionSpec,
  projectRecords,
  type RecordProjection,
  rankByProjection,
} from '../directions/projection.js';
import { EmlensError } from '../errors.js';
import { checkDirectionsFit, parseLayerList, selectLayers } from '../interventions/compose.js';
import { writeAtomic } from '../io/files.js';
import { claimOutputFile } from '../io/outputs.js';
import { readConfig } from '../model/config.js';
import { loadModel } from '../model/model.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { positiveInt } from './args.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
} from './common.js';
import { createProgress } from './progress.js';

interface ProjectFlags extends ModelFlags, ChatTemplateFlags {
  readonly direction: string;
  readonly data: string;
  readonly out: string;
  readonly layers?: string;
  readonly rank?: string;
  readonly span: 'after-user' | 'content';
  readonly batchSize: number;
  readonly overwrite?: boolean;
}

/** `emlens project`: every record's projection on a direction per layer (answer mean, prompt mean, tokens). */
export function registerProject(program: Command): void {
  addChatTemplateOptions(
    addModelOptions(
      program
        .command('project')
        .description(
          "project every record's answer and prompt residuals (blocks.L.hook_resid_post) on a direction, per layer and per token: screen a finetuning set, or monitor answers",
        ),
    ),
  )
    .requiredOption('--direction <file>', 'direction file (.safetensors, as emlens direction writes)')
    .requiredOption('--data <file>', 'records (.csv or .jsonl with question and answer columns)')
    .requiredOption(
      '--out <file>',
      '.csv: one row per record and layer (means); .jsonl: one line per record with per-token values and token texts',
    )
    .option(
      '--layers <list>',
      'layers to project at, e.g. 1,2 or all (default: every layer the direction holds)',
    )
    .option('--rank <layer>', 'sort the output by the answer mean at this layer, largest first (a screen)')
    .addOption(
      new Option('--span <span>', 'answer tokens: after the user turn, or the content only')
        .choices(['after-user', 'content'])
        .default('after-user'),
    )
    .option('--batch-size <n>', 'records per forward pass', positiveInt, 8)
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: ProjectFlags) => {
      const ext = extname(flags.out).toLowerCase();
      if (ext !== '.csv' && ext !== '.jsonl') {
        throw new EmlensError(`--out ${flags.out} must end in .csv or .jsonl; pick one of those formats.`);
      }
      await claimOutputFile(flags.out, { overwrite: flags.overwrite, createParent: true });
      const shape = await readConfig(flags.model);
      const set = await loadDirections(flags.direction);
      checkDirectionsFit(set, shape, `Direction file ${flags.direction}`);
      const layers =
        flags.layers === undefined
          ? [...set.vectors.keys()]
          : selectLayers(parseLayerList(flags.layers), shape.numLayers);
      const spec = projectionSpec(set, layers, `Direction file ${flags.direction}`);
      let rankLayer: number | undefined;
      if (flags.rank !== undefined) {
        rankLayer = Number(flags.rank);
        if (!/^\d+$/.test(flags.rank) || !layers.includes(rankLayer)) {
          throw new EmlensError(
            `--rank ${flags.rank} is not one of the projected layers (${layers.join(', ')}); pass one of them.`,
          );
        }
      }
      const responses = await readResponses(flags.data);
      const tokenizer = await loadTokenizer(flags.model);
      const records = responsesToRecords(tokenizer, responses, {
        span: flags.span,
        templateVars: flags.chatTemplateKwargs,
      }).map((r, i) => ({ ...r, meta: { ...responses[i]!.extra, ...r.meta } }));
      const model = await loadModel(flags.model, loadOptions(flags));
      let rows: RecordProjection[];
      try {
        const progress = createProgress('project', records.length);
        rows = await projectRecords(model, records, spec, {
          batchSize: flags.batchSize,
          onProgress: (done) => progress.update(done),
        });
        progress.stop();
      } finally {
        await model.dispose();
      }
      const order = rankLayer === undefined ? rows.map((_, i) => i) : rankByProjection(rows, rankLayer);
      const text =
        ext === '.csv'
          ? projectionCsv(order.map((i) => rows[i]!))
          : order
              .map((i) => {
                const r = rows[i]!;
                return JSON.stringify({
                  id: r.id,
                  ...r.meta,
                  tokens: r.ids.map((t) => tokenizer.decode([t])),
                  answer_mask: [...r.mask],
                  layers: r.layers.map((l) => ({
                    layer: l.layer,
                    answer_mean: finite(l.answerMean),
                    prompt_mean: finite(l.promptMean),
                    tokens: [...l.tokens],
                  })),
                });
              })
              .join('\n') + '\n';
      await writeAtomic(flags.out, text);
      console.log(
        `wrote ${flags.out}: ${rows.length} records x ${layers.length} layers (${layers.join(', ')})${rankLayer === undefined ? '' : `, ranked by the answer mean at layer ${rankLayer}`}`,
      );
    });
}

function finite(x: number): number | null {
  return Number.isFinite(x) ? x : null;
}

/** One row per record and layer: id, the record's metadata columns, layer, answer and prompt means. */
export function projectionCsv(rows: readonly RecordProjection[]): string {
  const metaKeys = [...new Set(rows.flatMap((r) => Object.keys(r.meta)))];
  const head = ['id', ...metaKeys, 'layer', 'answer_mean', 'prompt_mean', 'n_answer', 'n_prompt'];
  const lines = [head.map(csvCell).join(',')];
  for (const r of rows) {
    const nAnswer = r.mask.reduce((a, m) => a + m, 0);
    for (const l of r.layers) {
      lines.push(
        [
          r.id,
          ...metaKeys.map((k) => r.meta[k]),
          l.layer,
          finite(l.answerMean),
          finite(l.promptMean),
          nAnswer,
          r.mask.length - nAnswer,
        ]
          .map(csvCell)
          .join(','),
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

function csvCell(v: unknown): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
