/**
 * The com.microsoft attention op set (the WebGPU graph) run on the CPU against the default opset-23 graph:
 * same hooks and logits with left padding and cached decode steps, and `hostBytes` accounting for every
 * output that comes back (on the CPU the cache does too).
 */
import { describe, expect, it } from 'vitest';
import { loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const tmp = useTempDir('emlens-contrib-');

describe('contrib attention op set on the CPU', () => {
  for (const family of ['qwen2', 'mistral', 'qwen3'] as const) {
    it(`${family}: equals the onnx op set with left padding and two cached steps`, async () => {
      const dir = tmp.join(family);
      await makeTinyModel(dir, { family, seed: 5, numLayers: 2, dModel: 32 });
      const load = (ops: 'onnx' | 'contrib') =>
        loadModel(dir, { threads: 1, ops, cacheDir: tmp.join(`cache-${family}-${ops}`) });
      const [ref, con] = [await load('onnx'), await load('contrib')];
      const hooks = ['blocks.*.hook_resid_post'] as const;
      const prompts = [
        [3, 1, 4, 1, 5, 9, 2, 6],
        [5, 3],
      ];
      let a = await ref.forward(prompts, { hooks, returnCache: true });
      let b = await con.forward(prompts, { hooks, returnCache: true });
      for (let step = 0; step < 3; step++) {
        expect(maxAbsDiff(a.logits.data, b.logits.data)).toBeLessThan(1e-4);
        expect(a.hooks.size).toBe(2);
        for (const [name, t] of a.hooks) {
          const other = b.hooks.get(name);
          expect(other, name).toBeDefined();
          // compare real positions only: padded rows' values are not defined to agree
          const d = t.dims[2]!;
          const seq = t.dims[1]!;
          for (let r = 0; r < t.dims[0]!; r++) {
            for (let p = a.padding[r]!; p < seq; p++) {
              const at = (r * seq + p) * d;
              expect(maxAbsDiff(t.data.subarray(at, at + d), other!.data.subarray(at, at + d))).toBeLessThan(
                1e-4,
              );
            }
          }
        }
        const outBytes =
          a.logits.data.byteLength + [...a.hooks.values()].reduce((s, t) => s + t.data.byteLength, 0);
        // on the CPU the cache comes back too, so hostBytes is more than logits and hooks
        expect(a.hostBytes).toBeGreaterThan(outBytes);
        expect(b.hostBytes).toBe(a.hostBytes);
        const next = [[7], [8]];
        a = await ref.forward(next, { hooks, cache: a.cache, returnCache: true });
        b = await con.forward(next, { hooks, cache: b.cache, returnCache: true });
      }
    });
  }
});
