/**
 * The package's public surface: the core (`emlens`) is a short, deliberate list; every other public name lives
 * under a subpath entry (`emlens/io`, `emlens/serve`, ...) that package.json exports; nothing the old flat
 * index exported was lost; and every name a JSDoc `@example` calls is importable from one of the entries.
 */
import { existsSync, statSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');
const SRC = join(ROOT, 'src');

interface ExportEntry {
  readonly types: string;
  readonly import: string;
}

async function packageExports(): Promise<Record<string, ExportEntry>> {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8'));
  return pkg.exports;
}

/** `./dist/io/index.js` -> `src/io/index.ts`. */
function sourceOf(distPath: string): string {
  const m = /^\.\/dist\/(.*)\.js$/.exec(distPath);
  if (!m) throw new Error(`export target ${distPath} is not under ./dist`);
  return join(SRC, `${m[1]}.ts`);
}

/** Every entry's runtime names, by subpath ('.' for the core). */
async function entryNames(): Promise<Map<string, Set<string>>> {
  const out = new Map<string, Set<string>>();
  for (const [subpath, entry] of Object.entries(await packageExports())) {
    const mod = await import(sourceOf(entry.import));
    out.set(subpath, new Set(Object.keys(mod)));
  }
  return out;
}

// Value names of the flat index before the core was designed (types are not visible at run time). The
// benchmarks' measurement helpers (benchSummary, measureCopyBandwidth, measureMatMulCeiling) left the API on
// purpose: they live in benchmarks/lib (test/studies/studies.test.ts checks they are gone).
const OLD_FLAT_INDEX = [
  'ActivationStore',
  'ApiError',
  'BLOCK_HOOKS',
  'CUDA_INSTALL_COMMAND',
  'DecodeBuffers',
  'EmlensError',
  'JudgeCache',
  'LocalJudge',
  'LoraAdapter',
  'LoraMergedWeights',
  'Model',
  'OpenAIJudge',
  'QWEN25_05B_SHAPE',
  'RANDOM_CONTROL_METHOD',
  'REDUCTIONS',
  'SUPPORTED_ARCHITECTURES',
  'SafetensorsFile',
  'TextStreamer',
  'WeightSource',
  'ablateInterventions',
  'allHookNames',
  'answerTokens',
  'batchAnswerMasks',
  'bf16ToF32',
  'bootstrapMean',
  'checkDirectionsFit',
  'collectToStore',
  'compareConditions',
  'compareDirections',
  'compareEvalFolders',
  'composeInterventions',
  'constantDirectionSet',
  'controlPaths',
  'controlSpread',
  'cosine',
  'cosineHeatmap',
  'createJudge',
  'cudaAvailable',
  'decodeLoop',
  'describeModel',
  'detectInput',
  'directionFromStores',
  'directionInterventions',
  'directionSha256',
  'divergence',
  'emRate',
  'emRateChart',
  'emlensVersion',
  'encodeChat',
  'encodeSafetensors',
  'exportGguf',
  'f16ToF32',
  'f32ToBf16',
  'f32ToF16',
  'fillJudgePrompt',
  'filterQuestions',
  'formatCompareTable',
  'formatComparisonMarkdown',
  'formatMediation',
  'formatSpread',
  'generate',
  'hookName',
  'importGguf',
  'isRandomControl',
  'judgeResponses',
  'loadAdapter',
  'loadDirections',
  'loadDirectionsFor',
  'loadLocalJudge',
  'loadModel',
  'loadQuestions',
  'loadTokenizer',
  'logprobMargin',
  'loraScaling',
  'makeOrganisms',
  'makeTinyModel',
  'meanDiff',
  'mediation',
  'mergeEvalFolders',
  'mergeLora',
  'mergeStores',
  'normalize',
  'orthogonalizeModel',
  'orthonormalize',
  'parameterCount',
  'parseConfig',
  'parseLayerList',
  'parseLoraConfig',
  'parseQuestions',
  'patchInterventions',
  'questionSlice',
  'randomControl',
  'randomControls',
  'readConfig',
  'readEvalSummary',
  'readNeutralTexts',
  'readResponses',
  'renderChat',
  'renderVegaLite',
  'residualWriters',
  'resolveHooks',
  'responsesToRecords',
  'ropeInvFreq',
  'ropeTables',
  'runDemo',
  'runEval',
  'sampleAnswers',
  'sampleToken',
  'saveDirections',
  'scoreFromLogprobs',
  'selectLayers',
  'siteDirections',
  'siteOf',
  'sliceRange',
  'splitByAlignment',
  'startServer',
  'steerInterventions',
  'steeringSweep',
  'storeLayerMeans',
  'summarize',
  'targetsModule',
  'traceTokens',
  'writeComparison',
  'writeHtmlReport',
  'writeMediation',
  'writePeftAdapter',
  'writeReport',
  'writeResponses',
  'writeSafetensors',
  'writeSweep',
  'writeTrace',
];
// Removed on purpose: residHook (one helper now: hookName(layer, 'resid_post')). Moved to `emlens/studies` with
// src/studies (checked below once that entry exists): runNarrowVsGeneral, loadNarrowVsGeneralConfig,
// syntheticConfig.
const MOVED_TO_STUDIES = ['runNarrowVsGeneral', 'loadNarrowVsGeneralConfig', 'syntheticConfig'];

describe('package entries', () => {
  it('every export has the shape of "." and a source entry file', async () => {
    const exports = await packageExports();
    expect(exports['.']).toEqual({ types: './dist/index.d.ts', import: './dist/index.js' });
    for (const sub of [
      './io',
      './serve',
      './eval',
      './organisms',
      './report',
      './model',
      './interventions',
    ]) {
      expect(Object.keys(exports), sub).toContain(sub);
    }
    for (const [subpath, entry] of Object.entries(exports)) {
      expect(Object.keys(entry), subpath).toEqual(['types', 'import']);
      const base = subpath === '.' ? './dist/index' : `./dist/${subpath.slice(2)}/index`;
      expect(entry, subpath).toEqual({ types: `${base}.d.ts`, import: `${base}.js` });
      expect(
        existsSync(sourceOf(entry.import)),
        `${subpath} -> ${relative(ROOT, sourceOf(entry.import))}`,
      ).toBe(true);
    }
  });

  it('a built dist (when there is one, newer than package.json) holds every export target', async () => {
    const exports = await packageExports();
    const built = join(ROOT, 'dist', 'index.js');
    if (!existsSync(built) || statSync(built).mtimeMs < statSync(join(ROOT, 'package.json')).mtimeMs) return;
    for (const [subpath, entry] of Object.entries(exports)) {
      for (const target of [entry.types, entry.import]) {
        expect(existsSync(join(ROOT, target)), `${subpath}: ${target}`).toBe(true);
      }
    }
  });

  it('every subpath imports from src and exports something', async () => {
    for (const [subpath, names] of await entryNames()) {
      expect(names.size, subpath).toBeGreaterThan(0);
    }
  });

  it('the core is a short list without internals', async () => {
    const core = (await entryNames()).get('.')!;
    expect(core.size).toBeLessThanOrEqual(40);
    for (const name of [
      'loadModel',
      'Model',
      'loadTokenizer',
      'traceTokens',
      'hookName',
      'parseHookPatterns',
      'generate',
      'composeInterventions',
      'loadDirectionsFor',
      'collectToStore',
      'ActivationStore',
      'directionFromStores',
      'LayerMeanAccumulator',
      'mediation',
      'createJudge',
      'judgeResponses',
    ]) {
      expect(core, name).toContain(name);
    }
    for (const internal of [
      'DecodeBuffers', // decode-loop buffers: emlens/generate
      'measureCopyBandwidth', // hardware measurement: benchmarks/lib, outside the API
      'measureMatMulCeiling',
      'benchSummary',
      'ropeTables',
      'ropeInvFreq',
      'f16ToF32', // byte formats: emlens/io
      'bf16ToF32',
      'encodeSafetensors',
      'WeightSource',
      'startServer', // emlens/serve
      'ApiError',
      'LoraMergedWeights', // emlens/model
      'siteOf',
      'residHook',
      'runNarrowVsGeneral', // emlens/studies
      'runDemo',
    ]) {
      expect(core, internal).not.toContain(internal);
    }
  });

  it('nothing the old flat index exported was lost', async () => {
    const all = new Set([...(await entryNames()).values()].flatMap((s) => [...s]));
    const hasStudies = existsSync(join(SRC, 'studies', 'index.ts'));
    const expected = [...OLD_FLAT_INDEX, ...(hasStudies ? MOVED_TO_STUDIES : [])];
    expect(expected.filter((n) => !all.has(n))).toEqual([]);
  });
});

/** Every .ts file under `dir`. */
async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sourceFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** The code of each `@example` in a file's JSDoc comments (up to the next tag or the comment's end). */
function examples(text: string): string[] {
  const out: string[] = [];
  for (const comment of text.match(/\/\*\*[\s\S]*?\*\//g) ?? []) {
    const lines = comment
      .replace(/^\/\*\*|\*\/$/g, '')
      .split('\n')
      .map((l) => l.replace(/^\s*\* ?/, ''));
    let inExample = false;
    let fence: string | null = null;
    let code: string[] = [];
    for (const line of lines) {
      if (/^\s*@example/.test(line)) {
        if (code.length > 0) out.push(code.join('\n'));
        inExample = true;
        code = [];
        continue;
      }
      if (/^\s*@\w+/.test(line)) {
        inExample = false;
        continue;
      }
      if (!inExample) continue;
      const f = /^\s*```(\w*)/.exec(line);
      if (f) {
        fence = fence === null ? f[1] || 'ts' : null;
        continue;
      }
      if (fence !== null && !['ts', 'js', 'typescript'].includes(fence)) continue;
      code.push(line);
    }
    if (inExample && code.length > 0) out.push(code.join('\n'));
  }
  return out;
}

const NOT_EMLENS = new Set([
  // keywords that take parentheses, and globals
  'if',
  'for',
  'while',
  'switch',
  'return',
  'await',
  'async',
  'function',
  'typeof',
  'catch',
  'Math',
  'console',
  'Promise',
  'Array',
  'Object',
  'JSON',
  'Number',
  'String',
  'Map',
  'Set',
  'Date',
  'Error',
  'Float32Array',
  'Float64Array',
  'Uint8Array',
  'BigInt',
  'Boolean',
  'Symbol',
  // Node built-ins the examples use
  'readFile',
  'writeFile',
  'join',
]);

/** Names an example calls or constructs that it does not declare itself. */
function calledNames(code: string): string[] {
  const stripped = code
    .replace(/\/\/.*$/gm, '')
    .replace(/'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`(?:[^`\\]|\\.)*`/g, "''");
  // m[1]! below: each of these patterns' group 1 is not optional, so a match always has it
  const declared = new Set<string>();
  for (const m of stripped.matchAll(/\b(?:const|let|var)\s+(\{[^}]*\}|\[[^\]]*\]|[\w$]+)/g)) {
    for (const n of m[1]!.match(/[A-Za-z_$][\w$]*/g) ?? []) declared.add(n);
  }
  for (const m of stripped.matchAll(/\(([\w$\s,]*)\)\s*=>|([\w$]+)\s*=>/g)) {
    for (const n of (m[1] ?? m[2] ?? '').match(/[A-Za-z_$][\w$]*/g) ?? []) declared.add(n);
  }
  const names = new Set<string>();
  for (const m of stripped.matchAll(/(?<![.\w$])([A-Za-z_$][\w$]*)\s*\(/g)) names.add(m[1]!);
  for (const m of stripped.matchAll(/\bnew\s+([A-Za-z_$][\w$]*)/g)) names.add(m[1]!);
  for (const m of stripped.matchAll(/(?<![.\w$])([A-Z][\w$]*)\.[\w$]+\s*\(/g)) names.add(m[1]!);
  return [...names].filter((n) => !declared.has(n) && !NOT_EMLENS.has(n));
}

describe('JSDoc examples', () => {
  it('the parser finds what examples call', () => {
    const code = examples(
      '/**\n * Text.\n *\n * @example\n * const acc = new LayerMeanAccumulator();\n * for (const s of xs) acc.add(s);\n * const m = meanDiff(a, b); // see foo()\n * await OpenAIJudge.create({});\n */',
    );
    expect(code).toHaveLength(1);
    expect(calledNames(code[0]!).sort()).toEqual(['LayerMeanAccumulator', 'OpenAIJudge', 'meanDiff']);
  });

  it('every name a JSDoc @example calls is exported from the core or a subpath', async () => {
    const exported = new Set([...(await entryNames()).values()].flatMap((s) => [...s]));
    const hasStudies = existsSync(join(SRC, 'studies', 'index.ts'));
    const missing: string[] = [];
    let checked = 0;
    for (const file of await sourceFiles(SRC)) {
      const rel = relative(SRC, file);
      // cli/ and util/ are internal (not library API); the narrow-vs-general study moves to src/studies, whose
      // examples are checked against `emlens/studies` once that entry exists.
      if (rel.startsWith('cli/') || rel.startsWith('util/')) continue;
      if (!hasStudies && (rel.startsWith('bench/narrowVsGeneral') || rel.startsWith('studies/'))) continue;
      for (const code of examples(await readFile(file, 'utf8'))) {
        for (const name of calledNames(code)) {
          checked++;
          if (!exported.has(name)) missing.push(`${rel}: ${name}`);
        }
      }
    }
    expect(checked).toBeGreaterThan(30);
    expect(missing).toEqual([]);
    // the one that was missing before
    expect(exported).toContain('LayerMeanAccumulator');
  });
});
