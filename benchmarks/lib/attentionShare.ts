/**
 * The attention op's share of onnxruntime kernel time, for one profile and one attention op set, in a 512-token
 * prefill and in single-stream decode steps after a 128-token prompt (onnxruntime's own profiler, see
 * profile.ts). Shared by bench:quantized (which reports the share per profile) and bench:attention (which
 * compares the op sets to pick the CPU default).
 */
import { join } from 'node:path';
import { generate } from '../../src/generate/generate.js';
import type { AttentionOps } from '../../src/model/graph/attention.js';
import type { Profile } from '../../src/model/graph/transformer.js';
import { loadModel, type Model } from '../../src/model/model.js';
import { profilingOptions, readKernelProfile } from './profile.js';

/** The op types that make up attention in each op set (the attention kernel itself, then RoPE). */
export const ATTENTION_OP_TYPES: Readonly<Record<AttentionOps, { attention: string; rotary: string }>> = {
  onnx: { attention: 'Attention', rotary: 'RotaryEmbedding' },
  contrib: { attention: 'GroupQueryAttention', rotary: 'RotaryEmbedding' },
};

export interface RegimeShare {
  /** Kernel ms per run of the attention op alone. */
  readonly attentionMs: number;
  /** Kernel ms per run of the RoPE op. */
  readonly rotaryMs: number;
  /** Kernel ms per run, all ops. */
  readonly kernelMs: number;
  /** attentionMs / kernelMs. */
  readonly share: number;
  /** Wall ms per run (prefill: one forward; decode: one step), profiling on. */
  readonly wallMs: number;
  readonly topOps: Record<string, number>;
}

export interface AttentionShareOptions {
  readonly modelDir: string;
  readonly cacheDir: string;
  readonly work: string;
  readonly profile: Profile;
  readonly ops: AttentionOps;
  readonly prefillTokens?: number;
  readonly promptTokens?: number;
  readonly decodeSteps?: number;
}

const ids = (n: number, seed: number, vocab: number) =>
  Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 11) % vocab);

/** Measures the attention share of one profile and op set in prefill and decode. */
export async function attentionShare(
  o: AttentionShareOptions,
): Promise<{ prefill: RegimeShare; decode: RegimeShare }> {
  const types = ATTENTION_OP_TYPES[o.ops];
  const measure = async (run: (m: Model) => Promise<number>, skip: number): Promise<RegimeShare> => {
    const prefix = join(o.work, `ort-profile-attention-${o.profile}-${o.ops}`);
    const m = await loadModel(o.modelDir, {
      cacheDir: o.cacheDir,
      profile: o.profile,
      ops: o.ops,
      sessionOptions: profilingOptions(prefix),
    });
    let wallMs: number;
    try {
      wallMs = await run(m);
    } finally {
      await m.dispose();
    }
    const p = await readKernelProfile(prefix, skip);
    const attentionMs = p.msPerRunByOp.get(types.attention) ?? 0;
    return {
      attentionMs: round(attentionMs),
      rotaryMs: round(p.msPerRunByOp.get(types.rotary) ?? 0),
      kernelMs: round(p.totalMsPerRun),
      share: Number((attentionMs / p.totalMsPerRun).toFixed(4)),
      wallMs: round(wallMs),
      topOps: Object.fromEntries([...p.msPerRunByOp].slice(0, 6).map(([k, v]) => [k, round(v)])),
    };
  };
  const n = o.prefillTokens ?? 512;
  const prefill = await measure(async (m) => {
    const x = [ids(n, 1, m.spec.vocabSize)];
    await m.forward(x); // arena growth: skipped in the profile too
    let best = Number.POSITIVE_INFINITY;
    for (let r = 0; r < 3; r++) {
      const t = performance.now();
      await m.forward(x);
      best = Math.min(best, performance.now() - t);
    }
    return best;
  }, 1);
  const steps = o.decodeSteps ?? 16;
  // generate runs the prompt (one run), then one run per new token after the first; skip the prompt and the
  // first three steps (the cache's arena grows on them).
  const decode = await measure(async (m) => {
    const at: number[] = [];
    await generate(m, [ids(o.promptTokens ?? 128, 2, m.spec.vocabSize)], {
      maxNewTokens: steps,
      temperature: 0,
      eosTokenIds: [],
      onToken: () => at.push(performance.now()),
    });
    return (at[at.length - 1]! - at[3]!) / (at.length - 4);
  }, 4);
  return { prefill, decode };
}

const round = (x: number) => Number(x.toFixed(3));
