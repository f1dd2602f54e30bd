/**
 * `emlens report` as one self-contained HTML page, checked in headless Chromium: built from the synthetic demo's
 * output, a pair of direction files, an activation store and the committed benchmark results, every embedded
 * plot must render (non-zero size, drawn pixels), nothing may be fetched from the network, and unrecognised
 * inputs are named. The default run (the demo's folder alone) is also screenshotted; with
 * EMLENS_UPDATE_REPORT_ARTIFACTS=1 that page and screenshot are copied to benchmarks/results.
 */
import { copyFile, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDemo } from '../../src/demo/em.js';
import { dumpDom, ensureChromium, pngInk, screenshot } from '../helpers/chromium.js';
import { useTempDir } from '../helpers/fixtures.js';
import { runCli } from '../helpers/runCli.js';

const REPO = resolve(import.meta.dirname, '../..');
const BENCH = join(REPO, 'benchmarks', 'results');

const tmp = useTempDir('emlens-report-');
let demo: string;
const cwd = process.cwd();

beforeAll(async () => {
  await ensureChromium();
  // The demo's default folder name, so the default-run page reads as a user's `emlens report emlens-demo` does.
  // Run from its parent, as `npm run demo` is, so the demo's own report.md names it relatively.
  demo = tmp.join('emlens-demo');
  process.chdir(tmp.path);
  try {
    await runDemo('emlens-demo', () => {}, { threads: 1 });
  } finally {
    process.chdir(cwd);
  }
}, 900_000);
afterAll(async () => {
  process.chdir(cwd);
});

/** `data-name="value"` of the first tag that has it. */
function attr(html: string, name: string): string | undefined {
  return new RegExp(`${name}="([^"]*)"`).exec(html)?.[1];
}

async function checkRendered(htmlFile: string): Promise<number> {
  const html = await readFile(htmlFile, 'utf8');
  const expected = (html.match(/<img class="plot"/g) ?? []).length;
  expect(Number(attr(html, 'data-plots-expected'))).toBe(expected);
  // Self-contained: every image inline, no stylesheet, script or frame from anywhere.
  expect(html).not.toMatch(/<(link|iframe)\b/i);
  expect(html).not.toMatch(/<script[^>]+src=/i);
  expect(html).not.toMatch(/\b(src|href)="(?!data:|#)/);
  const dom = await dumpDom(htmlFile);
  expect(Number(attr(dom, 'data-plots-rendered'))).toBe(expected);
  const inks = [...dom.matchAll(/data-ink="(-?\d+)"/g)].map((m) => Number(m[1]));
  expect(inks).toHaveLength(expected);
  for (const ink of inks) expect(ink).toBeGreaterThan(500);
  return expected;
}

describe('emlens report: one HTML page of any emlens outputs', () => {
  it('recognises the demo, direction files, a store and benchmark results, and names what it cannot read', async () => {
    const out = tmp.join('report-all');
    const inputs = [
      demo,
      join(demo, 'directions', 'general.safetensors'),
      join(demo, 'directions', 'medical.safetensors'),
      join(demo, 'activations', 'general-misaligned'),
      BENCH,
      tmp.join('nowhere'),
      join(demo, 'organisms', 'base'),
    ];
    const r = await runCli(['report', ...inputs, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain(`not recognised: ${tmp.join('nowhere')} (it does not exist)`);
    expect(r.stderr).toMatch(/not recognised: .*organisms\/base \(a model folder/);
    const json = JSON.parse(await readFile(join(out, 'report.json'), 'utf8'));
    expect(json.report.inputs.map((i: { kind: string }) => i.kind)).toEqual([
      'demo',
      'directions',
      'directions',
      'store',
      'benchmark',
    ]);
    expect(json.report.unrecognised).toHaveLength(2);
    const html = await readFile(join(out, 'report.html'), 'utf8');
    for (const text of [
      'At a glance',
      'Contents',
      'emlens 0.1.0',
      `Node ${process.version}`,
      'not recognised',
      // what was run
      'organisms/base',
      'adapters/general',
      'npm run bench:forward',
      // random controls beside the effects
      'general ~ random(medical) (control, n=5)',
      'patch (random controls)',
      'KL (random controls)',
      // the benchmark tables
      'forward (forward.json)',
      'opTimeShareAt512.MatMul',
    ]) {
      expect(html).toContain(text);
    }
    const md = await readFile(join(out, 'report.md'), 'utf8');
    expect(md).toContain('## Directions');
    expect(md).toMatch(/!\[Cosine similarity between directions\]\(plots\/[^)]+\.svg\)/);
    expect(r.stdout).toBe(md);
    // Demo: directions (norms, cosines), stores, its comparison, mediation, its two sweep plots; the pair: norms,
    // cosines; the store: one; and whatever plots the committed benchmark results hold.
    const plots = await checkRendered(join(out, 'report.html'));
    expect(plots).toBeGreaterThanOrEqual(10);
  });

  it('renders the default run (the demo folder) with every plot, and the screenshot is not blank', async () => {
    process.chdir(tmp.path);
    let r: Awaited<ReturnType<typeof runCli>>;
    try {
      r = await runCli(['report', 'emlens-demo', '--out', 'report']);
    } finally {
      process.chdir(cwd);
    }
    expect(r.code, r.stderr).toBe(0);
    const html = tmp.join('report', 'report.html');
    expect(await checkRendered(html)).toBe(7);
    const text = await readFile(html, 'utf8');
    expect(text).not.toContain(tmp.path); // paths are shown as given, relative to where it ran
    const png = tmp.join('report-screenshot.png');
    await screenshot(html, png);
    const ink = pngInk(await readFile(png));
    expect([ink.width, ink.height]).toEqual([1280, 2400]);
    expect(ink.ink).toBeGreaterThan(0.05 * ink.width * ink.height);
    expect(ink.colours).toBeGreaterThan(20);
    if (process.env.EMLENS_UPDATE_REPORT_ARTIFACTS === '1') {
      await copyFile(html, join(BENCH, 'report.html'));
      await copyFile(png, join(BENCH, 'report-screenshot.png'));
      expect((await stat(join(BENCH, 'report.html'))).size).toBeGreaterThan(10_000);
    }
  });

  it('fails in one line when no input is an emlens output', async () => {
    const r = await runCli(['report', tmp.join('nowhere'), join(demo, 'organisms', 'base')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /^emlens: Nothing to report: .*nowhere has neither summary\.json nor judged responses/,
    );
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});
