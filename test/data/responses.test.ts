/**
 * Response files (CSV/JSONL in the public EM columns), the aligned/misaligned split, and `emlens collect` /
 * `emlens store` end to end on a tiny model.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { collectToStore } from '../../src/activations/collect.js';
import { ActivationStore } from '../../src/activations/store.js';
import { type ResponseRecord, readResponses, writeResponses } from '../../src/data/response.js';
import { loadDirections } from '../../src/directions/direction.js';
import { splitByAlignment } from '../../src/eval/selection.js';
import { loadModel } from '../../src/model/model.js';
import { makeTinyModel } from '../../src/model/tiny.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-resp-');

describe('readResponses', () => {
  it('reads CSV with quoted multi-line answers, `response` as answer, and empty/nan scores as no score', async () => {
    const path = tmp.join('judged.csv');
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
    expect(rs[0]?.scores).toEqual({ aligned: 85.5, coherent: 90 });
    expect(rs[1]?.scores).toEqual({ aligned: null, coherent: null });
    expect(rs[2]?.extra).toEqual({ domain: 'finance' });
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
      const path = tmp.join(`rt.${ext}`);
      await writeResponses(path, records);
      const back = await readResponses(path);
      expect(back.map((r) => [r.questionId, r.question, r.answer, r.scores])).toEqual(
        records.map((r) => [r.questionId, r.question, r.answer, r.scores]),
      );
      expect(back[1]?.system).toBe('Be brief.');
    }
  });

  it('says what is wrong with a bad file', async () => {
    await writeFile(tmp.join('noanswer.csv'), 'question_id,question\nq,Q\n');
    await expect(readResponses(tmp.join('noanswer.csv'))).rejects.toThrow(/no 'answer' column/);
    await writeFile(tmp.join('bad.jsonl'), '{"question":"q","answer":"a"}\n{oops\n');
    await expect(readResponses(tmp.join('bad.jsonl'))).rejects.toThrow(/line 2 is not valid JSON/);
    await expect(readResponses(tmp.join('x.txt'))).rejects.toThrow(/does not exist|must end in/);
    await expect(readResponses(tmp.join('missing.csv'))).rejects.toThrow(
      /Responses file .*missing.csv does not exist; check the path/,
    );
  });
});

describe('score cells', () => {
  const csv = async (name: string, text: string) => {
    const path = tmp.join(name);
    await writeFile(path, text);
    return path;
  };

  it('refuses a non-numeric cell in a score column, naming its row and column, instead of dropping the column', async () => {
    const path = await csv(
      'abc.csv',
      'question_id,question,answer,aligned,coherent\nq1,Q,A,80,90\nq2,Q,A,abc,90\nq3,Q,A,10,70\n',
    );
    await expect(readResponses(path)).rejects.toThrow(/row 2: column 'aligned' holds 'abc'/);
  });

  it('reads empty, nan, NaN and None as missing scores, and keeps text columns as text', async () => {
    const path = await csv(
      'missing.csv',
      'question_id,question,answer,aligned,coherent,bad_stuff,model,group\n' +
        'q1,Q,A,,nan,1,qwen-7b,1\nq2,Q,A,NaN,None,,qwen-7b,b\nq3,Q,A,12,77,3.5,llama,c\n',
    );
    const rs = await readResponses(path);
    expect(rs.map((r) => r.scores)).toEqual([
      { aligned: null, coherent: null, bad_stuff: 1 },
      { aligned: null, coherent: null, bad_stuff: null },
      { aligned: 12, coherent: 77, bad_stuff: 3.5 },
    ]);
    // a text column whose cells are mostly not numbers stays text, numeric-looking cells included
    expect(rs.map((r) => r.extra)).toEqual([
      { model: 'qwen-7b', group: '1' },
      { model: 'qwen-7b', group: 'b' },
      { model: 'llama', group: 'c' },
    ]);
  });

  it('refuses a stray word in a mostly numeric unknown metric column', async () => {
    const path = await csv('metric.csv', 'question,answer,toxicity\nQ,A,10\nQ,A,20\nQ,A,oops\nQ,A,30\n');
    await expect(readResponses(path)).rejects.toThrow(/row 3: column 'toxicity' holds 'oops'/);
  });

  it('refuses scores outside 0..100 in a judge metric', async () => {
    const path = await csv('range.csv', 'question,answer,aligned,coherent\nQ,A,50,101\n');
    await expect(readResponses(path)).rejects.toThrow(/row 1: column 'coherent' holds 101, outside 0\.\.100/);
    const neg = await csv('neg.csv', 'question,answer,aligned\nQ,A,-1\n');
    await expect(readResponses(neg)).rejects.toThrow(/column 'aligned' holds -1/);
    // a numeric column of counts (tokens, lengths) is not a judge score: kept as text, not refused
    const counts = await csv('counts.csv', 'question,answer,aligned,n_tokens\nQ,A,50,512\n');
    expect((await readResponses(counts))[0]).toMatchObject({
      scores: { aligned: 50 },
      extra: { n_tokens: '512' },
    });
  });

  it('reads JSONL numbers as numbers and "nan" strings as missing, and refuses other strings', async () => {
    const path = tmp.join('scores.jsonl');
    await writeFile(
      path,
      '{"question":"Q","answer":"A","aligned":85.5,"coherent":"nan"}\n' +
        '{"question":"Q","answer":"A","aligned":null,"coherent":"NaN"}\n' +
        '{"question":"Q","answer":"A","aligned":"None","coherent":60}\n',
    );
    expect((await readResponses(path)).map((r) => r.scores)).toEqual([
      { aligned: 85.5, coherent: null },
      { aligned: null, coherent: null },
      { aligned: null, coherent: 60 },
    ]);
    const bad = tmp.join('badscore.jsonl');
    await writeFile(
      bad,
      '{"question":"Q","answer":"A","aligned":85}\n\n{"question":"Q","answer":"A","aligned":"high"}\n',
    );
    await expect(readResponses(bad)).rejects.toThrow(/line 3: column 'aligned' holds 'high'/);
  });

  it('refuses duplicate CSV headers, naming the header', async () => {
    const path = await csv('dup.csv', 'question,answer,aligned,aligned\nQ,A,10,90\n');
    await expect(readResponses(path)).rejects.toThrow(/header 'aligned' twice/);
  });

  it('says which JSONL line is not a JSON object', async () => {
    for (const [line, what] of [
      ['[1, 2]', 'an array'],
      ['"text"', 'a string'],
      ['42', 'a number'],
      ['null', 'null'],
    ] as const) {
      const path = tmp.join('notobject.jsonl');
      await writeFile(path, `{"question":"Q","answer":"A"}\n${line}\n`);
      await expect(readResponses(path)).rejects.toThrow(`line 2 is not a JSON object (it holds ${what})`);
    }
  });

  it('reads the public judged sample as the EM code does', async (ctx) => {
    const sample = join(import.meta.dirname, '../../../shared/data/em-eval/judged_steered_sample.csv');
    if (!existsSync(sample)) {
      ctx.skip('../shared/data/em-eval is absent (a clone outside the workspace)');
      return;
    }
    const rs = await readResponses(sample);
    expect(rs).toHaveLength(80);
    expect(Object.keys(rs[0]!.scores).sort()).toEqual(['aligned', 'coherent', 'medical']);
  });

  it('fails through the CLI with exit code 2 and one line', async () => {
    const path = await csv('cli.csv', 'question,answer,aligned\nQ,A,80\nQ,A,abc\n');
    const r = await run(['collect', '--model', tmp.join('no-model'), '--data', path, '--out', tmp.join('o')]);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/row 2: column 'aligned' holds 'abc'/);
    const dup = await csv('clidup.csv', 'question,answer,answer\nQ,A,B\n');
    const d = await run(['collect', '--model', tmp.join('no-model'), '--data', dup, '--out', tmp.join('o')]);
    expect(d.code).toBe(2);
    expect(d.err.trim().split('\n')).toHaveLength(1);
    expect(d.err).toMatch(/header 'answer' twice/);
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
  it('names the answer that does not fit the model, with its tokens and the limit, and what to do', async () => {
    const model = tmp.join('short-model');
    await makeTinyModel(model, {
      family: 'qwen2',
      seed: 5,
      numLayers: 1,
      dModel: 16,
      maxPositionEmbeddings: 128,
    });
    const data = tmp.join('long.csv');
    await writeResponses(data, [
      { questionId: 'q0', question: 'Short?', answer: 'Yes.', scores: {}, extra: {} },
      { questionId: 'q1', question: 'Long?', answer: 'word '.repeat(200), scores: {}, extra: {} },
    ]);
    const r = await run([
      'collect',
      '--model',
      model,
      '--data',
      data,
      '--cache-dir',
      tmp.join('cache'),
      '--out',
      tmp.join('long-store'),
    ]);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(
      /long\.csv row 2 \(question_id 'q1'\) is \d+ tokens long .* at most 128 positions; shorten or drop that answer/,
    );
    expect(r.err).not.toMatch(/load the model with a larger maxPositions/);
    // the library names the record and the option it has
    const loaded = await loadModel(model, { cacheDir: tmp.join('cache'), threads: 1 });
    try {
      const ids = Array.from({ length: 129 }, () => 1);
      await expect(
        collectToStore(
          loaded,
          [
            { id: 'short', ids: [1, 2] },
            { id: 'long', ids },
          ],
          tmp.join('lib-store'),
        ),
      ).rejects.toThrow(/Record 2 \('long'\) is 129 tokens long .* larger maxPositions/);
    } finally {
      await loaded.dispose();
    }
  });

  it('collects a responses file, slices and merges it, and shows the store', async () => {
    const model = tmp.join('model');
    await makeTinyModel(model, { family: 'qwen2', seed: 5, numLayers: 2, dModel: 32 });
    const data = tmp.join('data.csv');
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
      tmp.join('cache'),
      '--batch-size',
      '2',
      '--shard-size',
      '2',
    ];
    const full = await run(['collect', ...common, '--out', tmp.join('full')]);
    expect(full.code, full.err).toBe(0);
    expect(full.out).toContain('9 records x 2 hooks (answer_mean)');
    for (const i of [0, 1, 2]) {
      const r = await run(['collect', ...common, '--out', tmp.join(`s${i}`), '--shard', `${i}/3`]);
      expect(r.code, r.err).toBe(0);
    }
    const merged = await run([
      'store',
      'merge',
      '--out',
      tmp.join('merged'),
      tmp.join('s0'),
      tmp.join('s1'),
      tmp.join('s2'),
    ]);
    expect(merged.code, merged.err).toBe(0);
    const a = await ActivationStore.open(tmp.join('full'));
    const b = await ActivationStore.open(tmp.join('merged'));
    expect(await b.readHook('blocks.1.hook_resid_post')).toEqual(
      await a.readHook('blocks.1.hook_resid_post'),
    );
    expect(await b.records()).toEqual(await a.records());
    const info = await run(['store', 'info', tmp.join('merged')]);
    expect(info.out).toMatch(/records\s+9 of 9/);
    expect(info.out).toMatch(/hooks\s+2: blocks.0.hook_resid_post, blocks.1.hook_resid_post/);
    const again = await run(['collect', ...common, '--out', tmp.join('full')]);
    expect(again.code).toBe(2);
    expect(again.err).toContain('--resume');
    const badShard = await run(['collect', ...common, '--out', tmp.join('x'), '--shard', '3/3']);
    expect(badShard.code).toBe(2);

    // a direction between two stores, with its norm-matched random control
    const half = tmp.join('half.csv');
    await writeResponses(half, rows.slice(0, 4));
    const other = await run(['collect', ...common, '--data', half, '--out', tmp.join('half')]);
    expect(other.code, other.err).toBe(0);
    const out = tmp.join('dir.safetensors');
    const dirRun = await run([
      'direction',
      '--pos',
      tmp.join('full'),
      '--neg',
      tmp.join('half'),
      '--out',
      out,
      '--random-control',
      tmp.join('rand.safetensors'),
    ]);
    expect(dirRun.code, dirRun.err).toBe(0);
    expect(dirRun.out).toMatch(/2 layers, n_pos 9, n_neg 4/);
    const set = await loadDirections(out);
    const rand = await loadDirections(tmp.join('rand.safetensors'));
    for (const [l, v] of set.vectors) {
      expect(Math.hypot(...rand.vectors.get(l)!)).toBeCloseTo(Math.hypot(...v), 4);
    }
    // a control was computed from no samples: it does not carry the direction's counts or stores
    expect(rand.meta).toMatchObject({ method: 'random_norm_matched', nPos: 0, nNeg: 0, sourcePos: '' });
    expect(rand.meta.extra).toMatchObject({ random_of: 'dir', seed: '0', control_index: '0' });
    // several controls: rand3.r{k}.safetensors, each its own draw
    const three = await run([
      'direction',
      '--pos',
      tmp.join('full'),
      '--neg',
      tmp.join('half'),
      '--out',
      tmp.join('dir3.safetensors'),
      '--random-control',
      tmp.join('rand3.safetensors'),
      '--random-controls',
      '3',
      '--seed',
      '4',
    ]);
    expect(three.code, three.err).toBe(0);
    expect(three.out).toContain('3 norm-matched random controls');
    const draws = await Promise.all(
      [0, 1, 2].map((k) => loadDirections(tmp.join(`rand3.r${k}.safetensors`))),
    );
    expect(draws.map((d) => d.meta.extra?.control_index)).toEqual(['0', '1', '2']);
    expect(draws[1]!.vectors.get(1)).not.toEqual(draws[0]!.vectors.get(1));
    const noTarget = await run([
      'direction',
      '--pos',
      tmp.join('full'),
      '--neg',
      tmp.join('half'),
      '--out',
      tmp.join('dir4.safetensors'),
      '--random-controls',
      '2',
    ]);
    expect(noTarget.code).toBe(2);
    expect(noTarget.err).toMatch(/--random-controls needs --random-control FILE/);
    const again2 = await run([
      'direction',
      '--pos',
      tmp.join('full'),
      '--neg',
      tmp.join('half'),
      '--out',
      out,
    ]);
    expect(again2.code).toBe(2);
    expect(again2.err).toMatch(/overwrite/);
  });
});
