/**
 * `emlens/directions`: direction sets (one vector per layer, saved as safetensors), mean differences,
 * comparisons, norm-matched random controls, llama.cpp control vectors (GGUF) and PyTorch .pt files.
 */
export {
  COMPARISON_FILES,
  compareDirections,
  cosineHeatmap,
  type DirectionComparison,
  formatCompareTable,
  type NamedDirections,
  type PairComparison,
  writeComparison,
} from './compare.js';
export {
  cosine,
  DIRECTION_FORMAT,
  type DirectionMeta,
  type DirectionSet,
  directionDModel,
  directionLayers,
  directionNorms,
  directionSet,
  LayerMeanAccumulator,
  type LayerMeans,
  loadDirections,
  type MeanDiffOptions,
  meanDiff,
  norm,
  normalize,
  normalizeSet,
  type SaveDirectionsOptions,
  saveDirections,
} from './direction.js';
export { directionFromStores } from './fromStores.js';
export { exportGguf, type GgufExportOptions, type GgufExportResult, importGguf } from './gguf.js';
export {
  averageDirections,
  directionSubspace,
  type LayerRows,
  PCA_METHODS,
  type PcaMethod,
  type PcaOptions,
  pcaDirections,
  pcaFromStores,
  storeRecordRows,
  subspaceBasis,
} from './pca.js';
export {
  type LayerProjection,
  type ProjectionSpec,
  type ProjectRecordsOptions,
  projectAt,
  projectionHooks,
  projectionSpec,
  projectRecords,
  type RecordProjection,
  rankByProjection,
} from './projection.js';
export {
  type ControlSpread,
  controlPaths,
  controlSpread,
  directionSha256,
  formatSpread,
  isRandomControl,
  RANDOM_CONTROL_METHOD,
  type RandomControlOptions,
  randomControl,
  randomControls,
} from './randomControl.js';
export {
  type LoadedDirections,
  loadDirectionOrSubspace,
  subspaceBasisPaths,
  subspaceRank,
} from './subspaceFiles.js';
export {
  directionsFromTorchValue,
  exportPt,
  importPt,
  type PtExportOptions,
  type PtImport,
  type PtImportOptions,
  type PtLayout,
} from './torchPt.js';
