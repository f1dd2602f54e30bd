/**
 * `npm run bench:directions` = `tsx benchmarks/narrow-vs-general/run.ts [--config FILE.yaml] [--out DIR]
 * [--work DIR]`: the narrow-vs-general study (src/studies/narrow-vs-general/). Without a config it
 * makes the synthetic model organisms and runs on them, writing to benchmarks/results/narrow-vs-general/.
 * Scratch (organisms, activation stores, graph cache) goes to --work (default benchmarks/.work/narrow-vs-general).
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { EmlensError } from '../../src/errors.js';
import { makeOrganisms } from '../../src/organisms/make.js';
import {
  loadNarrowVsGeneralConfig,
  type NarrowVsGeneralConfig,
  runNarrowVsGeneral,
  syntheticConfig,
} from '../../src/studies/index.js';

const log = (m: string) => process.stderr.write(`bench:directions: ${m}\n`);

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      out: { type: 'string', default: join(import.meta.dirname, '..', 'results', 'narrow-vs-general') },
      work: { type: 'string', default: join(import.meta.dirname, '..', '.work', 'narrow-vs-general') },
    },
    strict: true,
  });
  const work = values.work!;
  let config: NarrowVsGeneralConfig;
  if (values.config) {
    config = await loadNarrowVsGeneralConfig(values.config);
  } else {
    const dir = join(work, 'organisms');
    log(`no --config: making the synthetic organisms in ${dir}`);
    await rm(dir, { recursive: true, force: true });
    config = syntheticConfig(dir, await makeOrganisms(dir, { seed: 0 }));
  }
  const { result } = await runNarrowVsGeneral(config, { out: values.out!, work, onProgress: log });
  log(`done in ${result.seconds.toFixed(1)} s`);
}

main().catch((e: unknown) => {
  if (e instanceof EmlensError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`bench:directions: ${(e as Error).message}\n`);
    process.exit(2);
  }
  throw e;
});
