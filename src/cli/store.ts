import type { Command } from 'commander';
import { ActivationStore, mergeStores } from '../activations/store.js';

export function registerStore(program: Command): void {
  const store = program.command('store').description('inspect and merge activation stores');
  store
    .command('info')
    .description('show what a store holds')
    .argument('<dir>', 'activation store folder')
    .option('--json', 'print the manifest as JSON')
    .action(async (dir: string, flags: { json?: boolean }) => {
      const s = await ActivationStore.open(dir);
      const m = s.manifest;
      // A damaged store is reported, never summarised as if whole.
      const verified = await s.verify();
      if (!verified) {
        process.stderr.write(
          `emlens: warning: ${dir} was written by an older emlens (manifest v${m.version}) without shard checksums or weight fingerprints; its content cannot be verified, and it cannot be resumed or merged.\n`,
        );
      }
      if (flags.json) {
        console.log(JSON.stringify(m, null, 2));
        return;
      }
      const counts = await s.tokenCounts();
      const tokens = counts.reduce((a, b) => a + b, 0);
      console.log(
        [
          `store     ${dir}`,
          `model     ${m.model}${m.adapter ? ` + adapter ${m.adapter}` : ''}`,
          `records   ${m.records} of ${m.range[1] - m.range[0]}${m.complete ? '' : ' (incomplete: --resume to continue)'}${m.slice ? `, slice ${m.slice.index}/${m.slice.count} of ${m.totalRecords}` : ''}`,
          `tokens    ${tokens} answer tokens (mean ${(tokens / Math.max(1, counts.length)).toFixed(1)} per record)`,
          `reduce    ${m.reduce}, ${m.dtype}, d_model ${m.dModel}`,
          `hooks     ${m.hooks.length}: ${m.hooks.length > 4 ? `${m.hooks.slice(0, 2).join(', ')}, ..., ${m.hooks.at(-1)}` : m.hooks.join(', ')}`,
          `shards    ${m.shards.length} (${m.shardSize} records each, batch ${m.batchSize})${verified ? ', sha256 verified' : ', not verifiable (v1)'}`,
          ...(m.inputs
            ? [
                `inputs    weights ${m.inputs.weights.slice(0, 12)}${m.inputs.adapterWeights ? `, adapter ${m.inputs.adapterWeights.slice(0, 12)}` : ''}, ${m.inputs.profile} on ${m.inputs.device}${m.inputs.span ? `, span ${m.inputs.span}` : ''}${m.inputs.data ? `, data ${m.inputs.data.slice(0, 12)}` : ''}`,
              ]
            : []),
        ].join('\n'),
      );
    });
  store
    .command('merge')
    .description('join the slices of one `collect --shard i/N` job')
    .requiredOption('--out <dir>', 'new store folder')
    .option('--overwrite', 'replace what is in --out (the old folder stays until the merge is complete)')
    .argument('<slices...>', 'slice store folders')
    .action(async (slices: string[], flags: { out: string; overwrite?: boolean }) => {
      const m = await mergeStores(slices, flags.out, { overwrite: flags.overwrite });
      console.log(`${flags.out}: ${m.records} records from ${slices.length} slices`);
    });
}
