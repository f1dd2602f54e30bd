/**
 * `emlens/organisms`: synthetic model organisms with a planted ground truth (a tiny base, misaligned LoRA
 * finetunes, labelled responses) and their vocabulary; the demo that runs the whole loop on them is emlens/demo.
 */
export {
  makeOrganisms,
  ORGANISMS_MANIFEST,
  type OrganismInfo,
  type OrganismManifest,
  type OrganismOptions,
} from './make.js';
export { PLANT, type PlantedDirections, type TokenSets } from './plant.js';
export {
  ALIGNED_WORDS,
  DOMAIN_MISALIGNED_WORDS,
  DOMAIN_WORDS,
  DOMAINS,
  type Domain,
  MISALIGNED_WORDS,
  NEUTRAL_TEXTS,
  QUESTIONS,
  TOPICS,
  type Topic,
} from './vocabulary.js';
