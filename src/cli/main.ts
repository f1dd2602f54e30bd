import { Command, CommanderError } from 'commander';
import { EmlensError } from '../errors.js';
import { registerAblate } from './ablate.js';
import { registerCollect } from './collect.js';
import { registerCompare } from './compare.js';
import { registerDemo } from './demo.js';
import { registerDirectionConvert } from './direction.js';
import { registerEval } from './eval.js';
import { registerGenerate } from './generate.js';
import { registerInfo } from './info.js';
import { registerMediate } from './mediate.js';
import { registerOrganisms } from './organisms.js';
import { registerOrthogonalize } from './orthogonalize.js';
import { registerReport } from './report.js';
import { registerServe } from './serve.js';
import { registerSteer } from './steer.js';
import { registerStore } from './store.js';
import { registerSweep } from './sweep.js';
import { registerTinyModel } from './tinyModel.js';
import { registerTrace } from './trace.js';

/** Builds the `emlens` command line; every command is a thin layer over a library function. */
export function buildProgram(): Command {
  const program = new Command('emlens')
    .description('mechanistic interpretability of emergent misalignment on onnxruntime-node')
    .version('0.1.0')
    .showHelpAfterError()
    // Before any command is registered, so every subcommand inherits it and `main` returns exit codes.
    .exitOverride();
  registerInfo(program);
  registerTrace(program);
  registerGenerate(program);
  registerServe(program);
  registerCollect(program);
  registerStore(program);
  registerTinyModel(program);
  registerOrganisms(program);
  registerDemo(program);
  registerCompare(program);
  registerDirectionConvert(program);
  registerEval(program);
  registerReport(program);
  registerAblate(program);
  registerMediate(program);
  registerOrthogonalize(program);
  registerSteer(program);
  registerSweep(program);
  return program;
}

/** Runs the CLI; user errors print one line, internal errors their stack. Returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (e instanceof EmlensError) {
      process.stderr.write(`emlens: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`emlens: internal error: ${(e as Error).stack ?? e}\n`);
    return 1;
  }
}
