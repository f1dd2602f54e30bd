import cliProgress from 'cli-progress';
import { type Command, Option } from 'commander';
import { EmlensError } from '../errors.js';
import { type Generation, generate, type InterventionPositions, TextStreamer } from '../generate/generate.js';
import { parseLayerList, selectLayers } from '../interventions/compose.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { Intervention } from '../model/interventions.js';
import { loadModel } from '../model/model.js';
import { type ChatMessage, encodeChat } from '../text/chat.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { finiteNumber, nonNegativeInt, nonNegativeNumber, positiveInt, unitInterval } from './args.js';
import { addModelOptions, loadOptions, type ModelFlags } from './common.js';

interface GenerateFlags extends ModelFlags {
  readonly prompt: string;
  readonly system?: string;
  readonly n: number;
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
  readonly seed: number;
  readonly maxNewTokens: number;
  readonly steer?: string;
  readonly ablate?: string;
  readonly layers?: string;
  readonly scale: number;
  readonly positions: InterventionPositions;
  readonly raw?: boolean;
}

/** `3,5`, `1-3` or `all`, checked against the model's layers. */
export function parseLayers(value: string, numLayers: number): number[] {
  return selectLayers(parseLayerList(value), numLayers);
}

/**
 * Per-layer directions from a safetensors file: `direction.{i}`, F32 `[d_model]` (the format the directions
 * command writes). Returns the requested layers' vectors.
 */
export async function readLayerDirections(
  file: string,
  layers: readonly number[],
  dModel: number,
): Promise<Map<number, Float32Array>> {
  const f = await SafetensorsFile.open(file);
  try {
    const out = new Map<number, Float32Array>();
    for (const l of layers) {
      const name = `direction.${l}`;
      if (!f.has(name)) {
        const held = [...f.tensors.keys()].filter((k) => k.startsWith('direction.'));
        throw new EmlensError(
          `${file} has no '${name}' (it holds ${held.length > 0 ? held.join(', ') : 'no direction.{i} tensors'}); pick --layers it covers or recompute the directions.`,
        );
      }
      const info = f.info(name);
      const n = info.shape.reduce((a, b) => a * b, 1);
      if (info.shape.length !== 1 || n !== dModel) {
        throw new EmlensError(
          `'${name}' in ${file} has shape [${info.shape.join(', ')}] but the model's d_model is ${dModel}; use directions computed on this model.`,
        );
      }
      out.set(l, await f.readFloat32(name));
    }
    return out;
  } finally {
    await f.close();
  }
}

