/**
 * `emlens/data`: the bottom layer every stage reads: the response record in the public EM code's columns (and
 * its CSV/JSONL reader and writer), the tokenized record with its answer mask, and the EM thresholds.
 */
export {
  recordLabel,
  responsesToRecords,
  type TokenizedRecord,
  textsToRecords,
} from './record.js';
export { type ResponseRecord, readResponses, writeResponses } from './response.js';
export {
  type AlignmentClass,
  type AlignmentThresholds,
  alignmentClass,
  coherentFlag,
  EM_THRESHOLDS,
  emFlag,
  emRuleText,
  hasScore,
  judgedScores,
  resolveThresholds,
  selectionLabel,
} from './thresholds.js';
