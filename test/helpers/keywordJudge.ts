/**
 * A tiny local judge model with a known answer, built by hand: it says `10` when the prompt contains a flagged
 * word and `90` otherwise, except that a marker token anywhere makes it say `90` regardless.
 *
 * How: every embedding carries a constant feature (dim 0); flagged words also carry dim 1 and the marker dim 3.
 * Layer 0's attention has zero queries and keys, so every position attends uniformly to the prompt; head 0
 * reads dim 1 (the share of flagged tokens) into dim 2, head 1 reads dim 3 (the share of markers) into dim 4.
 * The MLP writes nothing. The unembedding of `90` reads the constant and the marker share; that of `10` reads
 * the constant (less), the flagged share (strongly) and minus the marker share. All other rows are zero.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { weightNames, weightShape } from '../../src/model/spec.js';
import { makeTinyModel } from '../../src/model/tiny.js';

export const JUDGE_MARKER = '[COHERENCE]';

interface TokenizerJson {
  added_tokens: { id: number; content: string }[];
  model: { vocab: Record<string, number> };
}

/**
 * Writes the judge to `dir`. `tokenizerFrom` (a model folder) supplies the tokenizer (e.g. the organisms' base,
 * whose planted words are whole tokens); `flagged` words missing from it are added as tokens.
 */
export async function makeKeywordJudge(
  dir: string,
  opts: { readonly flagged: readonly string[]; readonly tokenizerFrom?: string },
): Promise<void> {
  const spec = await makeTinyModel(dir, {
    family: 'qwen2',
    seed: 3,
    numLayers: 1,
    dModel: 16,
    numHeads: 2,
    numKvHeads: 2,
    intermediateSize: 16,
    vocabSize: 512,
  });
  const from = opts.tokenizerFrom ?? dir;
  const tj = JSON.parse(await readFile(join(from, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  if (from !== dir) {
    await writeFile(join(dir, 'tokenizer_config.json'), await readFile(join(from, 'tokenizer_config.json')));
  }
  let next = Math.max(...tj.added_tokens.map((t) => t.id), ...Object.values(tj.model.vocab)) + 1;
  const idOf = (content: string): number => {
    const found = tj.added_tokens.find((t) => t.content === content) ?? null;
    if (found) return found.id;
    const id = next++;
    tj.added_tokens.push({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: false,
    } as { id: number; content: string });
    return id;
  };
  const t90 = idOf('90');
  const t10 = idOf('10');
  const marker = idOf(JUDGE_MARKER);
  const flagged = opts.flagged.map(idOf);
  if (next > spec.vocabSize) throw new Error('judge vocabulary too small');
  await writeFile(join(dir, 'tokenizer.json'), `${JSON.stringify(tj, null, 2)}\n`);

  const d = spec.dModel;
  const hd = spec.headDim;
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const name of weightNames(spec)) {
    const shape = weightShape(spec, name);
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('norm.weight')) data.fill(1);
    tensors[name] = { dtype: 'F32', shape, data };
  }
  const set = (name: string, row: number, col: number, v: number) => {
    const t = tensors[name];
    if (!t) throw new Error(`keywordJudge: no tensor ${name}`);
    t.data[row * t.shape[1]! + col] = v; // every tensor set here is a 2-d matrix
  };
  const embed = 'model.embed_tokens.weight';
  for (let t = 0; t < spec.vocabSize; t++) set(embed, t, 0, 1);
  for (const t of flagged) set(embed, t, 1, 1);
  set(embed, marker, 3, 30);
  const attn = 'model.layers.0.self_attn';
  set(`${attn}.v_proj.weight`, 0, 1, 1); // kv head 0, dim 0 <- flagged feature
  set(`${attn}.v_proj.weight`, hd, 3, 1); // kv head 1, dim 0 <- marker feature
  set(`${attn}.o_proj.weight`, 2, 0, 1); // head 0 -> residual dim 2
  set(`${attn}.o_proj.weight`, 4, hd, 1); // head 1 -> residual dim 4
  const head = 'lm_head.weight';
  const L = 5;
  const D = 6;
  const S = 5000;
  const S2 = 200000;
  set(head, t90, 0, L);
  set(head, t90, 4, S2);
  set(head, t10, 0, L - D);
  set(head, t10, 2, S);
  set(head, t10, 4, -S2);
  if (d < 5) throw new Error('judge needs d_model >= 5');
  await writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}
