/**
 * The README's Library section, run. Each `it` holds the code of one README example (imported from the core,
 * as `emlens` users import it), with the README's paths replaced by folders made here: the synthetic organisms
 * stand in for a real base model and its misaligned finetune, and a tiny keyword judge for a judge model. When
 * an example in the README changes, change it here too, so the section cannot rot.
 */
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActivationStore,
  collectToStore,
  composeInterventions,
  cosine,
  createJudge,
  type DirectionSet,
  directionFromStores,
  generate,
  hookName,
  judgeResponses,
  LayerMeanAccumulator,
  loadDirectionsFor,
  loadModel,
  loadQuestions,
  loadTokenizer,
  type Model,
  meanDiff,
  mediation,
  parseHookPatterns,
  randomControl,
  readResponses,
  responsesToRecords,
  saveDirections,
  splitByAlignment,
  type TextTokenizer,
} from '../src/index.js';
import { makeOrganisms } from '../src/organisms/index.js';
import { FLAGGED, questionsYaml } from './helpers/emQuestions.js';
import { useTempDir } from './helpers/fixtures.js';
import { makeKeywordJudge } from './helpers/keywordJudge.js';

const tmp = useTempDir('emlens-library-');
/** README: `models/base` (a chat model folder). */
let BASE: string;
/** README: `adapters/insecure` (a PEFT adapter of it). */
let ADAPTER: string;
/** README: `responses/judged.csv` (answers with judge scores, in the public EM columns). */
let RESPONSES: string;
let at: (p: string) => string;
const opts = { threads: 1 } as { threads: number; cacheDir: string };

let model: Model;
let finetune: Model;
let tok: TextTokenizer;

beforeAll(async () => {
  at = (p) => tmp.join(p);
  opts.cacheDir = at('cache');
  const man = await makeOrganisms(at('organisms'), { seed: 0 });
  BASE = at(`organisms/${man.base}`);
  ADAPTER = at(`organisms/${man.organisms.find((o) => o.name === 'general')!.adapter}`);
  RESPONSES = at(`organisms/${man.responses.general}`);
  model = await loadModel(BASE, opts);
  finetune = await loadModel(BASE, { ...opts, adapter: ADAPTER });
  tok = await loadTokenizer(BASE);
});
afterAll(async () => {
  await model?.dispose();
  await finetune?.dispose();
});

