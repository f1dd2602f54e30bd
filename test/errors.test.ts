/**
 * Every bad input is an EmlensError whose message names the problem (and, where there is one, the fix).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hookName } from '../src/model/hooks.js';
import { loadModel } from '../src/model/model.js';
import { CUDA_INSTALL_COMMAND, cudaAvailable } from '../src/model/session.js';
import { makeTinyModel } from '../src/model/tiny.js';
import { expectEmlensError } from './helpers/expectError.js';
import { useTinyModel } from './helpers/fixtures.js';

const tiny = useTinyModel('emlens-errors-', { family: 'qwen2', seed: 31 });
const ids = [5, 17, 99, 3];

describe('hooks', () => {
  it('a misspelt hook suggests the right name', async () => {
    await expectEmlensError(
      // @ts-expect-error a misspelt literal does not compile; the run-time check is for JS callers
      tiny.model.forward([ids], { hooks: ['blocks.0.hook_resid_psot'] }),
      "'blocks.0.hook_resid_psot'",
      /did you mean 'blocks\.0\.hook_resid_post'/,
    );
  });

  it('a hook of a layer beyond the model names the layers it has', async () => {
    await expectEmlensError(
      tiny.model.forward([ids], { hooks: [hookName(tiny.spec.numLayers, 'resid_post')] }),
      hookName(tiny.spec.numLayers, 'resid_post'),
      `0..${tiny.spec.numLayers - 1}`,
    );
  });

  it('a misspelt hook in an intervention is reported the same way', async () => {
    await expectEmlensError(
      tiny.model.forward([ids], {
        interventions: [
          // @ts-expect-error a misspelt literal does not compile; the run-time check is for JS callers
          { kind: 'steer', hooks: ['blocks.1.hook_resid_psot'], vector: new Float32Array(tiny.spec.dModel) },
        ],
      }),
      /did you mean 'blocks\.1\.hook_resid_post'/,
    );
  });
});

describe('token ids and batches', () => {
  it('a token id outside the vocabulary', async () => {
    await expectEmlensError(
      tiny.model.forward([[1, 2, tiny.spec.vocabSize]]),
      `Token id ${tiny.spec.vocabSize}`,
      `0..${tiny.spec.vocabSize - 1}`,
      /vocabulary/,
    );
    await expectEmlensError(tiny.model.forward([[1, -1]]), 'Token id -1', /vocabulary/);
    await expectEmlensError(tiny.model.forward([[1, 2.5]]), 'Token id 2.5', /vocabulary/);
  });

  it('an empty batch', async () => {
    await expectEmlensError(tiny.model.forward([]), /batch is empty/);
  });

  it('an empty row', async () => {
    await expectEmlensError(tiny.model.forward([[1, 2], []]), /Sequence 1 .*empty/);
  });
});

describe('interventions', () => {
  it('a steering vector of the wrong length', async () => {
    await expectEmlensError(
      tiny.model.forward([ids], {
        interventions: [
          {
            kind: 'steer',
            hooks: ['blocks.0.hook_resid_post'],
            vector: new Float32Array(tiny.spec.dModel + 1),
          },
        ],
      }),
      `${tiny.spec.dModel + 1} entries`,
      `d_model is ${tiny.spec.dModel}`,
    );
  });

  it('an ablation direction of the wrong length', async () => {
    await expectEmlensError(
      tiny.model.forward([ids], {
        interventions: [
          { kind: 'ablate', hooks: ['blocks.0.hook_resid_post'], directions: [new Float32Array(3)] },
        ],
      }),
      '3 entries',
      `d_model is ${tiny.spec.dModel}`,
    );
  });

  it('an intervention on a non-residual hook (hook_attn_out)', async () => {
    await expectEmlensError(
      tiny.model.forward([ids], {
        interventions: [
          // @ts-expect-error interventions take residual hooks only; the run-time check is for JS callers
          { kind: 'steer', hooks: ['blocks.0.hook_attn_out'], vector: new Float32Array(tiny.spec.dModel) },
        ],
      }),
      'blocks.0.hook_attn_out',
      /residual/,
      /hook_resid_pre\|mid\|post/,
    );
  });

  it('position weights of the wrong length', async () => {
    await expectEmlensError(
      tiny.model.forward([ids, ids], {
        interventions: [
          {
            kind: 'steer',
            hooks: ['blocks.0.hook_resid_post'],
            vector: new Float32Array(tiny.spec.dModel),
            positions: new Float32Array(ids.length),
          },
        ],
      }),
      `${ids.length} entries`,
      `batch 2 x seq ${ids.length}`,
    );
  });
});

describe('KV cache and length', () => {
  it('a cache with a different number of rows', async () => {
    const first = await tiny.model.forward([ids, ids], { returnCache: true });
    await expectEmlensError(tiny.model.forward([[7]], { cache: first.cache }), /cache holds 2 rows but 1/);
  });

  it('a sequence longer than maxPositions', async () => {
    const short = await loadModel(tiny.dir, { cacheDir: tiny.cacheDir, maxPositions: 8, threads: 1 });
    try {
      expect(short.maxPositions).toBe(8);
      await short.forward([[1, 2, 3, 4, 5, 6, 7, 8]]); // exactly fits
      await expectEmlensError(
        short.forward([[1, 2, 3, 4, 5, 6, 7, 8, 9]]),
        'needs 9 positions',
        'built for 8',
        /maxPositions/,
      );
      // the cache counts too
      const first = await short.forward([[1, 2, 3, 4, 5, 6]], { returnCache: true });
      const second = await short.forward([[7, 8]], { cache: first.cache, returnCache: true });
      await expectEmlensError(
        short.forward([[9]], { cache: second.cache }),
        'needs 9 positions',
        'built for 8',
      );
    } finally {
      await short.dispose();
    }
  });
});

describe('loading', () => {
  it('a missing model folder', async () => {
    const missing = tiny.at('does-not-exist');
    await expectEmlensError(loadModel(missing, { cacheDir: tiny.cacheDir }), /config\.json/, missing);
  });

  it('a folder without config.json', async () => {
    const empty = tiny.at('empty');
    await mkdir(empty, { recursive: true });
    await expectEmlensError(loadModel(empty, { cacheDir: tiny.cacheDir }), 'No config.json', empty);
  });

  it('an unsupported architecture lists the supported ones', async () => {
    const gpt2 = tiny.at('gpt2');
    await makeTinyModel(gpt2, { family: 'llama', seed: 32 });
    const config = JSON.parse(await readFile(join(gpt2, 'config.json'), 'utf8'));
    config.architectures = ['GPT2LMHeadModel'];
    config.model_type = 'gpt2';
    await writeFile(join(gpt2, 'config.json'), JSON.stringify(config));
    await expectEmlensError(
      loadModel(gpt2, { cacheDir: tiny.cacheDir }),
      'GPT2LMHeadModel',
      'LlamaForCausalLM',
      'Qwen2ForCausalLM',
      'MistralForCausalLM',
    );
  });

  it.skipIf(cudaAvailable())(
    "device 'cuda' without the CUDA provider names the install command",
    async () => {
      const message = await expectEmlensError(
        loadModel(tiny.dir, { cacheDir: tiny.cacheDir, device: 'cuda' }),
        'cuda12',
        /CUDA/,
      );
      expect(message).toContain(CUDA_INSTALL_COMMAND);
    },
  );
});
