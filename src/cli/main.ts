import { Command, CommanderError } from 'commander';
import { EmlensError } from '../errors.js';
import { registerAblate } from './ablate.js';
import { registerCollect } from './collect.js';
import { registerCompare } from './compare.js';
import { registerDemo } from './demo.js';
import { registerDirectionCombine, registerDirectionConvert, registerDirectionPt } from './direction.js';
import { registerEval } from './eval.js';
import { registerGenerate } from './generate.js';
import { registerGrad } from './grad.js';
import { registerInfo } from './info.js';
import { registerJudge } from './judge.js';
import { registerLoraTrajectory } from './loraTrajectory.js';
import { registerMediate } from './mediate.js';
import { registerOrganisms } from './organisms.js';
import { registerOrthogonalize } from './orthogonalize.js';
import { registerProject } from './project.js';
import { registerQuestions } from './questions.js';
import { registerReport } from './report.js';
import { registerServe } from './serve.js';
import { registerSplit } from './split.js';
import { registerSteer } from './steer.js';
import { registerStore } from './store.js';
import { registerSummarize } from './summarize.js';
import { registerSweep } from './sweep.js';
import { registerTinyModel } from './tinyModel.js';
import { registerTrace } from './trace.js';
import { registerTrainVector } from './trainVector.js';
import { registerTransfer } from './transfer.js';

/** The command whose parse failed, for the `--help` hint (commander calls the exit callback on it). */
const failedCommand = new WeakMap<CommanderError, Command>();

/** `emlens sweep`, `emlens direction export-gguf`: the full name of a command, for the usage hint. */
function commandPath(cmd: Command | undefined): string {
  const names: string[] = [];
  for (let c: Command | null = cmd ?? null; c; c = c.parent) names.unshift(c.name());
  return names.length > 0 ? names.join(' ') : 'emlens';
}

/**
 * Commander's message on one line: "error: " dropped, its "(Did you mean ...?)" line joined, and the
 * parser's reason after a colon instead of a second sentence.
 */
function oneLine(message: string): string {
  return message
    .replace(/^error:\s*/, '')
    .replace(/\s*\n\s*/g, ' ')
    .replace(/ is invalid\. /, ' is invalid: ')
    .replace(/[.\s]+$/, '');
}

/** Builds the `emlens` command line; every command is a thin layer over a library function. */
export function buildProgram(): Command {
  const program = new Command('emlens')
    .description('mechanistic interpretability of emergent misalignment on onnxruntime-node')
    .version('0.1.0')
    // Before any command is registered, so every subcommand inherits them: commander throws instead of
    // exiting, and prints nothing itself on an argument error (`main` prints the one line the README
    // promises); help and version text still go out as usual.
    .configureOutput({ outputError: () => {} })
    .exitOverride(function (this: Command, err: CommanderError) {
      failedCommand.set(err, this);
      throw err;
    });
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
  registerDirectionCombine(program);
  registerDirectionPt(program);
  registerEval(program);
  registerReport(program);
  registerAblate(program);
  registerProject(program);
  registerLoraTrajectory(program);
  registerMediate(program);
  registerTransfer(program);
  registerOrthogonalize(program);
  registerSteer(program);
  registerSweep(program);
  registerSummarize(program);
  registerJudge(program);
  registerSplit(program);
  registerQuestions(program);
  registerGrad(program);
  registerTrainVector(program);
  return program;
}

/** Runs the CLI; user errors print one line, internal errors their stack. Returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end the parse with code 0 after printing; so does `help`.
      if (e.exitCode === 0) return 0;
      // A command group run without its subcommand: commander has printed its help (the user asked for
      // nothing else), and this is still a usage error.
      if (e.code === 'commander.help') return 2;
      const cmd = commandPath(failedCommand.get(e));
      process.stderr.write(`emlens: ${oneLine(e.message)}; run '${cmd} --help' for usage.\n`);
      return 2;
    }
    if (e instanceof EmlensError) {
      process.stderr.write(`emlens: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`emlens: internal error: ${(e as Error).stack ?? e}\n`);
    return 1;
  }
}