export function registerGenerate(program: Command): void {
  addModelOptions(
    program
      .command('generate')
      .description('generate a reply to a prompt (chat template applied), optionally steered or ablated'),
  )
    .requiredOption('--prompt <text>', 'the user message (or the raw text with --raw)')
    .option('--system <text>', 'system message')
    .option('--raw', 'encode --prompt as plain text, without the chat template')
    .option('--n <n>', 'samples per prompt', positiveInt, 1)
    .option('--temperature <t>', 'sampling temperature (0: greedy)', nonNegativeNumber, 1)
    .option('--top-p <p>', 'nucleus sampling mass (1: off)', unitInterval, 1)
    .option('--top-k <k>', 'keep the k most likely tokens (0: off)', nonNegativeInt, 0)
    .option('--seed <s>', 'random seed', finiteNumber, 0)
    .option('--max-new-tokens <m>', 'new tokens at most', positiveInt, 128)
    .option(
      '--steer <file>',
      'safetensors of per-layer directions (direction.{i}) to add at blocks.{L}.hook_resid_post',
    )
    .option(
      '--ablate <file>',
      'safetensors of per-layer directions (direction.{i}) to project out of the residual stream',
    )
    .option('--layers <list>', 'layers for --steer/--ablate: e.g. 3,5 or all')
    .option('--scale <a>', 'steering strength (multiplies the direction)', finiteNumber, 1)
    .addOption(
      new Option('--positions <which>', 'tokens the interventions act on')
        .choices(['all', 'prompt', 'generated'])
        .default('all'),
    )
    .action(async (flags: GenerateFlags) => {
      if ((flags.steer !== undefined || flags.ablate !== undefined) !== (flags.layers !== undefined)) {
        throw new EmlensError(
          flags.layers === undefined
            ? '--steer and --ablate need --layers; add e.g. --layers 3,5 or --layers all.'
            : '--layers only applies with --steer or --ablate; add one of them or drop --layers.',
        );
      }
      if (flags.raw && flags.system !== undefined) {
        throw new EmlensError('--system needs the chat template; drop --raw or drop --system.');
      }
      const tokenizer = await loadTokenizer(flags.model);
      const messages: ChatMessage[] = [
        ...(flags.system !== undefined ? [{ role: 'system' as const, content: flags.system }] : []),
        { role: 'user', content: flags.prompt },
      ];
      const ids = flags.raw
        ? tokenizer.encode(flags.prompt)
        : encodeChat(tokenizer, messages, { addGenerationPrompt: true });
      const model = await loadModel(flags.model, loadOptions(flags));
      try {
        const { spec } = model;
        const interventions: Intervention[] = [];
        const layers = flags.layers !== undefined ? parseLayers(flags.layers, spec.numLayers) : [];
        if (flags.ablate !== undefined) {
          // Each layer's direction leaves that layer's residual hooks; sites shared by two listed layers
          // (resid_post of L-1 = resid_pre of L) lose the span of both directions.
          const dirs = await readLayerDirections(flags.ablate, layers, spec.dModel);
          for (const [l, d] of dirs) {
            interventions.push({
              kind: 'ablate',
              hooks: [
                `blocks.${l}.hook_resid_pre`,
                `blocks.${l}.hook_resid_mid`,
                `blocks.${l}.hook_resid_post`,
              ],
              directions: [d],
            });
          }
        }
        if (flags.steer !== undefined) {
          const dirs = await readLayerDirections(flags.steer, layers, spec.dModel);
          for (const [l, d] of dirs) {
            interventions.push({
              kind: 'steer',
              hooks: [`blocks.${l}.hook_resid_post`],
              vector: d,
              scale: flags.scale,
            });
          }
        }

        // Decode without tokenization-space clean-up so the streamed text only ever grows.
        const decoder = {
          decode: (t: readonly number[]) => tokenizer.decode(t, { cleanUpTokenizationSpaces: false }),
        };
        const eos = new Set(spec.eosTokenIds);
        const streamer = new TextStreamer(decoder);
        const { n, maxNewTokens } = flags;
        const out = process.stdout;
        const bar =
          n > 1 && process.stderr.isTTY
            ? new cliProgress.SingleBar(
                {
                  stream: process.stderr,
                  format: 'generating [{bar}] {value}/{total} tokens',
                  clearOnComplete: true,
                },
                cliProgress.Presets.shades_classic,
              )
            : null;
        bar?.start(n * maxNewTokens, 0);
        if (n > 1) out.write(`[sample 1/${n}]\n`);
        let results: Generation[];
        try {
          results = await generate(model, [ids], {
            maxNewTokens,
            temperature: flags.temperature,
            topP: flags.topP,
            topK: flags.topK,
            seed: flags.seed,
            n,
            tokenizer: decoder,
            interventions,
            interventionPositions: flags.positions,
            onToken: (row, token) => {
              bar?.increment();
              if (row === 0 && !eos.has(token)) out.write(streamer.push(token));
            },
            onFinish: (row, g) => {
              bar?.increment(maxNewTokens - g.tokens.length);
              if (row === 0) out.write(`${streamer.flush()}\n`);
              if (n > 1 && !bar) {
                process.stderr.write(
                  `emlens: sample ${row + 1}/${n} done (${g.finishReason}, ${g.tokens.length} tokens)\n`,
                );
              }
            },
          });
        } finally {
          bar?.stop();
        }
        for (const g of results.slice(1)) out.write(`\n[sample ${g.sample + 1}/${n}]\n${g.text ?? ''}\n`);
      } finally {
        await model.dispose();
      }
    });
}
