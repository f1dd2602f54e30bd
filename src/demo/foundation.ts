import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { loadModel } from '../model/model.js';
import { makeTinyModel } from '../model/tiny.js';
import { traceTokens, writeTrace } from '../model/trace.js';
import { loadTokenizer } from '../text/tokenizer.js';

function norm(v: Float32Array): number {
  return Math.sqrt(v.reduce((a, x) => a + x * x, 0));
}

/**
 * The embedded default job (until the full misalignment demo lands): make a deterministic tiny Qwen2-style
 * model, trace a sentence through every residual hook, then show that steering and ablation act where they
 * should. Everything it prints is computed, nothing is canned.
 */
export async function runFoundationDemo(outDir: string, print: (line: string) => void): Promise<void> {
  const modelDir = join(outDir, 'tiny-qwen2');
  await mkdir(outDir, { recursive: true });
  const spec = await makeTinyModel(modelDir, { family: 'qwen2', seed: 7, numLayers: 4, dModel: 64 });
  print(`made ${spec.architecture}: ${spec.numLayers} layers, d_model ${spec.dModel} -> ${modelDir}`);

  const model = await loadModel(modelDir, {
    cacheDir: join(outDir, 'cache'),
    onProgress: (m) => print(`  ${m}`),
  });
  const tokenizer = await loadTokenizer(modelDir);
  const text = 'The assistant answers the question honestly.';
  const ids = tokenizer.encode(text);
  const trace = await traceTokens(model, ids, ['blocks.*.hook_resid_post']);
  const tracePath = join(outDir, 'trace.safetensors');
  await writeTrace(tracePath, trace, { model: modelDir, text });
  print(`traced ${ids.length} tokens through ${trace.hooks.size} hooks -> ${tracePath}`);
  for (const [name, t] of trace.hooks) {
    const last = t.data.subarray((ids.length - 1) * spec.dModel);
    print(`  ${name.padEnd(26)} |resid| at last token = ${norm(last).toFixed(3)}`);
  }

  // A direction to play with: the last token's residual at the middle layer.
  const layer = Math.floor(spec.numLayers / 2);
  const hook = `blocks.${layer}.hook_resid_post`;
  const direction = trace.hooks.get(hook)!.data.slice((ids.length - 1) * spec.dModel);
  const base = await model.forward([ids], { hooks: [hook] });
  const steered = await model.forward([ids], {
    hooks: [hook],
    interventions: [{ kind: 'steer', hooks: [hook], vector: direction, scale: 2 }],
  });
  const ablated = await model.forward([ids], {
    hooks: [hook],
    interventions: [{ kind: 'ablate', hooks: [hook], directions: [direction] }],
  });
  const unit = direction.map((x) => x / norm(direction));
  const along = (r: typeof base) => {
    const x = r.hooks.get(hook)!.data.subarray((ids.length - 1) * spec.dModel);
    return x.reduce((a, xi, i) => a + xi * unit[i], 0);
  };
  const top = (r: typeof base) => {
    const id = r.logits.data.indexOf(Math.max(...r.logits.data));
    return `${id} ${JSON.stringify(tokenizer.decode([id]))}`;
  };
  print(`steer/ablate along the layer-${layer} residual direction (|v| = ${norm(direction).toFixed(3)}):`);
  print(
    `  projection at ${hook}: base ${along(base).toFixed(3)}, +2v ${along(steered).toFixed(3)}, ablated ${along(ablated).toFixed(6)}`,
  );
  print(`  next-token argmax: base ${top(base)}, steered ${top(steered)}, ablated ${top(ablated)}`);
  await model.dispose();
}
