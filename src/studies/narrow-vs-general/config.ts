/**
 * The narrow-vs-general study's configuration: a YAML file naming the base model, the finetunes (PEFT
 * adapters, each with a domain), the response sets per domain, neutral text, layers, and optionally a judge
 * and question file. Validated with zod; every error names the field and the fix. Relative paths are resolved
 * against the config file's folder.
 *
 * @example
 * ```yaml
 * base: models/Qwen2.5-0.5B-Instruct
 * finetunes:
 *   - { name: general, adapter: adapters/insecure, domain: general }
 *   - { name: medical, adapter: adapters/bad-medical, domain: medical }
 * responses: { general: responses/general.csv, medical: responses/medical.csv }
 * neutral: neutral.jsonl
 * layers: [8, 12, 16]
 * ```
 */

import { stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { closest } from 'fastest-levenshtein';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { EmlensError } from '../../errors.js';
import { pathExists } from '../../io/files.js';
import { readUserFile } from '../../io/inputFiles.js';
import type { Device } from '../../model/session.js';
import type { OrganismManifest } from '../../organisms/make.js';

const name = z.string().regex(/^[A-Za-z0-9_.-]+$/);
const path = z.string().min(1);
const int = z.number().int();

const finetuneSchema = z
  .object({
    name,
    adapter: path,
    domain: name,
    kind: z.enum(['general', 'narrow']).optional(),
  })
  .strict();

const schema = z
  .object({
    base: path,
    finetunes: z.array(finetuneSchema).min(2),
    responses: z.record(name, path).refine((m) => Object.keys(m).length > 0),
    neutral: path,
    layers: z.union([z.literal('all'), z.array(int.nonnegative()).min(1)]).default('all'),
    span: z.enum(['after-user', 'content']).default('after-user'),
    steering: z
      .object({
        layer: int.nonnegative().optional(),
        scales: z.array(z.number().finite()).min(1).default([0, 0.25, 0.5, 1, 2]),
      })
      .strict()
      .default({ scales: [0, 0.25, 0.5, 1, 2] }),
    stability: z
      .object({
        noise: z.array(z.number().positive().finite()).min(1).default([0.1, 0.25, 0.5, 1]),
        seeds: int.positive().default(3),
      })
      .strict()
      .default({ noise: [0.1, 0.25, 0.5, 1], seeds: 3 }),
    judge: z.string().min(1).optional(),
    judge_model: z.string().min(1).optional(),
    api_key_env: z.string().min(1).optional(),
    questions: path.optional(),
    eval: z
      .object({
        samples: int.positive().optional(),
        max_new_tokens: int.positive().default(600),
        temperature: z.number().nonnegative().default(1),
        top_p: z.number().gt(0).lte(1).default(1),
        seed: int.default(0),
        batch_size: int.positive().optional(),
        steer_scale: z.number().finite().default(1),
        cross: z.boolean().default(false),
        include: z.array(z.string().min(1)).optional(),
        exclude: z.array(z.string().min(1)).optional(),
      })
      .strict()
      .optional(),
    seed: int.default(0),
    device: z.enum(['cpu', 'cuda', 'webgpu']).default('cpu'),
    threads: int.positive().optional(),
    batch_size: int.positive().default(8),
    min_divergence: z.number().positive().default(1e-3),
  })
  .strict();

/** What each field must hold (keys: dotted paths with list indices dropped), for error messages. */
const EXPECTED: Record<string, string> = {
  base: 'the base model folder (a string)',
  finetunes: 'a list of at least two finetunes, each {name, adapter, domain}',
  'finetunes.name': 'a name of letters, digits, _ . or -',
  'finetunes.adapter': 'a PEFT adapter folder (a string)',
  'finetunes.domain': 'a domain that names one of the response sets (letters, digits, _ . or -)',
  'finetunes.kind': "'general' or 'narrow' (default: general when the domain is 'general')",
  responses: 'a mapping from domain to a response file (CSV or JSONL)',
  neutral: 'a neutral text file (JSONL of {"text": ...} or plain lines)',
  layers: "'all' or a non-empty list of block indices",
  span: "'after-user' or 'content'",
  steering: 'a mapping with optional layer and scales',
  'steering.layer': 'a block index',
  'steering.scales': 'a non-empty list of finite numbers',
  stability: 'a mapping with optional noise and seeds',
  'stability.noise': 'a non-empty list of positive relative noise norms, e.g. [0.1, 0.25, 0.5, 1]',
  'stability.seeds': 'a positive integer',
  judge: 'local:DIR or the base URL of an OpenAI-compatible endpoint',
  judge_model: 'the judge model name for a URL judge',
  api_key_env: "the name of the environment variable holding the judge's API key",
  questions: 'a question file in the EM evaluation YAML format',
  eval: 'a mapping of sampling options (samples, max_new_tokens, temperature, top_p, seed, ...)',
  'eval.samples': 'a positive integer',
  'eval.max_new_tokens': 'a positive integer',
  'eval.temperature': 'a number >= 0',
  'eval.top_p': 'a number in (0, 1]',
  'eval.seed': 'an integer',
  'eval.batch_size': 'a positive integer',
  'eval.steer_scale': 'a finite number',
  'eval.cross': 'true or false',
  'eval.include': 'a list of question id globs',
  'eval.exclude': 'a list of question id globs',
  seed: 'an integer',
  device: "'cpu', 'cuda' or 'webgpu'",
  threads: 'a positive integer',
  batch_size: 'a positive integer',
  min_divergence: 'a positive number (nats per token)',
};

/** One finetune: the base plus a PEFT adapter, misaligned on `domain` (`general`: everywhere). */
export interface FinetuneSpec {
  readonly name: string;
  /** Absolute adapter folder. */
  readonly adapter: string;
  readonly domain: string;
  readonly kind: 'general' | 'narrow';
}

/** A validated configuration with absolute paths and every default filled in. */
export interface NarrowVsGeneralConfig {
  /** Where it came from: the config file, or `synthetic` for the organisms. */
  readonly source: string;
  readonly base: string;
  readonly finetunes: readonly FinetuneSpec[];
  /** Domain -> response file. */
  readonly responses: Readonly<Record<string, string>>;
  readonly neutral: string;
  readonly layers: 'all' | readonly number[];
  readonly span: 'after-user' | 'content';
  readonly steering: { readonly layer?: number; readonly scales: readonly number[] };
  readonly stability: { readonly noise: readonly number[]; readonly seeds: number };
  readonly judge?: {
    readonly spec: string;
    readonly model?: string;
    readonly apiKeyEnv?: string;
    readonly questions: string;
    readonly samples?: number;
    readonly maxNewTokens: number;
    readonly temperature: number;
    readonly topP: number;
    readonly seed: number;
    readonly batchSize?: number;
    readonly steerScale: number;
    /** Also evaluate every finetune with every other finetune's direction ablated. */
    readonly cross: boolean;
    readonly include?: readonly string[];
    readonly exclude?: readonly string[];
  };
  readonly seed: number;
  readonly device: Device;
  readonly threads?: number;
  readonly batchSize: number;
  readonly minDivergence: number;
  /** The planted directions file of synthetic organisms (ground truth), when known. */
  readonly planted?: string;
}

function fieldOf(path: readonly PropertyKey[]): { shown: string; key: string } {
  let shown = '';
  const keys: string[] = [];
  for (const p of path) {
    if (typeof p === 'number') shown += `[${p}]`;
    else {
      shown += shown === '' ? String(p) : `.${String(p)}`;
      keys.push(String(p));
    }
  }
  // responses.<domain>: the key is the domain, which the map's entry describes
  const key = keys[0] === 'responses' ? 'responses' : keys.join('.');
  return { shown, key };
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return `a list of ${v.length}`;
  if (typeof v === 'string') return v === '' ? 'an empty string' : `'${v}'`;
  if (typeof v === 'object') return Object.keys(v).length === 0 ? 'an empty mapping' : 'a mapping';
  return `${typeof v} ${JSON.stringify(v)}`;
}

function valueAt(doc: unknown, path: readonly PropertyKey[]): { found: boolean; value: unknown } {
  let v: unknown = doc;
  for (const k of path) {
    if (typeof v !== 'object' || v === null || !(k in (v as object)))
      return { found: false, value: undefined };
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return { found: true, value: v };
}

/** The first zod issue as one sentence naming the field and what it must hold. */
function issueMessage(source: string, doc: unknown, issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    const where = fieldOf(issue.path);
    const parentKey = where.key === '' ? '' : `${where.key}.`;
    const known = Object.keys(EXPECTED)
      .filter((k) => k.startsWith(parentKey) && !k.slice(parentKey.length).includes('.'))
      .map((k) => k.slice(parentKey.length));
    const bad = issue.keys[0]!; // zod reports unrecognized_keys with at least one key
    const at = where.shown === '' ? '' : ` in ${where.shown}`;
    return `${source}: unknown field '${bad}'${at}; rename it to '${closest(bad, known)}' or remove it (the fields are ${known.join(', ')}).`;
  }
  const where = fieldOf(issue.path);
  // a record key that is not a valid name
  if (issue.code === 'invalid_key') {
    return `${source}: ${where.shown} has the key '${String(issue.path.at(-1) ?? '')}', which is not a valid domain name; use letters, digits, _ . or -.`;
  }
  const { found, value } = valueAt(doc, issue.path);
  const expected = EXPECTED[where.key] ?? 'valid';
  const got = found ? `got ${describe(value)}` : 'it is missing';
  return `${source}: field '${where.shown}' must be ${expected} (${got}); fix that field.`;
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Validates a parsed config document (`doc`, e.g. from YAML) and resolves its paths against `baseDir`; `source`
 * names it in errors. Checks that the files and folders it names exist.
 */
export async function parseNarrowVsGeneralConfig(
  doc: unknown,
  source: string,
  baseDir: string,
): Promise<NarrowVsGeneralConfig> {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new EmlensError(
      `${source} must be a YAML mapping with base, finetunes, responses and neutral; write those fields at the top level.`,
    );
  }
  const r = schema.safeParse(doc);
  if (!r.success) {
    // A misspelt field is both unknown and missing: name the unknown one, with its likely spelling.
    const issues = r.error.issues;
    // A failed parse has at least one issue.
    const first = issues.find((i) => i.code === 'unrecognized_keys') ?? issues[0]!;
    throw new EmlensError(issueMessage(source, doc, first));
  }
  const c = r.data;
  const abs = (p: string) => resolve(baseDir, p);

  const names = c.finetunes.map((f) => f.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) {
    throw new EmlensError(`${source}: two finetunes are named '${dup}'; give each finetune its own name.`);
  }
  const finetunes = c.finetunes.map((f, i) => {
    if (!(f.domain in c.responses)) {
      throw new EmlensError(
        `${source}: field 'finetunes[${i}].domain' is '${f.domain}' but responses has no '${f.domain}' set (it has ${Object.keys(c.responses).join(', ')}); add responses.${f.domain} or fix the domain.`,
      );
    }
    return {
      name: f.name,
      adapter: abs(f.adapter),
      domain: f.domain,
      kind: f.kind ?? (f.domain === 'general' ? 'general' : 'narrow'),
    } satisfies FinetuneSpec;
  });

  const base = abs(c.base);
  if (!(await pathExists(join(base, 'config.json')))) {
    throw new EmlensError(
      `${source}: field 'base' names ${base}, which has no config.json; point it at a Hugging Face model folder.`,
    );
  }
  for (const [i, f] of finetunes.entries()) {
    if (!(await pathExists(join(f.adapter, 'adapter_config.json')))) {
      throw new EmlensError(
        `${source}: field 'finetunes[${i}].adapter' names ${f.adapter}, which has no adapter_config.json; point it at a PEFT adapter folder.`,
      );
    }
  }
  const responses: Record<string, string> = {};
  for (const [domain, p] of Object.entries(c.responses)) {
    responses[domain] = abs(p);
    if (!(await pathExists(responses[domain]))) {
      throw new EmlensError(
        `${source}: field 'responses.${domain}' names ${responses[domain]}, which does not exist; fix the path.`,
      );
    }
  }
  const neutral = abs(c.neutral);
  if (!(await pathExists(neutral))) {
    throw new EmlensError(`${source}: field 'neutral' names ${neutral}, which does not exist; fix the path.`);
  }
  if (Array.isArray(c.layers) && new Set(c.layers).size !== c.layers.length) {
    throw new EmlensError(`${source}: field 'layers' lists a layer twice; list each layer once.`);
  }
  if (
    c.steering.layer !== undefined &&
    Array.isArray(c.layers) &&
    !(c.layers as number[]).includes(c.steering.layer)
  ) {
    throw new EmlensError(
      `${source}: field 'steering.layer' is ${c.steering.layer}, which is not one of the layers [${c.layers.join(', ')}]; pick one of those.`,
    );
  }

  if ((c.judge === undefined) !== (c.questions === undefined)) {
    const missing = c.judge === undefined ? 'judge' : 'questions';
    throw new EmlensError(
      `${source}: the EM evaluation needs both judge and questions, but field '${missing}' is missing; add it or remove the other.`,
    );
  }
  if (c.eval !== undefined && c.judge === undefined) {
    throw new EmlensError(
      `${source}: field 'eval' is set but there is no judge; add judge and questions or remove eval.`,
    );
  }
  let judge: NarrowVsGeneralConfig['judge'];
  if (c.judge !== undefined && c.questions !== undefined) {
    let spec = c.judge;
    if (spec.startsWith('local:')) {
      const dir = abs(spec.slice('local:'.length));
      if (!(await isDir(dir))) {
        throw new EmlensError(
          `${source}: field 'judge' names the local judge ${dir}, which is not a folder; point local: at a model folder.`,
        );
      }
      spec = `local:${dir}`;
    } else if (!/^https?:\/\//.test(spec)) {
      throw new EmlensError(
        `${source}: field 'judge' is '${spec}', neither local:DIR nor an http(s) URL; write one of those.`,
      );
    }
    const questions = abs(c.questions);
    if (!(await pathExists(questions))) {
      throw new EmlensError(
        `${source}: field 'questions' names ${questions}, which does not exist; fix the path.`,
      );
    }
    const e = c.eval ?? evalDefaults();
    judge = {
      spec,
      model: c.judge_model,
      apiKeyEnv: c.api_key_env,
      questions,
      samples: e.samples,
      maxNewTokens: e.max_new_tokens,
      temperature: e.temperature,
      topP: e.top_p,
      seed: e.seed,
      batchSize: e.batch_size,
      steerScale: e.steer_scale,
      cross: e.cross,
      include: e.include,
      exclude: e.exclude,
    };
  }
  return {
    source,
    base,
    finetunes,
    responses,
    neutral,
    layers: c.layers,
    span: c.span,
    steering: c.steering,
    stability: c.stability,
    ...(judge ? { judge } : {}),
    seed: c.seed,
    device: c.device,
    ...(c.threads !== undefined ? { threads: c.threads } : {}),
    batchSize: c.batch_size,
    minDivergence: c.min_divergence,
  };
}

function evalDefaults() {
  return schema.shape.eval.unwrap().parse({});
}

/** Reads, parses and validates a config file (see {@link parseNarrowVsGeneralConfig}). */
export async function loadNarrowVsGeneralConfig(file: string): Promise<NarrowVsGeneralConfig> {
  const text = await readUserFile(file, 'Config file');
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new EmlensError(
      `${file} is not valid YAML (${(e as Error).message.split('\n')[0]}); fix the syntax.`,
    );
  }
  return parseNarrowVsGeneralConfig(doc, file, dirname(resolve(file)));
}

