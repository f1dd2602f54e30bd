/**
 * `npm run bench:fidelity`: how far the int8 and int4 profiles stray from fp32 where it matters for the
 * research, printed and written to benchmarks/results/fidelity.json:
 *
 * - on the synthetic organisms (src/organisms/, each finetune = base + its PEFT adapter): per-hook relative
 *   error, top-1 and greedy agreement (measureFidelity), and the layerwise |cos| between each organism's
 *   misaligned-minus-aligned direction collected through the profile and through fp32 (finetuneDirection, the
 *   narrow-vs-general study's own direction);
 * - on the random Qwen2.5-0.5B-shaped model: the same hook errors and agreements, and the layerwise |cos| of a
 *   mean-difference direction between two prompt sets.
 *
 * Goals (issue #16): |cos| >= 0.999 int8 and >= 0.99 int4 at every block from the adapter on; int8 hooks within
 * 2% relative of fp32.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { readResponses } from '../src/data/response.js';
import { cosine, type DirectionSet } from '../src/directions/direction.js';
import { measureFidelity } from '../src/model/fidelity.js';
import type { Profile } from '../src/model/graph/transformer.js';
import { hookName } from '../src/model/hooks.js';
import { loadModel, type Model } from '../src/model/model.js';
import { makeOrganisms } from '../src/organisms/make.js';
import { syntheticConfig } from '../src/studies/index.js';
import { finetuneDirection } from '../src/studies/narrow-vs-general/directions.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { benchLog, cacheDir, ensureBenchModel, modelDir, work, writeResult } from './workspace.js';

const log = benchLog('fidelity');
const QUANT: readonly Profile[] = ['int8', 'int4'];
const GOAL_COS: Record<string, number> = { int8: 0.999, int4: 0.99 };
const ids = (n: number, seed: number, vocab: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 11) % vocab);
const r5 = (x: number) => Number(x.toFixed(5));

/** |cos| per layer of two direction sets over the same layers. */
function layerCos(a: DirectionSet, b: DirectionSet): Record<number, number> {
  return Object.fromEntries([...a.vectors].map(([l, v]) => [l, r5(Math.abs(cosine(v, b.vectors.get(l)!)))]));
}

function summary(m: Awaited<ReturnType<typeof measureFidelity>>) {
  return {
    maxHookRelError: r5(m.maxHookRelError),
    worstHook: m.worstHook,
    logitsRelError: r5(m.logitsRelError),
    top1Agreement: r5(m.top1Agreement),
    greedyPrefixAgreement: r5(m.greedyPrefixAgreement),
  };
}

// ---- the organisms
const orgDir = join(work, 'fidelity-organisms');
await rm(orgDir, { recursive: true, force: true });
const manifest = await makeOrganisms(orgDir, { seed: 0 });
const config = syntheticConfig(orgDir, manifest);
const tokenizer = await loadTokenizer(config.base);
const orgCache = join(work, 'fidelity-cache');
const layers = Array.from({ length: manifest.numLayers }, (_, i) => i);
const organisms: Record<string, unknown> = {};
const storeDir = join(work, 'fidelity-stores');
for (const f of config.finetunes) {
  const responses = await readResponses(config.responses[f.domain]!);
  const prompts = responses.slice(0, 6).map((r) => tokenizer.encode(`${r.question} ${r.answer}`));
  const load = (profile: Profile): Promise<Model> =>
    loadModel(config.base, { cacheDir: orgCache, profile, adapter: f.adapter });
  const direction = async (m: Model) => {
    await rm(storeDir, { recursive: true, force: true });
    return (
      await finetuneDirection(m, tokenizer, f, responses, {
        storeDir,
        layers,
        span: config.span,
        batchSize: 8,
        seed: 0,
      })
    ).set;
  };
  const ref = await load('fp32');
  const refDir = await direction(ref);
  const per: Record<string, unknown> = {};
  for (const p of QUANT) {
    const q = await load(p);
    const fid = await measureFidelity(ref, q, prompts, { greedyTokens: 8 });
    const cos = layerCos(refDir, await direction(q));
    const fromAdapter = Object.entries(cos)
      .filter(([l]) => Number(l) >= manifest.adapterLayer)
      .map(([, c]) => c);
    const minCos = Math.min(...fromAdapter);
    per[p] = {
      ...summary(fid),
      directionAbsCos: cos,
      minAbsCosFromAdapterLayer: minCos,
      cosGoal: GOAL_COS[p],
      cosGoalMet: minCos >= GOAL_COS[p]!,
      ...(p === 'int8' ? { hookGoalMet: fid.maxHookRelError <= 0.02 } : {}),
    };
    log(
      `${f.name} ${p}: worst hook ${fid.worstHook} ${(100 * fid.maxHookRelError).toFixed(3)}%, min |cos| from layer ${manifest.adapterLayer} ${minCos.toFixed(5)}, top-1 ${fid.top1Agreement.toFixed(3)}, greedy ${fid.greedyPrefixAgreement.toFixed(3)}`,
    );
    await q.dispose();
  }
  await ref.dispose();
  organisms[f.name] = per;
}
await rm(storeDir, { recursive: true, force: true });

