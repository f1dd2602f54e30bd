/**
 * `npm run bench:attention`: the two attention op sets (`onnx`: opset-23 Attention; `contrib`: com.microsoft
 * GroupQueryAttention) on the CPU, for the fp32, int8 and int4 profiles of the Qwen2.5-0.5B-shaped random model,
 * in a 512-token prefill and in single-stream decode after a 128-token prompt: the attention op's kernel ms and
 * share of kernel time (onnxruntime's profiler) and the wall ms per forward / per step. Rounds are interleaved
 * (BENCH_ROUNDS, default 2) and the best round is kept. The measurement behind the CPU default op set
 * (src/model/model.ts). Writes benchmarks/results/attention.json.
 */
import { loadavg } from 'node:os';
import type { AttentionOps } from '../src/model/graph/attention.js';
import type { Profile } from '../src/model/graph/transformer.js';
import { attentionShare, type RegimeShare } from './lib/attentionShare.js';
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

const log = benchLog('attention');
const ROUNDS = envCount('BENCH_ROUNDS', 2);
const PROFILES: readonly Profile[] = ['fp32', 'int8', 'int4'];
const OPS: readonly AttentionOps[] = ['onnx', 'contrib'];
await ensureBenchModel(log);

const configs = PROFILES.flatMap((profile) => OPS.map((ops) => ({ profile, ops })));
const got = new Map<string, { prefill: RegimeShare; decode: RegimeShare }[]>();
const loads: number[][] = [];
for (let r = 0; r < ROUNDS; r++) {
  for (const c of inRoundOrder(configs, r)) {
    const key = `${c.profile}/${c.ops}`;
    loads.push(loadavg());
    const s = await attentionShare({ modelDir, cacheDir, work, ...c });
    got.set(key, [...(got.get(key) ?? []), s]);
    log(
      `round ${r + 1}/${ROUNDS} ${key}: prefill 512 ${s.prefill.wallMs.toFixed(0)} ms (attention ${s.prefill.attentionMs.toFixed(0)} ms, ${(100 * s.prefill.share).toFixed(1)}%), decode step ${s.decode.wallMs.toFixed(1)} ms (attention ${s.decode.attentionMs.toFixed(2)} ms, ${(100 * s.decode.share).toFixed(1)}%)`,
    );
  }
}

/** The round with the least wall time (the least disturbed by other load on the host). */
const bestOf = (xs: RegimeShare[]) => xs.reduce((a, b) => (b.wallMs < a.wallMs ? b : a));
const results: Record<string, Record<string, Record<string, unknown>>> = {};
const fastest: Record<string, Record<string, AttentionOps>> = {};
for (const profile of PROFILES) {
  results[profile] = Object.fromEntries(OPS.map((ops) => [ops, {}]));
  fastest[profile] = {};
  for (const regime of ['prefill', 'decode'] as const) {
    let win: AttentionOps = 'onnx';
    let winMs = Number.POSITIVE_INFINITY;
    for (const ops of OPS) {
      const rs = got.get(`${profile}/${ops}`)!.map((x) => x[regime]);
      const b = bestOf(rs);
      results[profile]![ops]![regime] = {
        ...b,
        wallMsRounds: rs.map((x) => x.wallMs),
      };
      if (b.wallMs < winMs) {
        winMs = b.wallMs;
        win = ops;
      }
    }
    fastest[profile]![regime] = win;
  }
}
const out = {
  benchmark: 'attention',
  date: new Date().toISOString(),
  settings: { rounds: ROUNDS, prefillTokens: 512, promptTokens: 128, decodeSteps: 16 },
  loadAverage: { atRoundStarts: loads.map((l) => Number(l[0]!.toFixed(2))) },
  profiles: results,
  fastestByWall: fastest,
};
log(`fastest by wall time: ${JSON.stringify(fastest)}`);
log(`wrote ${await writeResult('attention', out)}`);
