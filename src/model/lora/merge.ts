/** The merge W' = W + scaling * B @ A, and a WeightReader that applies it as base weights are read. */
import { EmlensError } from '../../errors.js';
import { SafetensorsFile } from '../../io/safetensors.js';
import type { WeightReader } from '../graph/weights.js';
import type { LoraAdapter } from './adapter.js';

/**
 * W + scaling * B @ A for W `[out, in]`, A `[rank, in]`, B `[out, rank]`, each sum accumulated in float64 and
 * rounded to float32 once.
 */
export function mergeLora(
  weight: Float32Array,
  a: Float32Array,
  b: Float32Array,
  rank: number,
  scaling: number,
): Float32Array {
  const out = b.length / rank;
  const inp = a.length / rank;
  if (weight.length !== out * inp)
    throw new Error(`mergeLora: W has ${weight.length} values, not ${out}x${inp}`);
  const merged = new Float32Array(weight.length);
  const acc = new Float64Array(inp); // one output row of B @ A
  // In range: o < out, k < rank, i < inp with b.length = out * rank, a.length = rank * inp and
  // weight.length = out * inp (checked above).
  for (let o = 0; o < out; o++) {
    acc.fill(0);
    for (let k = 0; k < rank; k++) {
      const bk = b[o * rank + k]!;
      if (bk === 0) continue;
      const row = k * inp;
      for (let i = 0; i < inp; i++) acc[i]! += bk * a[row + i]!;
    }
    const w = o * inp;
    for (let i = 0; i < inp; i++) merged[w + i] = weight[w + i]! + scaling * acc[i]!;
  }
  return merged;
}

/** A base WeightReader with a LoRA adapter merged in; the adapter file is opened on the first read it needs. */
export class LoraMergedWeights implements WeightReader {
  private file: Promise<SafetensorsFile> | undefined;

  constructor(
    private readonly base: WeightReader,
    readonly adapter: LoraAdapter,
  ) {}

  async readFloat32(name: string): Promise<Float32Array> {
    const replaced = this.adapter.replacements.get(name);
    if (replaced) return (await this.open()).readFloat32(replaced.key);
    const m = this.adapter.modules.get(name);
    if (!m) return this.base.readFloat32(name);
    const file = await this.open();
    const [w, a, b] = await Promise.all([
      this.base.readFloat32(name),
      file.readFloat32(m.keyA),
      file.readFloat32(m.keyB),
    ]);
    if (w.length !== m.outFeatures * m.inFeatures) {
      throw new EmlensError(
        `Weight '${name}' holds ${w.length} values but the adapter's update is [${m.outFeatures}, ${m.inFeatures}]; the adapter is for another model, so load it with its own base model.`,
      );
    }
    return mergeLora(w, a, b, m.rank, m.scaling);
  }

  /** Closes the adapter file (not the base reader). */
  async close(): Promise<void> {
    const f = this.file;
    this.file = undefined;
    if (f) await (await f).close();
  }

  private open(): Promise<SafetensorsFile> {
    this.file ??= SafetensorsFile.open(this.adapter.file);
    return this.file;
  }
}
