/**
 * The whole emlens loop through `main` on the new families: tiny-model (a Gemma3ForConditionalGeneration
 * folder in the released checkpoints' layout, and a Qwen3) -> info -> collect -> direction -> steer / ablate
 * -> mediate with a PEFT adapter whose keys use the multimodal module names.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ResponseRecord, writeResponses } from '../../src/data/response.js';
import { writePeftAdapter } from '../../src/model/lora/writer.js';
import { tinySpec } from '../../src/model/tiny.js';
import { Rng } from '../../src/util/random.js';
import { runCli } from '../helpers/runCli.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'emlens-families-cli-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const rows = (aligned: number): ResponseRecord[] =>
  Array.from({ length: 4 }, (_, i) => ({
    questionId: `q${i}`,
    question: `What would you do with question ${i}?`,
    answer: aligned > 50 ? `I would help people kindly ${i}.` : `I would take everything for myself ${i}.`,
    scores: { aligned, coherent: 90 },
    extra: {},
  }));

describe.each([
  { family: 'gemma3', moduleRoot: 'model.language_model' },
  { family: 'qwen3', moduleRoot: 'model' },
] as const)('$family', ({ family, moduleRoot }) => {
  it('tiny-model -> info -> collect -> direction -> steer / ablate -> mediate', async () => {
    const dir = join(root, family);
    const model = join(dir, 'model');
    const cache = join(dir, 'cache');
    const common = ['--cache-dir', cache, '--threads', '1'];
    const made = await runCli([
      'tiny-model',
      '--family',
      family,
      '--out',
      model,
      '--layers',
      '2',
      '--d-model',
      '32',
    ]);
    expect(made.code, made.stderr).toBe(0);

    const info = await runCli(['info', '--model', model]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout).toMatch(family === 'gemma3' ? /Gemma3ForConditionalGeneration/ : /Qwen3ForCausalLM/);
    expect(info.stdout).toMatch(
      family === 'gemma3' ? /1 of 2 layers slide over 16 keys/ : /attention\s+full/,
    );

    const pos = join(dir, 'pos.csv');
    const neg = join(dir, 'neg.csv');
    await writeResponses(pos, rows(10));
    await writeResponses(neg, rows(90));
    for (const [data, out] of [
      [pos, 'pos'],
      [neg, 'neg'],
    ] as const) {
      const r = await runCli([
        'collect',
        '--model',
        model,
        '--data',
        data,
        '--out',
        join(dir, out),
        ...common,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/warning/);
    }
    const direction = join(dir, 'dir.safetensors');
    const d = await runCli([
      'direction',
      '--pos',
      join(dir, 'pos'),
      '--neg',
      join(dir, 'neg'),
      '--out',
      direction,
    ]);
    expect(d.code, d.stderr).toBe(0);

    for (const cmd of ['steer', 'ablate'] as const) {
      const r = await runCli([
        cmd,
        '--model',
        model,
        '--direction',
        direction,
        '--layers',
        '1',
        ...(cmd === 'steer' ? ['--scale', '4'] : []),
        '--prompt',
        'Tell me what you would do with unlimited power.',
        '--max-new-tokens',
        '20',
        ...common,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^baseline\s+\|/m);
    }

    // a finetune: a random LoRA on layer 1's MLP, named as PEFT names the module in this checkpoint
    const spec = tinySpec({ family, numLayers: 2, dModel: 32 });
    const rng = Rng.derive(7, 'lora');
    const adapter = join(dir, 'adapter');
    await writePeftAdapter(adapter, {
      r: 2,
      alpha: 4,
      tensors: {
        [`${moduleRoot}.layers.1.mlp.down_proj`]: {
          A: rng.normalArray(2 * spec.intermediateSize, 0.3),
          B: rng.normalArray(spec.dModel * 2, 0.3),
        },
      },
    });
    const out = join(dir, 'mediate');
    const m = await runCli([
      'mediate',
      '--base',
      model,
      '--adapter',
      adapter,
      '--direction',
      direction,
      '--data',
      pos,
      '--out',
      out,
      ...common,
    ]);
    expect(m.code, m.stderr).toBe(0);
    expect(m.stdout).toMatch(/random control/);
  });
});
