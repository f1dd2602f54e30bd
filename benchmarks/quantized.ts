/**
 * `npm run bench:quantized`: the fp32, int8 and int4 profiles on the Qwen2.5-0.5B-shaped random model:
 * prefill tokens/s at 128 and 512 tokens, single-stream decode after a 128-token prompt, batch-32 decode, the
 * attention op's share of kernel time (onnxruntime's profiler), and fidelity against fp32 (per-hook relative
 * error, top-1 and greedy agreement). Context from the same run: the fp32 MatMul ceiling of the block GEMMs,
 * the int8 kernel alone (benchmarks/quantKernels.ts), and the CPU's instruction-set extensions. When
 * EMLENS_BENCH_PYTHON names a Python with torch and transformers, the HF peer (benchmarks/hfPeer.py) runs the
 * same shape with hooks on every layer, its rounds interleaved with emlens' rounds, and every ratio is reported.
 * Writes benchmarks/results/quantized.json; BENCH_SHORT=1 is a quick development run (written to
 * quantized-short.json, never the committed figures).
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { readConfig } from '../src/model/config.js';
import { measureFidelity } from '../src/model/fidelity.js';
import type { Profile } from '../src/model/graph/transformer.js';
import { profileWeightBytes } from '../src/model/graph/weightBytes.js';
import { loadModel, type Model } from '../src/model/model.js';
import { attentionShare } from './lib/attentionShare.js';
import { blockGemmShapes, measureMatMulCeiling, peakRssMiB } from './lib/hardware.js';
import { judgeQuantizedGoals, type QuantizedResult } from './lib/quantGoals.js';
import { benchIds, decodeRate, prefillRate } from './lib/rates.js';
import { measureKernels } from './quantKernels.js';
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

const SHORT = /^(1|true|yes)$/i.test(process.env.BENCH_SHORT ?? '');
const ROUNDS = envCount('BENCH_ROUNDS', SHORT ? 1 : 3);
const NEW_TOKENS = envCount('BENCH_NEW_TOKENS', SHORT ? 8 : 32);
const PROMPT = 128;
const LENGTHS = [128, 512] as const;
const PROFILES: readonly Profile[] = ['fp32', 'int8', 'int4'];
const log = benchLog('quantized');

await ensureBenchModel(log);
const ids = benchIds;

/** The CPU's relevant extensions, from /proc/cpuinfo (onnxruntime's MLAS dispatches on the same cpuid bits). */
async function isa(): Promise<{ flags: string[]; int8Kernel: string }> {
  const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(/\s+/));
  const wanted = [
    'avx2',
    'avx512f',
    'avx512bw',
    'avx512_vnni',
    'avx_vnni',
    'avx512_bf16',
    'amx_tile',
    'amx_int8',
  ];
  const have = wanted.filter((f) => flags.has(f));
  const int8Kernel = flags.has('amx_int8')
    ? 'AMX'
    : flags.has('avx512_vnni')
      ? 'AVX-512 VNNI'
      : flags.has('avx_vnni')
        ? 'AVX-VNNI'
        : flags.has('avx2')
          ? 'AVX2'
          : 'SSE';
  return { flags: have, int8Kernel };
}

interface Round {
  prefill: Record<number, number>;
  decode: number;
  batch32: number;
}

const decodeTokensPerS = async (m: Model, batch: number, tokens: number) =>
  (await decodeRate(m, batch, PROMPT, tokens)).tokensPerS;

async function measureRound(profile: Profile): Promise<Round> {
  const m = await loadModel(modelDir, { cacheDir, profile, onProgress: log });
  try {
    const prefill: Record<number, number> = {};
    for (const n of LENGTHS) prefill[n] = await prefillRate(m, n);
    await decodeTokensPerS(m, 1, 4); // warm-up
    const decode = await decodeTokensPerS(m, 1, NEW_TOKENS);
    const batch32 = await decodeTokensPerS(m, 32, Math.max(4, Math.round(NEW_TOKENS / 2)));
    return { prefill, decode, batch32 };
  } finally {
    await m.dispose();
  }
}

