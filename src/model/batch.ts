import { EmlensError } from '../errors.js';

/** A batch of token sequences left-padded to one length, with the HF attention mask and position ids. */
export interface PaddedBatch {
  readonly batch: number;
  readonly seq: number;
  readonly inputIds: BigInt64Array; // [batch, seq]
  readonly attentionMask: BigInt64Array; // [batch, seq]
  readonly positionIds: BigInt64Array; // [batch, seq]
  /** Left padding of each row. */
  readonly padding: readonly number[];
}

/**
 * Left-pads sequences (the only padding under which the last position is every row's last token). Positions
 * count real tokens only, as HF `generate` derives them from the mask (`cumsum(mask) - 1`, pads get 1), so a
 * padded row computes exactly what it would alone.
 */
export function leftPad(
  sequences: readonly (readonly number[])[],
  padId: number,
  vocabSize: number,
): PaddedBatch {
  if (sequences.length === 0) throw new EmlensError('The batch is empty; pass at least one token sequence.');
  const seq = Math.max(...sequences.map((s) => s.length));
  if (seq === 0)
    throw new EmlensError('Every sequence in the batch is empty; pass at least one token id per row.');
  const batch = sequences.length;
  const inputIds = new BigInt64Array(batch * seq);
  const attentionMask = new BigInt64Array(batch * seq);
  const positionIds = new BigInt64Array(batch * seq);
  const padding: number[] = [];
  sequences.forEach((s, b) => {
    if (s.length === 0)
      throw new EmlensError(`Sequence ${b} of the batch is empty; pass at least one token id per row.`);
    const pad = seq - s.length;
    padding.push(pad);
    for (let p = 0; p < seq; p++) {
      const at = b * seq + p;
      if (p < pad) {
        inputIds[at] = BigInt(padId);
        positionIds[at] = 1n;
        continue;
      }
      const id = s[p - pad]; // pad <= p < seq: in range, but checked like every id below
      if (id === undefined || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new EmlensError(
          `Token id ${id} at position ${p - pad} of sequence ${b} is outside the vocabulary (0..${vocabSize - 1}); check the tokenizer matches the model.`,
        );
      }
      inputIds[at] = BigInt(id);
      attentionMask[at] = 1n;
      positionIds[at] = BigInt(p - pad);
    }
  });
  return { batch, seq, inputIds, attentionMask, positionIds, padding };
}
