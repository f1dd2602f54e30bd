import { basename, extname, join } from 'node:path';
import { type Command, Option } from 'commander';
import { directionDModel, loadDirections, saveDirections } from '../directions/direction.js';
import { directionFromStores, zeroLayers } from '../directions/fromStores.js';
import { exportGguf, importGguf } from '../directions/gguf.js';
import {
  averageDirections,
  directionSubspace,
  PCA_METHODS,
  type PcaMethod,
  pcaFromStores,
} from '../directions/pca.js';
import { controlPaths, randomControls } from '../directions/randomControl.js';
import { subspaceBasisPaths } from '../directions/subspaceFiles.js';
import { exportPt, importPt, type PtLayout } from '../directions/torchPt.js';
import { EmlensError } from '../errors.js';
import { claimOutputFile } from '../io/outputs.js';
import { norm } from '../util/vector.js';
import { nonNegativeInt, positiveInt } from './args.js';

/**
 * Where `emlens direction` writes without `--out`: `directions/<pos store>-vs-<neg store>.safetensors`, the
 * stores named by their folder names, relative to the working directory (the repository's directions/ folder,
 * ignored by git but for its README).
 */
export function defaultDirectionFile(pos: string, neg: string): string {
  const name = (store: string) => basename(store.replace(/[\\/]+$/, '')) || 'store';
  return join('directions', `${name(pos)}-vs-${name(neg)}.safetensors`);
}

/**
 * The `emlens direction` command group (created once; every file that adds a `direction` subcommand or
 * option goes through here, whatever the registration order).
 */
export function directionGroup(program: Command): Command {
  const existing = program.commands.find((c) => c.name() === 'direction');
  if (existing) return existing;
  // Positional options: `--out` after a subcommand name belongs to the subcommand, not to this group.
  program.enablePositionalOptions();
  return program
    .command('direction')
    .enablePositionalOptions()
    .description(
      'compute a mean-difference direction from two stores (or convert direction files: see subcommands)',
    )
    .option('--pos <store>', 'activation store of the positive side (e.g. misaligned answers)')
    .option('--neg <store>', 'activation store of the negative side (e.g. aligned answers)')
    .option(
      '--out <file>',
      'direction file to write (default: directions/<pos store name>-vs-<neg store name>.safetensors)',
    )
    .option('--hook <type>', 'hook type to read', 'hook_resid_post')
    .addOption(
      new Option(
        '--method <m>',
        'mean_diff: mean(pos) - mean(neg); pca_diff / pca_center: first principal component of paired records (record i of --pos with record i of --neg; unit norm; see README)',
      )
        .choices(['mean_diff', ...PCA_METHODS])
        .default('mean_diff'),
    )
    .addOption(
      new Option(
        '--weighting <w>',
        'mean_diff only: token, every answer token counts once (default); record, every answer',
      ).choices(['token', 'record']),
    )
    .option(
      '--random-control <file>',
      'also write norm-matched random controls: FILE itself for one, FILE with .r0, .r1, ... before the extension for several',
    )
    .option(
      '--random-controls <k>',
      'how many random controls to write with --random-control (each its own seed)',
      positiveInt,
      1,
    )
    .option(
      '--seed <n>',
      "user seed of the random controls (control k's seed derives from the direction, this seed and k)",
      nonNegativeInt,
      0,
    )
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: DirectionFlags) => {
      if (!flags.pos || !flags.neg) {
        throw new EmlensError(
          'emlens direction needs --pos STORE --neg STORE [--out FILE] (or a subcommand: export-gguf, import-gguf).',
        );
      }
      if (flags.method !== 'mean_diff' && flags.weighting !== undefined) {
        throw new EmlensError(
          `--weighting applies to --method mean_diff only; ${flags.method} pairs record i of --pos with record i of --neg (one row per record), so drop --weighting or use --method mean_diff.`,
        );
      }
      const out = flags.out ?? defaultDirectionFile(flags.pos, flags.neg);
      if (!flags.randomControl && flags.randomControls !== 1) {
        throw new EmlensError(
          '--random-controls needs --random-control FILE to say where the controls go; add it or drop --random-controls.',
        );
      }
      // Before the stores are read, so a refused output costs nothing; saveDirections checks again.
      await claimOutputFile(out, { overwrite: flags.overwrite, createParent: true });
      const controlFiles = flags.randomControl ? controlPaths(flags.randomControl, flags.randomControls) : [];
      for (const path of controlFiles) {
        await claimOutputFile(path, {
          overwrite: flags.overwrite,
          createParent: true,
          flag: '--random-control',
        });
      }
      const set =
        flags.method === 'mean_diff'
          ? await directionFromStores(flags.pos, flags.neg, {
              hookType: flags.hook,
              weighting: flags.weighting ?? 'token',
            })
          : await pcaFromStores(flags.method, flags.pos, flags.neg, { hookType: flags.hook });
      const zero = zeroLayers(set);
      if (zero.length > 0) {
        process.stderr.write(
          `emlens: warning: the direction is all zeros at layer${zero.length > 1 ? 's' : ''} ${zero.join(', ')} (both sides have the same mean there); steering or ablating it there does nothing.\n`,
        );
      }
      await saveDirections(out, set, { overwrite: flags.overwrite });
      const norms = [...set.vectors.entries()].map(([l, v]) => `${l}:${norm(v).toFixed(3)}`);
      console.log(
        `wrote ${out}: ${set.vectors.size} layers, n_pos ${set.meta.nPos}, n_neg ${set.meta.nNeg}; norms ${norms.join(' ')}`,
      );
      if (controlFiles.length > 0) {
        const paths = controlFiles;
        const controls = randomControls(set, paths.length, {
          seed: flags.seed,
          name: basename(out, extname(out)),
        });
        for (const [k, path] of paths.entries()) {
          // randomControls made one control per path.
          await saveDirections(path, controls[k]!, { overwrite: flags.overwrite, flag: '--random-control' });
        }
        console.log(
          `wrote ${paths.join(', ')}: ${paths.length} norm-matched random control${paths.length === 1 ? '' : 's'} of ${out} (user seed ${flags.seed}, controls 0..${paths.length - 1})`,
        );
      }
    });
}

