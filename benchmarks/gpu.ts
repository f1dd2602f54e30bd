/**
 * `benchmarks/gpu.sh`: prefill and decode on the GPU device paths, for a machine with a real GPU (not CI).
 * For each device found (webgpu when a Vulkan/Metal/D3D12 adapter is there, cuda when its provider is
 * installed) and each profile (webgpu: fp32, fp16, int4; cuda: fp16, fp32, int8, int4), with the CPU's fp32 as
 * the same machine's reference: load time, prefill tokens/s at 128 and 512 tokens, greedy decode tokens/s at
 * batch 1 and 8 after a 128-token prompt, the bytes a decode step copied to host memory, and which providers
 * ran the nodes (onnxruntime's profiler). A configuration that fails records its error and the run goes on.
 *
 * On the Qwen2.5-0.5B-shaped random model of the other benchmarks; BENCH_GPU_SHAPE=tiny runs a 2-layer model
 * with short lengths instead (a dry run: SwiftShader can do it). Writes benchmarks/results/gpu-<date>.json
 * (gpu-<date>-tiny.json for the dry run).
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { pathExists } from '../src/io/files.js';
import { nodeAssignment, webgpuAdapterInfo } from '../src/model/deviceCheck.js';
import type { Profile } from '../src/model/graph/transformer.js';
import { loadModel } from '../src/model/model.js';
import { cudaAvailable, type Device } from '../src/model/session.js';
import { makeTinyModel } from '../src/model/tiny.js';
import { peakRssMiB } from './lib/hardware.js';
import { decodeRate, prefillRate } from './lib/rates.js';
import { benchLog, cacheDir, ensureBenchModel, modelDir, work, writeResult } from './workspace.js';

const TINY = process.env.BENCH_GPU_SHAPE === 'tiny';
const log = benchLog('gpu');
const LENGTHS = TINY ? [16, 64] : [128, 512];
const PROMPT = TINY ? 16 : 128;
const NEW_TOKENS = TINY ? 6 : 32;
const BATCH = 8;

let dir = modelDir;
if (TINY) {
  dir = join(work, 'gpu-tiny');
  if (!(await pathExists(join(dir, 'config.json')))) {
    await makeTinyModel(dir, { family: 'qwen2', seed: 3, numLayers: 2, dModel: 64 });
  }
} else {
  await ensureBenchModel(log);
}

const PLAN: [Device, Profile][] = [['cpu', 'fp32']];
const adapter = webgpuAdapterInfo();
PLAN.push(['webgpu', 'fp32'], ['webgpu', 'fp16'], ['webgpu', 'int4']);
const cuda = cudaAvailable();
if (cuda) PLAN.push(['cuda', 'fp16'], ['cuda', 'fp32'], ['cuda', 'int8'], ['cuda', 'int4']);
else log('the CUDA provider is not installed: cuda skipped');

const runs: Record<string, unknown>[] = [];
for (const [device, profile] of PLAN) {
  const name = `${device}/${profile}`;
  const t0 = performance.now();
  try {
    log(`${name}: loading`);
    const m = await loadModel(dir, { device, profile, cacheDir, onProgress: log });
    const loadS = (performance.now() - t0) / 1000;
    try {
      const prefill: Record<number, number> = {};
      for (const n of LENGTHS) prefill[n] = await prefillRate(m, n);
      await decodeRate(m, 1, PROMPT, 3); // warm-up
      const one = await decodeRate(m, 1, PROMPT, NEW_TOKENS);
      const batched = await decodeRate(m, BATCH, PROMPT, Math.max(4, NEW_TOKENS / 2));
      runs.push({
        device,
        profile,
        ops: m.ops,
        kvCacheOnDevice: m.deviceCache,
        loadS: Number(loadS.toFixed(2)),
        prefillTokensPerS: Object.fromEntries(
          Object.entries(prefill).map(([k, v]) => [k, Number(v.toFixed(1))]),
        ),
        decodeTokensPerS: Number(one.tokensPerS.toFixed(2)),
        [`batch${BATCH}DecodeTokensPerS`]: Number(batched.tokensPerS.toFixed(2)),
        hostBytesPerDecodeStep: {
          batch1Max: one.stats.maxStepHostBytes,
          [`batch${BATCH}Max`]: batched.stats.maxStepHostBytes,
        },
      });
      log(`${name}: prefill ${JSON.stringify(prefill)} tok/s, decode ${one.tokensPerS.toFixed(1)} tok/s`);
    } finally {
      await m.dispose();
    }
    if (device !== 'cpu') {
      const a = await nodeAssignment(dir, { device, profile, cacheDir });
      runs[runs.length - 1]!.providers = a.providers.map((p) => p.provider);
      runs[runs.length - 1]!.fallback = a.fallback;
    }
  } catch (e) {
    const error = String((e as Error).message ?? e).split('\n')[0];
    log(`${name}: failed: ${error}`);
    runs.push({ device, profile, error });
  }
}

const date = new Date().toISOString().slice(0, 10);
const path = await writeResult(`gpu-${date}${TINY ? '-tiny' : ''}`, {
  shape: TINY ? 'tiny (qwen2, 2 layers, d_model 64)' : 'Qwen2.5-0.5B (random weights)',
  lengths: { prefill: LENGTHS, prompt: PROMPT, newTokens: NEW_TOKENS, batch: BATCH },
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown' },
  webgpuAdapter: adapter.summary,
  cudaProvider: cuda,
  peakRssMiB: peakRssMiB(),
  runs,
});
log(`wrote ${path}`);
