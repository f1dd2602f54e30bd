/**
 * One road for interventions: the same request (a direction file, layers, scale, positions) gives identical
 * graph feeds through every entry point (the library builder, `generate`, `eval` and its library call,
 * `steer`/`ablate`, and the server's request path), ablation at `--layers all` is a rank-1 projection at each
 * of the 2L + 1 residual sites, and every command refuses a NaN or non-F32 direction file the same way.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ablateCommandInterventions } from '../../src/cli/ablate.js';
import { evalInterventions } from '../../src/cli/eval.js';
import { directionFileInterventions } from '../../src/cli/interventionCommon.js';
import { steerCommandInterventions } from '../../src/cli/steer.js';
import { type DirectionSet, directionSet, saveDirections } from '../../src/directions/direction.js';
import { directionInterventions } from '../../src/eval/sample.js';
import { generate } from '../../src/generate/generate.js';
import {
  composeInterventions,
  type InterventionRequest,
  parseLayerList,
} from '../../src/interventions/compose.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { hookName } from '../../src/model/hooks.js';
import { type Intervention, interventionFeeds } from '../../src/model/interventions.js';
import { ApiError } from '../../src/serve/apiError.js';
import { buildInterventions, DirectionResolver } from '../../src/serve/interventions.js';
import { parseChatRequest } from '../../src/serve/protocol.js';
import { loadTokenizer } from '../../src/text/tokenizer.js';
import { useTinyModel } from '../helpers/fixtures.js';
import { vec } from '../helpers/numeric.js';
import { runCli } from '../helpers/runCli.js';

const LAYERS = 4;
const D = 32;
const BATCH = 2;
const SEQ = 5;

const tiny = useTinyModel('emlens-road-', { family: 'qwen2', seed: 3, numLayers: LAYERS, dModel: D });
let directionsDir: string;
let file: string;
let set: DirectionSet;

beforeAll(async () => {
  directionsDir = tiny.at('directions');
  await mkdir(directionsDir);
  // a different vector at every layer: where two layers' sites meet, a builder that names the shared site
  // twice ablates a rank-2 span there
  set = directionSet(
    Array.from({ length: LAYERS }, (_, l) => [l, vec(D, 40 + l, 3)] as const),
    {
      model: 'tiny',
      hook: 'hook_resid_post',
      method: 'mean_diff',
      positions: 'answer_mean',
      nPos: 1,
      nNeg: 1,
      sourcePos: '',
      sourceNeg: '',
    },
  );
  file = join(directionsDir, 'em.safetensors');
  await saveDirections(file, set);
});

type Kind = 'steer' | 'ablate';

interface Case {
  readonly kind: Kind;
  readonly layers: string;
  readonly scale: number;
  readonly from?: number;
}

const CASES: Case[] = [
  { kind: 'ablate', layers: 'all', scale: 1 },
  { kind: 'ablate', layers: '1,2', scale: 1 },
  { kind: 'ablate', layers: 'all', scale: 1, from: 2 },
  { kind: 'steer', layers: 'all', scale: 3 },
  { kind: 'steer', layers: '1,2', scale: -2.5 },
  { kind: 'steer', layers: '0,3', scale: 4, from: 1 },
];

/** The request as the library states it. */
function libraryRequest(c: Case): InterventionRequest {
  const layers = parseLayerList(c.layers);
  const from = c.from ?? 'own';
  return c.kind === 'steer'
    ? { steer: [{ direction: set, layers, scale: c.scale, from }] }
    : { ablate: [{ direction: set, layers, from }] };
}

/** The request's `emlens` field as a client sends it, parsed as the server parses a request body. */
function serverField(c: Case, direction: string | number[] = 'em.safetensors') {
  const parsed = parseLayerList(c.layers);
  const spec = {
    direction,
    layers: parsed,
    ...(c.from !== undefined ? { from: c.from } : {}),
    ...(c.kind === 'steer' ? { scale: c.scale } : {}),
  };
  const body = { model: 'tiny', messages: [{ role: 'user', content: 'x' }], emlens: { [c.kind]: [spec] } };
  return parseChatRequest(JSON.parse(JSON.stringify(body))).emlens!;
}

