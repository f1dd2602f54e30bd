/**
 * The README's promise, for every command the CLI registers (found by walking the program, so a new command
 * is covered without editing this file): `--help` exits 0; a missing required option, an unknown option, and
 * required paths that do not exist each give exactly one line on stderr and exit code 2, never a stack trace
 * or a usage dump.
 */
import type { Command } from 'commander';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/main.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

interface Leaf {
  readonly path: string[];
  readonly command: Command;
}

/** Every runnable (sub)command with the words that name it, e.g. ['store', 'info']. */
function leaves(cmd: Command, prefix: string[] = []): Leaf[] {
  return cmd.commands.flatMap((c) => {
    const path = [...prefix, c.name()];
    // a command with subcommands may also run by itself (e.g. `direction --pos ...`)
    const self = c.commands.length === 0 || c.options.length > 0 ? [{ path, command: c }] : [];
    return [...self, ...leaves(c, path)];
  });
}

const tmp = useTempDir('emlens-contract-');
/** An input path that does not exist (inside a temp folder, so nothing is ever written outside it). */
let missing: string;
beforeAll(async () => {
  missing = tmp.join('missing', 'input');
});

function expectOneLine(r: { code: number; stderr: string }, what: string): void {
  expect(r.code, `${what}: exit code (stderr: ${r.stderr})`).toBe(2);
  const lines = r.stderr.trim().split('\n');
  expect(lines, `${what}: stderr must be one line`).toHaveLength(1);
  expect(lines[0], what).toMatch(/^emlens: /);
  expect(r.stderr, what).not.toMatch(/\n\s+at |internal error|Usage:/);
}

const ALL = leaves(buildProgram());

describe('every command keeps the README promise', () => {
  it('finds the commands', () => {
    const names = ALL.map((l) => l.path.join(' '));
    for (const n of ['info', 'trace', 'collect', 'store info', 'direction', 'serve', 'eval', 'mediate']) {
      expect(names).toContain(n);
    }
  });

  for (const { path, command } of ALL) {
    const name = path.join(' ');
    const required = command.options.filter((o) => o.mandatory);
    const requiredArgs = command.registeredArguments.filter((a) => a.required);

    it(`${name} --help exits 0`, async () => {
      const r = await runCli([...path, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage:/);
    });

    it(`${name} with an unknown option: one line, exit 2`, async () => {
      const r = await runCli([...path, '--no-such-option-here']);
      expectOneLine(r, `${name} --no-such-option-here`);
    });

    if (required.length > 0) {
      it(`${name} without its required options: one line, exit 2`, async () => {
        const r = await runCli([...path, ...requiredArgs.map(() => missing)]);
        expectOneLine(r, `${name} (no options)`);
      });
    }

    // `--out` names what the command creates, so a new path there is valid; every other required value is an
    // input that does not exist (or is not a valid value at all)
    const inputs = required.filter((o) => o.long !== '--out');
    if (inputs.length > 0 || requiredArgs.length > 0) {
      it(`${name} with inputs that do not exist: one line, exit 2`, async () => {
        const args = [...path, ...requiredArgs.map(() => missing)];
        for (const o of required) {
          args.push(o.long ?? '', o.long === '--out' ? tmp.join(`out-${path.join('-')}`) : missing);
        }
        const r = await runCli(args);
        expectOneLine(r, `${name} ${args.slice(path.length).join(' ')}`);
      });
    }
  }
});
