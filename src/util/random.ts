/**
 * A small seeded PRNG: xoshiro128** (Blackman & Vigna), its 128-bit state filled from the seed by splitmix32.
 *
 * Every step is 32-bit integer arithmetic (`Math.imul`, shifts), so the integer stream is identical on every
 * platform. `normal()` also uses `Math.log/sqrt/cos/sin`; V8 implements those with its own fdlibm port rather
 * than the platform libm, so under Node the float stream is reproducible across machines too.
 */
export class Rng {
  // xoshiro128** state; never all zero (splitmix32 output makes that astronomically unlikely, and we guard it).
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  // Box–Muller yields normals in pairs; the second one is kept for the next call.
  private spare: number | null = null;

  /** @param seed any finite number; fractions are truncated. */
  constructor(seed: number) {
    this.s0 = this.s1 = this.s2 = this.s3 = 0;
    this.seed(foldSeed(seed), 0);
  }

  /**
   * An independent stream for `label` (e.g. a tensor name), so what one consumer draws does not depend on how
   * much another consumer drew before it.
   */
  static derive(seed: number, label: string): Rng {
    // FNV-1a over the UTF-16 code units of the label.
    let h = 0x811c9dc5;
    for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
    const rng = new Rng(0);
    rng.seed(foldSeed(seed), h >>> 0 || 1);
    return rng;
  }

  // State word i = splitmix32(a)_i XOR splitmix32(b)_i: distinct (seed, label) pairs give unrelated streams.
  private seed(a: number, b: number): void {
    const sa = splitmix32(a);
    const sb = splitmix32(b ^ 0x6a09e667);
    this.s0 = (sa() ^ (b ? sb() : 0)) >>> 0;
    this.s1 = (sa() ^ (b ? sb() : 0)) >>> 0;
    this.s2 = (sa() ^ (b ? sb() : 0)) >>> 0;
    this.s3 = (sa() ^ (b ? sb() : 0)) >>> 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
    this.spare = null;
  }

  /** Next raw 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n) (53-bit resolution, so bias is negligible for any safe-integer n). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`Rng.int needs a positive integer, got ${n}.`);
    return Math.floor(this.next() * n);
  }

  /** Standard normal sample (Box–Muller). */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const u1 = 1 - this.next(); // (0, 1]: keeps log finite
    const u2 = this.next();
    const r = Math.sqrt(-2 * Math.log(u1));
    const theta = 2 * Math.PI * u2;
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** `n` samples of N(0, std²) as float32. */
  normalArray(n: number, std = 1, mean = 0): Float32Array {
    const out = new Float32Array(n); // [n]
    for (let i = 0; i < n; i++) out[i] = mean + std * this.normal();
    return out;
  }

  /** Fisher–Yates shuffle in place; returns the same array. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      // j <= i < items.length: both in range (`as T`, not `!`: T itself may include undefined)
      const tmp = items[i] as T;
      items[i] = items[j] as T;
      items[j] = tmp;
    }
    return items;
  }
}

/** Folds any finite number into 32 bits; seeds differing only above bit 32 (or in sign) still differ. */
function foldSeed(seed: number): number {
  if (!Number.isFinite(seed)) throw new RangeError(`Rng seed must be a finite number, got ${seed}.`);
  const s = Math.trunc(Math.abs(seed));
  return (
    ((s >>> 0) ^ Math.imul(Math.floor(s / 2 ** 32) >>> 0, 0x9e3779b1) ^ (seed < 0 ? 0x5bd1e995 : 0)) >>> 0
  );
}

/** splitmix32 (the 32-bit variant of Steele et al.'s splitmix, murmur3 finaliser). */
function splitmix32(x: number): () => number {
  return () => {
    x = (x + 0x9e3779b9) | 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
