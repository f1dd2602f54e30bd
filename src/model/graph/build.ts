import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GraphBuilder } from '../../onnx/builder.js';
import { ExternalData, type ExternalIndex } from '../../onnx/externalData.js';
import type { ModelSpec } from '../spec.js';
import { emitTransformer, type GraphVariant, type TransformerGraphOptions } from './transformer.js';
import type { WeightReader } from './weights.js';

export const DATA_FILE = 'model.onnx.data';
const INDEX_FILE = 'external-index.json';

/** File name of a graph variant inside a weights folder. */
export function graphFileName(v: GraphVariant): string {
  const kind = v.patch ? 'patching' : v.interventions ? 'interventions' : 'plain';
  // The onnx op set keeps its historical names, so graphs cached before the contrib op set existed stay valid.
  const ops = v.ops === 'contrib' ? '-contrib' : '';
  return `model-${v.logits}-${kind}${ops}.onnx`;
}

async function writeGraph(
  path: string,
  spec: ModelSpec,
  weights: () => Promise<WeightReader>,
  opts: TransformerGraphOptions,
  external: ExternalData,
): Promise<void> {
  const g = new GraphBuilder(`emlens_${spec.family}`, external);
  await emitTransformer(g, spec, weights, opts);
  const bytes = g.encode(
    [
      { domain: '', version: 23 },
      { domain: 'com.microsoft', version: 1 },
    ],
    {
      emlens_profile: opts.profile,
      emlens_logits: opts.logits,
      emlens_interventions: String(opts.interventions),
      ...(opts.patch ? { emlens_patch: 'true' } : {}),
      ...(opts.ops === 'contrib' ? { emlens_ops: 'contrib' } : {}),
      emlens_architecture: spec.architecture,
    },
    '0.1.0',
  );
  await writeFile(path, bytes);
}

/**
 * Makes sure `dir` holds the graph variant `opts`, building what is missing, and returns its path. All variants
 * of one set of weights share one external data file (weights always go to external data: real models exceed
 * protobuf's 2 GB limit, and ORT wants the data inside the model's folder). The first build writes the data
 * into a private temporary folder renamed into place, and each later variant is written to a temporary file
 * and renamed, so an interrupted build never leaves anything a later load would trust.
 *
 * `weights` is only called when the data file is written.
 */
export async function ensureGraph(
  dir: string,
  spec: ModelSpec,
  weights: () => Promise<WeightReader>,
  opts: TransformerGraphOptions,
): Promise<{ path: string; built: boolean }> {
  const file = graphFileName(opts);
  const path = join(dir, file);
  const indexPath = join(dir, INDEX_FILE);
  const stamp = `${process.pid}-${Date.now()}`;
  if (!existsSync(indexPath)) {
    const tmp = `${dir}.tmp-${stamp}`;
    await mkdir(tmp, { recursive: true });
    try {
      const external = ExternalData.create(join(tmp, DATA_FILE), DATA_FILE);
      try {
        await writeGraph(join(tmp, file), spec, weights, opts, external);
      } finally {
        external.close();
      }
      await writeFile(join(tmp, INDEX_FILE), JSON.stringify(external.index));
      await rm(dir, { recursive: true, force: true });
      await rename(tmp, dir);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      if (existsSync(indexPath)) return ensureGraph(dir, spec, weights, opts); // another process won the race
      throw e;
    }
    return { path, built: true };
  }
  if (existsSync(path)) return { path, built: false };
  const index = JSON.parse(await readFile(indexPath, 'utf8')) as ExternalIndex;
  const tmpFile = `${path}.tmp-${stamp}`;
  try {
    await writeGraph(tmpFile, spec, weights, opts, ExternalData.reuse(DATA_FILE, index));
    await rename(tmpFile, path);
  } catch (e) {
    await rm(tmpFile, { force: true });
    throw e;
  }
  return { path, built: true };
}
