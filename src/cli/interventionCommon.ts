/** Helpers shared by the intervention commands (steer, ablate, mediate, sweep) and generate's and eval's flags. */
import type { Command } from 'commander';
import { EmlensError } from '../errors.js';
import { generate } from '../generate/generate.js';
import {
  composeInterventions,
  type InterventionRequest,
  loadDirectionsFor,
  type ModelShape,
  parseLayerList,
  selectLayers,
} from '../interventions/compose.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { encodeChat } from '../text/chat.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import { chatTemplateKwargs, finiteNumber, nonNegativeInt, nonNegativeNumber, positiveInt } from './args.js';

/** The prompt and decoding flags steer and ablate share (both answers use the same seed). */
export interface AnswerFlags {
  readonly prompt: string;
  readonly system?: string;
  readonly maxNewTokens: number;
  readonly seed: number;
  readonly temperature: number;
  readonly chatTemplateKwargs?: Record<string, unknown>;
}

/** `--random-controls K` and `--seed S`: the norm-matched random controls of mediate and sweep. */
export function addRandomControlOptions(cmd: Command): Command {
  return cmd
    .option(
      '--random-controls <k>',
      'how many norm-matched random controls; tables give their mean ± sd (min..max, n)',
      positiveInt,
      1,
    )
    .option(
      '--seed <n>',
      "user seed of the random controls (control k's seed derives from the direction, this seed and k)",
      nonNegativeInt,
      0,
    );
}

export function addAnswerOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--prompt <text>', 'the user message (the chat template is applied)')
    .option('--system <text>', 'system message')
    .option('--max-new-tokens <n>', 'new tokens at most', positiveInt, 40)
    .option('--temperature <t>', 'sampling temperature (0: greedy)', nonNegativeNumber, 0)
    .option('--seed <s>', 'sampling seed (both answers use it)', finiteNumber, 0)
    .option(
      '--chat-template-kwargs <json>',
      'extra chat template variables as a JSON object, e.g. \'{"enable_thinking": false}\'',
      chatTemplateKwargs,
    );
}

// The parsers live in args.ts; this re-export keeps older imports working.
export { finiteNumber } from './args.js';

/** `0,2,4,8` -> [0, 2, 4, 8]. */
export function parseScales(value: string): number[] {
  const parts = value.split(',').map((s) => s.trim());
  const xs = parts.map(Number);
  if (parts.length === 0 || parts.some((p) => p === '') || xs.some((x) => !Number.isFinite(x))) {
    throw new EmlensError(`--scales '${value}' is not a list of numbers; write it like --scales 0,2,4,8.`);
  }
  return xs;
}

/** `own` or a layer number (the `--from` option of ablation commands). */
export function parseFrom(value: string | undefined): 'own' | number {
  if (value === undefined || value === 'own') return 'own';
  if (!/^\d+$/.test(value.trim())) {
    throw new EmlensError(
      `--from '${value}' is neither 'own' nor a layer number; write --from own or --from 2.`,
    );
  }
  return Number(value);
}

/** The direction-file flags of `generate` and `eval`: a file to steer with, one to ablate, and where. */
export interface DirectionFileFlags {
  /** Direction file whose vectors are added at `blocks.L.hook_resid_post`. */
  readonly steer?: string;
  /** Direction file whose vectors are projected out of the chosen blocks' residual sites. */
  readonly ablate?: string;
  /** `--layers`: e.g. `3,5`, `1-3` or `all`. */
  readonly layers?: string;
  /** Steering strength (default 1). */
  readonly scale?: number;
  /** Use this layer's vector at every chosen layer (default: each layer its own). */
  readonly from?: number;
}

/** `--steer`/`--ablate` need `--layers` and `--layers` needs one of them (checked before loading a model). */
export function checkDirectionFileFlags(flags: DirectionFileFlags): void {
  if ((flags.steer !== undefined || flags.ablate !== undefined) !== (flags.layers !== undefined)) {
    throw new EmlensError(
      flags.layers === undefined
        ? '--steer and --ablate need --layers; add e.g. --layers 3,5 or --layers all.'
        : '--layers only applies with --steer or --ablate; add one of them or drop --layers.',
    );
  }
}

