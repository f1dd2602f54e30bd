import { type Command, Option } from 'commander';
import { describeModel } from '../model/describe.js';
import { type NodeAssignment, nodeAssignment, webgpuAdapterInfo } from '../model/deviceCheck.js';
import { cudaAvailable, DEVICES, type Device } from '../model/session.js';
import { unusedWeightsWarning } from '../model/weightCheck.js';

function formatBytes(b: number): string {
  return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;
}

interface DeviceReport extends NodeAssignment {
  /** The adapter (webgpu), or the provider library's state (cuda). */
  readonly adapter: string;
}

/** Loads the model on `device` under onnxruntime's profiler (see `nodeAssignment`) and names the adapter. */
async function deviceReport(model: string, device: Device, cacheDir?: string): Promise<DeviceReport> {
  const adapter =
    device === 'webgpu'
      ? `${webgpuAdapterInfo().summary} (onnxruntime-node names no adapter; this is what the Vulkan loader is given)`
      : device === 'cuda'
        ? cudaAvailable()
          ? 'CUDA execution provider installed'
          : 'CUDA execution provider not installed'
        : 'the CPU';
  const a = await nodeAssignment(model, {
    device,
    cacheDir,
    onProgress: (m) => process.stderr.write(`emlens: ${m}\n`),
  });
  return { ...a, adapter };
}

function deviceLines(r: DeviceReport): string[] {
  const runs = r.providers.map(
    (p) =>
      `${p.provider} ${Object.values(p.ops).reduce((s, n) => s + n, 0)} kernel runs (${Object.keys(p.ops).sort().join(', ')})`,
  );
  return [
    `device       ${r.device} (${r.profile}): ${r.adapter}`,
    `providers    ${runs.join('; ')} over a prefill and a decode step, plain and steered`,
    `fallback     ${r.fallback.length === 0 ? 'none: no node ran on the CPU provider' : `${r.fallback.length} nodes on the CPU provider: ${r.fallback.join(', ')}`}`,
  ];
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('show a model folder: family, shape, parameters, stored dtype, hook names')
    .requiredOption('--model <dir>', 'Hugging Face model folder')
    .option('--json', 'print JSON instead of text')
    .addOption(
      new Option(
        '--device <device>',
        'also load the model there and report the adapter found and the ops that fall back to the CPU',
      ).choices([...DEVICES]),
    )
    .option('--cache-dir <dir>', 'where built graphs are kept (with --device)')
    .action(async (flags: { model: string; json?: boolean; device?: Device; cacheDir?: string }) => {
      const d = await describeModel(flags.model);
      const device =
        flags.device === undefined
          ? undefined
          : await deviceReport(flags.model, flags.device, flags.cacheDir);
      if (d.unusedWeights.length > 0) {
        process.stderr.write(`emlens: ${unusedWeightsWarning(d.spec, d.unusedWeights, d.dir)}\n`);
      }
      if (flags.json) {
        console.log(JSON.stringify(device ? { ...d, device } : d, null, 2));
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
      if (device) lines.push(...deviceLines(device));
      console.log(lines.join('\n'));
    });
}
