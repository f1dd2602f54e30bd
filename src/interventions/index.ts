/**
 * `emlens/interventions`: building interventions (steer, ablate, patch) from direction sets, weight
 * orthogonalisation, scoring (KL, log-prob margins), mediation and steering sweeps, with their formatted
 * reports.
 */
export type { Ablate, Intervention, PositionWeights, Steer } from '../model/interventions.js';
export {
  type AblateRequest,
  type AblateSpec,
  ablateInterventions,
  allResidualHooks,
  checkDirectionsFit,
  composeInterventions,
  constantDirectionSet,
  directionAt,
  type InterventionRequest,
  type LayerSelection,
  loadDirectionsFor,
  type ModelShape,
  parseLayerList,
  patchInterventions,
  type ResidualHook,
  residualHooks,
  type SourceLayers,
  type SteerRequest,
  type SteerSpec,
  selectLayers,
  siteDirections,
  steerInterventions,
  unitVector,
} from './compose.js';
export {
  type MediationMargins,
  type MediationOptions,
  type MediationReport,
  mediation,
  type SideEffects,
} from './mediation.js';
export { formatMediation, MEDIATION_FILES, mediationMarkdown, writeMediation } from './mediationFormat.js';
export {
  type OrthogonalizeOptions,
  type OrthogonalizeResult,
  orthogonalizeModel,
  residualWriters,
} from './orthogonalize.js';
export {
  type Condition,
  type DivergenceOptions,
  type DivergenceResult,
  divergence,
  type EvalOptions,
  logprobMargin,
  readNeutralTexts,
} from './scoring.js';
export {
  SWEEP_FILES,
  type SweepOptions,
  type SweepResult,
  type SweepRow,
  steeringSweep,
  sweepMarkdown,
  writeSweep,
} from './sweep.js';
export {
  formatTransfer,
  TRANSFER_FILES,
  type TransferCell,
  type TransferOptions,
  type TransferResult,
  transferMatrix,
  writeTransfer,
} from './transfer.js';