/**
 * The request of `--steer`/`--ablate` flags, or `null` when neither is given. The layers are checked against
 * the model before any file is read (a typo in --layers is reported as such), and each file goes through the
 * one direction loader ({@link loadDirectionsFor}: F32, finite, the model's width and layers).
 */
export async function directionFileRequest(
  flags: DirectionFileFlags,
  shape: ModelShape,
): Promise<InterventionRequest | null> {
  checkDirectionFileFlags(flags);
  if (flags.layers === undefined) return null;
  const layers = parseLayerList(flags.layers);
  selectLayers(layers, shape.numLayers);
  const from = flags.from ?? 'own';
  return {
    ablate:
      flags.ablate !== undefined
        ? [{ direction: await loadDirectionsFor(flags.ablate, shape), layers, from }]
        : [],
    steer:
      flags.steer !== undefined
        ? [{ direction: await loadDirectionsFor(flags.steer, shape), layers, from, scale: flags.scale ?? 1 }]
        : [],
  };
}

/** The interventions of `--steer`/`--ablate` flags (none without them), built by {@link composeInterventions}. */
export async function directionFileInterventions(
  flags: DirectionFileFlags,
  shape: ModelShape,
): Promise<Intervention[]> {
  const request = await directionFileRequest(flags, shape);
  return request === null ? [] : composeInterventions(request, shape);
}

export interface AnswerPair {
  readonly baseline: string;
  readonly changed: string;
}

/**
 * Greedy (temperature 0, default) or sampled answers to one chat prompt, without and with the interventions,
 * from the same seed.
 */
export async function answerPair(
  model: Model,
  tokenizer: TextTokenizer,
  prompt: string,
  interventions: readonly Intervention[],
  opts: {
    maxNewTokens: number;
    temperature: number;
    seed: number;
    system?: string;
    /** Extra chat-template variables (e.g. `{ enable_thinking: false }`). */
    chatTemplateKwargs?: Readonly<Record<string, unknown>>;
  },
): Promise<AnswerPair> {
  const ids = encodeChat(
    tokenizer,
    [
      ...(opts.system !== undefined ? [{ role: 'system' as const, content: opts.system }] : []),
      { role: 'user' as const, content: prompt },
    ],
    { addGenerationPrompt: true, templateVars: opts.chatTemplateKwargs },
  );
  const run = async (ivs: readonly Intervention[]) => {
    const [g] = await generate(model, [ids], {
      maxNewTokens: opts.maxNewTokens,
      temperature: opts.temperature,
      seed: opts.seed,
      tokenizer,
      interventions: ivs,
    });
    return g!.text ?? ''; // one generation per prompt, and there is one prompt
  };
  return { baseline: await run([]), changed: await run(interventions) };
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  for (const para of text.split('\n')) {
    let line = '';
    for (const word of para.split(/(\s+)/)) {
      if (word === '') continue;
      if ((line + word).length > width && line.trim() !== '') {
        lines.push(line.trimEnd());
        line = word.trimStart();
      } else {
        line += word;
      }
      while (line.length > width) {
        lines.push(line.slice(0, width));
        line = line.slice(width);
      }
    }
    lines.push(line.trimEnd());
  }
  return lines;
}

/** Two texts in two columns, each wrapped to `width` characters, under their titles. */
export function sideBySide(
  leftTitle: string,
  left: string,
  rightTitle: string,
  right: string,
  width = 48,
): string {
  const a = [leftTitle, '-'.repeat(Math.min(width, Math.max(leftTitle.length, 8))), ...wrap(left, width)];
  const b = [rightTitle, '-'.repeat(Math.min(width, Math.max(rightTitle.length, 8))), ...wrap(right, width)];
  const rows: string[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    rows.push(`${(a[i] ?? '').padEnd(width)} | ${b[i] ?? ''}`.trimEnd());
  }
  return rows.join('\n');
}
