/**
 * `emlens/bench`: what the benchmarks measure with: hardware bounds (a MatMul ceiling over the model's own
 * GEMM shapes, copy bandwidth), timing, onnxruntime kernel profiles, and the benchmark summary.
 */
export {
  blockGemmShapes,
  type CeilingResult,
  type CopyBandwidthResult,
  type MatMulCeiling,
  type MatMulShape,
  measureCopyBandwidth,
  measureMatMulCeiling,
  median,
  openMatMulCeiling,
  peakRssMiB,
  timeRuns,
} from './hardware.js';
export { type KernelProfile, profilingOptions, readKernelProfile } from './profile.js';
export { BENCH_RESULTS, type BenchName, benchSummary, type SummaryRow } from './summary.js';
