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
          `shards    ${m.shards.length} (${m.shardSize} records each, batch ${m.batchSize})`,
        ].join('\n'),
      );
    });
  store
    .command('merge')
    .description('join the slices of one `collect --shard i/N` job')
    .requiredOption('--out <dir>', 'new store folder')
    .argument('<slices...>', 'slice store folders')
    .action(async (slices: string[], flags: { out: string }) => {
      const m = await mergeStores(slices, flags.out);
      console.log(`${flags.out}: ${m.records} records from ${slices.length} slices`);
    });
}
