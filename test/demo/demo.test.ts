/**
 * The quick-start demo end to end through `main`: progress lines, the report's computed numbers (the recovered
 * directions match the planted ones, the general direction mediates the general organism, the random control
 * does not, baked weights equal runtime ablation) and the files it writes.
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { cosine, loadDirections } from '../../src/directions/direction.js';
import { useTempDir } from '../helpers/fixtures.js';

const tmp = useTempDir('emlens-demo-');
let stdout = '';
let code: number;

beforeAll(async () => {
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => {
    stdout += `${a.join(' ')}\n`;
  });
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    code = await main(['demo', '--out', tmp.join('demo'), '--threads', '1']);
  } finally {
    log.mockRestore();
    err.mockRestore();
  }
}, 600_000); // three random controls per direction roughly double the mediation step

/** The numbers of a report row (`general patch   97.8%   98.2% ...`), n/a as NaN. */
function rowValues(label: string): number[] {
  const line = stdout.split('\n').find((l) => l.trim().startsWith(`${label} `));
  expect(line, label).toBeDefined();
  return line!
    .trim()
    .slice(label.length)
    .trim()
    .split(/\s+/)
    .map((s) => (s === 'n/a' ? Number.NaN : Number.parseFloat(s)));
}

describe('emlens demo', () => {
  it('prints progress for every step and a report of computed numbers', () => {
    expect(code).toBe(0);
    for (let i = 1; i <= 8; i++) expect(stdout).toMatch(new RegExp(`^\\[${i}/8 [\\d.]+s\\]`, 'm'));
    // recovered vs planted: |cos| >= 0.99 from the adapter layer on
    const cosLine = stdout.split('\n').find((l) => l.includes('general  cos with the planted direction'))!;
    const cos = [...cosLine.matchAll(/(\d): (-?[\d.]+)/g)].map((m) => Number(m[2]));
    expect(cos.slice(1).every((c) => c >= 0.99)).toBe(true);
    // columns: general/general, general/medical, general/finance, medical/medical, medical/finance*, ...
    const general = rowValues('general patch');
    expect(general.slice(0, 3).every((x) => x >= 95)).toBe(true);
    // every direction beside its own controls, as mean±sd over 3 draws (the number parsed is the mean)
    for (const name of ['general', 'medical', 'finance']) {
      const random = rowValues(`random(${name}) patch`);
      expect(random.filter((x) => !Number.isNaN(x)).every((x) => Math.abs(x) < 10)).toBe(true);
    }
    expect(stdout).toMatch(/random\(general\) patch\s+-?[\d.]+±[\d.]+%/);
    expect(stdout).toMatch(/mean±sd over 3 norm-matched random controls of the X direction \(n=3\)/);
    expect(rowValues('medical patch')[3]).toBeGreaterThan(50);
    expect(Math.abs(rowValues('medical patch')[0]!)).toBeLessThan(10); // a missing value: NaN, fails
    expect(rowValues('general steer')[0]).toBeGreaterThan(90);
    const baked = /runtime ablation at all 9 residual sites: ([\d.e+-]+)/.exec(stdout);
    expect(Number(baked![1])).toBeLessThanOrEqual(1e-4);
    expect(stdout).toMatch(/3\. Side effects on neutral text/);
  });

  it('writes the directions, the comparison heatmap, the mediation tables, the sweep plots and the report', async () => {
    const out = tmp.join('demo');
    for (const f of [
      'directions/general.safetensors',
      'directions/medical-random.r0.safetensors',
      'directions/medical-random.r2.safetensors',
      'compare/cosine.png',
      'mediation/mediation.json',
      'mediation/mediation.md',
      'sweep/sweep-kl.png',
      'sweep/sweep-margin.png',
      'general-orthogonalized/model.safetensors',
    ]) {
      await expect(access(join(out, f)), f).resolves.toBeUndefined();
    }
    // each direction's controls are its own draws: not the one shared vector (cos 1) of a shared seed
    const dirs = join(out, 'directions');
    const g = await loadDirections(join(dirs, 'general-random.r0.safetensors'));
    for (const other of ['medical-random.r0', 'finance-random.r0', 'general-random.r1']) {
      const o = await loadDirections(join(dirs, `${other}.safetensors`));
      for (const [l, v] of g.vectors) expect(Math.abs(cosine(v, o.vectors.get(l)!)), other).toBeLessThan(0.9);
    }
    expect(g.meta).toMatchObject({ nPos: 0, nNeg: 0, sourcePos: '', sourceNeg: '' });
    expect(g.meta.extra).toMatchObject({ random_of: 'general', control_index: '0' });
    const report = await readFile(join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/^=== emlens demo report/);
    // the one-page HTML report of the run, plots embedded
    const html = await readFile(join(out, 'report', 'report.html'), 'utf8');
    expect(html).toContain('<html');
    expect((html.match(/src="data:image\//g) ?? []).length).toBeGreaterThanOrEqual(3);
  });
});