interface DirectionFlags {
  readonly pos?: string;
  readonly neg?: string;
  readonly out?: string;
  readonly hook: string;
  readonly method: 'mean_diff' | PcaMethod;
  readonly weighting?: 'token' | 'record';
  readonly randomControl?: string;
  readonly randomControls: number;
  readonly seed: number;
  readonly overwrite?: boolean;
}

/** `emlens direction export-gguf` and `emlens direction import-gguf`. */
export function registerDirectionConvert(program: Command): void {
  const group = directionGroup(program);
  group
    .command('export-gguf')
    .description(
      'write a direction file as a llama.cpp control vector (block i -> direction.i, added to the output of block i; block 0 is left out)',
    )
    .requiredOption('--in <file>', 'direction file (.safetensors)')
    .requiredOption('--out <file>', 'control vector to write (.gguf)')
    .option(
      '--model-hint <type>',
      'controlvector.model_hint, the HF model_type (default: guessed from the model name)',
    )
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: { in: string; out: string; modelHint?: string; overwrite?: boolean }) => {
      const set = await loadDirections(flags.in);
      const r = await exportGguf(set, flags.out, { modelHint: flags.modelHint, overwrite: flags.overwrite });
      console.log(
        `wrote ${r.path}: ${r.layers.length} layers (blocks ${span(r.layers)} as direction.N), d_model ${directionDModel(set)}, model hint ${r.modelHint ?? '(none)'}`,
      );
      if (r.skipped.length > 0) {
        console.log(
          `note: block ${r.skipped.join(', ')} left out: llama.cpp control vectors start at the output of block 1`,
        );
      }
    });
  group
    .command('import-gguf')
    .description(
      'read a llama.cpp control vector into a direction file (direction.N -> blocks.N.hook_resid_post)',
    )
    .requiredOption('--in <file>', 'control vector (.gguf)')
    .requiredOption('--out <file>', 'direction file to write (.safetensors)')
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: { in: string; out: string; overwrite?: boolean }) => {
      const set = await importGguf(flags.in);
      await saveDirections(flags.out, set, { overwrite: flags.overwrite });
      const layers = [...set.vectors.keys()];
      console.log(
        `wrote ${flags.out}: ${layers.length} layers (blocks ${span(layers)}, hook_resid_post), d_model ${directionDModel(set)}, model ${set.meta.model}`,
      );
    });
}

