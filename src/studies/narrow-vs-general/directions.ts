/**
 * The directions the study compares: for each finetune, the mean activation on its misaligned answers minus
 * that on its aligned answers (in-domain responses, read by the finetune itself), per layer of
 * `hook_resid_post`, through an on-disk activation store; plus the cosine of each with a planted (ground-truth)
 * direction when one is known.
 */
import { join } from 'node:path';
import { collectToStore } from '../../activations/collect.js';
import { responsesToRecords } from '../../data/record.js';
import type { ResponseRecord } from '../../data/response.js';
import { cosine, type DirectionSet } from '../../directions/direction.js';
import { directionFromStores } from '../../directions/fromStores.js';
import { EmlensError } from '../../errors.js';
import { splitByAlignment } from '../../eval/selection.js';
import { SafetensorsFile } from '../../io/safetensors.js';
import { hookName } from '../../model/hooks.js';
import type { Model } from '../../model/model.js';
import type { AnswerSpan } from '../../text/answerMask.js';
import type { TextTokenizer } from '../../text/tokenizer.js';
import type { FinetuneSpec } from './config.js';

/**
 * Misaligned and aligned answers: by the `label` column when every row has one (`misaligned`/`aligned`), else
 * by the judge's scores as the EM work splits them (see splitByAlignment).
 */
export function splitLabelled(
  records: readonly ResponseRecord[],
  seed = 0,
): { readonly misaligned: ResponseRecord[]; readonly aligned: ResponseRecord[] } {
  const labelled = records.every((r) => r.extra.label === 'misaligned' || r.extra.label === 'aligned');
  if (labelled && records.length > 0) {
    return {
      misaligned: records.filter((r) => r.extra.label === 'misaligned'),
      aligned: records.filter((r) => r.extra.label === 'aligned'),
    };
  }
  return splitByAlignment(records, { seed });
}

export interface FinetuneDirection {
  readonly finetune: FinetuneSpec;
  /** Misaligned minus aligned mean, one vector per layer. */
  readonly set: DirectionSet;
  readonly misaligned: number;
  readonly aligned: number;
}

export interface FinetuneDirectionOptions {
  /** Folder for the two activation stores (`{name}-misaligned`, `{name}-aligned`). */
  readonly storeDir: string;
  readonly layers: readonly number[];
  readonly span: AnswerSpan;
  readonly batchSize: number;
  readonly seed: number;
}

/**
 * The mean-difference direction of one finetune: its in-domain answers, split into misaligned and aligned,
 * collected at `blocks.L.hook_resid_post` for each layer L (answer-token means) by the finetune model itself.
 */
export async function finetuneDirection(
  model: Model,
  tokenizer: TextTokenizer,
  finetune: FinetuneSpec,
  responses: readonly ResponseRecord[],
  opts: FinetuneDirectionOptions,
): Promise<FinetuneDirection> {
  const { misaligned, aligned } = splitLabelled(responses, opts.seed);
  if (misaligned.length === 0 || aligned.length === 0) {
    throw new EmlensError(
      `The ${finetune.domain} responses hold ${misaligned.length} misaligned and ${aligned.length} aligned answers, so finetune '${finetune.name}' has no direction; give both kinds (a label column, or aligned/coherent scores).`,
    );
  }
  const hooks = opts.layers.map((l) => hookName(l, 'resid_post'));
  const stores: string[] = [];
  for (const [label, rows] of [
    ['misaligned', misaligned],
    ['aligned', aligned],
  ] as const) {
    const store = join(opts.storeDir, `${finetune.name}-${label}`);
    await collectToStore(model, responsesToRecords(tokenizer, rows, opts.span, label), store, {
      hooks,
      batchSize: opts.batchSize,
      adapter: finetune.adapter,
    });
    stores.push(store);
  }
  const set = await directionFromStores(stores[0]!, stores[1]!); // one store per label, misaligned then aligned
  return { finetune, set, misaligned: misaligned.length, aligned: aligned.length };
}

/**
 * Cosine per layer of each direction with the planted direction of the same name in a planted.safetensors (as
 * makeOrganisms writes it); directions without a planted counterpart are left out.
 */
export async function plantedCosines(
  file: string,
  directions: ReadonlyMap<string, DirectionSet>,
): Promise<Map<string, number[]>> {
  const f = await SafetensorsFile.open(file);
  try {
    const out = new Map<string, number[]>();
    for (const [name, set] of directions) {
      if (!f.tensors.has(name)) continue;
      const planted = await f.readFloat32(name);
      out.set(
        name,
        [...set.vectors.values()].map((v) => cosine(v, planted)),
      );
    }
    return out;
  } finally {
    await f.close();
  }
}
