/**
 * `npm run bench:scale`: whether the quantised profiles bring 7B-14B models within one CPU box. For each shape
 * it generates a random bf16 model folder under benchmarks/.work (after checking there is disk for it and its
 * graphs), then per profile runs two child processes: the first builds the graph and loads it, the second loads
 * the built graph; each reports its peak resident memory (VmHWM of /proc/self/status) and the second its prefill
 * and single-stream decode tokens/s. The folder and its graphs are deleted afterwards.
 *
 *   BENCH_SCALE_SHAPES=7b,14b (default; also 0.5b, 1.5b)  BENCH_SCALE_PROFILES=int8,int4 (default; also fp32)
 *
 * Writes benchmarks/results/scale.json (or scale-<shapes>.json for other shape lists, so a small development run
 * never replaces the 7B/14B figures). Goals (issue #16): 7B int4 <= 8 GiB and int8 <= 12 GiB, 14B int4 <= 14 GiB.
 */
import { spawn } from 'node:child_process';
import { readFile, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { generate } from '../src/generate/generate.js';
import type { Profile } from '../src/model/graph/transformer.js';
import { profileWeightBytes } from '../src/model/graph/weightBytes.js';
import { loadModel } from '../src/model/model.js';
import { parameterCount } from '../src/model/spec.js';
import { makeTinyModel, QWEN25_05B_SHAPE, type TinyModelOptions, tinySpec } from '../src/model/tiny.js';
import { benchLog, work, writeResult } from './workspace.js';

const qwen = (o: Partial<TinyModelOptions>): TinyModelOptions => ({
  ...QWEN25_05B_SHAPE,
  vocabSize: 152064,
  tieWordEmbeddings: false,
  ...o,
});
/** The Qwen2.5 shapes (config.json of each release). */
export const SCALE_SHAPES: Readonly<Record<string, TinyModelOptions>> = {
  '0.5b': QWEN25_05B_SHAPE,
  '1.5b': qwen({
    numLayers: 28,
    dModel: 1536,
    numHeads: 12,
    numKvHeads: 2,
    intermediateSize: 8960,
    vocabSize: 151936,
    tieWordEmbeddings: true,
  }),
  '7b': qwen({ numLayers: 28, dModel: 3584, numHeads: 28, numKvHeads: 4, intermediateSize: 18944 }),
  '14b': qwen({ numLayers: 48, dModel: 5120, numHeads: 40, numKvHeads: 8, intermediateSize: 13824 }),
};
const GOALS_GIB: Readonly<Record<string, Partial<Record<Profile, number>>>> = {
  '7b': { int4: 8, int8: 12 },
  '14b': { int4: 14 },
};

const log = benchLog('scale');
const PROMPT = 128;
const NEW_TOKENS = 8;

/** Peak resident memory of this process, in GiB (VmHWM). */
async function vmHwmGiB(): Promise<number> {
  const status = await readFile('/proc/self/status', 'utf8');
  const kb = Number(/^VmHWM:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? Number.NaN);
  return kb / 2 ** 20;
}

/** The child: load (building if `build`), measure, print one JSON line. */
async function child(dir: string, cacheDir: string, profile: Profile, measure: boolean): Promise<void> {
  const t0 = performance.now();
  const m = await loadModel(dir, { profile, cacheDir, onProgress: log });
  const loadedMs = performance.now() - t0;
  const afterLoad = await vmHwmGiB();
  const result: Record<string, number> = {
    graphBuildMs: m.loadStats.graphBuildMs,
    sessionLoadMs: m.loadStats.sessionLoadMs,
    loadMs: loadedMs,
    peakRssGiBAfterLoad: afterLoad,
  };
  if (measure) {
    const ids = Array.from({ length: PROMPT }, (_, i) => (i * 7919 + 11) % m.spec.vocabSize);
    await m.forward([ids]);
    const t = performance.now();
    await m.forward([ids]);
    result.prefill128TokensPerSecond = PROMPT / ((performance.now() - t) / 1000);
    const stepAt: number[] = [];
    await generate(m, [ids], {
      maxNewTokens: NEW_TOKENS,
      temperature: 0,
      eosTokenIds: [],
      onToken: () => stepAt.push(performance.now()),
    });
    result.decodeTokensPerSecond = (NEW_TOKENS - 1) / ((stepAt[NEW_TOKENS - 1]! - stepAt[0]!) / 1000);
  }
  await m.dispose();
  result.peakRssGiB = await vmHwmGiB();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function runChild(args: string[]): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [...process.execArgv, import.meta.filename, '--child', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    p.on('error', reject);
    p.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0 || !last.startsWith('{'))
        reject(new Error(`the child for ${args.join(' ')} failed (exit ${code})`));
      else resolve(JSON.parse(last) as Record<string, number>);
    });
  });
}

