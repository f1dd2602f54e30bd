import type { Command } from 'commander';
import { EmlensError } from '../errors.js';
import { claimOutputFile } from '../io/outputs.js';
import { parseHookPatterns } from '../model/hooks.js';
import { loadModel } from '../model/model.js';
import { type Trace, traceTokens, writeTrace } from '../model/trace.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { addModelOptions, loadOptions, type ModelFlags, parseIdList } from './common.js';

interface TraceFlags extends ModelFlags {
  readonly text?: string;
  readonly ids?: string;
  readonly hooks: string;
  readonly out: string;
  readonly overwrite?: boolean;
}

export function registerTrace(program: Command): void {
  addModelOptions(
    program
      .command('trace')
      .description('run one sequence and write per-token hook values, ids and last logits to safetensors'),
  )
    .option('--text <text>', 'text to tokenize (special tokens added as the tokenizer does)')
    .option('--ids <ids>', 'comma-separated token ids, instead of --text')
    .option('--hooks <patterns>', 'hook names or patterns, comma-separated', 'blocks.*.hook_resid_post')
    .requiredOption('--out <file>', 'output .safetensors file')
    .option('--overwrite', 'replace --out if it exists (atomically)')
    .action(async (flags: TraceFlags) => {
      if ((flags.text === undefined) === (flags.ids === undefined)) {
        throw new EmlensError('Give exactly one of --text or --ids.');
      }
      const hooks = parseHookPatterns(flags.hooks);
      // Before the model loads, so a refused --out costs nothing; writeTrace checks again when it writes.
      await claimOutputFile(flags.out, { overwrite: flags.overwrite });
      const ids =
        flags.ids !== undefined
          ? parseIdList(flags.ids)
          : (await loadTokenizer(flags.model)).encode(flags.text ?? '');
      const model = await loadModel(flags.model, loadOptions(flags));
      let trace: Trace;
      try {
        trace = await traceTokens(model, ids, hooks);
        await writeTrace(
          flags.out,
          trace,
          {
            model: flags.model,
            ...(flags.text !== undefined ? { text: flags.text } : {}),
            hooks: [...trace.hooks.keys()].join(','),
          },
          { overwrite: flags.overwrite },
        );
      } finally {
        await model.dispose();
      }
      console.log(`wrote ${trace.hooks.size} hooks x ${ids.length} tokens to ${flags.out}`);
    });
}
