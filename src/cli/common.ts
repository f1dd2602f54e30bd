import { type Command, Option } from 'commander';
import { EmlensError } from '../errors.js';
import type { Profile } from '../model/graph/transformer.js';
import type { LoadModelOptions } from '../model/model.js';
import { DEVICES, type Device } from '../model/session.js';
import { chatTemplateKwargs, positiveInt } from './args.js';

/**
 * `--device`: cpu, cuda (needs the CUDA provider installed) or webgpu (onnxruntime-node's bundled WebGPU
 * provider: the KV cache stays on the device).
 */
export function deviceOption(description = 'execution provider'): Option {
  return new Option('--device <device>', description).choices([...DEVICES]).default('cpu');
}

/** Options every model-loading command shares. */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--model <dir>', 'Hugging Face model folder (config.json, *.safetensors, tokenizer.json)')
    .addOption(deviceOption())
    .addOption(
      new Option(
        '--profile <profile>',
        'graph precision: fp32, fp16, or int8/int4 quantised GEMMs (default: fp32 on cpu and webgpu, fp16 on cuda)',
      ).choices(['fp32', 'fp16', 'int8', 'int4']),
    )
    .option('--threads <n>', 'intra-op threads (default: one per core)', positiveInt)
    .option('--cache-dir <dir>', 'where built graphs are kept (default $EMLENS_CACHE_DIR or ~/.cache/emlens)')
    .option(
      '--adapter <dir>',
      'PEFT LoRA adapter folder merged into the weights (adapter_config.json, adapter_model.safetensors)',
    );
}

/** `--chat-template-kwargs`, for every command that renders chats with the model's template. */
export function addChatTemplateOptions(cmd: Command): Command {
  return cmd.option(
    '--chat-template-kwargs <json>',
    "extra chat template variables as a JSON object, as transformers' apply_chat_template kwargs, e.g. '{\"enable_thinking\": false}'",
    chatTemplateKwargs,
  );
}

/** The flag {@link addChatTemplateOptions} adds. */
export interface ChatTemplateFlags {
  readonly chatTemplateKwargs?: Record<string, unknown>;
}

export interface ModelFlags {
  readonly model: string;
  readonly device: Device;
  readonly profile?: Profile;
  readonly threads?: number;
  readonly cacheDir?: string;
  readonly adapter?: string;
}

export function loadOptions(flags: ModelFlags): LoadModelOptions {
  return {
    device: flags.device,
    profile: flags.profile,
    threads: flags.threads,
    cacheDir: flags.cacheDir,
    adapter: flags.adapter,
    onProgress: (m) => process.stderr.write(`emlens: ${m}\n`),
  };
}

// The parsers live in args.ts; these re-exports keep older imports working.
export { nonNegativeInt, positiveInt } from './args.js';

/** `1,2,3` -> [1, 2, 3], with a clear error for anything else. */
export function parseIdList(value: string): number[] {
  const ids = value.split(',').map((s) => s.trim());
  if (ids.some((s) => !/^\d+$/.test(s))) {
    throw new EmlensError(
      `--ids '${value}' is not a comma-separated list of token ids; write it like --ids 1,2,3.`,
    );
  }
  return ids.map(Number);
}