// ---- the HF peer, if asked for
const python = process.env.EMLENS_BENCH_PYTHON;
type PeerRound = { prefill: Record<string, number>; decodeTokensPerSecond: number };
let peer: { round(): Promise<PeerRound>; close(): void; versions: unknown } | null = null;
if (python) {
  const shape = JSON.parse(await readFile(join(modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const child = spawn(
    python,
    [
      join(import.meta.dirname, 'hfPeer.py'),
      JSON.stringify({
        dModel: shape.hidden_size,
        intermediateSize: shape.intermediate_size,
        numLayers: shape.num_hidden_layers,
        numHeads: shape.num_attention_heads,
        numKvHeads: shape.num_key_value_heads,
        vocabSize: shape.vocab_size,
        tieWordEmbeddings: shape.tie_word_embeddings,
        ropeTheta: shape.rope_theta,
        threads: cpus().length,
      }),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const l = await lines.next();
    if (l.done) throw new Error('the HF peer exited early (see its stderr above)');
    return JSON.parse(l.value) as unknown;
  };
  log(`starting the HF peer: ${python} benchmarks/hfPeer.py`);
  const versions = await next();
  peer = {
    versions,
    round: async () => {
      child.stdin.write(`round ${LENGTHS.join(',')} ${PROMPT} ${NEW_TOKENS}\n`);
      return (await next()) as PeerRound;
    },
    close: () => child.stdin.end(),
  };
}

// ---- same-run context: fp32 MatMul ceiling and the int8 kernel alone, on the block GEMM shapes
const spec = await readConfig(modelDir);
const ceiling = await measureMatMulCeiling(blockGemmShapes(spec), 512, { reps: 5 });
const kernels = await measureKernels({
  rows: [1, 512],
  rounds: 3,
  layers: 4,
  kernels: ['fp32', 'dq-int8', 'nbits4-b128'],
});
log(`fp32 MatMul ceiling ${ceiling.gflops.toFixed(0)} GFLOP/s at 512 rows`);

// ---- interleaved rounds
const loadAtStart = loadavg().map((x) => Number(x.toFixed(2)));
const roundLoads: number[] = [];
const rounds = new Map<Profile, Round[]>(PROFILES.map((p) => [p, []]));
const peerRounds: PeerRound[] = [];
for (let r = 0; r < ROUNDS; r++) {
  for (const p of inRoundOrder(PROFILES, r)) {
    roundLoads.push(Number(loadavg()[0]!.toFixed(2)));
    const got = await measureRound(p);
    rounds.get(p)!.push(got);
    log(
      `round ${r + 1}/${ROUNDS} ${p}: prefill ${LENGTHS.map((n) => `${n}: ${got.prefill[n]!.toFixed(0)}`).join(', ')} tok/s, decode ${got.decode.toFixed(1)} tok/s, batch 32 ${got.batch32.toFixed(0)} tok/s`,
    );
    if (peer) {
      const pr = await peer.round();
      peerRounds.push(pr);
      log(
        `round ${r + 1}/${ROUNDS} HF peer: prefill ${LENGTHS.map((n) => `${n}: ${pr.prefill[n]!.toFixed(0)}`).join(', ')} tok/s, decode ${pr.decodeTokensPerSecond.toFixed(1)} tok/s`,
      );
    }
  }
}
peer?.close();
const best = (xs: number[]) => Math.max(...xs);
const profiles: Record<string, unknown> = {};
for (const p of PROFILES) {
  const rs = rounds.get(p)!;
  log(`${p}: attention share (profiling)`);
  profiles[p] = {
    weightBytes: profileWeightBytes(spec, p),
    prefill: Object.fromEntries(
      LENGTHS.map((n) => [
        n,
        { tokensPerSecond: best(rs.map((x) => x.prefill[n]!)), rounds: rs.map((x) => x.prefill[n]) },
      ]),
    ),
    decode: { tokensPerSecond: best(rs.map((x) => x.decode)), rounds: rs.map((x) => x.decode) },
    decodeBatch32: { tokensPerSecond: best(rs.map((x) => x.batch32)) },
    attention: await attentionShare({ modelDir, cacheDir, work, profile: p, ops: 'onnx' }),
  };
}
const get = (p: Profile) =>
  profiles[p] as {
    prefill: Record<number, { tokensPerSecond: number }>;
    decode: { tokensPerSecond: number };
    decodeBatch32: { tokensPerSecond: number };
  };
const peerBest = peer
  ? {
      prefill: Object.fromEntries(LENGTHS.map((n) => [n, best(peerRounds.map((x) => x.prefill[n]!))])),
      decode: best(peerRounds.map((x) => x.decodeTokensPerSecond)),
    }
  : null;
const ratios: Record<string, number> = {};
for (const p of ['int8', 'int4'] as const) {
  for (const n of LENGTHS)
    ratios[`${p}.prefill${n}.vsFp32`] =
      get(p).prefill[n]!.tokensPerSecond / get('fp32').prefill[n]!.tokensPerSecond;
  ratios[`${p}.decode.vsFp32`] = get(p).decode.tokensPerSecond / get('fp32').decode.tokensPerSecond;
  ratios[`${p}.batch32.vsSingle`] = get(p).decodeBatch32.tokensPerSecond / get(p).decode.tokensPerSecond;
}
if (peerBest) {
  for (const p of PROFILES) {
    for (const n of LENGTHS)
      ratios[`${p}.prefill${n}.vsPeer`] = get(p).prefill[n]!.tokensPerSecond / peerBest.prefill[n]!;
    ratios[`${p}.decode.vsPeer`] = get(p).decode.tokensPerSecond / peerBest.decode;
  }
}
const bestQuantDecode = (['int8', 'int4'] as const).reduce((a, p) =>
  get(p).decode.tokensPerSecond > get(a).decode.tokensPerSecond ? p : a,
);

// ---- fidelity against fp32 on this random 0.5B-shaped model
log('fidelity against fp32');
const reference = await loadModel(modelDir, { cacheDir });
const fidelity: Record<string, unknown> = {};
for (const p of ['int8', 'int4'] as const) {
  const q = await loadModel(modelDir, { cacheDir, profile: p });
  const f = await measureFidelity(reference, q, [ids(48, 3, spec.vocabSize), ids(32, 4, spec.vocabSize)], {
    greedyTokens: SHORT ? 4 : 12,
  });
  await q.dispose();
  fidelity[p] = {
    ...f,
    hooks: Object.fromEntries(f.hooks.map((h) => [h.hook, Number(h.relError.toFixed(5))])),
  };
  log(
    `${p}: worst hook ${f.worstHook} ${(100 * f.maxHookRelError).toFixed(2)}%, logits ${(100 * f.logitsRelError).toFixed(2)}%, top-1 ${f.top1Agreement.toFixed(3)}, greedy ${f.greedyPrefixAgreement.toFixed(3)}`,
  );
}
await reference.dispose();

const out = {
  benchmark: 'quantized',
  date: new Date().toISOString(),
  short: SHORT,
  loadAverage: {
    atStart: loadAtStart,
    atRoundStarts: roundLoads,
    atEnd: loadavg().map((x) => Number(x.toFixed(2))),
  },
  machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version, isa: await isa() },
  settings: { rounds: ROUNDS, newTokens: NEW_TOKENS, promptTokens: PROMPT, lengths: LENGTHS },
  ceiling: { fp32MatMulGflops512: ceiling.gflops, kernels },
  profiles,
  peer: peer ? { versions: peer.versions, best: peerBest, rounds: peerRounds } : null,
  ratios,
  bestQuantizedDecode: bestQuantDecode,
  fidelity,
  peakRssMiB: peakRssMiB(),
};
const goals = judgeQuantizedGoals(out as unknown as QuantizedResult);
log(`ratios ${JSON.stringify(ratios)}`);
for (const g of goals)
  log(`${g.met ? 'met' : 'MISSED'}: ${g.goal}: ${g.measured}${g.bound ? ` (${g.bound})` : ''}`);
log(`wrote ${await writeResult(SHORT ? 'quantized-short' : 'quantized', { ...out, goals })}`);
