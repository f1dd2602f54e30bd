/**
 * A model folder is checked before anything is built: every way config.json, the weights, the tokenizer or the
 * files themselves can be wrong ends the CLI with exit code 2 and one line naming the problem (never a stack
 * trace, never NaN with exit 0, never a hang), for `info`, `trace` and `serve` alike.
 */
import { execFileSync } from 'node:child_process';
import { constants } from 'node:fs';
import { cp, mkdir, open, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import { decodeSafetensors, type TensorToWrite, writeSafetensors } from '../../src/io/safetensors.js';
import { WeightSource } from '../../src/io/weightSource.js';
import { writePeftAdapter } from '../../src/model/lora/index.js';
import { loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { type CliRun, runCli } from '../helpers/runCli.js';

const tiny = useTinyModel('emlens-validate-', { family: 'qwen2', seed: 5, name: 'base', load: false });
let counter = 0;

beforeAll(async () => {
  // d_model 64, 4 heads of 16, 2 key/value heads, intermediate 128, vocab 512, 2 layers
});

/** A fresh copy of the good tiny model, to break one way. */
async function copy(): Promise<string> {
  const dir = tiny.at(`m${counter++}`);
  await cp(tiny.dir, dir, { recursive: true });
  return dir;
}

async function editConfig(dir: string, patch: Record<string, unknown>): Promise<void> {
  const path = join(dir, 'config.json');
  const json = JSON.parse(await readFile(path, 'utf8'));
  await writeFile(path, JSON.stringify({ ...json, ...patch }));
}

type Tensors = Map<string, TensorToWrite>;

/** Rewrites model.safetensors after `edit` changed its tensors. */
async function editWeights(dir: string, edit: (tensors: Tensors) => void): Promise<void> {
  const path = join(dir, 'model.safetensors');
  const { tensors } = decodeSafetensors(await readFile(path));
  const map: Tensors = new Map();
  for (const [name, t] of tensors) {
    map.set(name, { dtype: t.dtype, shape: t.shape, data: new Uint8Array(t.bytes) });
  }
  edit(map);
  await writeSafetensors(path, map, { format: 'pt' });
}

/** `trace` of token ids 1,2,3 unless `extra` gives --text or --ids. */
const trace = (dir: string, ...extra: string[]) =>
  runCli([
    'trace',
    '--model',
    dir,
    ...(extra.includes('--text') || extra.includes('--ids') ? [] : ['--ids', '1,2,3']),
    '--out',
    tiny.at(`trace${counter++}.safetensors`),
    '--cache-dir',
    tiny.cacheDir,
    '--threads',
    '1',
    ...extra,
  ]);
const info = (dir: string) => runCli(['info', '--model', dir]);

/** Exit code 2 and exactly one line on stderr, matching every pattern, with no stack trace. */
function expectOneLine(run: CliRun, ...patterns: (string | RegExp)[]): string {
  const lines = run.stderr.trimEnd().split('\n');
  expect(run.code, run.stderr).toBe(2);
  expect(lines, run.stderr).toHaveLength(1);
  const line = lines[0]!; // exactly one line, checked just above
  expect(run.stderr).not.toMatch(/internal error|\n\s+at /);
  for (const p of patterns) {
    if (typeof p === 'string') expect(line).toContain(p);
    else expect(line).toMatch(p);
  }
  return line;
}

/** Fails (instead of hanging the suite) when `p` has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms (it hangs)`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Releases a reader a regression left blocked on the FIFO (opening the write end gives it EOF). */
async function unblockFifo(path: string): Promise<void> {
  try {
    const fh = await open(path, constants.O_WRONLY | constants.O_NONBLOCK);
    await fh.close();
  } catch {
    // no reader was blocked (ENXIO) or the FIFO is gone
  }
}

const DISAGREE = 'the weights and config.json disagree: use the config.json that came with these weights';

describe('tensor shapes are checked against config.json before building', () => {
  it('num_key_value_heads', async () => {
    const dir = await copy();
    await editConfig(dir, { num_key_value_heads: 1 });
    const line = expectOneLine(
      await trace(dir),
      'Tensor model.layers.0.self_attn.k_proj.weight has shape [32, 64] but config.json implies [16, 64]',
      'num_key_value_heads 1 x head_dim 16',
      'hidden_size 64',
      DISAGREE,
    );
    // `info` reads the same headers, so it says the same
    expect(expectOneLine(await info(dir))).toBe(line);
  });

  it('intermediate_size', async () => {
    const dir = await copy();
    await editConfig(dir, { intermediate_size: 96 });
    expectOneLine(
      await trace(dir),
      'Tensor model.layers.0.mlp.gate_proj.weight has shape [128, 64] but config.json implies [96, 64]',
      'intermediate_size 96',
    );
  });

  it('head_dim', async () => {
    const dir = await copy();
    await editConfig(dir, { head_dim: 8 });
    expectOneLine(
      await trace(dir),
      'Tensor model.layers.0.self_attn.q_proj.weight has shape [64, 64] but config.json implies [32, 64]',
      'num_attention_heads 4 x head_dim 8',
    );
  });

  it('vocab_size', async () => {
    const dir = await copy();
    await editConfig(dir, { vocab_size: 600 });
    expectOneLine(
      await trace(dir),
      'Tensor model.embed_tokens.weight has shape [512, 64] but config.json implies [600, 64]',
      'vocab_size 600',
    );
  });

  it('hidden_size', async () => {
    const dir = await copy();
    await editConfig(dir, { hidden_size: 32 });
    expectOneLine(
      await trace(dir),
      'Tensor model.embed_tokens.weight has shape [512, 64] but config.json implies [512, 32]',
      'hidden_size 32',
    );
  });

  it('a transposed k_proj', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => {
      const k = t.get('model.layers.1.self_attn.k_proj.weight')!;
      t.set('model.layers.1.self_attn.k_proj.weight', { ...k, shape: [64, 32] });
    });
    expectOneLine(
      await trace(dir),
      'Tensor model.layers.1.self_attn.k_proj.weight has shape [64, 32] but config.json implies [32, 64]',
      DISAGREE,
    );
  });

  it('a weight in an integer dtype', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => {
      const w = t.get('model.norm.weight')!;
      t.set('model.norm.weight', { ...w, dtype: 'I32' });
    });
    expectOneLine(await trace(dir), 'Tensor model.norm.weight has dtype I32', 'float');
  });

  it('a missing tensor', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => t.delete('model.layers.1.mlp.up_proj.weight'));
    expectOneLine(
      await info(dir),
      'Tensor model.layers.1.mlp.up_proj.weight',
      'config.json implies [128, 64]',
      'is not in the weights',
    );
  });

  it('an untied model without lm_head points at tie_word_embeddings', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => t.delete('lm_head.weight'));
    expectOneLine(await trace(dir), 'lm_head.weight', 'tie_word_embeddings');
  });

  it('weights for a layer config.json does not have', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => {
      for (const [name, w] of [...t]) {
        if (name.startsWith('model.layers.1.')) t.set(name.replace('layers.1.', 'layers.2.'), w);
      }
    });
    expectOneLine(
      await trace(dir),
      'model.layers.2.',
      'layer 2',
      'num_hidden_layers 2',
      'the weights have 3 layers',
      DISAGREE,
    );
  });

  it('biases config.json says the model does not have (they would be dropped silently)', async () => {
    const dir = tiny.at(`llama${counter++}`);
    await makeTinyModel(dir, { family: 'llama', seed: 5, qkvBias: true });
    await editConfig(dir, { attention_bias: false });
    expectOneLine(
      await info(dir),
      /^emlens: Tensor model\.layers\.0\.self_attn\.[qkvo]_proj\.bias is in the weights but config\.json sets no attention_bias/,
      'set attention_bias to true',
    );
  });

  it('a tensor no layer uses is a warning, and the model still runs', async () => {
    const dir = await copy();
    await editWeights(dir, (t) => {
      t.set('model.extra.weight', { dtype: 'F32', shape: [2], data: new Float32Array(2) });
      // old Llama checkpoints carry RoPE buffers; transformers ignores them silently, and so does emlens
      t.set('model.layers.0.self_attn.rotary_emb.inv_freq', {
        dtype: 'F32',
        shape: [8],
        data: new Float32Array(8),
      });
    });
    const run = await trace(dir);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/warning: .*1 tensor .*'model\.extra\.weight'/);
    expect(run.stderr).not.toContain('inv_freq');
    const i = await info(dir);
    expect(i.code).toBe(0);
    expect(i.stderr).toMatch(/warning: .*'model\.extra\.weight'/);
  });
});

