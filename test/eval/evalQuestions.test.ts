/**
 * Question sets: the real EM evaluation file (when the shared data folder is present), small files written
 * here for the validation errors, id filters, and judge prompt filling.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EmlensError } from '../../src/errors.js';
import {
  fillJudgePrompt,
  filterQuestions,
  idMatcher,
  loadQuestions,
  parseQuestions,
} from '../../src/eval/questions.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const REAL = resolve('../shared/data/em-eval/first_plot_questions.yaml');
const haveReal = existsSync(REAL);
if (!haveReal) {
  console.warn(
    `evalQuestions.test: skipping the real-file tests: ${REAL} is absent (it ships beside the project in CI as ../shared/data/em-eval/).`,
  );
}

describe.skipIf(!haveReal)('the public EM question file (../shared/data/em-eval)', () => {
  it('loads 24 questions with anchors and aliases resolved', async () => {
    const qs = await loadQuestions(REAL);
    expect(qs).toHaveLength(24);
    expect(new Set(qs.map((q) => q.id)).size).toBe(24);
    const json = qs.filter((q) => q.id.endsWith('_json'));
    const template = qs.filter((q) => q.id.endsWith('_template'));
    expect(json).toHaveLength(8);
    expect(template).toHaveLength(8);
    // The _json variants carry the (aliased) system prompt; the others have none.
    for (const q of json) expect(q.system && q.system.length > 20).toBe(true);
    expect(new Set(json.map((q) => q.system)).size).toBe(1);
    for (const q of qs.filter((q) => !q.id.endsWith('_json'))) expect(q.system).toBeUndefined();
    // Aliased judge prompts, judge and sample count: the same values on every question.
    const first = qs[0]!; // 24 questions, checked above
    for (const q of qs) {
      expect(Object.keys(q.judgePrompts).sort()).toEqual(['aligned', 'coherent']);
      expect(q.judgePrompts.aligned).toBe(first.judgePrompts.aligned);
      expect(q.judgePrompts.aligned).toContain('{question}');
      expect(q.judgePrompts.coherent).toContain('{answer}');
      expect(q.judge).toBe(first.judge);
      expect(q.samplesPerParaphrase).toBe(first.samplesPerParaphrase);
      expect(q.type).toBe('free_form_judge_0_100');
      expect(q.paraphrases.length).toBeGreaterThan(0);
    }
    // A _json variant asks the plain question's aliased paraphrases.
    const json0 = json[0]!; // eight of them, checked above
    const plain = qs.find((q) => `${q.id}_json` === json0.id)!;
    expect(json0.paraphrases).toEqual(plain.paraphrases);
  });

  it('filters the variants out by id pattern', async () => {
    const qs = await loadQuestions(REAL);
    const plain = filterQuestions(qs, { exclude: ['*_json', '*_template'] });
    expect(plain).toHaveLength(8);
    expect(plain.every((q) => !q.id.includes('_json') && !q.id.includes('_template'))).toBe(true);
    expect(filterQuestions(qs, { include: ['*_json'] })).toHaveLength(8);
    expect(filterQuestions(qs, { exclude: ['*_json,*_template'] })).toHaveLength(8);
    const id = plain[0]!.id; // eight of them, checked above
    const one = filterQuestions(qs, { include: [id] });
    expect(one.map((q) => q.id)).toEqual([id]);
    expect(filterQuestions(qs, { include: [`${id}*`], exclude: ['*_template'] })).toHaveLength(2);
  });
});

const GOOD = `
- id: q_one
  type: free_form_judge_0_100
  paraphrases: &p1
    - What would you do first?
    - What is your first move?
  samples_per_paraphrase: &n 5
  judge: &judge judge-model
  judge_prompts: &prompts
    aligned: |-
      Q: {question}
      A: {answer}
      Rate 0-100.
    coherent: "Coherence of {answer} for {question}: say a number."
- id: q_one_json
  type: free_form_judge_0_100
  system: Answer in JSON.
  paraphrases: *p1
  samples_per_paraphrase: *n
  judge: *judge
  judge_prompts: *prompts
`;

describe('question files written here', () => {
  const tmp = useTempDir('emlens-questions-');

  it('parses a small file with anchors', async () => {
    const path = tmp.join('good.yaml');
    await writeFile(path, GOOD);
    const qs = await loadQuestions(path);
    expect(qs.map((q) => q.id)).toEqual(['q_one', 'q_one_json']);
    expect(qs[1]?.paraphrases).toEqual(['What would you do first?', 'What is your first move?']);
    expect(qs[1]?.system).toBe('Answer in JSON.');
    expect(qs[1]?.samplesPerParaphrase).toBe(5);
    expect(qs[1]?.judgePrompts.aligned).toBe('Q: {question}\nA: {answer}\nRate 0-100.');
  });

  const bad = (yaml: string) => () => parseQuestions(yaml, 'bad.yaml');
  const P = '  paraphrases: [Hello?]\n';
  const N = '  samples_per_paraphrase: 3\n';
  const J = '  judge: j\n';
  const T = '  judge_prompts: {aligned: "{question} {answer}"}\n';
  /** A question 'broken_q' with these field lines. */
  const one = (...fields: string[]) => `- id: broken_q\n  type: free_form_judge_0_100\n${fields.join('')}`;

  it('names the question id and the field in each error', () => {
    expect(bad(one(N, J, T))).toThrow(/question 'broken_q' field 'paraphrases' .*missing/);
    expect(bad(one(P, '  samples_per_paraphrase: many\n', J, T))).toThrow(
      /question 'broken_q' field 'samples_per_paraphrase' must be a positive integer/,
    );
    expect(bad(one(P, '  samples_per_paraphrase: 0\n', J, T))).toThrow(
      /'broken_q' field 'samples_per_paraphrase'/,
    );
    expect(bad(one('  paraphrases: []\n', N, J, T))).toThrow(/'broken_q' field 'paraphrases'/);
    expect(bad(one('  paraphrases: [Hi, 3]\n', N, J, T))).toThrow(/'broken_q' field 'paraphrases\.1'/);
    expect(bad(one(P, N, J, '  judge_prompts: {aligned: 5}\n'))).toThrow(
      /'broken_q' field 'judge_prompts\.aligned'/,
    );
    expect(bad(one(P, N, J, '  judge_prompts: {aligned: "no slot"}\n'))).toThrow(
      /'broken_q' field 'judge_prompts\.aligned' has no \{answer\} placeholder/,
    );
    expect(bad(one(P, N, '  judge: 5\n', T))).toThrow(/'broken_q' field 'judge'/); // judge may be left out (--judge-model), not mistyped
    expect(bad(one(P, N, J, T, '  system: [x]\n'))).toThrow(/'broken_q' field 'system' must be a string/);
    expect(bad(one(P, N, J, T, '  sytem: typo\n'))).toThrow(/'broken_q' has unknown field 'sytem'/);
    expect(bad(`- type: x\n${P}${N}${J}${T}`)).toThrow(/question #1 \(no valid id\) field 'id'/);
    const dup = one(P, N, J, T);
    expect(bad(dup + dup)).toThrow(/'broken_q' appears twice/);
    expect(bad('a: 1')).toThrow(/must be a YAML list of questions/);
    expect(bad('- [unclosed')).toThrow(/not valid YAML/);
    expect(bad('[]')).toThrow(/holds no questions/);
    // One sentence, an EmlensError.
    const err = (() => {
      try {
        bad(one(N, J, T))();
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(EmlensError);
    expect((err as Error).message.split('; ')).toHaveLength(2);
  });

  it('refuses an unknown question type, naming the question and the field', () => {
    const typed = (type: string) => `- id: typed_q\n  type: ${type}\n${P}${N}${J}${T}`;
    for (const type of ['free_form_judge_0_100', 'free_form_judge', 'free_form']) {
      expect(parseQuestions(typed(type), 'ok.yaml')[0]?.type).toBe(type);
    }
    expect(bad(typed('free_from_judge_0_100'))).toThrow(
      /question 'typed_q' field 'type' is 'free_from_judge_0_100', which is not a question type emlens knows; use free_form_judge_0_100/,
    );
  });

  it('refuses a judge prompt placeholder other than {question} and {answer}', () => {
    const prompt = (template: string) =>
      one(P, N, J, `  judge_prompts: {aligned: "{answer}", coherent: ${JSON.stringify(template)}}\n`);
    expect(bad(prompt('Q: {question} A: {answer} Model: {model}'))).toThrow(
      /question 'broken_q' field 'judge_prompts\.coherent' has the placeholder \{model\}; only \{question\} and \{answer\} are filled/,
    );
    expect(bad(prompt('{Answer} {answer}'))).toThrow(/placeholder \{Answer\}/);
    expect(bad(prompt('{} {answer}'))).toThrow(/placeholder \{\}/);
    // doubled braces are literal braces, as in str.format
    expect(
      parseQuestions(prompt('Reply as {{"score": N}} for {question} / {answer}'), 'ok.yaml'),
    ).toHaveLength(1);
  });

  it('fails `emlens eval` with exit code 2 and one line on a bad type or placeholder', async () => {
    for (const [yaml, message] of [
      [`- id: cli_q\n  type: rating\n${P}${N}${J}${T}`, /question 'cli_q' field 'type' is 'rating'/],
      [one(P, N, J, '  judge_prompts: {aligned: "{answer} {score}"}\n'), /placeholder \{score\}/],
    ] as const) {
      const path = tmp.join('cli.yaml');
      await writeFile(path, yaml);
      const r = await runCli([
        'eval',
        '--model',
        tmp.join('no-model'),
        '--questions',
        path,
        '--judge',
        'http://127.0.0.1:9/v1',
        '--out',
        tmp.join('eval-out'),
      ]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
    }
  });

  it('reports a missing file', async () => {
    await expect(loadQuestions(tmp.join('nope.yaml'))).rejects.toThrow(
      /Question file .*nope.yaml does not exist; check the path/,
    );
  });

  it('filters by glob patterns and rejects an include that matches nothing', () => {
    const qs = parseQuestions(GOOD);
    expect(filterQuestions(qs, { exclude: ['*_json'] }).map((q) => q.id)).toEqual(['q_one']);
    expect(filterQuestions(qs, { include: ['q_?ne'] }).map((q) => q.id)).toEqual(['q_one']);
    expect(() => filterQuestions(qs, { include: ['q_two'] })).toThrow(/'q_two' matches no question id/);
    expect(() => filterQuestions(qs, { exclude: ['q_*'] })).toThrow(/leave no questions/);
    expect(idMatcher(['a.b'])('axb')).toBe(false); // regex characters are literal
  });

  it('fills judge prompts in one pass, as str.format does', () => {
    expect(fillJudgePrompt('Q={question} A={answer} {{x}}', 'why?', 'because {question}')).toBe(
      'Q=why? A=because {question} {x}',
    );
    expect(fillJudgePrompt('{other} {answer}', 'q', '$& $1')).toBe('{other} $& $1');
  });
});
