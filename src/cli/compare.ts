import { basename, extname } from 'node:path';
import type { Command } from 'commander';
import {
  COMPARISON_FILES,
  compareDirections,
  formatCompareTable,
  writeComparison,
} from '../directions/compare.js';
import { type DirectionSet, loadDirections } from '../directions/direction.js';
import { importGguf } from '../directions/gguf.js';
import { EmlensError } from '../errors.js';
import { claimOutputFiles } from '../io/outputs.js';

/** Loads a direction file: llama.cpp control vectors by the `.gguf` extension, safetensors otherwise. */
export function loadDirectionFile(path: string): Promise<DirectionSet> {
  return extname(path).toLowerCase() === '.gguf' ? importGguf(path) : loadDirections(path);
}

/** Set names: file names without extension, or the paths as given where two file names collide. */
function namesFor(files: readonly string[]): string[] {
  const short = files.map((f) => basename(f, extname(f)));
  return files.map((f) => {
    const s = basename(f, extname(f));
    return short.indexOf(s) === short.lastIndexOf(s) ? s : f;
  });
}

export function registerCompare(program: Command): void {
  program
    .command('compare')
    .description('cosine similarity per layer between direction files (.safetensors or llama.cpp .gguf)')
    .argument('<files...>', 'two or more direction files')
    .option('--out <dir>', 'folder for cosine.svg, cosine.png and compare.json', './compare-out')
    .option('--names <list>', 'comma-separated display names, one per file (default: the file names)')
    .option('--overwrite', 'replace the cosine.* and compare.json of an earlier run in --out')
    .action(async (files: string[], flags: { out: string; names?: string; overwrite?: boolean }) => {
      // Before the files are read and the table printed, so a refusal is the only output.
      await claimOutputFiles(flags.out, COMPARISON_FILES, { overwrite: flags.overwrite });
      const names = flags.names === undefined ? namesFor(files) : flags.names.split(',').map((s) => s.trim());
      if (names.length !== files.length) {
        throw new EmlensError(
          `--names lists ${names.length} names for ${files.length} files; give exactly one name per file.`,
        );
      }
      const sets = [];
      // namesFor gives one name per file.
      for (const [i, file] of files.entries())
        sets.push({ name: names[i]!, set: await loadDirectionFile(file) });
      const cmp = compareDirections(sets);
      for (const z of cmp.zero) {
        const file = files[names.indexOf(z.name)];
        process.stderr.write(
          `emlens: warning: ${file} is all zeros at layer${z.layers.length > 1 ? 's' : ''} ${z.layers.join(', ')}; its cosines there are n/a.\n`,
        );
      }
      console.log(formatCompareTable(cmp));
      const out = await writeComparison(cmp, flags.out, { overwrite: flags.overwrite });
      console.log(`\nwrote ${out.svg}, ${out.png}, ${out.json}`);
    });
}
