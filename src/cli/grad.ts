import type { Command } from 'commander';
import { gradient } from '../grad/gradient.js';
import { residualSite } from '../grad/params.js';
import { claimOutputFile } from '../io/outputs.js';
import { writeSafetensors } from '../io/safetensors.js';
import { readConfig } from '../model/config.js';
import { positiveInt } from './args.js';
import { parseIdList } from './common.js';

interface GradFlags {
  readonly model: string;
  readonly adapter?: string;
  readonly ids: string;
  readonly site: string;
  readonly out: string;
  readonly threads?: number;
  readonly overwrite?: boolean;
}

export function registerGrad(program: Command): void {
  program
    .command('grad')
    .description(
      'gradient of the mean next-token NLL of --ids with respect to a zero steering vector at a residual site',
    )
    .requiredOption('--model <dir>', 'Hugging Face model folder (config.json, *.safetensors)')
    .option('--adapter <dir>', 'PEFT LoRA adapter folder merged into the weights')
    .requiredOption('--ids <ids>', 'comma-separated token ids (at least two)')
    .requiredOption('--site <hook>', 'residual site, e.g. blocks.3.hook_resid_post')
    .requiredOption('--out <file>', 'output .safetensors file (tensors grad [d_model] and loss [1])')
    .option('--threads <n>', 'intra-op threads (default: one per core)', positiveInt)
    .option('--overwrite', 'replace --out if it exists (atomically)')
    .action(async (flags: GradFlags) => {
      const ids = parseIdList(flags.ids);
      residualSite(await readConfig(flags.model), flags.site);
      // before the weights are read, so a refused --out costs nothing
      await claimOutputFile(flags.out, { overwrite: flags.overwrite });
      const res = await gradient(flags.model, ids, {
        site: flags.site,
        adapter: flags.adapter,
        threads: flags.threads,
      });
      await writeSafetensors(
        flags.out,
        {
          grad: { dtype: 'F32', shape: [res.grad.length], data: res.grad },
          loss: { dtype: 'F32', shape: [1], data: Float32Array.of(res.loss) },
        },
        {
          model: flags.model,
          ...(flags.adapter ? { adapter: flags.adapter } : {}),
          site: flags.site,
          ids: ids.join(','),
        },
      );
      const norm = Math.sqrt(res.grad.reduce((s, g) => s + g * g, 0));
      console.log(
        `loss ${res.loss.toFixed(6)}, |grad| ${norm.toExponential(4)} at ${flags.site} -> ${flags.out}`,
      );
    });
}
