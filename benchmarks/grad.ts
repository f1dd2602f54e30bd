/**
 * `npm run bench:grad`: one forward+backward step of the gradient graph (mean NLL, gradient with respect to a
 * steering vector at the middle block's resid_post) at the Qwen2.5-0.5B shape, 8 x 128 tokens, against the
 * forward alone: the same primitive-op forward without its backward (`GradModel.logProbs`), and emlens's
 * inference forward with all-position logits. Peak memory is read after each phase (forwards first, so the
 * figure after them is the forward's). Interleaved rounds, best of each. Writes benchmarks/results/grad.json
 * only at the full shape; BENCH_GRAD_SMALL=1 runs a tiny model to check the script.
 */
import { join } from 'node:path';
import { packBatch } from '../src/grad/batch.js';
import { GradModel } from '../src/grad/gradModel.js';
import { loadModel } from '../src/model/model.js';
import { makeTinyModel } from '../src/model/tiny.js';
import { Rng } from '../src/util/random.js';
import { peakRssMiB } from './lib/hardware.js';
import {
  benchLog,
  cacheDir,
  ensureBenchModel,
  envCount,
  inRoundOrder,
  modelDir,
  work,
  writeResult,
} from './workspace.js';

const log = benchLog('grad');
const small = process.env.BENCH_GRAD_SMALL === '1';
const batch = envCount('BENCH_BATCH', 8);
const seq = envCount('BENCH_SEQ', 128);
const rounds = envCount('BENCH_ROUNDS', 3);

let dir = modelDir;
if (small) {
  dir = join(work, 'grad-small');
  await makeTinyModel(dir, { family: 'qwen2', overwrite: true });
} else {
  await ensureBenchModel(log);
}
const rssStart = peakRssMiB();
const inference = await loadModel(dir, { cacheDir, onProgress: log });
const spec = inference.spec;
const rng = new Rng(3);
const rows = Array.from({ length: batch }, () => Array.from({ length: seq }, () => rng.int(spec.vocabSize)));
const site = `blocks.${Math.floor(spec.numLayers / 2)}.hook_resid_post` as const;
const params = { steer: { sites: [site], shared: true } };

const t0 = performance.now();
const grad = await GradModel.load(dir);
const weightsLoadMs = performance.now() - t0;
const packed = packBatch(
  spec,
  rows.map((ids) => ({ ids })),
);
log(`weights read in ${(weightsLoadMs / 1000).toFixed(1)} s; peak RSS ${peakRssMiB()} MiB`);

const inferenceMs: number[] = [];
const tapeForwardMs: number[] = [];
const stepMs: number[] = [];
const timed = (into: number[], fn: () => Promise<unknown>) => async () => {
  const t = performance.now();
  await fn();
  into.push(performance.now() - t);
};
const inferenceForward = timed(inferenceMs, () => inference.forward(rows, { logits: 'all' }));
const tapeForward = timed(tapeForwardMs, () => grad.logProbs(packed));
const step = timed(stepMs, () =>
  grad.run(
    rows.map((ids) => ({ ids })),
    { params },
  ),
);

// warm-ups (session builds), forwards first so the peak RSS after them is the forward's
await inferenceForward();
await tapeForward();
const rssForward = peakRssMiB();
await step();
const rssStep = peakRssMiB();
log(
  `peak RSS: start ${rssStart}, after forwards ${rssForward}, after a forward+backward step ${rssStep} MiB`,
);
inferenceMs.length = 0;
tapeForwardMs.length = 0;
stepMs.length = 0;
for (let round = 0; round < rounds; round++) {
  for (const run of inRoundOrder([inferenceForward, tapeForward, step], round)) await run();
  log(`round ${round + 1}/${rounds} done`);
}
const best = (xs: number[]) => Math.min(...xs);
const result = {
  shape: small ? 'tiny qwen2 (script check)' : 'Qwen2.5-0.5B (random weights)',
  batch,
  seq,
  site,
  rounds,
  weightsLoadMs,
  inferenceForwardMs: inferenceMs,
  tapeForwardMs,
  stepMs,
  bestMs: { inferenceForward: best(inferenceMs), tapeForward: best(tapeForwardMs), step: best(stepMs) },
  stepOverInferenceForward: best(stepMs) / best(inferenceMs),
  stepOverTapeForward: best(stepMs) / best(tapeForwardMs),
  goal: 'step <= 3.5x the forward alone',
  peakRssMiB: { start: rssStart, afterForwards: rssForward, afterStep: rssStep },
  date: new Date().toISOString(),
};
log(
  `best: inference forward ${result.bestMs.inferenceForward.toFixed(0)} ms, tape forward ${result.bestMs.tapeForward.toFixed(0)} ms, forward+backward ${result.bestMs.step.toFixed(0)} ms (${result.stepOverInferenceForward.toFixed(2)}x / ${result.stepOverTapeForward.toFixed(2)}x)`,
);
if (!small) log(`wrote ${await writeResult('grad', result)}`);
else console.log(JSON.stringify(result, null, 2));
await grad.dispose();
await inference.dispose();
