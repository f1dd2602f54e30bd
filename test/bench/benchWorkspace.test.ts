/**
 * What the benchmark scripts share: the order of compared configurations round by round, and the validation of
 * the BENCH_* settings.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { envCount, inRoundOrder } from '../../benchmarks/workspace.js';

describe('inRoundOrder', () => {
  it('runs the configurations as given in even rounds and reversed in odd ones, leaving the input alone', () => {
    const items = ['ceiling', 'model', 'hooks'];
    expect(inRoundOrder(items, 0)).toEqual(['ceiling', 'model', 'hooks']);
    expect(inRoundOrder(items, 1)).toEqual(['hooks', 'model', 'ceiling']);
    expect(inRoundOrder(items, 2)).toEqual(['ceiling', 'model', 'hooks']);
    expect(items).toEqual(['ceiling', 'model', 'hooks']);
  });

  it('puts each configuration first as often as last over an even number of rounds', () => {
    const firsts = [0, 1, 2, 3].map((r) => inRoundOrder(['a', 'b'], r)[0]);
    expect(firsts.filter((x) => x === 'a')).toHaveLength(2);
  });
});

describe('envCount', () => {
  afterEach(() => {
    delete process.env.BENCH_TEST_COUNT;
  });

  it('reads a positive integer, falling back when unset or empty', () => {
    expect(envCount('BENCH_TEST_COUNT', 3)).toBe(3);
    process.env.BENCH_TEST_COUNT = '';
    expect(envCount('BENCH_TEST_COUNT', 3)).toBe(3);
    process.env.BENCH_TEST_COUNT = '12';
    expect(envCount('BENCH_TEST_COUNT', 3)).toBe(12);
  });

  it.each(['0', '-2', '1.5', 'many'])('refuses %s in one sentence naming the setting and a fix', (raw) => {
    process.env.BENCH_TEST_COUNT = raw;
    expect(() => envCount('BENCH_TEST_COUNT', 3)).toThrow(
      `BENCH_TEST_COUNT=${raw} is not a positive integer; set it to e.g. 3 or unset it.`,
    );
  });
});
