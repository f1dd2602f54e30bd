/**
 * `emlens lora-trajectory` on synthetic PEFT checkpoints with a planted phase transition: B of one module
 * grows along u until step 50, then turns to grow along an orthogonal w. The local cosine is -1 on the
 * straight parts and peaks (0) at the turn; a second module that runs straight throughout stays at -1; the
 * PCA needs two components; bad inputs exit 2.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { findCheckpoints, loraTrajectory } from '../../src/model/lora/trajectory.js';
import { writePeftAdapter } from '../../src/model/lora/writer.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const tmp = useTempDir('emlens-loratraj-');
const TURN = 5; // checkpoint index of the planted turn (step 50)
const STEPS = 11;
const OUT = 16;
const IN = 8;
let parent: string;

function unit(i: number): Float32Array {
  const v = new Float32Array(OUT);
  v[i] = 1;
  return v;
}

beforeAll(async () => {
  parent = tmp.join('run');
  await mkdir(parent, { recursive: true });
  const u = unit(0);
  const w = unit(3);
  const straight = unit(7);
  const A = new Float32Array(IN).fill(0.25);
  for (let t = 0; t < STEPS; t++) {
    const b = new Float32Array(OUT);
    for (let j = 0; j < OUT; j++) {
      b[j] = Math.min(t, TURN) * u[j]! + Math.max(0, t - TURN) * w[j]! + 0.01 * j;
    }
    const s = Float32Array.from(straight, (x, j) => (t + 1) * x + 0.02 * j);
    // step numbers in folder names, written out of order so the sort by N is tested
    await writePeftAdapter(join(parent, `checkpoint-${(t + 1) * 10}`), {
      r: 1,
      alpha: 1,
      tensors: {
        'model.layers.1.mlp.down_proj': { A, B: b },
        'model.layers.2.mlp.down_proj': { A: A.map((x) => x * (t + 1)), B: s },
      },
    });
  }
});

describe('LoRA trajectories', () => {
  it('finds checkpoint-N folders sorted by N and locates the planted turn', async () => {
    const cps = await findCheckpoints([parent]);
    expect(cps.map((c) => c.step)).toEqual(Array.from({ length: STEPS }, (_, t) => (t + 1) * 10));
    const t = await loraTrajectory(cps, { ks: [1, 2] });
    const turning = t.modules.find((m) => m.module === 'model.layers.1.mlp.down_proj')!;
    const lc = turning.localCosine['1']!;
    expect(lc[0]).toBeNull();
    expect(lc[STEPS - 1]).toBeNull();
    for (let i = 1; i < STEPS - 1; i++) {
      if (i === TURN) expect(lc[i]!).toBeCloseTo(0, 6);
      else expect(lc[i]!).toBeCloseTo(-1, 6);
    }
    // k = 2 sees the turn at the two steps around it too
    expect(turning.localCosine['2']![TURN]!).toBeCloseTo(0, 6);
    expect(turning.localCosine['2']![TURN - 3]!).toBeCloseTo(-1, 6);
    // the straight module never turns; its A norm grows with the step
    const straight = t.modules.find((m) => m.module === 'model.layers.2.mlp.down_proj')!;
    for (const v of straight.localCosine['1']!.slice(1, -1)) expect(v!).toBeCloseTo(-1, 6);
    expect(straight.normA[3]! / straight.normA[0]!).toBeCloseTo(4, 5);
    expect(straight.pca.explained[0]!).toBeGreaterThan(0.999);
    // the bent trajectory needs a second principal component
    expect(turning.pca.explained[1]!).toBeGreaterThan(0.05);
    expect(turning.cosToFinal[STEPS - 1]).toBeCloseTo(1, 9);
    expect(turning.cosToFinal[TURN]!).toBeLessThan(0.9);
  });

  it('the CLI writes CSV, JSON and plots, says where the turn is, and refuses bad inputs with exit 2', async () => {
    const out = tmp.join('traj');
    const r = await runCli(['lora-trajectory', '--checkpoints', parent, '--out', out, '--k', '1,2']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/model\.layers\.1\.mlp\.down_proj: step 60/);
    const csv = (await readFile(join(out, 'lora_trajectory.csv'), 'utf8')).trim().split('\n');
    expect(csv[0]).toBe('module,rank,step,norm_a,norm_b,cos_final,local_cos_k1,local_cos_k2,pc1,pc2');
    expect(csv).toHaveLength(1 + 2 * STEPS);
    const json = JSON.parse(await readFile(join(out, 'lora_trajectory.json'), 'utf8'));
    expect(json.steps).toHaveLength(STEPS);
    expect((await readFile(join(out, 'lora_local_cosine.svg'), 'utf8')).startsWith('<svg')).toBe(true);
    // emlens report recognises the folder and names the turn
    const rep = await runCli(['report', out, '--out', tmp.join('report')]);
    expect(rep.code, rep.stderr).toBe(0);
    const md = await readFile(join(tmp.join('report'), 'report.md'), 'utf8');
    expect(md).toMatch(/LoRA trajectory/);
    expect(md).toMatch(/model\.layers\.1\.mlp\.down_proj: sharpest turn at step 60/);
    const again = await runCli(['lora-trajectory', '--checkpoints', parent, '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists/);
    const few = await runCli([
      'lora-trajectory',
      '--checkpoints',
      join(parent, 'checkpoint-10'),
      join(parent, 'checkpoint-20'),
      '--out',
      tmp.join('few'),
    ]);
    expect(few.code).toBe(2);
    expect(few.stderr).toMatch(/needs at least 3 checkpoints but 2 were given/);
    const badK = await runCli([
      'lora-trajectory',
      '--checkpoints',
      parent,
      '--out',
      tmp.join('k'),
      '--k',
      '0',
    ]);
    expect(badK.code).toBe(2);
    expect(badK.stderr).toMatch(/--k '0' is not a list of positive integers/);
    const empty = await runCli([
      'lora-trajectory',
      '--checkpoints',
      tmp.join('nothing'),
      '--out',
      tmp.join('e'),
    ]);
    expect(empty.code).toBe(2);
  });
});