describe('files that are not regular files', () => {
  it('config.json that is a directory', async () => {
    const dir = await copy();
    await rm(join(dir, 'config.json'));
    await mkdir(join(dir, 'config.json'));
    expectOneLine(await info(dir), `${join(dir, 'config.json')} is a directory`);
    expectOneLine(await trace(dir), 'is a directory');
  });

  it('model.safetensors that is a directory', async () => {
    const dir = await copy();
    await rm(join(dir, 'model.safetensors'));
    await mkdir(join(dir, 'model.safetensors'));
    expectOneLine(await info(dir), `${join(dir, 'model.safetensors')} is a directory`);
    expectOneLine(await trace(dir), 'is a directory');
  });

  it('a FIFO as the weight file is refused, not read (reading one blocks forever)', async () => {
    const dir = await copy();
    const fifo = join(dir, 'model.safetensors');
    await rm(fifo);
    execFileSync('mkfifo', [fifo]);
    try {
      expectOneLine(await within(info(dir), 10_000, 'info'), `${fifo} is a named pipe (FIFO)`);
      expectOneLine(await within(trace(dir), 10_000, 'trace'), 'named pipe');
    } finally {
      await unblockFifo(fifo);
    }
  });

  it('a FIFO as config.json or tokenizer.json', async () => {
    const dir = await copy();
    for (const name of ['config.json', 'tokenizer.json']) {
      await rm(join(dir, name));
      execFileSync('mkfifo', [join(dir, name)]);
    }
    try {
      expectOneLine(await within(info(dir), 10_000, 'info'), `${join(dir, 'config.json')} is a named pipe`);
      await rm(join(dir, 'config.json'));
      await cp(join(tiny.dir, 'config.json'), join(dir, 'config.json'));
      expectOneLine(
        await within(trace(dir, '--text', 'hi'), 10_000, 'trace'),
        `${join(dir, 'tokenizer.json')} is a named pipe`,
      );
    } finally {
      for (const name of ['config.json', 'tokenizer.json']) await unblockFifo(join(dir, name));
    }
  });

  it('a symlink loop is named as one (not as a missing file)', async () => {
    const dir = await copy();
    await rm(join(dir, 'model.safetensors'));
    await symlink('loop-b', join(dir, 'model.safetensors'));
    await symlink('model.safetensors', join(dir, 'loop-b'));
    expectOneLine(await info(dir), `${join(dir, 'model.safetensors')} is a symlink loop`);

    const dir2 = await copy();
    await rm(join(dir2, 'config.json'));
    await symlink('config.json', join(dir2, 'config.json'));
    expectOneLine(await trace(dir2), `${join(dir2, 'config.json')} is a symlink loop`);
  });

  it('a dangling symlink (an incomplete Hugging Face cache download) names its target', async () => {
    const dir = await copy();
    await rm(join(dir, 'model.safetensors'));
    await symlink('../blobs/abc123', join(dir, 'model.safetensors'));
    expectOneLine(await info(dir), 'is a symlink to ../blobs/abc123, which does not exist');
  });
});

