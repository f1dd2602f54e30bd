import { ProtoWriter } from './protobuf.js';

/** Element types the graphs use, named as onnxruntime-node names them. */
export type ElemType = 'float32' | 'float16' | 'float64' | 'int64' | 'int32' | 'int8' | 'uint8' | 'bool';

/** ONNX `TensorProto.DataType` codes. */
export const ONNX_ELEM_TYPE: Readonly<Record<ElemType, number>> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
};

export const ELEM_BYTES: Readonly<Record<ElemType, number>> = {
  float32: 4,
  int32: 4,
  int64: 8,
  int8: 1,
  uint8: 1,
  bool: 1,
  float16: 2,
  float64: 8,
};

/** A dimension: a fixed size or a symbolic name (`batch`, `seq`). */
export type Dim = number | string;

export interface ValueInfo {
  readonly name: string;
  readonly type: ElemType;
  readonly shape: readonly Dim[];
}

/** Attribute values, tagged where the JS type alone is ambiguous. */
export type AttrValue =
  | { readonly int: number }
  | { readonly float: number }
  | { readonly string: string }
  | { readonly ints: readonly number[] }
  | { readonly floats: readonly number[] };

export interface NodeSpec {
  readonly opType: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attributes?: Readonly<Record<string, AttrValue>>;
  readonly domain?: string;
  readonly name: string;
}

/** Where an initializer's bytes live: inline in the protobuf, or at an offset of the external data file. */
export type InitializerData =
  | { readonly kind: 'inline'; readonly bytes: Uint8Array }
  | {
      readonly kind: 'external';
      readonly location: string;
      readonly offset: number;
      readonly length: number;
    };

export interface Initializer {
  readonly name: string;
  readonly type: ElemType;
  readonly dims: readonly number[];
  readonly data: InitializerData;
}

export interface OpsetImport {
  readonly domain: string;
  readonly version: number;
}

export interface GraphProtoParts {
  readonly name: string;
  readonly nodes: readonly NodeSpec[];
  readonly initializers: readonly Initializer[];
  readonly inputs: readonly ValueInfo[];
  readonly outputs: readonly ValueInfo[];
}

function encodeValueInfo(v: ValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.shape) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().int(1, ONNX_ELEM_TYPE[v.type]).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, v.name).message(2, type);
}

function encodeAttribute(name: string, value: AttrValue): ProtoWriter {
  // AttributeProto.type codes: FLOAT=1, INT=2, STRING=3, FLOATS=6, INTS=7.
  const a = new ProtoWriter().string(1, name);
  if ('int' in value) return a.int(3, value.int).int(20, 2);
  if ('float' in value) return a.float(2, value.float).int(20, 1);
  if ('string' in value) return a.string(4, value.string).int(20, 3);
  if ('ints' in value) return a.packedInts(8, value.ints).int(20, 7);
  return a.packedFloats(7, value.floats).int(20, 6);
}

function encodeNode(n: NodeSpec): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name).string(4, n.opType);
  for (const [k, v] of Object.entries(n.attributes ?? {})) w.message(5, encodeAttribute(k, v));
  if (n.domain) w.string(7, n.domain);
  return w;
}

function encodeInitializer(t: Initializer): ProtoWriter {
  const w = new ProtoWriter().packedInts(1, t.dims).int(2, ONNX_ELEM_TYPE[t.type]).string(8, t.name);
  if (t.data.kind === 'inline') return w.bytes(9, t.data.bytes);
  const entry = (k: string, v: string) => new ProtoWriter().string(1, k).string(2, v);
  return w
    .message(13, entry('location', t.data.location))
    .message(13, entry('offset', String(t.data.offset)))
    .message(13, entry('length', String(t.data.length)))
    .int(14, 1); // data_location = EXTERNAL
}

/** Serialises a graph into an ONNX `ModelProto`. */
export function encodeModel(
  graph: GraphProtoParts,
  opsets: readonly OpsetImport[],
  meta: { producer: string; version: string; irVersion: number; metadata?: Record<string, string> },
): Uint8Array {
  const g = new ProtoWriter();
  for (const n of graph.nodes) g.message(1, encodeNode(n));
  g.string(2, graph.name);
  for (const t of graph.initializers) g.message(5, encodeInitializer(t));
  for (const i of graph.inputs) g.message(11, encodeValueInfo(i));
  for (const o of graph.outputs) g.message(12, encodeValueInfo(o));

  const m = new ProtoWriter().int(1, meta.irVersion).string(2, meta.producer).string(3, meta.version);
  m.message(7, g);
  for (const o of opsets) m.message(8, new ProtoWriter().string(1, o.domain).int(2, o.version));
  for (const [k, v] of Object.entries(meta.metadata ?? {})) {
    m.message(14, new ProtoWriter().string(1, k).string(2, v));
  }
  return m.finish();
}
