import type { Command } from 'commander';
import { describeModel } from '../model/describe.js';
import { unusedWeightsWarning } from '../model/weightCheck.js';

function formatBytes(b: number): string {
  return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('show a model folder: family, shape, parameters, stored dtype, hook names')
    .requiredOption('--model <dir>', 'Hugging Face model folder')
    .option('--json', 'print JSON instead of text')
    .action(async (flags: { model: string; json?: boolean }) => {
      const d = await describeModel(flags.model);
      if (d.unusedWeights.length > 0) {
        process.stderr.write(`emlens: ${unusedWeightsWarning(d.spec, d.unusedWeights, d.dir)}\n`);
      }
      if (flags.json) {
        console.log(JSON.stringify(d, null, 2));
        return;
      }
      const s = d.spec;
      const lines = [
        `model        ${d.dir}`,
        `family       ${s.family} (${s.architecture})`,
        `layers       ${s.numLayers}`,
        `d_model      ${s.dModel}`,
        `heads        ${s.numHeads} query, ${s.numKvHeads} key/value, head_dim ${s.headDim}`,
        `mlp          ${s.intermediateSize}`,
        `vocab        ${s.vocabSize}${s.tieWordEmbeddings ? ' (tied embeddings)' : ''}`,
        `parameters   ${d.parameters.toLocaleString('en-US')}`,
        `dtype        ${s.torchDtype} (stored: ${Object.entries(d.storedDtypes)
          .map(([k, v]) => `${k} x${v}`)
          .join(', ')})`,
        `rope         theta ${s.ropeTheta}${s.ropeScaling ? `, ${s.ropeScaling.type} scaling x${s.ropeScaling.factor}` : ''}${s.localRope ? ` (sliding layers: theta ${s.localRope.theta})` : ''}`,
        `attention    ${s.slidingWindow === null ? 'full' : `${s.layerTypes.filter((t) => t === 'sliding').length} of ${s.numLayers} layers slide over ${s.slidingWindow} keys`}`,
        `weights      ${d.weightFiles.join(', ')}`,
        `graph bytes  ${Object.entries(d.weightBytes)
          .map(([p, b]) => `${p} ${formatBytes(b)}`)
          .join(', ')} (weights per --profile)`,
        `hooks        ${d.hooks.length} (blocks.{0..${s.numLayers - 1}}.hook_resid_pre|resid_mid|resid_post|attn_out|mlp_out)`,
      ];
      console.log(lines.join('\n'));
    });
}