describe('malformed files', () => {
  it('tokenizer.json of {}', async () => {
    const dir = await copy();
    await writeFile(join(dir, 'tokenizer.json'), '{}');
    expectOneLine(await trace(dir, '--text', 'hello'), join(dir, 'tokenizer.json'), 'tokenizer');
  });

  it('a key twice in a safetensors header is reported as a duplicate, not as a gap', async () => {
    const dir = await copy();
    const path = join(dir, 'model.safetensors');
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    const header = bytes
      .subarray(8, 8 + n)
      .toString('utf8')
      .trimEnd();
    const json = JSON.parse(header) as Record<string, { data_offsets: [number, number] }>;
    // rename a second tensor to the first one's name: same set of offsets, one name twice
    const [first, second] = Object.keys(json).filter((k) => k !== '__metadata__');
    const text = header.replace(`"${second}":`, `"${first}":`);
    const out = Buffer.concat([Buffer.alloc(8), Buffer.from(text), bytes.subarray(8 + n)]);
    out.writeBigUInt64LE(BigInt(text.length), 0);
    await writeFile(path, out);
    const line = expectOneLine(await info(dir), `tensor '${first}' twice`);
    expect(line).not.toContain('gap');
  });

  it('a truncated model.safetensors', async () => {
    const dir = await copy();
    const path = join(dir, 'model.safetensors');
    const { size } = await (await import('node:fs/promises')).stat(path);
    await truncate(path, size - 100);
    expectOneLine(await trace(dir), `Safetensors file ${path} is malformed`, 're-download');
  });

  it('a sharded index naming a missing shard', async () => {
    const dir = await copy();
    const { tensors } = decodeSafetensors(await readFile(join(dir, 'model.safetensors')));
    const map: Record<string, string> = {};
    const names = [...tensors.keys()];
    for (const [i, name] of names.entries())
      map[name] = i < 5 ? 'model-1.safetensors' : 'model-2.safetensors';
    await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: map }));
    await rm(join(dir, 'model.safetensors'));
    const shard1 = new Map<string, TensorToWrite>();
    for (const name of names.slice(0, 5)) {
      const t = tensors.get(name)!;
      shard1.set(name, { dtype: t.dtype, shape: t.shape, data: new Uint8Array(t.bytes) });
    }
    await writeSafetensors(join(dir, 'model-1.safetensors'), shard1);
    expectOneLine(await trace(dir), 'Shard model-2.safetensors', 'is missing');
  });

  it('an adapter whose shapes disagree with the base model', async () => {
    const dir = await copy();
    const adapter = tiny.at(`adapter${counter++}`);
    // k_proj of this model is [32, 64]; a [64, r] lora_B belongs to a model with 4 key/value heads
    await writePeftAdapter(adapter, {
      r: 2,
      alpha: 4,
      tensors: {
        'model.layers.0.self_attn.k_proj': { A: new Float32Array(2 * 64), B: new Float32Array(64 * 2) },
      },
    });
    expectOneLine(
      await trace(dir, '--adapter', adapter),
      'model.layers.0.self_attn.k_proj.weight',
      '[32, 64]',
      'load it with its own base model',
    );
  });
});

