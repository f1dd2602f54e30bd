import cliProgress from 'cli-progress';
import { type Command, Option } from 'commander';
import { EmlensError } from '../errors.js';
import { type Generation, generate, type InterventionPositions, TextStreamer } from '../generate/generate.js';
import { readConfig } from '../model/config.js';
import { loadModel } from '../model/model.js';
import { type ChatMessage, encodeChat } from '../text/chat.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { finiteNumber, nonNegativeInt, nonNegativeNumber, positiveInt, unitInterval } from './args.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
} from './common.js';
import { checkDirectionFileFlags, directionFileInterventions } from './interventionCommon.js';

interface GenerateFlags extends ModelFlags, ChatTemplateFlags {
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
  readonly stats?: boolean;
}

export function registerGenerate(program: Command): void {
  addChatTemplateOptions(
    addModelOptions(
      program
        .command('generate')
        .description('generate a reply to a prompt (chat template applied), optionally steered or ablated'),
    ),
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
    .option('--stats', 'print the bytes each decode step copied to host memory (stderr)')
    .action(async (flags: GenerateFlags) => {
      checkDirectionFileFlags(flags);
      if (flags.raw && (flags.system ?? flags.chatTemplateKwargs) !== undefined) {
        throw new EmlensError(
          `${flags.system !== undefined ? '--system' : '--chat-template-kwargs'} needs the chat template; drop --raw or drop ${flags.system !== undefined ? '--system' : '--chat-template-kwargs'}.`,
        );
      }
      // the direction files are checked against config.json first, so a bad file is refused before a model is built
      const interventions =
        flags.layers !== undefined
          ? await directionFileInterventions(flags, await readConfig(flags.model))
          : [];
      const tokenizer = await loadTokenizer(flags.model);
      const messages: ChatMessage[] = [
        ...(flags.system !== undefined ? [{ role: 'system' as const, content: flags.system }] : []),
        { role: 'user', content: flags.prompt },
      ];
      const ids = flags.raw
        ? tokenizer.encode(flags.prompt)
        : encodeChat(tokenizer, messages, {
            addGenerationPrompt: true,
            templateVars: flags.chatTemplateKwargs,
          });
      const model = await loadModel(flags.model, loadOptions(flags));
      try {
        const { spec } = model;
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
            onStats: flags.stats
              ? (s) =>
                  process.stderr.write(
                    `emlens: ${model.device} host copies: prefill ${s.prefillHostBytes} B, ${s.steps} decode steps, ${s.steps > 0 ? Math.round(s.stepHostBytes / s.steps) : 0} B/step (max ${s.maxStepHostBytes} B)${model.deviceCache ? '; the KV cache stays on the device' : ', the KV cache included'}\n`,
                  )
              : undefined,
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
