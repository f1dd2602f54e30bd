import type { ExternalData } from './externalData.js';
import {
  type AttrValue,
  type Dim,
  ELEM_BYTES,
  type ElemType,
  encodeModel,
  type Initializer,
  type NodeSpec,
  type OpsetImport,
  type ValueInfo,
} from './graph.js';

/** Initializers smaller than this stay inline in the protobuf (shape constants, norms of tiny models). */
const INLINE_LIMIT_BYTES = 1024;

type Attrs = Readonly<Record<string, AttrValue>>;

/** `N` strings, for a literal `N` (a node asked for `outputs: 3` returns three names). */
type Names<N extends number, T extends string[] = []> = T['length'] extends N ? T : Names<N, [...T, string]>;
/**
 * What `node` returns for its `outputs` option: one name per given name, `N` names for a literal count `N`,
 * one name by default; `string[]` when the count is not a literal.
 */
export type NodeOutputs<O> = O extends readonly string[]
  ? { -readonly [K in keyof O]: string }
  : O extends number
    ? number extends O
      ? string[]
      : Names<O>
    : [string];

/**
 * Builds an ONNX graph node by node. Value names are chosen by the caller where they matter (inputs, outputs,
 * hook points) and generated otherwise.
 */
export class GraphBuilder {
  private readonly nodes: NodeSpec[] = [];
  private readonly initializers: Initializer[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly used = new Set<string>();
  /** Names handed out by `fresh` and not yet defined. */
  private readonly reserved = new Set<string>();
  private counter = 0;
  private readonly constCache = new Map<string, string>();

  constructor(
    readonly name: string,
    private readonly external: ExternalData | null,
  ) {}

  /** A fresh value name with a readable prefix. */
  fresh(prefix: string): string {
    let name: string;
    do name = `${prefix}_${this.counter++}`;
    while (this.used.has(name));
    this.used.add(name);
    this.reserved.add(name);
    return name;
  }

  private claim(name: string): string {
    if (this.reserved.delete(name)) return name;
    if (this.used.has(name)) throw new Error(`Graph value '${name}' defined twice.`);
    this.used.add(name);
    return name;
  }

  input(name: string, type: ElemType, shape: readonly Dim[]): string {
    this.inputs.push({ name: this.claim(name), type, shape });
    return name;
  }

  /** Marks an existing value as a graph output (through an Identity so the output has a stable name). */
  output(value: string, name: string, type: ElemType, shape: readonly Dim[]): string {
    if (value !== name) this.node('Identity', [value], { outputs: [name] });
    this.outputs.push({ name, type, shape });
    return name;
  }

  /**
   * Adds a node; returns its output names (generated from the op type unless given), typed as a tuple of
   * their count where the call states it (see {@link NodeOutputs}).
   */
  node<const O extends readonly string[] | number | undefined = undefined>(
    opType: string,
    inputs: readonly string[],
    opts: { outputs?: O; attrs?: Attrs; domain?: string; name?: string } = {},
  ): NodeOutputs<O> {
    const outs =
      typeof opts.outputs === 'object'
        ? opts.outputs.map((o) => (o === '' ? o : this.claim(o)))
        : Array.from({ length: opts.outputs ?? 1 }, () => this.claim(this.fresh(opType.toLowerCase())));
    this.nodes.push({
      opType,
      inputs,
      outputs: outs,
      attributes: opts.attrs,
      domain: opts.domain,
      name: opts.name ?? this.claim(this.fresh(`n_${opType}`)),
    });
    // outs has one name per given name, or `outputs` (default 1) fresh names: the shape NodeOutputs<O> states
    return outs as NodeOutputs<O>;
  }

  /** Single-output shorthand. */
  op(opType: string, inputs: readonly string[], attrs?: Attrs, domain?: string): string {
    return this.node(opType, inputs, { attrs, domain })[0];
  }

  private checkedBytes(
    name: string,
    type: ElemType,
    dims: readonly number[],
    data: ArrayBufferView,
  ): Uint8Array {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const expected = dims.reduce((a, b) => a * b, 1) * ELEM_BYTES[type];
    if (bytes.length !== expected) {
      throw new Error(`Initializer '${name}' has ${bytes.length} bytes, expected ${expected}.`);
    }
    return bytes;
  }

  /** A constant tensor as an initializer; big ones go to the external data file. */
  initializer(name: string, type: ElemType, dims: readonly number[], data: ArrayBufferView): string {
    const bytes = this.checkedBytes(name, type, dims, data);
    this.claim(name);
    if (this.external && bytes.length > INLINE_LIMIT_BYTES) {
      const at = this.external.append(name, bytes);
      this.initializers.push({
        name,
        type,
        dims,
        data: { kind: 'external', location: this.external.location, ...at },
      });
    } else {
      this.initializers.push({ name, type, dims, data: { kind: 'inline', bytes: bytes.slice() } });
    }
    return name;
  }

  /**
   * A large constant (a weight) stored in external data. `produce` is only called when the data file is being
   * written; a graph variant built over existing data just references the recorded bytes.
   */
  async weight(
    name: string,
    type: ElemType,
    dims: readonly number[],
    produce: () => Promise<ArrayBufferView> | ArrayBufferView,
  ): Promise<string> {
    if (!this.external) return this.initializer(name, type, dims, await produce());
    const length = dims.reduce((a, b) => a * b, 1) * ELEM_BYTES[type];
    // Weights always live in external data, whatever their size, so a reused data file holds all of them.
    const at = this.external.writing
      ? this.external.append(name, this.checkedBytes(name, type, dims, await produce()))
      : this.external.locate(name, length);
    this.claim(name);
    this.initializers.push({
      name,
      type,
      dims,
      data: { kind: 'external', location: this.external.location, ...at },
    });
    return name;
  }

  /** A small int64 constant, shared between uses. */
  int64(values: readonly number[], scalar = false): string {
    const key = `i64:${scalar ? 's' : 'v'}:${values.join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.fresh('const_i64');
    this.initializer(name, 'int64', scalar ? [] : [values.length], BigInt64Array.from(values.map(BigInt)));
    this.constCache.set(key, name);
    return name;
  }

  /** A small float constant of the given element type, shared between uses. */
  scalar(value: number, type: 'float32' | 'float16', toHalf?: (x: Float32Array) => Uint16Array): string {
    const key = `${type}:${value}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.fresh('const_f');
    const f32 = Float32Array.of(value);
    if (type === 'float16') {
      if (!toHalf) throw new Error('float16 constants need a converter');
      this.initializer(name, 'float16', [], toHalf(f32));
    } else {
      this.initializer(name, 'float32', [], f32);
    }
    this.constCache.set(key, name);
    return name;
  }

  encode(
    opsets: readonly OpsetImport[],
    metadata: Record<string, string>,
    producerVersion: string,
  ): Uint8Array {
    return encodeModel(
      {
        name: this.name,
        nodes: this.nodes,
        initializers: this.initializers,
        inputs: this.inputs,
        outputs: this.outputs,
      },
      opsets,
      { producer: 'emlens', version: producerVersion, irVersion: 10, metadata },
    );
  }
}