async function main(): Promise<void> {
  const shapes = (process.env.BENCH_SCALE_SHAPES ?? '7b,14b').split(',').map((s) => s.trim().toLowerCase());
  const profiles = (process.env.BENCH_SCALE_PROFILES ?? 'int8,int4')
    .split(',')
    .map((s) => s.trim()) as Profile[];
  for (const s of shapes) {
    if (!(s in SCALE_SHAPES))
      throw new Error(
        `unknown shape '${s}' in BENCH_SCALE_SHAPES; use ${Object.keys(SCALE_SHAPES).join(', ')}.`,
      );
  }
  for (const p of profiles) {
    if (!['fp32', 'int8', 'int4'].includes(p))
      throw new Error(`unknown profile '${p}' in BENCH_SCALE_PROFILES; use fp32, int8, int4.`);
  }
  const results: Record<string, unknown> = {};
  for (const name of shapes) {
    const options = SCALE_SHAPES[name]!;
    const spec = tinySpec(options);
    const params = parameterCount(spec);
    const dir = join(work, `scale-${name}`);
    const cacheDir = join(work, `scale-${name}-cache`);
    // bf16 weights, plus every profile's graph data, plus 5% slack
    const need = (2 * params + profiles.reduce((a, p) => a + profileWeightBytes(spec, p), 0)) * 1.05;
    const fs = await statfs(work).catch(async () => {
      const { mkdir } = await import('node:fs/promises');
      await mkdir(work, { recursive: true });
      return statfs(work);
    });
    const free = fs.bavail * fs.bsize;
    if (free < need) {
      throw new Error(
        `bench:scale needs ${(need / 2 ** 30).toFixed(1)} GiB free under ${work} for the ${name} shape (bf16 folder and its ${profiles.join('/')} graphs) but ${(free / 2 ** 30).toFixed(1)} GiB are free; free disk space or pick a smaller shape with BENCH_SCALE_SHAPES.`,
      );
    }
    await rm(dir, { recursive: true, force: true });
    await rm(cacheDir, { recursive: true, force: true });
    try {
      log(`${name}: generating a random bf16 folder (${(params / 1e9).toFixed(2)}B parameters)`);
      const t0 = performance.now();
      await makeTinyModel(dir, { ...options, dtype: 'BF16' });
      const generateS = (performance.now() - t0) / 1000;
      const perProfile: Record<string, unknown> = {};
      for (const profile of profiles) {
        log(`${name} ${profile}: build + load (child process)`);
        const build = await runChild([dir, cacheDir, profile, 'build']);
        log(`${name} ${profile}: load + measure (child process)`);
        const run = await runChild([dir, cacheDir, profile, 'measure']);
        const goal = GOALS_GIB[name]?.[profile];
        const peak = Math.max(build.peakRssGiB!, run.peakRssGiB!);
        perProfile[profile] = {
          weightBytes: profileWeightBytes(spec, profile),
          buildSeconds: build.graphBuildMs! / 1000,
          buildPeakRssGiB: build.peakRssGiB,
          loadSeconds: run.loadMs! / 1000,
          loadPeakRssGiB: run.peakRssGiBAfterLoad,
          runPeakRssGiB: run.peakRssGiB,
          peakRssGiB: peak,
          prefill128TokensPerSecond: run.prefill128TokensPerSecond,
          decodeTokensPerSecond: run.decodeTokensPerSecond,
          ...(goal === undefined ? {} : { goalPeakRssGiB: goal, met: peak <= goal }),
        };
        log(`${name} ${profile}: ${JSON.stringify(perProfile[profile])}`);
      }
      results[name] = { parameters: params, generateSeconds: generateS, profiles: perProfile };
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(cacheDir, { recursive: true, force: true });
    }
  }
  const defaultShapes = shapes.join(',') === '7b,14b';
  const file = defaultShapes ? 'scale' : `scale-${shapes.join('-')}`;
  log(
    `wrote ${await writeResult(file, { benchmark: 'scale', date: new Date().toISOString(), shapes: results })}`,
  );
}

const i = process.argv.indexOf('--child');
if (i >= 0) {
  const [dir, cacheDir, profile, mode] = process.argv.slice(i + 1);
  await child(dir!, cacheDir!, profile as Profile, mode === 'measure');
} else {
  await main();
}
