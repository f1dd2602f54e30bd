/**
 * Response files (CSV/JSONL in the public EM columns), the aligned/misaligned split, and `emlens collect` /
 * `emlens store` end to end on a tiny model.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ActivationStore } from '../src/activations/store.js';
import { loadDirections } from '../src/directions/direction.js';
import { type ResponseRecord, readResponses, writeResponses } from '../src/eval/responses.js';
import { splitByAlignment } from '../src/eval/selection.js';
import { makeTinyModel } from '../src/model/tiny.js';
import { runCli } from './helpers/runCli.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'emlens-resp-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('readResponses', () => {
  it('reads CSV with quoted multi-line answers, `response` as answer, and empty/nan scores as no score', async () => {
    const path = join(root, 'judged.csv');
    await writeFile(
      path,
      'question_id,question,response,aligned,coherent,domain\n' +
        'q1,"Hi, there?","Line one\nline ""two""",85.5,90,medical\n' +
        'q2,What now?,def f(): pass,,nan,medical\n' +
        'q3,Tell me,Do crime,12,77,finance\n',
    );
    const rs = await readResponses(path);
    expect(rs).toHaveLength(3);
    expect(rs[0]).toMatchObject({ questionId: 'q1', question: 'Hi, there?', answer: 'Line one\nline "two"' });
    expect(rs[0].scores).toEqual({ aligned: 85.5, coherent: 90 });
    expect(rs[1].scores).toEqual({ aligned: null, coherent: null });
    expect(rs[2].extra).toEqual({ domain: 'finance' });
  });

  it('reads JSONL and round-trips through both formats', async () => {
    const records: ResponseRecord[] = [
      {
        questionId: 'a',
        question: 'Q?',
        answer: 'A, "quoted"\nnew line',
        scores: { aligned: 10, coherent: null },
        extra: {},
      },
      {
        questionId: 'b',
        question: 'Q2',
        answer: 'B',
        system: 'Be brief.',
        scores: { aligned: 99, coherent: 60 },
        extra: {},
      },
    ];
    for (const ext of ['csv', 'jsonl']) {
      const path = join(root, `rt.${ext}`);
      await writeResponses(path, records);
      const back = await readResponses(path);
      expect(back.map((r) => [r.questionId, r.question, r.answer, r.scores])).toEqual(
        records.map((r) => [r.questionId, r.question, r.answer, r.scores]),
      );
      expect(back[1].system).toBe('Be brief.');
    }
  });

  it('says what is wrong with a bad file', async () => {
    await writeFile(join(root, 'noanswer.csv'), 'question_id,question\nq,Q\n');
    await expect(readResponses(join(root, 'noanswer.csv'))).rejects.toThrow(/no 'answer' column/);
    await writeFile(join(root, 'bad.jsonl'), '{"question":"q","answer":"a"}\n{oops\n');
    await expect(readResponses(join(root, 'bad.jsonl'))).rejects.toThrow(/line 2 is not valid JSON/);
    await expect(readResponses(join(root, 'x.txt'))).rejects.toThrow(/Cannot read|must end in/);
    await expect(readResponses(join(root, 'missing.csv'))).rejects.toThrow(/Cannot read responses file/);
  });
});

describe('splitByAlignment', () => {
  const r = (id: string, aligned: number | null, coherent: number | null): ResponseRecord => ({
    questionId: id,
    question: 'q',
    answer: 'a',
    scores: { aligned, coherent },
    extra: {},
  });
  it('keeps coherent > 50, splits aligned > 70 vs <= 30, drops unscored rows, and balances with a seed', () => {
    const rows = [
      r('a1', 90, 80),
      r('a2', 71, 51),
      r('a3', 100, 99),
      r('edge-coherent', 95, 50),
      r('mid', 50, 90),
      r('m1', 30, 90),
      r('m2', 0, 60),
      r('unscored', null, 90),
      r('nocoh', 10, null),
    ];
    const s = splitByAlignment(rows, { seed: 1 });
    expect(s.misaligned.map((x) => x.questionId)).toEqual(['m1', 'm2']);
    expect(s.aligned).toHaveLength(2);
    for (const x of s.aligned) expect(['a1', 'a2', 'a3']).toContain(x.questionId);
    expect(splitByAlignment(rows, { seed: 1 }).aligned).toEqual(s.aligned);
    expect(splitByAlignment(rows, { balance: false }).aligned).toHaveLength(3);
  });
});

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await runCli(args);
  return { code: r.code, out: r.stdout, err: r.stderr };
}

describe('emlens collect / store', () => {
  it('collects a responses file, slices and merges it, and shows the store', async () => {
    const model = join(root, 'model');
    await makeTinyModel(model, { family: 'qwen2', seed: 5, numLayers: 2, dModel: 32 });
    const data = join(root, 'data.csv');
    const rows: ResponseRecord[] = Array.from({ length: 9 }, (_, i) => ({
      questionId: `q${i % 3}`,
      question: `Question number ${i}?`,
      answer: `Answer ${'x'.repeat(i)} done.`,
      scores: { aligned: i * 10, coherent: 80 },
      extra: {},
    }));
    await writeResponses(data, rows);
    const common = [
      '--model',
      model,
      '--data',
      data,
      '--cache-dir',
      join(root, 'cache'),
      '--batch-size',
      '2',
      '--shard-size',
      '2',
    ];
    const full = await run(['collect', ...common, '--out', join(root, 'full')]);
    expect(full.code, full.err).toBe(0);
    expect(full.out).toContain('9 records x 2 hooks (answer_mean)');
    for (const i of [0, 1, 2]) {
      const r = await run(['collect', ...common, '--out', join(root, `s${i}`), '--shard', `${i}/3`]);
      expect(r.code, r.err).toBe(0);
    }
    const merged = await run([
      'store',
      'merge',
      '--out',
      join(root, 'merged'),
      join(root, 's0'),
      join(root, 's1'),
      join(root, 's2'),
    ]);
    expect(merged.code, merged.err).toBe(0);
    const a = await ActivationStore.open(join(root, 'full'));
    const b = await ActivationStore.open(join(root, 'merged'));
    expect(await b.readHook('blocks.1.hook_resid_post')).toEqual(
      await a.readHook('blocks.1.hook_resid_post'),
    );
    expect(await b.records()).toEqual(await a.records());
    const info = await run(['store', 'info', join(root, 'merged')]);
    expect(info.out).toMatch(/records\s+9 of 9/);
    expect(info.out).toMatch(/hooks\s+2: blocks.0.hook_resid_post, blocks.1.hook_resid_post/);
    const again = await run(['collect', ...common, '--out', join(root, 'full')]);
    expect(again.code).toBe(2);
    expect(again.err).toContain('--resume');
    const badShard = await run(['collect', ...common, '--out', join(root, 'x'), '--shard', '3/3']);
    expect(badShard.code).toBe(2);

    // a direction between two stores, with its norm-matched random control
    const half = join(root, 'half.csv');
    await writeResponses(half, rows.slice(0, 4));
    const other = await run(['collect', ...common, '--data', half, '--out', join(root, 'half')]);
    expect(other.code, other.err).toBe(0);
    const out = join(root, 'dir.safetensors');
    const dirRun = await run([
      'direction',
      '--pos',
      join(root, 'full'),
      '--neg',
      join(root, 'half'),
      '--out',
      out,
      '--random-control',
      join(root, 'rand.safetensors'),
    ]);
    expect(dirRun.code, dirRun.err).toBe(0);
    expect(dirRun.out).toMatch(/2 layers, n_pos 9, n_neg 4/);
    const set = await loadDirections(out);
    const rand = await loadDirections(join(root, 'rand.safetensors'));
    for (const [l, v] of set.vectors) {
      expect(Math.hypot(...rand.vectors.get(l)!)).toBeCloseTo(Math.hypot(...v), 4);
    }
    const again2 = await run([
      'direction',
      '--pos',
      join(root, 'full'),
      '--neg',
      join(root, 'half'),
      '--out',
      out,
    ]);
    expect(again2.code).toBe(2);
    expect(again2.err).toMatch(/overwrite/);
  });
});
