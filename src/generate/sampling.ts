/**
 * Seeded sampling of one token from a row of logits, with the Hugging Face `generate` warpers applied in their
 * order: temperature, then top-k, then top-p (nucleus). Temperature 0 is greedy decoding.
 */
import { EmlensError } from '../errors.js';
import { Rng } from '../util/random.js';

export interface SamplingParams {
  /** 0: greedy (argmax); otherwise logits are divided by it before softmax. Default 1. */
  readonly temperature?: number;
  /** Keep only the `topK` most likely tokens (0: off). Default 0. */
  readonly topK?: number;
  /**
   * Nucleus sampling: keep the smallest set of most likely tokens whose probability sums to at least `topP`
   * (always at least one token; 1: off). Default 1.
   */
  readonly topP?: number;
}

/** Checks sampling parameters, throwing an EmlensError naming the bad one. */
export function checkSamplingParams(p: SamplingParams): Required<SamplingParams> {
  const temperature = p.temperature ?? 1;
  const topK = p.topK ?? 0;
  const topP = p.topP ?? 1;
  if (!Number.isFinite(temperature) || temperature < 0) {
    throw new EmlensError(
      `temperature must be a finite number >= 0 (0 is greedy), not ${temperature}; pass e.g. 0.7.`,
    );
  }
  if (!Number.isInteger(topK) || topK < 0) {
    throw new EmlensError(`top_k must be a non-negative integer (0 turns it off), not ${topK}.`);
  }
  if (!(topP > 0 && topP <= 1)) {
    throw new EmlensError(`top_p must be in (0, 1] (1 turns it off), not ${topP}.`);
  }
  return { temperature, topK, topP };
}

/**
 * The random stream of one (prompt, sample) pair: what a row draws depends only on the seed and on which
 * prompt and sample it is, never on the other rows of its batch.
 */
export function sampleRng(seed: number, promptIndex: number, sampleIndex: number): Rng {
  return Rng.derive(seed, `generate/${promptIndex}/${sampleIndex}`);
}

/** Index of the largest logit (the first one on ties, as `torch.argmax`). NaN never wins. */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let max = Number.NEGATIVE_INFINITY;
  // i < logits.length
  for (let i = 0; i < logits.length; i++) {
    if (logits[i]! > max) {
      max = logits[i]!;
      best = i;
    }
  }
  return best;
}

// Scratch buffers reused across calls (JS is single-threaded): a full-vocabulary draw allocates nothing.
let weights = new Float64Array(0);
let weights2 = new Float64Array(0);
let order = new Int32Array(0);
let crossing = new Int32Array(0);
let buckets = new Uint16Array(0);
const BUCKETS = 65536;
const bucketMass = new Float64Array(BUCKETS);

function scratch(n: number): void {
  if (weights.length < n) {
    weights = new Float64Array(n);
    weights2 = new Float64Array(n);
    order = new Int32Array(n);
    crossing = new Int32Array(n);
    buckets = new Uint16Array(n);
  }
}

