/** Helpers shared by the steer, ablate, mediate and sweep commands. */
import type { Command } from 'commander';
import { EmlensError } from '../errors.js';
import { generate } from '../generate/generate.js';
import type { Intervention } from '../model/interventions.js';
import type { Model } from '../model/model.js';
import { encodeChat } from '../text/chat.js';
import type { TextTokenizer } from '../text/tokenizer.js';
import { finiteNumber, nonNegativeNumber, positiveInt } from './args.js';

/** The prompt and decoding flags steer and ablate share (both answers use the same seed). */
export interface AnswerFlags {
  readonly prompt: string;
  readonly system?: string;
  readonly maxNewTokens: number;
  readonly seed: number;
  readonly temperature: number;
}

export function addAnswerOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--prompt <text>', 'the user message (the chat template is applied)')
    .option('--system <text>', 'system message')
    .option('--max-new-tokens <n>', 'new tokens at most', positiveInt, 40)
    .option('--temperature <t>', 'sampling temperature (0: greedy)', nonNegativeNumber, 0)
    .option('--seed <s>', 'sampling seed (both answers use it)', finiteNumber, 0);
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
  opts: { maxNewTokens: number; temperature: number; seed: number; system?: string },
): Promise<AnswerPair> {
  const ids = encodeChat(
    tokenizer,
    [
      ...(opts.system !== undefined ? [{ role: 'system' as const, content: opts.system }] : []),
      { role: 'user' as const, content: prompt },
    ],
    { addGenerationPrompt: true },
  );
  const run = async (ivs: readonly Intervention[]) => {
    const [g] = await generate(model, [ids], {
      maxNewTokens: opts.maxNewTokens,
      temperature: opts.temperature,
      seed: opts.seed,
      tokenizer,
      interventions: ivs,
    });
    return g.text ?? '';
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
