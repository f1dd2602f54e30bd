/**
 * emlens against real Hugging Face transformers and peft: model folders made by transformers itself (its own
 * config layout, `save_pretrained` weights, a bf16 folder, a PEFT adapter with rsLoRA and rank/alpha
 * patterns), and the outputs transformers computed on them (test/goldens/make_goldens.py; versions in
 * test/goldens/hf/versions.json). Every hook and the logits at every position must agree within 1e-4.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { type HookName, parseHookPatterns } from '../../src/model/hooks.js';
import { loadModel } from '../../src/model/model.js';
import { useTempDir } from '../helpers/fixtures.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const HF = join(import.meta.dirname, '..', 'goldens', 'hf');
const TOL = 1e-4;

interface Golden {
  readonly ids: number[][];
  readonly tensors: Map<string, { shape: readonly number[]; data: Float32Array }>;
}

async function readGolden(path: string): Promise<Golden> {
  const f = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    let ids: number[][] = [];
    for (const [name, info] of f.tensors) {
      if (name === 'input_ids') {
        const flat = Array.from(new BigInt64Array((await f.readBytes(name)).buffer), Number);
        const [rows, cols] = info.shape;
        if (rows === undefined || cols === undefined)
          throw new Error(`input_ids: shape [${info.shape}] is not 2-d`);
        ids = Array.from({ length: rows }, (_, r) => flat.slice(r * cols, (r + 1) * cols));
      } else {
        tensors.set(name, { shape: info.shape, data: await f.readFloat32(name) });
      }
    }
    return { ids, tensors };
  } finally {
    await f.close();
  }
}

const CASES = [
  { name: 'qwen2-gqa3', model: 'qwen2-gqa3/model' },
  { name: 'llama-mqa-headdim-llama3rope', model: 'llama-mqa-headdim-llama3rope/model' },
  { name: 'mistral-bf16-headdim', model: 'mistral-bf16-headdim/model' },
  { name: 'qwen2-gqa3-lora', model: 'qwen2-gqa3/model', adapter: 'qwen2-gqa3-lora/adapter' },
  { name: 'qwen3-gqa3-headdim-bias-window', model: 'qwen3-gqa3-headdim-bias-window/model' },
  { name: 'gemma2-softcap-window', model: 'gemma2-softcap-window/model' },
  { name: 'gemma3-text-bf16-mqa-window', model: 'gemma3-text-bf16-mqa-window/model' },
  { name: 'gemma3-multimodal-4x-config', model: 'gemma3-multimodal-4x-config/model' },
  {
    name: 'gemma3-multimodal-4x-config-lora',
    model: 'gemma3-multimodal-4x-config/model',
    adapter: 'gemma3-multimodal-4x-config-lora/adapter',
  },
] as const;

const tmp = useTempDir('emlens-hf-goldens-');

describe('real transformers and peft outputs', () => {
  it('were made by the committed script with recorded versions', async () => {
    const versions = JSON.parse(await readFile(join(HF, 'versions.json'), 'utf8'));
    expect(Object.keys(versions).sort()).toEqual(['peft', 'safetensors', 'torch', 'transformers']);
  });

  for (const c of CASES) {
    it(`${c.name}: every hook and all-position logits equal transformers' within ${TOL}`, async () => {
      const golden = await readGolden(join(HF, c.name, 'golden.safetensors'));
      const progress: string[] = [];
      const model = await loadModel(join(HF, c.model), {
        cacheDir: tmp.path,
        threads: 1,
        onProgress: (m) => progress.push(m),
        ...('adapter' in c ? { adapter: join(HF, c.adapter) } : {}),
      });
      try {
        const hookNames = parseHookPatterns(
          [...golden.tensors.keys()].filter((k) => k !== 'logits'),
        ) as HookName[];
        // Gemma's goldens also hold resid_mid (the input of pre_feedforward_layernorm)
        const perLayer = model.spec.gemmaBlock ? 4 : 3;
        expect(hookNames.length).toBe(perLayer * model.spec.numLayers + 1);
        // a multimodal checkpoint's vision tower is ignored with one line, not a warning per tensor
        expect(progress.filter((m) => /warning/.test(m))).toEqual([]);
        if (model.spec.architecture === 'Gemma3ForConditionalGeneration') {
          expect(progress.filter((m) => /vision-tower/.test(m)).length).toBe('adapter' in c ? 2 : 1);
        }
        const r = await model.forward(golden.ids, { hooks: hookNames, logits: 'all' });
        for (const name of hookNames) {
          const want = golden.tensors.get(name);
          const got = r.hooks.get(name);
          expect(got?.dims, name).toEqual(want?.shape);
          const err = maxAbsDiff(got?.data ?? [], want?.data ?? []);
          if (process.env.EMLENS_PRINT_ERRORS) console.log(`${c.name} ${name} ${err}`);
          expect(err, name).toBeLessThanOrEqual(TOL);
        }
        const logits = golden.tensors.get('logits');
        expect(r.logits.dims).toEqual(logits?.shape);
        const logitsErr = maxAbsDiff(r.logits.data, logits?.data ?? []);
        if (process.env.EMLENS_PRINT_ERRORS) console.log(`${c.name} logits ${logitsErr}`);
        expect(logitsErr).toBeLessThanOrEqual(TOL);
      } finally {
        await model.dispose();
      }
    });
  }

  it.each(['qwen2-gqa3', 'gemma3-multimodal-4x-config'])(
    'the adapter on %s changes the outputs (so the LoRA case checks the merge, not the base)',
    async (base) => {
      const plain = await readGolden(join(HF, base, 'golden.safetensors'));
      const tuned = await readGolden(join(HF, `${base}-lora`, 'golden.safetensors'));
      const a = plain.tensors.get('logits')?.data ?? new Float32Array();
      const b = tuned.tensors.get('logits')?.data ?? new Float32Array();
      expect(maxAbsDiff(a, b)).toBeGreaterThan(0.1);
    },
  );
});
