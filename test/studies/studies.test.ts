/**
 * The narrow-vs-general study lives in `emlens/studies` (src/studies), apart from the core API; the benchmark
 * measurement helpers (benchmarks/lib) are in neither.
 */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';

describe('emlens/studies', () => {
  it('exposes the narrow-vs-general study', async () => {
    const studies = await import('../../src/studies/index.js');
    expect(typeof studies.runNarrowVsGeneral).toBe('function');
    expect(typeof studies.loadNarrowVsGeneralConfig).toBe('function');
    expect(typeof studies.parseNarrowVsGeneralConfig).toBe('function');
    expect(typeof studies.syntheticConfig).toBe('function');
    expect(typeof studies.narrowVsGeneralMarkdown).toBe('function');
    expect(studies.NARROW_VS_GENERAL_FILES.json).toBe('narrow-vs-general.json');
  });

  it('is published as the ./studies subpath', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8'));
    expect(pkg.exports['./studies']).toEqual({
      types: './dist/studies/index.d.ts',
      import: './dist/studies/index.js',
    });
  });
});

describe('the core API (src/index.ts)', () => {
  it('no longer exports the study or the benchmark measurement helpers', async () => {
    const core: Record<string, unknown> = await import('../../src/index.js');
    for (const name of [
      'measureCopyBandwidth',
      'measureMatMulCeiling',
      'benchSummary',
      'runNarrowVsGeneral',
      'loadNarrowVsGeneralConfig',
      'syntheticConfig',
    ]) {
      expect(core[name], name).toBeUndefined();
    }
  });
});
