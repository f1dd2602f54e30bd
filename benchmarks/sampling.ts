/**
 * `npm run bench:sampling`: milliseconds per drawn token on rows of 151,936 random logits (the Qwen2.5 vocabulary),
 * for each sampling setting `generate` offers. Writes benchmarks/results/sampling.json.
 */
import { type SamplingParams, sampleToken } from '../src/generate/sampling.js';
import { Rng } from '../src/util/random.js';
import { benchLog, envCount, writeResult } from './workspace.js';

const VOCAB = 151936;
const DRAWS = envCount('BENCH_REPS', 200);
const log = benchLog('sampling');
const seeded = new Rng(1);
const rows = Array.from({ length: 8 }, () =>
  Float32Array.from({ length: VOCAB }, () => (seeded.next() - 0.5) * 8),
);
const settings: SamplingParams[] = [
  { temperature: 0 },
  { temperature: 0.8 },
  { temperature: 0.8, topK: 50 },
  { temperature: 0.8, topP: 0.95 },
];
const rng = new Rng(2);
const results = settings.map((params) => {
  // rows[i % rows.length] is in range: rows is a non-empty constant list.
  for (let i = 0; i < 20; i++) sampleToken(rows[i % rows.length]!, params, rng); // warm-up: JIT
  const t = performance.now();
  for (let i = 0; i < DRAWS; i++) sampleToken(rows[i % rows.length]!, params, rng);
  const msPerRow = (performance.now() - t) / DRAWS;
  log(`${JSON.stringify(params)}: ${msPerRow.toFixed(3)} ms per row`);
  return { params, msPerRow };
});
await writeResult('sampling', {
  benchmark: 'sampling',
  date: new Date().toISOString(),
  vocab: VOCAB,
  draws: DRAWS,
  results,
  command: 'npm run bench:sampling',
});
