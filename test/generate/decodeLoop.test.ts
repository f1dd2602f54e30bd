/**
 * The decode loop generate and the server share: what each step sees, padding of finished rows, the stop
 * condition, and the stop-string search.
 */
import { describe, expect, it } from 'vitest';
import { decodeLoop, firstStop } from '../../src/generate/decodeLoop.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { ids, maxAbsDiff } from '../helpers/numeric.js';

const tiny = useTinyModel('emlens-decode-', { family: 'qwen2', seed: 5, name: 'm' });

describe('decodeLoop', () => {
  it('feeds back the tokens a step returns; each step sees the logits of the whole prefix', async () => {
    const prompts = [ids(4, 1), ids(7, 2)];
    const fed = [
      [11, 12, 13],
      [21, 22, 23],
    ];
    const seen: Float32Array[] = [];
    await decodeLoop(tiny.model, prompts, [], 'all', async (logits) => {
      seen.push(logits.slice());
      const step = seen.length - 1;
      return { next: fed.map((f) => f[step] ?? null), done: step === fed[0]!.length }; // fed has two rows
    });
    expect(seen).toHaveLength(4); // the prefill, then one call per fed token
    const v = tiny.model.spec.vocabSize;
    for (let s = 0; s < seen.length; s++) {
      const logits = seen[s]!; // s < seen.length
      expect(logits.length).toBe(2 * v);
      for (let r = 0; r < 2; r++) {
        // prompts and fed have two rows each
        const alone = await tiny.model.forward([[...prompts[r]!, ...fed[r]!.slice(0, s)]]);
        expect(maxAbsDiff(logits.subarray(r * v, (r + 1) * v), alone.logits.data)).toBeLessThanOrEqual(1e-4);
      }
    }
  });

  it('feeds padding to a finished row without changing the rows still running', async () => {
    const prompts = [ids(5, 3), ids(5, 4)] as const;
    const v = tiny.model.spec.vocabSize;
    let last = new Float32Array(0);
    let step = 0;
    await decodeLoop(tiny.model, prompts, [], 'all', async (logits) => {
      last = logits.slice();
      step++;
      // Row 0 finishes after the prefill; row 1 goes on for two tokens.
      return { next: [null, step === 1 ? 31 : 32], done: step === 3 };
    });
    const alone = await tiny.model.forward([[...prompts[1], 31, 32]]);
    expect(maxAbsDiff(last.subarray(v, 2 * v), alone.logits.data)).toBeLessThanOrEqual(1e-4);
  });

  it('stops at once when the first step says done', async () => {
    let calls = 0;
    await decodeLoop(tiny.model, [ids(3, 5)], [], 'all', async () => {
      calls++;
      return { next: [1], done: true };
    });
    expect(calls).toBe(1);
  });
});

describe('firstStop', () => {
  it('finds where the earliest stop string begins, or -1', () => {
    expect(firstStop('abc END x STOP', ['STOP', 'END'])).toBe(4);
    expect(firstStop('abc', ['x', 'yz'])).toBe(-1);
    expect(firstStop('abc', [])).toBe(-1);
  });
});