/** `emlens direction import --format pt` and `emlens direction export --format pt` (PyTorch torch.save files). */
export function registerDirectionPt(program: Command): void {
  const group = directionGroup(program);
  group
    .command('import')
    .description(
      'read directions saved with torch.save (a list of per-layer [d_model] tensors, a [layers, d_model] tensor, or a dict layer -> tensor) into a direction file; no pickled code is run',
    )
    .argument('<file>', 'the .pt file')
    .addOption(new Option('--format <f>', 'input format').choices(['pt']).makeOptionMandatory())
    .requiredOption('--out <file>', 'direction file to write (.safetensors)')
    .option(
      '--hidden-states',
      'index i is HF hidden_states[i]: drop index 0 (embeddings), index i = block i - 1',
    )
    .option('--layer <n>', 'block of a file that holds one 1-D tensor', nonNegativeInt)
    .option('--overwrite', 'replace --out if it exists')
    .action(
      async (
        file: string,
        flags: { out: string; hiddenStates?: boolean; layer?: number; overwrite?: boolean },
      ) => {
        await claimOutputFile(flags.out, { overwrite: flags.overwrite, createParent: true });
        const r = await importPt(file, { hiddenStates: flags.hiddenStates, layer: flags.layer });
        await saveDirections(flags.out, r.set, { overwrite: flags.overwrite });
        const layers = [...r.set.vectors.keys()];
        console.log(`found ${r.description}`);
        console.log(
          `wrote ${flags.out}: ${layers.length} layers (blocks ${span(layers)}), d_model ${directionDModel(r.set)}`,
        );
      },
    );
  group
    .command('export')
    .description('write a direction file as a torch.save file that torch.load(path, weights_only=True) reads')
    .argument('<file>', 'direction file (.safetensors)')
    .addOption(new Option('--format <f>', 'output format').choices(['pt']).makeOptionMandatory())
    .requiredOption('--out <file>', '.pt file to write')
    .addOption(
      new Option(
        '--layout <l>',
        'list: [tensor per block]; stacked: one [layers, d_model] tensor; dict: {block: tensor} (default: list when the blocks are 0..n-1, else dict)',
      ).choices(['list', 'stacked', 'dict']),
    )
    .addOption(
      new Option('--dtype <t>', 'element type').choices(['F32', 'F16', 'BF16', 'F64']).default('F32'),
    )
    .option('--overwrite', 'replace --out if it exists')
    .action(
      async (
        file: string,
        flags: { out: string; layout?: PtLayout; dtype: 'F32' | 'F16' | 'BF16' | 'F64'; overwrite?: boolean },
      ) => {
        const set = await loadDirections(file);
        const r = await exportPt(set, flags.out, {
          layout: flags.layout,
          dtype: flags.dtype,
          overwrite: flags.overwrite,
        });
        console.log(
          `wrote ${r.path}: ${r.layers.length} layers (blocks ${span(r.layers)}) (layout ${r.layout}, ${flags.dtype}), d_model ${directionDModel(set)}`,
        );
      },
    );
}

/** `emlens direction average` and `emlens direction subspace`: directions made from several direction files. */
export function registerDirectionCombine(program: Command): void {
  const group = directionGroup(program);
  group
    .command('average')
    .description(
      'one direction from several (e.g. one per finetune): each normalised per layer, then averaged (not renormalised)',
    )
    .requiredOption('--in <files...>', 'direction files (.safetensors), at least two')
    .requiredOption('--out <file>', 'direction file to write')
    .option('--overwrite', 'replace --out if it exists')
    .action(async (flags: { in: string[]; out: string; overwrite?: boolean }) => {
      if (flags.in.length < 2) {
        throw new EmlensError('emlens direction average needs at least two --in files; add more.');
      }
      await claimOutputFile(flags.out, { overwrite: flags.overwrite, createParent: true });
      const sets = await Promise.all(flags.in.map((f) => loadDirections(f)));
      const avg = averageDirections(sets);
      await saveDirections(flags.out, avg, { overwrite: flags.overwrite });
      const norms = [...avg.vectors.entries()].map(([l, v]) => `${l}:${norm(v).toFixed(3)}`);
      console.log(
        `wrote ${flags.out}: average of ${sets.length} normalised directions; norms ${norms.join(' ')} (1 = all agree)`,
      );
    });
  group
    .command('subspace')
    .description(
      'an orthonormal basis (SVD) of the span of several directions per layer, one unit direction file per basis vector (FILE.b0, FILE.b1, ...), for ablating together',
    )
    .requiredOption('--in <files...>', 'direction files (.safetensors)')
    .requiredOption('--out <file>', 'basis files to write: FILE with .b0, .b1, ... before the extension')
    .option('--rank <k>', 'at most this many basis vectors (default: the span)', positiveInt)
    .option('--overwrite', 'replace the outputs if they exist')
    .action(async (flags: { in: string[]; out: string; rank?: number; overwrite?: boolean }) => {
      const sets = await Promise.all(flags.in.map((f) => loadDirections(f)));
      const basis = directionSubspace(sets, { rank: flags.rank });
      const paths = subspaceBasisPaths(flags.out, basis.length);
      for (const p of paths) await claimOutputFile(p, { overwrite: flags.overwrite, createParent: true });
      for (const [j, set] of basis.entries()) {
        await saveDirections(paths[j]!, set, { overwrite: flags.overwrite }); // one path per basis set
      }
      console.log(`wrote ${paths.join(', ')}: rank-${basis.length} subspace of ${sets.length} directions`);
    });
}

/** [1,2,3,5] -> "1-3, 5" */
function span(layers: readonly number[]): string {
  const parts: string[] = [];
  // i <= j < layers.length throughout.
  for (let i = 0; i < layers.length; ) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j]! + 1) j++;
    parts.push(j === i ? String(layers[i]) : `${layers[i]}-${layers[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}