/** The config of synthetic organisms made by makeOrganisms into `dir` (every response set, every organism). */
export function syntheticConfig(
  dir: string,
  manifest: OrganismManifest,
  overrides: Partial<
    Pick<NarrowVsGeneralConfig, 'steering' | 'stability' | 'threads' | 'batchSize' | 'layers' | 'seed'>
  > = {},
): NarrowVsGeneralConfig {
  const abs = (p: string) => resolve(dir, p);
  return {
    source: 'synthetic',
    base: abs(manifest.base),
    finetunes: manifest.organisms.map((o) => ({
      name: o.name,
      adapter: abs(o.adapter),
      domain: o.domain,
      kind: o.kind,
    })),
    responses: Object.fromEntries(Object.entries(manifest.responses).map(([d, p]) => [d, abs(p)])),
    neutral: abs(manifest.neutral),
    layers: overrides.layers ?? 'all',
    span: 'after-user',
    steering: overrides.steering ?? { scales: [0, 0.25, 0.5, 1, 2] },
    stability: overrides.stability ?? { noise: [0.1, 0.25, 0.5, 1], seeds: 3 },
    seed: overrides.seed ?? 0,
    device: 'cpu',
    threads: overrides.threads ?? 1,
    batchSize: overrides.batchSize ?? 8,
    minDivergence: 1e-3,
    planted: abs(manifest.plantedFile),
  };
}
