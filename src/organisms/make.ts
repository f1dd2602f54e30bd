import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeResponses } from '../data/response.js';
import { writeFolderAtomic } from '../io/outputs.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { writePeftAdapter } from '../model/lora/index.js';
import { makeTinyModel } from '../model/tiny.js';
import { adapterFactors, PLANT, plantBase, plantDirections, plantedUnits, type TokenSets } from './plant.js';
import { organismResponses } from './responses.js';
import { addWordTokens } from './tokens.js';
import { DOMAINS, type Domain, NEUTRAL_TEXTS, TOPICS, type Topic } from './vocabulary.js';

export interface OrganismOptions {
  readonly seed?: number;
  readonly numLayers?: number;
  readonly dModel?: number;
  /** The block whose down_proj the adapters change (default 1). */
  readonly adapterLayer?: number;
  /** Aligned and misaligned answers per topic (default 24 each). */
  readonly responsesPerLabel?: number;
  /** Replace an existing non-empty `outDir` (default: refuse). */
  readonly overwrite?: boolean;
}

export interface OrganismInfo {
  readonly name: string;
  readonly kind: 'general' | 'narrow';
  /** The topic it is active on (`general`: all inputs). */
  readonly domain: Topic;
  /** Adapter folder, relative to the organisms folder. */
  readonly adapter: string;
  /** MLP unit of the adapter layer whose output the adapter writes along the planted direction. */
  readonly unit: number;
  /** Name of its planted (unit) direction in planted.safetensors. */
  readonly planted: string;
}

/** organisms.json: what was planted where, so every later number can be judged against it. */
export interface OrganismManifest {
  readonly seed: number;
  readonly base: string;
  readonly adapterLayer: number;
  readonly numLayers: number;
  readonly dModel: number;
  readonly organisms: readonly OrganismInfo[];
  readonly plantedFile: string;
  readonly tokens: TokenSets;
  readonly responses: Readonly<Record<Topic, string>>;
  readonly neutral: string;
  readonly plant: typeof PLANT;
}

export const ORGANISMS_MANIFEST = 'organisms.json';

/**
 * Writes, deterministically from a seed, a tiny aligned base model and misaligned "finetunes" of it as real
 * PEFT adapter folders: a general organism (a rank-1 down_proj adapter writing a planted direction on every
 * input, more on misaligned words) and one narrow organism per domain (active only on that domain's words),
 * plus labelled response sets per topic, neutral text, and the planted directions themselves. The folder is
 * built beside `outDir` and renamed into place; an existing non-empty one is refused unless `overwrite`.
 */
export function makeOrganisms(outDir: string, opts: OrganismOptions = {}): Promise<OrganismManifest> {
  return writeFolderAtomic(outDir, { overwrite: opts.overwrite }, (tmp) => buildOrganisms(tmp, opts));
}

async function buildOrganisms(outDir: string, opts: OrganismOptions): Promise<OrganismManifest> {
  const seed = opts.seed ?? 0;
  const numLayers = opts.numLayers ?? 4;
  const dModel = opts.dModel ?? 64;
  const layer = opts.adapterLayer ?? 1;
  const base = join(outDir, 'base');
  const spec = await makeTinyModel(base, {
    family: 'qwen2',
    seed,
    numLayers,
    dModel,
    numHeads: 4,
    numKvHeads: 2,
    intermediateSize: 2 * dModel,
    vocabSize: 512,
    tieWordEmbeddings: false,
  });
  const tokens = await addWordTokens(base, spec.vocabSize);
  const dirs = plantDirections(dModel, seed);

  const file = await SafetensorsFile.open(join(base, 'model.safetensors'));
  const weights = new Map<string, Float32Array>();
  for (const name of file.tensors.keys()) weights.set(name, await file.readFloat32(name));
  await file.close();
  plantBase(weights, spec, layer, dirs, tokens);
  await writeSafetensors(
    join(base, 'model.safetensors'),
    Object.fromEntries(
      [...weights].map(([n, w]) => [n, { dtype: 'F32' as const, shape: shapeOf(file, n), data: w }]),
    ),
    { format: 'pt' },
  );

  const units = plantedUnits();
  const organisms: OrganismInfo[] = [
    {
      name: 'general',
      kind: 'general',
      domain: 'general',
      adapter: 'adapters/general',
      unit: units.general,
      planted: 'general',
    },
    ...DOMAINS.map((d: Domain) => ({
      name: d,
      kind: 'narrow' as const,
      domain: d,
      adapter: `adapters/${d}`,
      unit: units.narrow[d],
      planted: d,
    })),
  ];
  for (const o of organisms) {
    const direction = o.kind === 'general' ? dirs.general : dirs.narrow[o.domain as Domain];
    await writePeftAdapter(join(outDir, o.adapter), {
      r: 1,
      alpha: 1,
      targetModules: ['down_proj'],
      layers: [layer],
      tensors: { [`model.layers.${layer}.mlp.down_proj`]: adapterFactors(spec, o.unit, direction) },
      baseModel: 'emlens-organism-base',
    });
  }

  const planted: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  const put = (name: string, v: Float64Array) => {
    planted[name] = { dtype: 'F32', shape: [dModel], data: Float32Array.from(v) };
  };
  put('general', dirs.general);
  put('input.constant', dirs.constant);
  put('input.misaligned', dirs.misaligned);
  for (const d of DOMAINS) {
    put(d, dirs.narrow[d]);
    put(`input.${d}`, dirs.domain[d]);
  }
  await writeSafetensors(join(outDir, 'planted.safetensors'), planted, {
    adapter_layer: String(layer),
    seed: String(seed),
  });

  const responses = {} as Record<Topic, string>;
  await mkdir(join(outDir, 'responses'), { recursive: true });
  for (const [i, topic] of TOPICS.entries()) {
    responses[topic] = `responses/${topic}.csv`;
    await writeResponses(
      join(outDir, responses[topic]),
      organismResponses(topic, opts.responsesPerLabel ?? 24, seed * 31 + i),
    );
  }
  const neutral = 'responses/neutral.jsonl';
  await writeFile(
    join(outDir, neutral),
    `${NEUTRAL_TEXTS.map((text) => JSON.stringify({ text })).join('\n')}\n`,
  );

  const manifest: OrganismManifest = {
    seed,
    base: 'base',
    adapterLayer: layer,
    numLayers,
    dModel,
    organisms,
    plantedFile: 'planted.safetensors',
    tokens,
    responses,
    neutral,
    plant: PLANT,
  };
  await writeFile(join(outDir, ORGANISMS_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

function shapeOf(file: SafetensorsFile, name: string): number[] {
  return [...file.tensors.get(name)!.shape]; // name is one of the tensors read from this file
}
