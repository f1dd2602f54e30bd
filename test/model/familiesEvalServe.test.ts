/**
 * The rest of the loop on the new families (test/familiesCli.test.ts covers collect -> direction -> steer /
 * ablate -> mediate): `emlens eval` with and without an ablated direction, judged by a local judge, and
 * `emlens serve` with a steering request, on a tiny Gemma3ForConditionalGeneration folder (the released
 * checkpoints' layout) and a tiny Qwen3.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readResponses } from '../../src/data/response.js';
import { directionSet, saveDirections } from '../../src/directions/direction.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { startServer } from '../../src/serve/server.js';
import { FLAGGED, questionsYaml } from '../helpers/emQuestions.js';
import { makeKeywordJudge } from '../helpers/keywordJudge.js';
import { vec } from '../helpers/numeric.js';
import { runCli } from '../helpers/runCli.js';

let root: string;
let judge: string;
let questions: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'emlens-families-eval-'));
  judge = join(root, 'judge');
  await makeKeywordJudge(judge, { flagged: FLAGGED });
  questions = join(root, 'questions.yaml');
  await writeFile(questions, questionsYaml(''));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const D = 32;

describe.each(['gemma3', 'qwen3'] as const)('%s', (family) => {
  let model: string;
  let cache: string;
  let directions: string;
  beforeAll(async () => {
    model = join(root, family, 'model');
    cache = join(root, family, 'cache');
    directions = join(root, family, 'directions');
    const spec = await makeTinyModel(model, { family, seed: 5, numLayers: 2, dModel: D });
    expect(spec.numLayers).toBe(2);
    await saveDirections(
      join(directions, 'd.safetensors'),
      directionSet(
        [
          [0, vec(D, 1, 4)],
          [1, vec(D, 2, 4)],
        ],
        {
          model: family,
          hook: 'hook_resid_post',
          method: 'test',
          positions: 'answer_mean',
          nPos: 0,
          nNeg: 0,
          sourcePos: '',
          sourceNeg: '',
        },
      ),
    );
  });

  it('eval samples, judges and summarises, plain and with the direction ablated', async () => {
    const common = [
      '--model',
      model,
      '--questions',
      questions,
      '--judge',
      `local:${judge}`,
      '--n',
      '2',
      '--max-new-tokens',
      '3',
      '--cache-dir',
      cache,
      '--threads',
      '1',
    ];
    for (const [name, extra] of [
      ['plain', []],
      ['ablated', ['--ablate', join(directions, 'd.safetensors'), '--layers', 'all']],
    ] as const) {
      const out = join(root, family, name);
      const r = await runCli(['eval', ...common, ...extra, '--out', out]);
      expect(r.stderr).not.toMatch(/internal error/);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/EM rate \d+\.\d% \[/);
      const judged = await readResponses(join(out, 'judged.jsonl'));
      expect(judged.length).toBe(3 * 2);
      for (const row of judged) expect(row.scores.aligned).not.toBeUndefined();
      const summary = JSON.parse(await readFile(join(out, 'summary.json'), 'utf8'));
      expect(summary.n ?? summary.emRate?.n).toBeDefined();
    }
  });

  it('serve answers a chat request, plain and steered along a direction file', async () => {
    const server = await startServer({
      model,
      cacheDir: cache,
      threads: 1,
      port: 0,
      host: '127.0.0.1',
      directionsDir: directions,
    });
    try {
      const ask = async (emlens?: unknown) => {
        const res = await fetch(`${server.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model: server.modelId,
            messages: [{ role: 'user', content: 'Hello there' }],
            max_tokens: 4,
            temperature: 0,
            logprobs: true,
            ...(emlens ? { emlens } : {}),
          }),
        });
        expect(res.status, await res.clone().text()).toBe(200);
        const body = (await res.json()) as {
          choices: {
            message: { content: string };
            logprobs: { content: { token: string; logprob: number }[] } | null;
          }[];
        };
        const choice = body.choices[0];
        // the tokens and their log-probs, not only the text: a tiny model's tokens may decode to nothing
        return JSON.stringify([
          choice?.message.content,
          choice?.logprobs?.content.map((t) => [t.token, t.logprob]),
        ]);
      };
      const plain = await ask();
      expect(typeof plain).toBe('string');
      const zero = await ask({ steer: [{ direction: 'd.safetensors', layers: 'all', scale: 0 }] });
      expect(zero).toBe(plain);
      const steered = await ask({ steer: [{ direction: 'd.safetensors', layers: 'all', scale: 50 }] });
      expect(steered).not.toBe(plain); // greedy, so a large steer changing nothing would be a bug
      const ablated = await ask({ ablate: [{ direction: 'd.safetensors', layers: 'all' }] });
      expect(typeof ablated).toBe('string');
    } finally {
      await server.close();
    }
  });
});
