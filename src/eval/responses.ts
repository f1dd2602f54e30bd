// The response record and its CSV/JSONL reader and writer live in data/response.ts (below activations, eval
// and interventions); this module re-exports them for the code that imported them from eval.
export { type ResponseRecord, readResponses, writeResponses } from '../data/response.js';
