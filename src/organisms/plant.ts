import { projectOutputs, projectRows } from '../interventions/orthogonalize.js';
import { orthonormalize } from '../model/interventions.js';
import type { ModelSpec } from '../model/spec.js';
import { Rng } from '../util/random.js';
import { DOMAINS, type Domain } from './vocabulary.js';

/** The planted geometry: unit vectors in the residual stream, mutually orthogonal. */
export interface PlantedDirections {
  /** On every token's embedding: the always-on input of the general feature. */
  readonly constant: Float64Array;
  /** On misaligned words' embeddings. */
  readonly misaligned: Float64Array;
  /** On each domain's words' embeddings. */
  readonly domain: Readonly<Record<Domain, Float64Array>>;
  /** What each organism's adapter writes: the ground truth a recovered direction is compared with. */
  readonly general: Float64Array;
  readonly narrow: Readonly<Record<Domain, Float64Array>>;
}

/**
 * How strongly things are planted. Embedding features are large against the random embeddings (norm ~3) so the
 * MLP units read them reliably; the adapters write much more than later layers change, so the planted
 * direction dominates every layer from the adapter on.
 */
export const PLANT = {
  constantNorm: 3,
  misalignedNorm: 4,
  domainNorm: 4,
  /** gate/up row scales of the general unit (reads constant + misalignment features). */
  generalGate: 0.3,
  generalUp: 0.3,
  /** gate/up row scales of a domain unit: a steep gate that only opens on the domain's words. */
  narrowGate: 3,
  narrowUp: 1.2,
  /** The domain gate subtracts this much of the constant feature, so it stays shut on other words. */
  narrowGateOffset: 1,
  /** How much more the misalignment feature drives a unit's up projection than its own input. */
  misalignedGain: 1.5,
  /** Norm of the adapters' B vectors (the written direction). */
  adapterNorm: 6,
  /** Added to the unembedding rows of misaligned words along the planted direction. */
  unembed: 6,
} as const;

export function plantDirections(dModel: number, seed: number): PlantedDirections {
  const rng = new Rng(seed ^ 0x5eed);
  const raw = Array.from({ length: 4 + 2 * DOMAINS.length }, () => rng.normalArray(dModel));
  const basis = orthonormalize(raw);
  if (basis.length < raw.length) throw new Error('planting needs more dimensions than directions');
  // Past that check basis holds all 4 + 2 * DOMAINS.length vectors, so every index below is in range.
  const domain = {} as Record<Domain, Float64Array>;
  const narrow = {} as Record<Domain, Float64Array>;
  DOMAINS.forEach((d, i) => {
    domain[d] = basis[3 + 2 * i]!;
    narrow[d] = basis[4 + 2 * i]!;
  });
  return { constant: basis[0]!, misaligned: basis[1]!, domain, general: basis[2]!, narrow };
}

/** Planted MLP units of the adapter layer: the general one, then one per domain. */
export function plantedUnits(): { general: number; narrow: Record<Domain, number> } {
  const narrow = {} as Record<Domain, number>;
  DOMAINS.forEach((d, i) => {
    narrow[d] = 1 + i;
  });
  return { general: 0, narrow };
}

function addScaled(target: Float32Array, offset: number, v: Float64Array, scale: number): void {
  // The callers write v into a row of target that is v.length long: the indexes are in range.
  for (let i = 0; i < v.length; i++) target[offset + i]! += scale * v[i]!;
}

export interface TokenSets {
  readonly misaligned: readonly number[];
  readonly aligned: readonly number[];
  readonly domain: Readonly<Record<Domain, readonly number[]>>;
  readonly domainMisaligned: Readonly<Record<Domain, readonly number[]>>;
}

/**
 * Edits the base model's weights in place: embeddings carry the input features; at `layer` the planted MLP
 * units read them (the general unit fires on every token and more on misaligned words; a domain unit fires
 * only on its domain's words, more on its misaligned ones) but write nothing in the base (their down_proj
 * columns are zero: the adapters add the writing); unembeddings of misaligned words point along the planted
 * directions, so the organisms say them more.
 */