/** Every entry point's interventions for one request. */
async function entryPoints(c: Case): Promise<[string, Intervention[]][]> {
  const resolver = await DirectionResolver.create({ directionsDir });
  const flags = { [c.kind]: file, layers: c.layers, scale: c.scale };
  const out: [string, Intervention[]][] = [
    ['library composeInterventions', composeInterventions(libraryRequest(c), tiny.spec)],
    ['generate --steer/--ablate', await directionFileInterventions({ ...flags, from: c.from }, tiny.spec)],
    ['eval --steer/--ablate', await evalInterventions({ ...flags, directionLayer: c.from }, tiny.spec)],
    [
      'library directionInterventions',
      directionInterventions(tiny.spec, {
        kind: c.kind,
        directions: set,
        layers: parseLayerList(c.layers),
        scale: c.scale,
        sourceLayer: c.from,
      }),
    ],
    ['server request (file)', await buildInterventions(serverField(c), tiny.spec, resolver, 'emlens')],
  ];
  if (c.kind === 'steer' && c.from === undefined) {
    out.push([
      'emlens steer',
      steerCommandInterventions(set, tiny.spec, { layers: c.layers, scale: c.scale }),
    ]);
  }
  if (c.kind === 'ablate') {
    const from = c.from === undefined ? 'own' : String(c.from);
    out.push(['emlens ablate', ablateCommandInterventions(set, tiny.spec, { layers: c.layers, from })]);
  }
  if (c.from !== undefined) {
    // an inline vector is one vector at every layer: the same as a fixed source layer of the file
    const inline = serverField(c, [...set.vectors.get(c.from)!]);
    const first = (inline[c.kind] ?? [])[0];
    expect(first).toBeDefined();
    const { from: _from, ...noFrom } = first!;
    out.push([
      'server request (inline)',
      await buildInterventions({ [c.kind]: [noFrom] }, tiny.spec, resolver, 'emlens'),
    ]);
  }
  return out;
}

/** The four feed tensors `Model.forward` hands the graph, placed at `positions` as the decode loop does. */
function feeds(ivs: readonly Intervention[], positions: 'all' | Float32Array = 'all') {
  return interventionFeeds(
    ivs.map((iv) => ({ ...iv, positions })),
    tiny.spec.numLayers,
    tiny.spec.dModel,
    BATCH,
    SEQ,
  );
}

function unit(v: Float32Array): Float64Array {
  const n = Math.sqrt(v.reduce((a, x) => a + x * x, 0));
  return Float64Array.from(v, (x) => x / n);
}

