import { WeightSource } from '../io/weightSource.js';
import { readConfig } from './config.js';
import type { Profile } from './graph/transformer.js';
import { PROFILES, profileWeightBytes } from './graph/weightBytes.js';
import { allHookNames } from './hooks.js';
import { checkpointRenamer } from './layout.js';
import { type ModelSpec, parameterCount } from './spec.js';
import { checkWeights } from './weightCheck.js';

/** What `emlens info` shows: read from config.json and the safetensors headers only (no graph is built). */
export interface ModelDescription {
  readonly dir: string;
  readonly spec: ModelSpec;
  readonly parameters: number;
  /** dtypes of the stored weights, e.g. `{ BF16: 290 }`. */
  readonly storedDtypes: Readonly<Record<string, number>>;
  readonly weightFiles: readonly string[];
  readonly hooks: readonly string[];
  /** Tensors of the folder the model does not use (ignored, with a warning). */
  readonly unusedWeights: readonly string[];
  /** Bytes of the graph's weights in each profile (`--profile`), RoPE tables aside. */
  readonly weightBytes: Readonly<Record<Profile, number>>;
}

export async function describeModel(dir: string): Promise<ModelDescription> {
  const spec = await readConfig(dir);
  const source = await WeightSource.open(dir, { rename: checkpointRenamer(spec) });
  try {
    const { unused } = checkWeights(spec, source, dir);
    const storedDtypes: Record<string, number> = {};
    for (const name of source.names()) {
      const dt = source.info(name).dtype;
      storedDtypes[dt] = (storedDtypes[dt] ?? 0) + 1;
    }
    return {
      dir,
      spec,
      parameters: parameterCount(spec),
      storedDtypes,
      weightFiles: source.files,
      hooks: allHookNames(spec.numLayers),
      unusedWeights: unused,
      weightBytes: Object.fromEntries(PROFILES.map((p) => [p, profileWeightBytes(spec, p)])) as Record<
        Profile,
        number
      >,
    };
  } finally {
    await source.close();
  }
}
