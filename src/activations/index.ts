/**
 * `emlens/activations`: collection into activation stores (sharded, resumable, sliceable), the store format,
 * reductions, merging slices, and per-layer means of a store.
 */
export { storeLayerMeans, type Weighting } from './aggregate.js';
export { type CollectOptions, collectToStore, sliceRange } from './collect.js';
export {
  MANIFEST_FILE,
  RECORDS_FILE,
  readManifest,
  type ShardEntry,
  STORE_FORMAT,
  type StoreManifest,
} from './manifest.js';
export { REDUCTIONS, type Reduction } from './reduce.js';
export { ActivationStore, type MergeOptions, mergeStores, verifyStore } from './store.js';