// ---- the random 0.5B-shaped model
await ensureBenchModel(log);
const big: Record<string, unknown> = {};
const meanDiff = async (m: Model): Promise<Map<number, Float32Array>> => {
  const hooks = Array.from({ length: m.spec.numLayers }, (_, l) => hookName(l, 'resid_post'));
  const means = async (seed: number) => {
    const acc = hooks.map(() => new Float64Array(m.spec.dModel));
    const n = 24;
    for (let k = 0; k < 4; k++) {
      const r = await m.forward([ids(n, seed + k, m.spec.vocabSize)], { hooks });
      hooks.forEach((h, l) => {
        const d = r.hooks.get(h)!.data; // [1, n, dModel]
        for (let i = 0; i < d.length; i++) acc[l]![i % m.spec.dModel]! += d[i]!;
      });
    }
    return acc;
  };
  const [a, b] = [await means(10), await means(50)];
  return new Map(a.map((v, l) => [l, Float32Array.from(v, (x, i) => x - b[l]![i]!)]));
};
const ref = await loadModel(modelDir, { cacheDir });
const refDiff = await meanDiff(ref);
for (const p of QUANT) {
  const q = await loadModel(modelDir, { cacheDir, profile: p });
  const fid = await measureFidelity(
    ref,
    q,
    [ids(48, 3, ref.spec.vocabSize), ids(32, 4, ref.spec.vocabSize)],
    {
      greedyTokens: 8,
    },
  );
  const qDiff = await meanDiff(q);
  const cos = Object.fromEntries([...refDiff].map(([l, v]) => [l, r5(Math.abs(cosine(v, qDiff.get(l)!)))]));
  const minCos = Math.min(...Object.values(cos));
  big[p] = {
    ...summary(fid),
    directionAbsCos: cos,
    minAbsCos: minCos,
    cosGoal: GOAL_COS[p],
    cosGoalMet: minCos >= GOAL_COS[p]!,
    ...(p === 'int8' ? { hookGoalMet: fid.maxHookRelError <= 0.02 } : {}),
  };
  log(
    `0.5B shape ${p}: worst hook ${fid.worstHook} ${(100 * fid.maxHookRelError).toFixed(3)}%, min |cos| ${minCos.toFixed(5)}, top-1 ${fid.top1Agreement.toFixed(3)}, greedy ${fid.greedyPrefixAgreement.toFixed(3)}`,
  );
  await q.dispose();
}
await ref.dispose();
await rm(orgDir, { recursive: true, force: true });
await rm(orgCache, { recursive: true, force: true });

const out = {
  benchmark: 'fidelity',
  date: new Date().toISOString(),
  adapterLayer: manifest.adapterLayer,
  organisms,
  qwen05bShape: big,
  notMeasured: ['the change in mediated fraction (the study pipeline has no profile option yet)'],
};
log(`wrote ${await writeResult('fidelity', out)}`);