describe('serve on a broken model', () => {
  const serve = (dir: string) =>
    within(
      runCli(['serve', '--model', dir, '--port', '0', '--cache-dir', tiny.cacheDir, '--threads', '1']),
      60_000,
      'serve',
    );

  it('weights that disagree with config.json: one line, exit 2, never listening', async () => {
    const dir = await copy();
    await editConfig(dir, { num_key_value_heads: 1 });
    const run = await serve(dir);
    expectOneLine(run, 'k_proj.weight has shape [32, 64] but config.json implies [16, 64]');
    expect(run.stderr).not.toContain('serving');
  });

  it('tokenizer.json of {}', async () => {
    const dir = await copy();
    await writeFile(join(dir, 'tokenizer.json'), '{}');
    expectOneLine(await serve(dir), join(dir, 'tokenizer.json'));
  });

  it('model.safetensors that is a FIFO', async () => {
    const dir = await copy();
    const fifo = join(dir, 'model.safetensors');
    await rm(fifo);
    execFileSync('mkfifo', [fifo]);
    try {
      expectOneLine(await serve(dir), 'named pipe');
    } finally {
      await unblockFifo(fifo);
    }
  });
});

describe('the library', () => {
  it('a duplicated key is found even when both entries are identical (no gap would show it)', () => {
    const data = Buffer.alloc(8);
    const entry = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}';
    // a nested object's keys (__metadata__) may repeat top-level names without being duplicates
    const header = `{"__metadata__":{"w":"x","format":"pt"},"w":${entry},"w":${entry}}`;
    const bytes = Buffer.concat([Buffer.alloc(8), Buffer.from(header), data]);
    bytes.writeBigUInt64LE(BigInt(header.length), 0);
    expect(() => decodeSafetensors(bytes, 'dup.safetensors')).toThrow(
      new EmlensError(
        "Safetensors file dup.safetensors is malformed: its header lists tensor 'w' twice; re-download or re-export the file.",
      ),
    );
    const single = `{"__metadata__":{"w":"x"},"w":${entry}}`;
    const ok = Buffer.concat([Buffer.alloc(8), Buffer.from(single), data]);
    ok.writeBigUInt64LE(BigInt(single.length), 0);
    expect([...decodeSafetensors(ok).tensors.keys()]).toEqual(['w']);
  });

  it("a caller's own weight reader with a wrongly sized tensor fails with the tensor's name", async () => {
    const source = await WeightSource.open(tiny.dir);
    try {
      const reader = {
        readFloat32: async (name: string) => {
          const w = await source.readFloat32(name);
          return name === 'model.layers.0.mlp.down_proj.weight' ? w.subarray(0, w.length / 2) : w;
        },
      };
      await expect(
        loadModel(tiny.dir, {
          cacheDir: tiny.at('reader-cache'),
          threads: 1,
          weights: { reader, key: 'half' },
        }),
      ).rejects.toThrow(
        new EmlensError(
          'Tensor model.layers.0.mlp.down_proj.weight holds 4096 values but config.json implies shape [64, 128]; the weights and config.json disagree: use the config.json that came with these weights.',
        ),
      );
    } finally {
      await source.close();
    }
  });
});
