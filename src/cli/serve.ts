import { type Command, Option } from 'commander';
import { EmlensError } from '../errors.js';
import { parseLayerList } from '../interventions/compose.js';
import { workerLoadOptions } from '../serve/messages.js';
import { startServer } from '../serve/server.js';
import { finiteNumber, port, positiveInt } from './args.js';
import {
  addChatTemplateOptions,
  addModelOptions,
  type ChatTemplateFlags,
  loadOptions,
  type ModelFlags,
} from './common.js';

interface ServeFlags extends ModelFlags, ChatTemplateFlags {
  readonly host: string;
  readonly port: number;
  readonly servedModelName?: string;
  readonly apiKeyEnv?: string;
  readonly steer?: string;
  readonly ablate?: string;
  readonly layers?: string;
  readonly scale: number;
  readonly positions: 'all' | 'prompt' | 'generated';
  readonly directionsDir?: string;
  readonly allowDirection: string[];
  readonly maxBatch: number;
  readonly maxQueue: number;
  readonly maxTokensLimit?: number;
  readonly timeoutMs: number;
  readonly maxBodyBytes: number;
}

/** `3,5`, `1-3` or `all` (checked against the model once it is loaded). */
export function parseServeLayers(value: string): 'all' | number[] {
  return parseLayerList(value);
}

/** Resolves when the process is asked to stop (Ctrl-C or SIGTERM). */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (signal: string) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(signal);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

export function registerServe(program: Command): void {
  addChatTemplateOptions(
    addModelOptions(
      program
        .command('serve')
        .description(
          'serve the model over an OpenAI-compatible HTTP API (chat completions, streaming, logprobs, steering)',
        ),
    ),
  )
    .option('--host <host>', 'address to listen on (loopback by default)', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0: any free port)', port, 8000)
    .option('--served-model-name <name>', 'the model id clients send (default: the model folder name)')
    .option('--api-key-env <name>', 'environment variable holding the API key clients must send as Bearer')
    .option(
      '--steer <file>',
      'direction file (direction.{i}) added at blocks.{L}.hook_resid_post on every request',
    )
    .option('--ablate <file>', 'direction file (direction.{i}) projected out at layers L on every request')
    .option('--layers <list>', 'layers for --steer/--ablate: e.g. 3,5 or all')
    .option('--scale <a>', 'steering strength for --steer', finiteNumber, 1)
    .addOption(
      new Option('--positions <which>', 'tokens interventions act on unless a request says otherwise')
        .choices(['all', 'prompt', 'generated'])
        .default('all'),
    )
    .option('--directions-dir <dir>', 'requests may name any direction file under this folder')
    .option(
      '--allow-direction <file>',
      'a direction file requests may name (repeatable)',
      (v: string, all: string[]) => [...all, v],
      [] as string[],
    )
    .option('--max-batch <n>', 'rows (requests x n) generated together at most', positiveInt, 8)
    .option('--max-queue <n>', 'requests waiting at most; more get 503 with Retry-After', positiveInt, 64)
    .option('--max-tokens-limit <n>', 'prompt + max_tokens at most (default: the model maximum)', positiveInt)
    .option('--timeout-ms <t>', 'answer 504 to a request unfinished after this long', positiveInt, 600_000)
    .option('--max-body-bytes <n>', 'answer 413 to larger request bodies', positiveInt, 1024 * 1024)
    .action(async (flags: ServeFlags) => {
      if ((flags.steer !== undefined || flags.ablate !== undefined) !== (flags.layers !== undefined)) {
        throw new EmlensError(
          flags.layers === undefined
            ? '--steer and --ablate need --layers; add e.g. --layers 3,5 or --layers all.'
            : '--layers only applies with --steer or --ablate; add one of them or drop --layers.',
        );
      }
      let apiKey: string | undefined;
      if (flags.apiKeyEnv !== undefined) {
        apiKey = process.env[flags.apiKeyEnv];
        if (!apiKey) {
          throw new EmlensError(
            `Environment variable ${flags.apiKeyEnv} is not set; export the API key in it or drop --api-key-env.`,
          );
        }
      }
      const layers = flags.layers !== undefined ? parseServeLayers(flags.layers) : undefined;
      const log = (line: string) => process.stderr.write(`emlens: ${line}\n`);
      const server = await startServer({
        // Load progress reaches the log through onLog; the worker takes the plain load options only.
        ...workerLoadOptions(loadOptions(flags)),
        model: flags.model,
        servedModelName: flags.servedModelName,
        host: flags.host,
        port: flags.port,
        apiKey,
        steer:
          flags.steer !== undefined ? [{ direction: flags.steer, layers: layers!, scale: flags.scale }] : [],
        ablate: flags.ablate !== undefined ? [{ direction: flags.ablate, layers: layers! }] : [],
        positions: flags.positions,
        chatTemplateKwargs: flags.chatTemplateKwargs,
        directionsDir: flags.directionsDir,
        directionFiles: flags.allowDirection,
        maxBatch: flags.maxBatch,
        maxQueue: flags.maxQueue,
        maxTokensLimit: flags.maxTokensLimit,
        timeoutMs: flags.timeoutMs,
        maxBodyBytes: flags.maxBodyBytes,
        onLog: log,
      });
      log(
        `serving '${server.modelId}' at ${server.url}/v1 (OpenAI-compatible), the steering playground at ${server.url}/; Ctrl-C stops`,
      );
      const signal = await untilSignal();
      log(`${signal}: stopping`);
      await server.close();
    });
}