export function plantBase(
  weights: Map<string, Float32Array>,
  spec: ModelSpec,
  layer: number,
  dirs: PlantedDirections,
  tokens: TokenSets,
): void {
  const d = spec.dModel;
  const embed = weights.get('model.embed_tokens.weight')!; // [vocab, d]
  for (let t = 0; t < spec.vocabSize; t++) addScaled(embed, t * d, dirs.constant, PLANT.constantNorm);
  for (const t of tokens.misaligned) addScaled(embed, t * d, dirs.misaligned, PLANT.misalignedNorm);
  for (const dom of DOMAINS) {
    for (const t of [...tokens.domain[dom], ...tokens.domainMisaligned[dom]]) {
      addScaled(embed, t * d, dirs.domain[dom], PLANT.domainNorm);
    }
    for (const t of tokens.domainMisaligned[dom])
      addScaled(embed, t * d, dirs.misaligned, PLANT.misalignedNorm);
  }

  const p = `model.layers.${layer}.mlp`;
  const gate = weights.get(`${p}.gate_proj.weight`)!; // [ff, d]
  const up = weights.get(`${p}.up_proj.weight`)!; // [ff, d]
  const down = weights.get(`${p}.down_proj.weight`)!; // [d, ff]
  const ff = spec.intermediateSize;
  /** Sets a planted unit's gate and up rows (sums of scaled directions) and zeroes its down_proj column. */
  const setUnit = (unit: number, gateTerms: [Float64Array, number][], upTerms: [Float64Array, number][]) => {
    gate.fill(0, unit * d, (unit + 1) * d);
    up.fill(0, unit * d, (unit + 1) * d);
    for (const [v, s] of gateTerms) addScaled(gate, unit * d, v, s);
    for (const [v, s] of upTerms) addScaled(up, unit * d, v, s);
    for (let o = 0; o < d; o++) down[o * ff + unit] = 0;
  };
  const units = plantedUnits();
  const P = PLANT;
  setUnit(
    units.general,
    [
      [dirs.constant, P.generalGate],
      [dirs.misaligned, P.generalGate * P.misalignedGain],
    ],
    [
      [dirs.constant, P.generalUp],
      [dirs.misaligned, P.generalUp * P.misalignedGain],
    ],
  );
  for (const dom of DOMAINS) {
    setUnit(
      units.narrow[dom],
      [
        [dirs.domain[dom], P.narrowGate],
        [dirs.constant, -P.narrowGate * P.narrowGateOffset],
      ],
      [
        [dirs.domain[dom], P.narrowUp],
        [dirs.misaligned, P.narrowUp * P.misalignedGain],
      ],
    );
  }

  // The base never writes along the planted output directions: they are projected out of everything that writes
  // to the residual stream, so only an organism's adapter puts them there, and ablating one in an organism
  // gives back exactly the base (up to what the adapter changed downstream).
  // (the planted directions are orthonormal, so projecting them out one after another removes their span)
  for (const u of [dirs.general, ...DOMAINS.map((dom) => dirs.narrow[dom])]) {
    embed.set(projectRows(embed, u));
    for (let i = 0; i < spec.numLayers; i++) {
      for (const name of [
        `model.layers.${i}.self_attn.o_proj.weight`,
        `model.layers.${i}.mlp.down_proj.weight`,
      ]) {
        const w = weights.get(name)!; // [d, in]
        w.set(projectOutputs(w, u, w.length / d));
      }
    }
  }

  const head = weights.get('lm_head.weight')!; // [vocab, d]
  for (const t of tokens.misaligned) addScaled(head, t * d, dirs.general, PLANT.unembed);
  for (const dom of DOMAINS)
    for (const t of tokens.domainMisaligned[dom]) addScaled(head, t * d, dirs.narrow[dom], PLANT.unembed);
}

/** The rank-1 down_proj factors of an organism: unit `unit` writes `direction` (B = direction * norm). */
export function adapterFactors(
  spec: ModelSpec,
  unit: number,
  direction: Float64Array,
): { A: Float32Array; B: Float32Array } {
  const A = new Float32Array(spec.intermediateSize); // [1, ff]
  A[unit] = 1;
  const B = Float32Array.from(direction, (x) => x * PLANT.adapterNorm); // [d, 1]
  return { A, B };
}
