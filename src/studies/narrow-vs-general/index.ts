/**
 * The narrow-vs-general study: how a narrow finetune's misalignment direction compares with a general
 * one's (cosines, cross-mediation, steering efficiency, stability, side effects, and with a judge the EM
 * rate), every figure beside a norm-matched random control. `npm run bench:directions` runs it; the modules
 * beside this one are its stages.
 *
 * @example
 * import { loadNarrowVsGeneralConfig, runNarrowVsGeneral } from 'emlens/studies';
 * const config = await loadNarrowVsGeneralConfig('study.yaml');
 * const { result, files } = await runNarrowVsGeneral(config, { out: 'results', work: '.work' });
 */
export {
  type FinetuneSpec,
  loadNarrowVsGeneralConfig,
  type NarrowVsGeneralConfig,
  parseNarrowVsGeneralConfig,
  syntheticConfig,
} from './config.js';
export { narrowVsGeneralMarkdown } from './report.js';
export {
  NARROW_VS_GENERAL_FILES,
  type RunNarrowVsGeneralOptions,
  resultToJson,
  runNarrowVsGeneral,
} from './run.js';
export { perturbDirections } from './stability.js';
export type {
  CosineResult,
  CrossCell,
  DirectionInfo,
  EvalResult,
  Fraction,
  NarrowVsGeneralResult,
  SideEffectRow,
  Spread,
  StabilityCurve,
  StabilityPoint,
  SteeringCurve,
  SteeringPoint,
} from './types.js';
