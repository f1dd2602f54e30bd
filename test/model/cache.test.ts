/**
 * The on-disk cache of built graphs: built once per (model, weights, build options), rebuilt when any changes,
 * and left complete (no temporary folders) after a build.
 */
import { readdir, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type LoadModelOptions, loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { at } from '../helpers/numeric.js';

const tmp = useTempDir('emlens-cache-');

let counter = 0;
/** A fresh model folder and cache folder. */
async function setup(seed = 41): Promise<{ dir: string; cacheDir: string }> {
  const n = counter++;
  const dir = tmp.join(`model-${n}`);
  await makeTinyModel(dir, { family: 'qwen2', seed, numLayers: 1, dModel: 32 });
  return { dir, cacheDir: tmp.join(`cache-${n}`) };
}

/** Loads the model, runs one forward pass, and returns the progress lines and last-position logits. */
async function load(
  dir: string,
  opts: LoadModelOptions,
): Promise<{ messages: string[]; logits: Float32Array }> {
  const messages: string[] = [];
  const m = await loadModel(dir, { threads: 1, ...opts, onProgress: (s) => messages.push(s) });
  try {
    const r = await m.forward([[3, 1, 4, 1, 5]]);
    return { messages, logits: r.logits.data.slice() };
  } finally {
    await m.dispose();
  }
}

const built = (messages: string[]) => messages.some((s) => s.includes('building'));

describe('graph cache', () => {
  it('loading twice with the same cacheDir builds once', async () => {
    const { dir, cacheDir } = await setup();
    const first = await load(dir, { cacheDir });
    expect(built(first.messages)).toBe(true);
    const second = await load(dir, { cacheDir });
    expect(built(second.messages)).toBe(false);
    expect(second.messages.some((s) => s.includes('session ready'))).toBe(true);
    expect(second.logits).toEqual(first.logits);
  });

  it('the built folder holds model-last-plain.onnx and model.onnx.data, and no .tmp- folder remains', async () => {
    const { dir, cacheDir } = await setup();
    await load(dir, { cacheDir });
    const entries = await readdir(cacheDir);
    expect(entries.filter((e) => e.includes('.tmp-'))).toEqual([]);
    expect(entries).toHaveLength(1);
    const entry = at(entries, 0, 'cache folder');
    const files = await readdir(join(cacheDir, entry));
    expect(files).toContain('model-last-plain.onnx');
    expect(files).toContain('model.onnx.data');
    expect((await stat(join(cacheDir, entry, 'model.onnx.data'))).size).toBeGreaterThan(0);
  });

  it('a different profile or maxPositions rebuilds, and each is then cached', async () => {
    const { dir, cacheDir } = await setup();
    expect(built((await load(dir, { cacheDir })).messages)).toBe(true);
    expect(built((await load(dir, { cacheDir, profile: 'fp16' })).messages)).toBe(true);
    expect(built((await load(dir, { cacheDir, maxPositions: 64 })).messages)).toBe(true);
    expect(built((await load(dir, { cacheDir, profile: 'fp16', maxPositions: 64 })).messages)).toBe(true);
    for (const opts of [{}, { profile: 'fp16' as const }, { maxPositions: 64 }]) {
      expect(built((await load(dir, { cacheDir, ...opts })).messages), JSON.stringify(opts)).toBe(false);
    }
    const entries = await readdir(cacheDir);
    expect(entries.filter((e) => e.includes('.tmp-'))).toEqual([]);
    expect(entries).toHaveLength(4);
  });

  it('touching model.safetensors (new mtime) rebuilds', async () => {
    const { dir, cacheDir } = await setup();
    const first = await load(dir, { cacheDir });
    expect(built(first.messages)).toBe(true);
    const file = join(dir, 'model.safetensors');
    const later = new Date((await stat(file)).mtimeMs + 60_000);
    await utimes(file, later, later);
    const second = await load(dir, { cacheDir });
    expect(built(second.messages)).toBe(true);
    expect(second.logits).toEqual(first.logits);
    expect(built((await load(dir, { cacheDir })).messages)).toBe(false);
  });

  it('rewriting model.safetensors with different weights rebuilds and uses them', async () => {
    const { dir, cacheDir } = await setup(41);
    const first = await load(dir, { cacheDir });
    expect(built(first.messages)).toBe(true);
    const before = await stat(join(dir, 'model.safetensors'));
    // same shapes (same size), new content; make sure the mtime moves even on coarse clocks
    await makeTinyModel(dir, { family: 'qwen2', seed: 42, numLayers: 1, dModel: 32, overwrite: true });
    const file = join(dir, 'model.safetensors');
    const after = await stat(file);
    expect(after.size).toBe(before.size);
    if (Math.round(after.mtimeMs) === Math.round(before.mtimeMs)) {
      const later = new Date(before.mtimeMs + 1000);
      await utimes(file, later, later);
    }
    const second = await load(dir, { cacheDir });
    expect(built(second.messages)).toBe(true);
    expect(second.logits).not.toEqual(first.logits);
    // a fresh cache on the new weights agrees with the rebuilt one
    const fresh = await load(dir, { cacheDir: tmp.join(`cache-fresh-${counter++}`) });
    expect(fresh.logits).toEqual(second.logits);
  });
});

describe('graph variants share one weights file', () => {
  it('the all-logits and intervention graphs reuse the external data without reading the weights again', async () => {
    const { dir, cacheDir } = await setup();
    const messages: string[] = [];
    const m = await loadModel(dir, { threads: 1, cacheDir, onProgress: (s) => messages.push(s) });
    try {
      expect(messages.filter((s) => s.includes('reading weights'))).toHaveLength(1);
      const all = await m.forward([[3, 1, 4]], { logits: 'all' });
      const steered = await m.forward([[3, 1, 4]], {
        interventions: [{ kind: 'steer', hooks: ['blocks.0.hook_resid_post'], vector: new Float32Array(32) }],
      });
      expect(all.logits.dims).toEqual([1, 3, m.spec.vocabSize]);
      // a zero steer through the intervention graph equals the plain graph's last position
      expect(steered.logits.data).toEqual(all.logits.data.slice(2 * m.spec.vocabSize));
      expect(messages.filter((s) => s.includes('reading weights'))).toHaveLength(1);
      expect(messages.some((s) => s.includes('built model-all-plain.onnx'))).toBe(true);
      expect(messages.some((s) => s.includes('built model-last-interventions.onnx'))).toBe(true);
    } finally {
      await m.dispose();
    }
    const folder = at(await readdir(cacheDir), 0, 'cache folder');
    const files = (await readdir(join(cacheDir, folder))).sort();
    expect(files.filter((f) => f.endsWith('.data'))).toEqual(['model.onnx.data']);
    expect(files.filter((f) => f.endsWith('.onnx'))).toEqual([
      'model-all-plain.onnx',
      'model-last-interventions.onnx',
      'model-last-plain.onnx',
    ]);
  });
});
