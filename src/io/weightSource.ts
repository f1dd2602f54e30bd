/**
 * The weights of a Hugging Face model folder: either one `model.safetensors` or shards listed by
 * `model.safetensors.index.json`. Every shard is opened (header only) and cross-checked up front so that a
 * broken download fails at load time with a clear message, not halfway through building a graph.
 */
import { readdir, stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { EmlensError } from '../errors.js';
import { inputExists, readInputText } from './inputFiles.js';
import { closestNames, quoteList, SafetensorsFile, type TensorInfo } from './safetensors.js';

const SINGLE = 'model.safetensors';
const INDEX = 'model.safetensors.index.json';
const POINT = 'point --model at a Hugging Face model folder';

/** A tensor's location, plus the absolute path of the shard that holds it. */
export type WeightInfo = TensorInfo & { readonly file: string };

/**
 * Resolves a shard name from the index, refusing anything that would leave the folder. The check is
 * lexical on purpose: Hugging Face cache snapshots are symlinks into a blobs folder outside `dir`.
 */
function shardPath(dir: string, index: string, shard: string): string {
  const rel = relative(dir, resolve(dir, shard));
  if (
    shard.length === 0 ||
    isAbsolute(shard) ||
    /^[a-zA-Z]:/.test(shard) ||
    shard.split(/[\\/]/).includes('..') ||
    rel.length === 0 ||
    rel === '..' ||
    rel.startsWith(`..${sep}`) ||
    isAbsolute(rel)
  ) {
    throw new EmlensError(
      `${index} maps weights to '${shard}', which is outside the model folder; weight files must be plain names inside ${dir}.`,
    );
  }
  return join(dir, rel);
}

interface Index {
  readonly weightMap: ReadonlyMap<string, string>;
}

async function readIndex(path: string): Promise<Index> {
  const text = await readInputText(path);
  if (text === null) throw new EmlensError(`${path} does not exist; re-download the model.`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new EmlensError(`${path} is not valid JSON (${(e as Error).message}); re-download the model.`);
  }
  const map = (json as { weight_map?: unknown } | null)?.weight_map;
  if (
    typeof json !== 'object' ||
    json === null ||
    typeof map !== 'object' ||
    map === null ||
    Array.isArray(map)
  ) {
    throw new EmlensError(
      `${path} has no "weight_map" object mapping tensor names to shard files; re-download the model.`,
    );
  }
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    if (typeof file !== 'string') {
      throw new EmlensError(
        `${path} maps '${name}' to ${JSON.stringify(file)}, not a file name; re-download the model.`,
      );
    }
    weightMap.set(name, file);
  }
  if (weightMap.size === 0) {
    throw new EmlensError(`${path} has an empty "weight_map"; re-download the model.`);
  }
  return { weightMap };
}

export interface WeightSourceOptions {
  /**
   * Maps each stored tensor name to the name callers use, or to null to hide the tensor (a multimodal
   * checkpoint's vision tower): see `textModelName`. Default: names as stored.
   */
  readonly rename?: (name: string) => string | null;
}

/** The safetensors weights of one model folder, read lazily tensor by tensor. */
export class WeightSource {
  /** Stored name of each renamed tensor (by the name callers use). */
  private readonly stored = new Map<string, string>();
  /** How many stored tensors the rename hid. */
  readonly hidden: number = 0;

  private constructor(
    /** Absolute path of the model folder. */
    readonly dir: string,
    /** Absolute paths of the weight files, in first-use order. */
    readonly files: readonly string[],
    private owner: ReadonlyMap<string, SafetensorsFile>,
    private readonly handles: readonly SafetensorsFile[],
  ) {}

  /** Applies `rename` to every name (see WeightSourceOptions); two stored names onto one is an error. */
  private renamed(rename: WeightSourceOptions['rename']): this {
    if (!rename) return this;
    const owner = new Map<string, SafetensorsFile>();
    let hidden = 0;
    for (const [name, file] of this.owner) {
      const to = rename(name);
      if (to === null) {
        hidden++;
        continue;
      }
      if (owner.has(to)) {
        throw new EmlensError(
          `The model at ${this.dir} holds both '${this.stored.get(to) ?? to}' and '${name}', two copies of weight '${to}'; re-download or re-save the model.`,
        );
      }
      owner.set(to, file);
      this.stored.set(to, name);
    }
    this.owner = owner;
    (this as { hidden: number }).hidden = hidden;
    return this;
  }