/** True when token a ranks before token b: larger logit first, then smaller index (a stable sort). */
function before(logits: ArrayLike<number>, a: number, b: number): boolean {
  // callers pass token ids, which are < logits.length
  return logits[a]! > logits[b]! || (logits[a] === logits[b] && a < b);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
let keys = new Float64Array(0);

/** Float32 bits made order-preserving: flip every bit of negatives, only the sign bit of positives. */
function orderBits(bits: number): number {
  return bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}

/** A float's order-preserving 32 bits (as float32; -0 as +0): larger value, larger result. */
function orderedBits(x: number): number {
  f32[0] = x === 0 ? 0 : x;
  return orderBits(u32[0]!); // u32 has length 1
}

/**
 * Sorts token ids in place, best first (larger logit, then smaller id). For float32 logits and vocabularies
 * below 2^21 each (logit, id) packs exactly into one float64 — the logit's order-preserving 32 bits above 21
 * id bits — so a native numeric sort does it; anything else falls back to a comparator sort.
 */
function sortByRank(logits: ArrayLike<number>, ids: Int32Array): void {
  if (!(logits instanceof Float32Array) || logits.length > 1 << 21) {
    ids.sort((a, b) => (before(logits, a, b) ? -1 : 1));
    return;
  }
  const n = ids.length;
  if (keys.length < n) keys = new Float64Array(n);
  const k = keys.subarray(0, n);
  // descending logit, then ascending id; j < n = ids.length = k.length, and ids are token ids (< logits.length)
  for (let j = 0; j < n; j++) k[j] = (0xffffffff - orderedBits(logits[ids[j]!]!)) * 2097152 + ids[j]!;
  k.sort();
  for (let j = 0; j < n; j++) ids[j] = k[j]! % 2097152;
}

/** The `k` highest-ranked token ids, best first (a size-k min-heap, O(V log k)). */
export function topKIndices(logits: ArrayLike<number>, k: number): Int32Array {
  const v = logits.length;
  k = Math.min(k, v);
  const heap = new Int32Array(k); // heap[0] is the worst kept token
  // Every heap index below is < k = heap.length (checked against k, or a parent/child of such an index).
  const worse = (a: number, b: number) => before(logits, b, a);
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < k && worse(heap[l]!, heap[m]!)) m = l;
      if (r < k && worse(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      const t = heap[i]!;
      heap[i] = heap[m]!;
      heap[m] = t;
      i = m;
    }
  };
  for (let i = 0; i < k; i++) {
    heap[i] = i;
    for (let j = i; j > 0; ) {
      const p = (j - 1) >> 1;
      if (!worse(heap[j]!, heap[p]!)) break;
      const t = heap[j]!;
      heap[j] = heap[p]!;
      heap[p] = t;
      j = p;
    }
  }
  for (let i = k; i < v; i++) {
    if (before(logits, i, heap[0]!)) {
      heap[0] = i;
      siftDown(0);
    }
  }
  sortByRank(logits, heap);
  return heap;
}

// Below e^-60 (relative to the top token) a weight is skipped: all of them together stay under 2^-53 of the
// total for any vocabulary below 10^9, so nothing a float64 draw can resolve changes.
const SKIPPED_BELOW = -60;

/** Fills `weights` with exp((logit - max) / T) (0 for skipped and NaN logits); returns their sum. */
function weigh(logits: ArrayLike<number>, max: number, temperature: number): number {
  let total = 0;
  // i < logits.length
  for (let i = 0; i < logits.length; i++) {
    const x = (logits[i]! - max) / temperature;
    const w = x > SKIPPED_BELOW ? Math.exp(x) : 0; // NaN -> 0
    weights[i] = w;
    total += w;
  }
  return total;
}

/**
 * {@link weigh}, and in the same pass the top-p buckets: `buckets[i]` = the high 16 order-preserving bits of
 * token i's logit (0 for weightless tokens, which are never needed to reach the target), and `bucketMass` the
 * weight in each bucket. Float32 logits are read through their bits, with no float-to-bits round trip.
 */
function weighAndBucket(logits: ArrayLike<number>, max: number, temperature: number): number {
  bucketMass.fill(0);
  const v = logits.length;
  const bits =
    logits instanceof Float32Array ? new Uint32Array(logits.buffer, logits.byteOffset, v) : undefined;
  let total = 0;
  // i < v = logits.length = bits.length; b < BUCKETS = bucketMass.length (a 16-bit value)
  for (let i = 0; i < v; i++) {
    const x = (logits[i]! - max) / temperature;
    if (!(x > SKIPPED_BELOW)) {
      weights[i] = 0; // NaN too
      buckets[i] = 0;
      continue;
    }
    const w = Math.exp(x);
    weights[i] = w;
    total += w;
    // -0 ranks as +0
    const b = (bits ? orderBits(logits[i] === 0 ? 0 : bits[i]!) : orderedBits(logits[i]!)) >>> 16;
    buckets[i] = b;
    bucketMass[b]! += w;
  }
  return total;
}

/**
 * Draws one token id from a row of logits (`[vocab]`). Greedy (temperature 0) draws nothing from `rng`;
 * every other call draws exactly one number, so a row's stream advances one step per generated token.
 *
 * Semantics follow Hugging Face: the logits are divided by the temperature, top-k keeps the k largest, then
 * top-p keeps, in descending order of probability, every token whose more likely predecessors hold less than
 * `topP` of the (renormalised) mass — the smallest set reaching `topP`, and never fewer than one token.
 */
