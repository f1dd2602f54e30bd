/**
 * `npm run bench:collect`: activation collection on a Qwen2.5-0.5B-shaped random model, answer-mean of all 24
 * resid_post hooks: throughput against forward-only prefill on the same batches, and memory at 1k and 4k
 * records (it should not grow with the record count: the store holds one shard in memory at a time).
 * Writes benchmarks/results/collect.json.
 */
import { rm } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { collectToStore } from '../src/activations/collect.js';
import type { TokenizedRecord } from '../src/data/record.js';
import { loadModel } from '../src/model/model.js';
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

const log = benchLog('collect');
const records = envCount('BENCH_RECORDS', 4096);
const promptTokens = 8;
const answerTokens = 8;
const batchSize = 16;

await ensureBenchModel(log);
const model = await loadModel(modelDir, { cacheDir, onProgress: log });
const rng = new Rng(1);
const data: TokenizedRecord[] = Array.from({ length: records }, (_, i) => {
  const ids = Array.from({ length: promptTokens + answerTokens }, () => rng.int(model.spec.vocabSize));
  const mask = new Uint8Array(ids.length).fill(1, promptTokens);
  return { id: `r${i}`, ids, mask };
});
const tokensPerRecord = promptTokens + answerTokens;

// Forward-only prefill over the same batches (the first `sample` records), then collection of those records,
// in interleaved rounds that alternate which side goes first: the host is shared and its speed drifts, so each
// side is the best of its rounds. Many short rounds (about 3 s a side) leave less room for drift within one.
const sample = Math.min(128, records);
const rounds = envCount('BENCH_ROUNDS', 6);
await model.forward(data.slice(0, batchSize).map((r) => r.ids)); // warm up
const sampleStore = join(work, 'collect-sample');
const forwardRunsMs: number[] = [];
const collectRunsMs: number[] = [];
const forwardOnly = async () => {
  const t = performance.now();
  for (let b = 0; b < sample; b += batchSize) {
    await model.forward(data.slice(b, b + batchSize).map((r) => r.ids));
  }
  forwardRunsMs.push(performance.now() - t);
};
const collectSample = async () => {
  await rm(sampleStore, { recursive: true, force: true });
  const t = performance.now();
  await collectToStore(model, data.slice(0, sample), sampleStore, { batchSize, shardSize: 256 });
  collectRunsMs.push(performance.now() - t);
};
for (let round = 0; round < rounds; round++) {
  for (const side of inRoundOrder([forwardOnly, collectSample], round)) await side();
}
const tokS = (ms: number) => (sample * tokensPerRecord) / (ms / 1000);
const forwardTokS = tokS(Math.min(...forwardRunsMs));
const collectTokS = tokS(Math.min(...collectRunsMs));
log(
  `${sample} records, best of ${rounds} rounds: forward-only ${forwardTokS.toFixed(0)} tok/s, collect ${collectTokS.toFixed(0)} tok/s (ratio ${(collectTokS / forwardTokS).toFixed(3)})`,
);

// Memory with the record count: current RSS after 1k and after all records of one collection run.
const store = join(work, 'collect-full');
await rm(store, { recursive: true, force: true });
const rssAt: Record<string, number> = {};
const t = performance.now();
await collectToStore(model, data, store, {
  batchSize,
  shardSize: 256,
  onProgress: (done) => {
    if (done % 256 === 0 || done === records) {
      const rss = process.memoryUsage().rss / 2 ** 20;
      if (done === 1024 || done === records) rssAt[String(done)] = rss;
      if (done % 1024 === 0) log(`${done}/${records} records, rss ${rss.toFixed(0)} MiB`);
    }
  },
});
const fullMs = performance.now() - t;

const out = {
  benchmark: 'collect',
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version },
  model: 'Qwen2.5-0.5B shape (random weights), fp32 CPU',
  hooks: `blocks.*.hook_resid_post (${model.spec.numLayers})`,
  reduce: 'answer_mean',
  recordShape: { promptTokens, answerTokens, batchSize },
  sample: {
    records: sample,
    forwardOnlyTokPerS: forwardTokS,
    collectTokPerS: collectTokS,
    ratio: collectTokS / forwardTokS,
    rounds,
    forwardRunsMs,
    collectRunsMs,
  },
  full: { records, seconds: fullMs / 1000, tokPerS: (records * tokensPerRecord) / (fullMs / 1000) },
  rssMiB: { after1k: rssAt['1024'], [`after${records}`]: rssAt[String(records)] },
  peakRssMiB: peakRssMiB(),
  goals: { ratio: '>= 0.9', memory: 'does not grow with record count' },
  command: 'npm run bench:collect',
};
await writeResult('collect', out);
log(
  `rss after 1k ${rssAt['1024']?.toFixed(0)} MiB, after ${records} ${rssAt[String(records)]?.toFixed(0)} MiB; peak ${out.peakRssMiB.toFixed(0)} MiB`,
);
await model.dispose();