  /**
   * Opens `model.safetensors` (preferred, as transformers does) or every shard named by
   * `model.safetensors.index.json`, validating headers and that each mapped tensor is in its shard.
   */
  static async open(dir: string, opts: WeightSourceOptions = {}): Promise<WeightSource> {
    const source = await WeightSource.openAll(dir);
    try {
      return source.renamed(opts.rename);
    } catch (e) {
      await source.close();
      throw e;
    }
  }

  private static async openAll(dir: string): Promise<WeightSource> {
    const abs = resolve(dir);
    let entries: string[];
    try {
      if (!(await stat(abs)).isDirectory()) {
        throw new EmlensError(`Model path ${abs} is a file, not a folder; ${POINT}.`);
      }
      entries = await readdir(abs);
    } catch (e) {
      if (e instanceof EmlensError) throw e;
      throw new EmlensError(`Model folder ${abs} does not exist or cannot be read; ${POINT}.`);
    }

    if (await inputExists(join(abs, SINGLE))) {
      const file = await SafetensorsFile.open(join(abs, SINGLE));
      const owner = new Map<string, SafetensorsFile>();
      for (const name of file.tensors.keys()) owner.set(name, file);
      return new WeightSource(abs, [file.path], owner, [file]);
    }
    if (await inputExists(join(abs, INDEX))) {
      return WeightSource.openSharded(abs, join(abs, INDEX));
    }
    if (entries.some((e) => e.endsWith('.bin') || e.endsWith('.bin.index.json'))) {
      throw new EmlensError(
        `${abs} holds only PyTorch .bin checkpoints, which are not supported; convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)).`,
      );
    }
    throw new EmlensError(`No ${SINGLE} or ${INDEX} in ${abs}; ${POINT}.`);
  }

  private static async openSharded(dir: string, indexPath: string): Promise<WeightSource> {
    const { weightMap } = await readIndex(indexPath);
    const byShard = new Map<string, SafetensorsFile>();
    const opened: SafetensorsFile[] = [];
    try {
      const owner = new Map<string, SafetensorsFile>();
      for (const [name, shard] of weightMap) {
        const path = shardPath(dir, indexPath, shard);
        let file = byShard.get(path);
        if (file === undefined) {
          if (!(await inputExists(path))) {
            throw new EmlensError(
              `Shard ${shard} listed in ${indexPath} is missing from ${dir}; re-download the model (the download is incomplete).`,
            );
          }
          file = await SafetensorsFile.open(path);
          opened.push(file);
          byShard.set(path, file);
        }
        if (!file.has(name)) {
          throw new EmlensError(
            `${indexPath} says tensor '${name}' is in ${shard}, but that shard does not hold it; re-download the model.`,
          );
        }
        owner.set(name, file);
      }
      return new WeightSource(dir, [...byShard.keys()], owner, opened);
    } catch (e) {
      await Promise.all(opened.map((f) => f.close()));
      throw e;
    }
  }

  /** Every tensor name, in index (or file data) order. */
  names(): string[] {
    return [...this.owner.keys()];
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  /** Where a tensor lives; an unknown name throws an EmlensError suggesting the closest names. */
  info(name: string): WeightInfo {
    const file = this.fileOf(name);
    return { ...file.info(this.stored.get(name) ?? name), file: file.path };
  }

  /** The tensor as float32 (F32, F16, BF16 and F64 are converted). */
  readFloat32(name: string): Promise<Float32Array> {
    return this.fileOf(name).readFloat32(this.stored.get(name) ?? name);
  }

  /** Closes every shard. */
  async close(): Promise<void> {
    await Promise.all(this.handles.map((f) => f.close()));
  }

  private fileOf(name: string): SafetensorsFile {
    const file = this.owner.get(name);
    if (file !== undefined) return file;
    const near = closestNames(name, this.owner.keys());
    const hint = near.length > 0 ? `did you mean ${quoteList(near)}?` : 'the model has no weights.';
    throw new EmlensError(`Weight '${name}' is not in the model at ${this.dir}; ${hint}`);
  }
}
