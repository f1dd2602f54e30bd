import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GraphBuilder } from '../../onnx/builder.js';
import { ExternalDataWriter } from '../../onnx/externalData.js';
import type { ModelSpec } from '../spec.js';
import { emitTransformer, type TransformerGraphOptions } from './transformer.js';
import type { WeightReader } from './weights.js';

export const MODEL_FILE = 'model.onnx';
export const DATA_FILE = 'model.onnx.data';

/**
 * Writes `model.onnx` plus its external data file into `dir`. Weights always go to external data: real models
 * exceed protobuf's 2 GB limit, and ORT requires the data file inside the model's folder.
 */
export async function writeTransformerGraph(
  dir: string,
  spec: ModelSpec,
  weights: WeightReader,
  opts: TransformerGraphOptions,
): Promise<void> {
  const external = new ExternalDataWriter(join(dir, DATA_FILE), DATA_FILE);
  try {
    const g = new GraphBuilder(`emlens_${spec.family}`, external);
    await emitTransformer(g, spec, weights, opts);
    const bytes = g.encode(
      [
        { domain: '', version: 23 },
        { domain: 'com.microsoft', version: 1 },
      ],
      { emlens_profile: opts.profile, emlens_logits: opts.logits, emlens_architecture: spec.architecture },
      GRAPH_PRODUCER_VERSION,
    );
    await writeFile(join(dir, MODEL_FILE), bytes);
  } finally {
    external.close();
  }
}

const GRAPH_PRODUCER_VERSION = '0.1.0';