export function sampleToken(logits: ArrayLike<number>, params: SamplingParams, rng: Rng | null): number {
  const { temperature, topK, topP } = checkSamplingParams(params);
  if (temperature === 0) return argmax(logits);
  if (!rng) throw new EmlensError('Sampling with temperature > 0 needs a random stream; pass an Rng.');
  const v = logits.length;
  scratch(v);
  // Candidates: order[0..count) with weights exp((logit - max) / T) in chosenW[0..count), best first; or,
  // when `full`, every token in id order with its weight in allW[id].
  const allW = weights;
  const chosenW = weights2;
  let count = v;
  let full = true;
  let total = 0;
  // Indices below are in range: scratch(v) sized the buffers to >= v; ids read from order/crossing/tie are
  // token ids (< v); count, kept and inCross never exceed v; bucket numbers are 16-bit (< BUCKETS).
  if (topK > 0 && topK < v) {
    const top = topKIndices(logits, topK);
    const max = logits[top[0]!]!; // 0 < topK: top is non-empty
    if (!(max > Number.NEGATIVE_INFINITY)) return argmax(logits);
    order.set(top);
    count = top.length;
    full = false;
    for (let j = 0; j < count; j++) {
      const w = Math.exp((logits[order[j]!]! - max) / temperature);
      chosenW[j] = Number.isNaN(w) ? 0 : w; // NaN -> 0
      total += chosenW[j]!;
    }
  } else {
    const max = logits[argmax(logits)]!;
    if (!(max > Number.NEGATIVE_INFINITY)) return argmax(logits); // all -inf (or NaN): nothing to sample
    // With top-p, the same pass buckets every token for the nucleus search below.
    total = topP < 1 ? weighAndBucket(logits, max, temperature) : weigh(logits, max, temperature);
  }

  if (topP < 1) {
    const target = topP * total;
    if (full) {
      // Without sorting the vocabulary: every token is bucketed by the high 16 of its logit's order-preserving
      // float32 bits (a higher bucket means a larger logit). Find the bucket where the mass from the top
      // reaches `target`, keep every token above it, and rank only that bucket's tokens: if it holds many
      // (flat logits), bucket them again by the low 16 bits first, after which the rest are float32 ties.
      let above = 0;
      let cross = BUCKETS - 1;
      for (; cross > 0 && above + bucketMass[cross]! < target; cross--) above += bucketMass[cross]!;
      let kept = 0;
      let inCross = 0;
      for (let i = 0; i < v; i++) {
        if (buckets[i]! > cross) {
          order[kept] = i;
          chosenW[kept++] = allW[i]!;
        } else if (buckets[i] === cross) crossing[inCross++] = i;
      }
      if (inCross > 1024) {
        bucketMass.fill(0);
        for (let j = 0; j < inCross; j++) {
          const b = orderedBits(logits[crossing[j]!]!) & 0xffff;
          buckets[j] = b;
          bucketMass[b]! += allW[crossing[j]!]!;
        }
        cross = BUCKETS - 1;
        for (; cross > 0 && above + bucketMass[cross]! < target; cross--) above += bucketMass[cross]!;
        let n = 0;
        for (let j = 0; j < inCross; j++) {
          const id = crossing[j]!;
          if (buckets[j]! > cross) {
            order[kept] = id;
            chosenW[kept++] = allW[id]!;
          } else if (buckets[j] === cross) crossing[n++] = id; // n <= j: compacts in place
        }
        inCross = n;
      }
      const tie = crossing.subarray(0, inCross);
      sortByRank(logits, tie);
      let cum = above;
      for (let j = 0; j < inCross && (kept === 0 || cum < target); j++) {
        order[kept] = tie[j]!;
        chosenW[kept++] = allW[tie[j]!]!;
        cum += allW[tie[j]!]!;
      }
      count = kept;
      total = cum;
      full = false;
    } else {
      let cum = 0;
      let keep = 0;
      while (keep < count && (keep === 0 || cum < target)) cum += chosenW[keep++]!;
      count = keep;
      total = cum;
    }
  }

  const u = rng.next() * total;
  let cum = 0;
  let last = -1;
  // j < count <= v, within allW, chosenW and order
  for (let j = 0; j < count; j++) {
    const w = full ? allW[j]! : chosenW[j]!;
    if (w <= 0) continue;
    cum += w;
    last = full ? j : order[j]!;
    if (u < cum) return last;
  }
  return last >= 0 ? last : argmax(logits); // rounding: u landed on the total
}
