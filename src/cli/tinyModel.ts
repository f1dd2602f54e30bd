import { type Command, Option } from 'commander';
import { makeTinyModel, TINY_FAMILIES, type TinyFamily } from '../model/tiny.js';
import { nonNegativeInt, positiveInt } from './args.js';

interface TinyFlags {
  readonly family: TinyFamily;
  readonly out: string;
  readonly seed: number;
  readonly layers?: number;
  readonly dModel?: number;
  readonly dtype: 'F32' | 'BF16' | 'F16';
  readonly overwrite?: boolean;
  readonly tokenizer?: string;
}

export function registerTinyModel(program: Command): void {
  program
    .command('tiny-model')
    .description('write a small deterministic random model as a real Hugging Face folder')
    .addOption(
      new Option(
        '--family <family>',
        'architecture family (gemma3: Gemma3ForConditionalGeneration layout; gemma3_text: Gemma3ForCausalLM)',
      )
        .choices([...TINY_FAMILIES])
        .default('qwen2'),
    )
    .requiredOption('--out <dir>', 'output folder')
    .option('--seed <n>', 'random seed', nonNegativeInt, 1)
    .option('--layers <n>', 'number of blocks', positiveInt)
    .option('--d-model <n>', 'hidden size', positiveInt)
    .addOption(
      new Option('--dtype <dtype>', 'stored weight dtype').choices(['F32', 'BF16', 'F16']).default('F32'),
    )
    .option(
      '--tokenizer <dir>',
      'copy this Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, chat template) and take vocab size and bos/eos/pad ids from it',
    )
    .option('--overwrite', 'replace --out if it exists and is not empty (the whole folder, atomically)')
    .action(async (flags: TinyFlags) => {
      const spec = await makeTinyModel(flags.out, {
        family: flags.family,
        seed: flags.seed,
        numLayers: flags.layers,
        dModel: flags.dModel,
        dtype: flags.dtype,
        overwrite: flags.overwrite,
        tokenizer: flags.tokenizer,
      });
      console.log(
        `wrote ${spec.architecture} (${spec.numLayers} layers, d_model ${spec.dModel}) to ${flags.out}`,
      );
    });
}
