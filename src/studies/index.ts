/**
 * Studies: complete experiments built from the library (directions, interventions, eval), each with its
 * configuration, result types and report. Published as `emlens/studies`, apart from the core API.
 */
export * from './narrow-vs-general/index.js';