describe('one road for interventions', () => {
  it('gives identical graph feeds through every entry point for the same request', async () => {
    // a prompt-only policy as the decode loop builds it for the prefill: 1 on the real prompt tokens
    const prompt = Float32Array.from({ length: BATCH * SEQ }, (_, i) => (i % SEQ >= 1 ? 1 : 0));
    for (const c of CASES) {
      const points = await entryPoints(c);
      expect(points.length).toBeGreaterThanOrEqual(5);
      const [refName, ref] = points[0]!; // at least five, checked just above
      const scored = composeInterventions({ ...libraryRequest(c), positions: prompt }, tiny.spec);
      for (const positions of ['all', prompt] as const) {
        const want = feeds(ref, positions);
        for (const [name, ivs] of points) {
          const got = feeds(ivs, positions);
          const what = `${name} vs ${refName} for ${JSON.stringify(c)}`;
          expect(got.rank, what).toBe(want.rank);
          expect(got.steerVectors, what).toEqual(want.steerVectors);
          expect(got.steerMask, what).toEqual(want.steerMask);
          expect(got.ablateBasis, what).toEqual(want.ablateBasis);
          expect(got.ablateMask, what).toEqual(want.ablateMask);
        }
      }
      // a scoring request's positions land where the decode loop places a generation policy
      const want = feeds(ref, prompt);
      const got = interventionFeeds(scored, tiny.spec.numLayers, tiny.spec.dModel, BATCH, SEQ);
      expect(got).toEqual(want);
    }
  });

  it('ablates one direction at each of the 2L + 1 sites with --layers all (eval, generate, server)', async () => {
    const c: Case = { kind: 'ablate', layers: 'all', scale: 1 };
    // site order: resid_pre of block 0, then resid_mid and resid_post of each block; each owned by its block
    const owner = [0, ...Array.from({ length: LAYERS }, (_, l) => [l, l]).flat()];
    for (const [name, ivs] of await entryPoints(c)) {
      const f = feeds(ivs);
      expect(f.rank, name).toBe(1);
      owner.forEach((l, site) => {
        const u = unit(set.vectors.get(l)!);
        const got = f.ablateBasis.subarray(site * D, (site + 1) * D);
        const dot = got.reduce((a, x, i) => a + x * u[i]!, 0); // got and u both have D entries
        expect(Math.abs(dot), `${name}, site ${site}`).toBeCloseTo(1, 6);
      });
    }
    // and the model computes with that: the generate path's list gives the compose result's logits
    const ids = [
      [5, 17, 33, 80, 121],
      [9, 200, 41, 3, 8],
    ];
    const viaGenerate = await directionFileInterventions({ ablate: file, layers: 'all' }, tiny.spec);
    const a = await tiny.model.forward(ids, { logits: 'all', interventions: viaGenerate });
    const b = await tiny.model.forward(ids, {
      logits: 'all',
      interventions: composeInterventions({ ablate: [{ direction: set, layers: 'all' }] }, tiny.spec),
    });
    expect(a.logits.data).toEqual(b.logits.data);
    const r = await tiny.model.forward(ids, {
      hooks: [hookName(1, 'resid_post')],
      interventions: viaGenerate,
    });
    const h = r.hooks.get(hookName(1, 'resid_post'))!;
    // resid_post of block 1 loses block 1's direction but keeps block 2's component (no rank-2 span there)
    const along = (u: Float64Array) => {
      let worst = 0;
      for (let t = 0; t < h.data.length / D; t++) {
        let dot = 0;
        for (let i = 0; i < D; i++) dot += h.data[t * D + i]! * u[i]!; // t < rows, i < D
        worst = Math.max(worst, Math.abs(dot));
      }
      return worst;
    };
    expect(along(unit(set.vectors.get(1)!))).toBeLessThan(1e-4);
    expect(along(unit(set.vectors.get(2)!))).toBeGreaterThan(1e-2);
  });

  it('generate --ablate --layers all samples what the library samples with the composed ablation', async () => {
    // sampled, several rows: greedy tokens of a tiny model can survive the rank-2 span; sampled ones do not
    const tokenizer = await loadTokenizer(tiny.dir);
    const r = await runCli([
      'generate',
      '--model',
      tiny.dir,
      '--cache-dir',
      tiny.cacheDir,
      '--threads',
      '1',
      '--prompt',
      'Hello there',
      '--raw',
      '--temperature',
      '1',
      '--seed',
      '1',
      '--n',
      '4',
      '--max-new-tokens',
      '24',
      '--ablate',
      file,
      '--layers',
      'all',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const decoder = {
      decode: (t: readonly number[]) => tokenizer.decode(t, { cleanUpTokenizationSpaces: false }),
    };
    const gens = await generate(tiny.model, [tokenizer.encode('Hello there')], {
      maxNewTokens: 24,
      temperature: 1,
      seed: 1,
      n: 4,
      tokenizer: decoder,
      interventions: composeInterventions({ ablate: [{ direction: set, layers: 'all' }] }, tiny.spec),
    });
    const rest = gens.slice(1).map((g) => `\n[sample ${g.sample + 1}/4]\n${g.text ?? ''}\n`);
    expect(r.stdout).toBe(`[sample 1/4]\n${gens[0]!.text}\n${rest.join('')}`); // n: 4 samples
  });

  it('the server names the field at fault and checks inline vectors as files are checked', async () => {
    const resolver = await DirectionResolver.create({ directionsDir });
    const fails = async (field: unknown): Promise<ApiError> => {
      const ext = parseChatRequest({
        model: 'tiny',
        messages: [{ role: 'user', content: 'x' }],
        emlens: field,
      }).emlens!;
      const e = await buildInterventions(ext, tiny.spec, resolver, 'emlens').then(
        () => null,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(ApiError);
      return e as ApiError;
    };
    let e = await fails({ ablate: [{ direction: 'em.safetensors', layers: [7] }] });
    expect([e.status, e.param]).toEqual([400, 'emlens.ablate[0].layers']);
    expect(e.message).toMatch(/layers 0\.\.3/);
    e = await fails({ steer: [{ direction: [1, 2], layers: 1 }] });
    expect([e.status, e.param]).toEqual([400, 'emlens.steer[0].direction']);
    expect(e.message).toMatch(/length 2 but the model's d_model is 32/);
    // inline vectors that skip the request schema (the server's own `steer` option) meet the loader's checks
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY]) {
      const direction = [...vec(D, 5)];
      direction[4] = bad;
      const x = await buildInterventions(
        { steer: [{ direction, layers: 1 }] },
        tiny.spec,
        resolver,
        'server',
      ).then(
        () => null,
        (y: unknown) => y as ApiError,
      );
      expect(x).toBeInstanceOf(ApiError);
      expect([x!.status, x!.param]).toEqual([400, 'server.steer[0].direction']);
      expect(x!.message).toMatch(/^The inline direction has a non-finite value .* at layer 0, index 4/);
    }
    e = await fails({ steer: [{ direction: 'em.safetensors', layers: [1], from: 9 }] });
    expect([e.status, e.param]).toEqual([400, 'emlens.steer[0].from']);
  });
});

describe('one direction loader', () => {
  const common = () => ['--model', tiny.dir, '--cache-dir', tiny.cacheDir, '--threads', '1'];

  async function badFiles(): Promise<Record<string, string>> {
    const nan = join(directionsDir, 'nan.safetensors');
    const inf = join(directionsDir, 'inf.safetensors');
    const f16 = join(directionsDir, 'f16.safetensors');
    const f64 = join(directionsDir, 'f64.safetensors');
    const f32 = (l: number, poison?: number) => {
      const v = vec(D, 70 + l);
      if (poison !== undefined) v[3] = poison;
      return { dtype: 'F32' as const, shape: [D], data: v };
    };
    // the bad layer is one the commands act on
    await writeSafetensors(nan, { 'direction.0': f32(0), 'direction.1': f32(1, Number.NaN) });
    await writeSafetensors(inf, { 'direction.0': f32(0), 'direction.1': f32(1, Number.POSITIVE_INFINITY) });
    await writeSafetensors(f16, {
      'direction.1': { dtype: 'F16', shape: [D], data: new Uint16Array(D).fill(0x3c00) },
    });
    await writeSafetensors(f64, {
      'direction.1': { dtype: 'F64', shape: [D], data: new Float64Array(D).fill(0.5) },
    });
    return { nan, inf, f16, f64 };
  }

  it('generate --steer refuses NaN/Inf and F16/F64 direction files with exit 2 and one line, as steer, ablate, eval and the server do', async () => {
    const files = await badFiles();
    const resolver = await DirectionResolver.create({ directionsDir });
    const expected: Record<string, RegExp> = {
      nan: /non-finite value \(NaN\) at layer 1/,
      inf: /non-finite value \(Infinity\) at layer 1/,
      f16: /stores 'direction\.1' as F16, but directions must be F32/,
      f64: /stores 'direction\.1' as F64, but directions must be F32/,
    };
    for (const [kind, path] of Object.entries(files)) {
      const runs = {
        'generate --steer': await runCli([
          'generate',
          ...common(),
          '--prompt',
          'x',
          '--max-new-tokens',
          '2',
          '--steer',
          path,
          '--layers',
          '1',
        ]),
        'generate --ablate': await runCli([
          'generate',
          ...common(),
          '--prompt',
          'x',
          '--max-new-tokens',
          '2',
          '--ablate',
          path,
          '--layers',
          '1',
        ]),
        steer: await runCli([
          'steer',
          ...common(),
          '--direction',
          path,
          '--layers',
          '1',
          '--scale',
          '2',
          '--prompt',
          'x',
          '--max-new-tokens',
          '2',
        ]),
        ablate: await runCli([
          'ablate',
          ...common(),
          '--direction',
          path,
          '--layers',
          '1',
          '--prompt',
          'x',
          '--max-new-tokens',
          '2',
        ]),
        eval: await runCli([
          'eval',
          ...common(),
          '--questions',
          tiny.at('questions.yaml'),
          '--judge',
          'http://127.0.0.1:9/v1',
          '--out',
          tiny.at(`eval-${kind}`),
          '--steer',
          path,
          '--layers',
          '1',
        ]),
      };
      const lines = new Set<string>();
      for (const [command, r] of Object.entries(runs)) {
        expect(r.code, `${command} with the ${kind} file: ${r.stderr}`).toBe(2);
        expect(r.stderr.trimEnd().split('\n'), `${command}: ${r.stderr}`).toHaveLength(1);
        expect(r.stderr, command).toMatch(expected[kind]!); // badFiles makes one file per kind in expected
        lines.add(r.stderr);
      }
      expect([...lines], kind).toHaveLength(1); // word for word the same refusal
      const e = await buildInterventions(
        { steer: [{ direction: path.slice(directionsDir.length + 1), layers: [1] }] },
        tiny.spec,
        resolver,
        'emlens',
      ).then(
        () => null,
        (x: unknown) => x as ApiError,
      );
      expect(e).toBeInstanceOf(ApiError);
      expect([e!.status, e!.param]).toEqual([400, 'emlens.steer[0].direction']);
      expect(`emlens: ${e!.message}\n`).toBe([...lines][0]);
    }
  });
});