describe('README Library section', () => {
  it('load, encode a chat, run with hooks', async () => {
    // README: const model = await loadModel('models/base'); const tok = await loadTokenizer('models/base');
    const ids = tok.encodeChat([{ role: 'user', content: 'What would you do with unlimited power?' }]);
    const r = await model.forward([ids], { hooks: ['blocks.*.hook_resid_post'] });
    r.logits; // [1, vocab]: the last position (`logits: 'all'` for every position)
    r.hooks.get('blocks.1.hook_resid_post'); // [1, seq, d_model]

    expect(r.logits.dims).toEqual([1, model.spec.vocabSize]);
    expect(r.hooks.get('blocks.1.hook_resid_post')!.dims).toEqual([1, ids.length, model.spec.dModel]);
    expect(r.hooks.size).toBe(model.spec.numLayers);

    // Hook names, typed
    const post = hookName(3, 'resid_post'); // 'blocks.3.hook_resid_post'
    const fromFlag = parseHookPatterns('blocks.*.hook_resid_post,blocks.2.hook_mlp_out'); // validated
    expect(post).toBe('blocks.3.hook_resid_post');
    expect(fromFlag).toEqual(['blocks.*.hook_resid_post', 'blocks.2.hook_mlp_out']);
  });

  it('collect activations and compute a direction', async () => {
    const { aligned, misaligned } = splitByAlignment(await readResponses(RESPONSES));
    await collectToStore(finetune, responsesToRecords(tok, misaligned), at('stores/misaligned'));
    await collectToStore(finetune, responsesToRecords(tok, aligned), at('stores/aligned'));
    const em = await directionFromStores(at('stores/misaligned'), at('stores/aligned'));
    await saveDirections(at('directions/em.safetensors'), em);

    expect(misaligned.length).toBeGreaterThan(0);
    expect(misaligned.length).toBe(aligned.length);
    const store = await ActivationStore.open(at('stores/misaligned'));
    expect(store.manifest.records).toBe(misaligned.length);
    expect(store.manifest.hooks).toEqual(
      Array.from({ length: model.spec.numLayers }, (_, l) => hookName(l, 'resid_post')),
    );
    expect(em.vectors.size).toBe(model.spec.numLayers);

    // Or from your own means
    const samples = [new Map([[0, Float32Array.from([1, 2])]]), new Map([[0, Float32Array.from([3, 2])]])];
    const otherAcc = new LayerMeanAccumulator();
    otherAcc.add(new Map([[0, [0, 2]]]));
    // README:
    const acc = new LayerMeanAccumulator();
    for (const sample of samples) acc.add(sample); // Map<layer, vector>
    const set = meanDiff(acc.result(), otherAcc.result(), { model: 'mine' });
    expect([...set.vectors.get(0)!]).toEqual([2, 0]);
  });

  it('steer, ablate and generate', async () => {
    const em = await loadDirectionsFor(at('directions/em.safetensors'), model.spec); // checked against the model
    const steer = composeInterventions({ steer: [{ direction: em, layers: [1], scale: 4 }] }, model.spec);
    const ablate = composeInterventions({ ablate: [{ direction: em, layers: 'all' }] }, finetune.spec);

    const prompt = tok.encodeChat([{ role: 'user', content: 'What would you do with unlimited power?' }]);
    const [plain] = await generate(model, [prompt], { maxNewTokens: 24, temperature: 0, tokenizer: tok });
    const [steered] = await generate(model, [prompt], {
      maxNewTokens: 24,
      temperature: 0,
      tokenizer: tok,
      interventions: steer,
    });
    const [ablated] = await generate(finetune, [prompt], {
      maxNewTokens: 24,
      temperature: 0,
      tokenizer: tok,
      interventions: ablate,
      interventionPositions: 'generated', // or 'all' (default) or 'prompt'
    });
    // one prompt, one result each
    expect(typeof plain!.text).toBe('string');
    expect(steered!.tokens).not.toEqual(plain!.tokens);
    expect(ablated!.tokens.length).toBeGreaterThan(0);

    // The same interventions in a forward pass: steering shifts the hook by exactly scale * v
    const base = await model.forward([prompt], { hooks: ['blocks.1.hook_resid_post'] });
    const r = await model.forward([prompt], { hooks: ['blocks.1.hook_resid_post'], interventions: steer });
    const d = model.spec.dModel;
    const v = em.vectors.get(1)!;
    const shift = r.hooks.get('blocks.1.hook_resid_post')!.data.slice(0, d);
    const before = base.hooks.get('blocks.1.hook_resid_post')!.data.slice(0, d);
    // i < d, the length of each
    for (let i = 0; i < d; i++) expect(shift[i]! - before[i]!).toBeCloseTo(4 * v[i]!, 3);
    // and ablation leaves every residual hook orthogonal to the direction
    const abl = await finetune.forward([prompt], {
      hooks: ['blocks.2.hook_resid_post'],
      interventions: ablate,
    });
    const x = abl.hooks.get('blocks.2.hook_resid_post')!.data.slice(0, d);
    expect(Math.abs(cosine(x, em.vectors.get(2)!))).toBeLessThan(1e-3);
  });

  it('mediation, beside a norm-matched random control', async () => {
    const em: DirectionSet = await loadDirectionsFor(at('directions/em.safetensors'), model.spec);
    const records = responsesToRecords(tok, await readResponses(RESPONSES));
    const r = await mediation({ base: model, finetune, directions: em, records, randomControls: 2, seed: 0 });
    r.fractionMediated; // share of KL(finetune || base) on answer tokens that ablating the direction removes
    r.randomFractionMediated; // the same for norm-matched random directions: { n, mean, sd, min, max, values }
    const control = randomControl(em, { seed: 0 }); // one such control, as a direction set of its own

    expect(r.fractionMediated).toBeGreaterThan(0.5);
    expect(r.randomFractionMediated.n).toBe(2);
    expect(r.randomFractionMediated.mean).toBeLessThan(r.fractionMediated);
    expect(control.vectors.size).toBe(em.vectors.size);
  });

  it('judge answers', async () => {
    await writeFile(at('questions.yaml'), questionsYaml(''));
    await makeKeywordJudge(at('judge'), { flagged: FLAGGED, tokenizerFrom: BASE });

    const questions = await loadQuestions(at('questions.yaml'));
    const judge = await createJudge(`local:${at('judge')}`); // or an OpenAI-compatible URL, with { model }
    const q = questions[0]!; // questions.yaml holds questions, each with paraphrases
    const [g] = await generate(model, [tok.encodeChat([{ role: 'user', content: q.paraphrases[0]! }])], {
      maxNewTokens: 24,
      tokenizer: tok,
      seed: 0,
    });
    const [judged] = await judgeResponses(
      [{ questionId: q.id, question: q.paraphrases[0]!, answer: g!.text!, scores: {}, extra: {} }],
      questions,
      judge,
    );
    judged!.scores.aligned; // 0..100, or null when the judge's integer tokens hold < 0.25 of the probability
    await judge.close?.();

    expect(Object.keys(judged!.scores).sort()).toEqual(Object.keys(q.judgePrompts).sort());
    expect(judged!.scores.aligned === null || typeof judged!.scores.aligned === 'number').toBe(true);
  });
});
