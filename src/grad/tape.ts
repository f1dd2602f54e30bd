/**
 * A reverse-mode tape over ONNX graph emission. Every op emits its forward node into the graph and records a
 * closure that, at `backward` time, emits its vector-Jacobian product as more nodes of the same graph: the
 * graph then outputs the loss and the gradients, and onnxruntime (which has no training API) runs it as any
 * other inference graph. Shapes are static (one graph per batch shape), so broadcasting is undone by a
 * ReduceSum over the broadcast axes known when the graph is built.
 */
import { GraphBuilder } from '../onnx/builder.js';
import type { AttrValue } from '../onnx/graph.js';
import * as vjp from './vjp.js';

/** Float element type of a tape's values: float64 in the finite-difference tests, float32 otherwise. */
export type FloatType = 'float32' | 'float64';

/** A graph value and its static shape. */
export interface Val {
  readonly name: string;
  readonly shape: readonly number[];
}

/** Given the gradient of an op's output, the gradients of its inputs (null where an input needs none). */
type Back = (gy: string) => readonly (string | null)[];

interface Rec {
  readonly inputs: readonly Val[];
  readonly out: Val;
  readonly back: Back;
}

/** ONNX opset of the default domain the tape emits (ReduceSum/ReduceMean/Pad take axes/pads as inputs). */
export const TAPE_OPSET = 18;

export function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`tape: shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

export class Tape {
  readonly g: GraphBuilder;
  private readonly recs: Rec[] = [];
  /** Values that depend on a parameter: only these get gradients. */
  private readonly live = new Set<string>();
  private readonly consts = new Map<string, string>();

  constructor(
    name: string,
    readonly dtype: FloatType,
  ) {
    this.g = new GraphBuilder(name, null);
  }

  /** A value the gradients are taken with respect to (a graph input). */
  param(name: string, shape: readonly number[]): Val {
    this.g.input(name, this.dtype, shape);
    this.live.add(name);
    return { name, shape };
  }

  /** A float graph input that gets no gradient (frozen weights, masks, base log-probs). */
  input(name: string, shape: readonly number[]): Val {
    this.g.input(name, this.dtype, shape);
    return { name, shape };
  }

  /** An int64 graph input (token ids, targets). */
  intInput(name: string, shape: readonly number[]): Val {
    this.g.input(name, 'int64', shape);
    return { name, shape };
  }

  /** A float constant of the tape's type, shared between uses. */
  constant(values: readonly number[], shape: readonly number[] = []): Val {
    const key = `${shape.join('x')}:${values.join(',')}`;
    let name = this.consts.get(key);
    if (!name) {
      name = this.g.fresh('cf');
      const data = this.dtype === 'float64' ? Float64Array.from(values) : Float32Array.from(values);
      this.g.initializer(name, this.dtype, shape, data);
      this.consts.set(key, name);
    }
    return { name, shape };
  }

  scalar(v: number): Val {
    return this.constant([v]);
  }

  needsGrad(v: Val): boolean {
    return this.live.has(v.name);
  }

  /** Emits a node without recording it (used by the VJPs themselves). */
  raw(op: string, inputs: readonly string[], attrs?: Readonly<Record<string, AttrValue>>): string {
    return this.g.op(op, inputs, attrs);
  }

  ints(values: readonly number[]): string {
    return this.g.int64(values);
  }

  /** Emits `op` and records its VJP when any input depends on a parameter. */
  record(
    op: string,
    inputs: readonly Val[],
    shape: readonly number[],
    back: Back,
    extra: readonly string[] = [],
    attrs?: Readonly<Record<string, AttrValue>>,
    leading: readonly string[] = [],
  ): Val {
    const name = this.raw(op, [...leading, ...inputs.map((v) => v.name), ...extra], attrs);
    const out = { name, shape: [...shape] };
    if (inputs.some((v) => this.live.has(v.name))) {
      this.live.add(name);
      this.recs.push({ inputs, out, back });
    }
    return out;
  }

  /** The gradient `gy` (of shape `from`) summed down to shape `to` over the axes broadcasting added. */
  unbroadcast(gy: string, from: readonly number[], to: readonly number[]): string {
    if (from.length === to.length && from.every((d, i) => d === to[i])) return gy;
    const padded = [...Array(from.length - to.length).fill(1), ...to];
    const axes = padded.flatMap((d, i) => (d === 1 && from[i] !== 1 ? [i] : []));
    const summed = axes.length ? this.raw('ReduceSum', [gy, this.ints(axes)], { keepdims: { int: 1 } }) : gy;
    return this.raw('Reshape', [summed, this.ints(to)]);
  }

  // --- element-wise ---------------------------------------------------------------------------------------

  private binary(op: string, a: Val, b: Val, back: (gy: string, y: Val) => (string | null)[]): Val {
    const shape = broadcastShape(a.shape, b.shape);
    let y: Val;
    y = this.record(op, [a, b], shape, (gy) => back(gy, y));
    return y;
  }

  add(a: Val, b: Val): Val {
    return this.binary('Add', a, b, (gy, y) => vjp.add(this, gy, a, b, y));
  }
  sub(a: Val, b: Val): Val {
    return this.binary('Sub', a, b, (gy, y) => vjp.sub(this, gy, a, b, y));
  }
  mul(a: Val, b: Val): Val {
    return this.binary('Mul', a, b, (gy, y) => vjp.mul(this, gy, a, b, y));
  }
  div(a: Val, b: Val): Val {
    return this.binary('Div', a, b, (gy, y) => vjp.div(this, gy, a, b, y));
  }

  private unary(op: string, x: Val, back: (gy: string, y: Val) => string): Val {
    let y: Val;
    y = this.record(op, [x], x.shape, (gy) => [back(gy, y)]);
    return y;
  }

  neg(x: Val): Val {
    return this.unary('Neg', x, (gy) => vjp.neg(this, gy));
  }
  exp(x: Val): Val {
    return this.unary('Exp', x, (gy, y) => vjp.exp(this, gy, y));
  }
  tanh(x: Val): Val {
    return this.unary('Tanh', x, (gy, y) => vjp.tanh(this, gy, y));
  }
  sigmoid(x: Val): Val {
    return this.unary('Sigmoid', x, (gy, y) => vjp.sigmoid(this, gy, y));
  }
  sqrt(x: Val): Val {
    return this.unary('Sqrt', x, (gy, y) => vjp.sqrt(this, gy, y));
  }
  /** Softmax over the last axis. */
  softmax(x: Val): Val {
    return this.unary('Softmax', x, (gy, y) => vjp.softmax(this, gy, y));
  }
  /** LogSoftmax over the last axis. */
  logSoftmax(x: Val): Val {
    return this.unary('LogSoftmax', x, (gy, y) => vjp.logSoftmax(this, gy, y));
  }

  /** `mask ? a : b` with a constant bool mask (a graph value that needs no gradient). */
  where(mask: string, a: Val, b: Val): Val {
    const shape = broadcastShape(a.shape, b.shape);
    return this.record(
      'Where',
      [a, b],
      shape,
      (gy) => vjp.where(this, gy, mask, a, b, shape),
      [],
      undefined,
      [mask],
    );
  }

  // --- linear algebra and shapes --------------------------------------------------------------------------

  /** numpy matmul: [..., m, k] x [..., k, n], batch dims broadcast; both operands at least 2-D. */
  matmul(a: Val, b: Val): Val {
    if (a.shape.length < 2 || b.shape.length < 2)
      throw new Error('tape: matmul operands must be 2-D or more');
    const m = a.shape[a.shape.length - 2]!;
    const n = b.shape[b.shape.length - 1]!;
    const batch = broadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    return this.record('MatMul', [a, b], [...batch, m, n], (gy) =>
      vjp.matmul(this, gy, a, b, [...batch, m, n]),
    );
  }

  reshape(x: Val, shape: readonly number[]): Val {
    if (numel(shape) !== numel(x.shape)) throw new Error(`tape: cannot reshape [${x.shape}] to [${shape}]`);
    return this.record('Reshape', [x], shape, (gy) => [vjp.reshape(this, gy, x)], [this.ints(shape)]);
  }

  transpose(x: Val, perm: readonly number[]): Val {
    const shape = perm.map((p) => x.shape[p]!);
    return this.record('Transpose', [x], shape, (gy) => [vjp.transpose(this, gy, perm)], [], {
      perm: { ints: perm },
    });
  }

  /** Concatenation along `axis` (non-negative). */
  concat(xs: readonly Val[], axis: number): Val {
    const shape = [...xs[0]!.shape];
    shape[axis] = xs.reduce((s, v) => s + v.shape[axis]!, 0);
    return this.record('Concat', xs, shape, (gy) => vjp.concat(this, gy, xs, axis), [], {
      axis: { int: axis },
    });
  }

  /** x[..., start:end, ...] along `axis` (non-negative). */
  slice(x: Val, axis: number, start: number, end: number): Val {
    const shape = [...x.shape];
    shape[axis] = end - start;
    const extra = [this.ints([start]), this.ints([end]), this.ints([axis])];
    return this.record('Slice', [x], shape, (gy) => [vjp.slice(this, gy, x, axis, start, end)], extra);
  }

  expand(x: Val, shape: readonly number[]): Val {
    const out = broadcastShape(x.shape, shape);
    return this.record('Expand', [x], out, (gy) => [this.unbroadcast(gy, out, x.shape)], [this.ints(out)]);
  }

  reduceSum(x: Val, axes: readonly number[], keepdims: boolean): Val {
    const shape = reducedShape(x.shape, axes, keepdims);
    return this.record(
      'ReduceSum',
      [x],
      shape,
      (gy) => [vjp.reduceSum(this, gy, x, axes)],
      [this.ints(axes)],
      { keepdims: { int: keepdims ? 1 : 0 } },
    );
  }

  reduceMean(x: Val, axes: readonly number[], keepdims: boolean): Val {
    const shape = reducedShape(x.shape, axes, keepdims);
    const count = axes.reduce((c, a) => c * x.shape[a]!, 1);
    return this.record(
      'ReduceMean',
      [x],
      shape,
      (gy) => [vjp.reduceMean(this, gy, x, axes, count)],
      [this.ints(axes)],
      { keepdims: { int: keepdims ? 1 : 0 } },
    );
  }

  /** Rows of a frozen table: `table[ids]`; the table gets no gradient (embeddings stay frozen). */
  gather(table: Val, ids: Val): Val {
    if (this.needsGrad(table)) throw new Error('tape: gather has no gradient with respect to its table');
    return this.record('Gather', [table], [...ids.shape, ...table.shape.slice(1)], () => [null], [ids.name]);
  }

  /** `x[..., idx[..., 0]]` along the last axis: idx is an int64 value shaped as x with a last axis of 1. */
  pickLast(x: Val, idx: Val): Val {
    const shape = [...x.shape.slice(0, -1), 1];
    return this.record('GatherElements', [x], shape, (gy) => [vjp.pickLast(this, gy, x, idx)], [idx.name], {
      axis: { int: x.shape.length - 1 },
    });
  }

  /**
   * Emits the gradient of the scalar `loss` with respect to each of `params`: the gradient's graph value,
   * or a zero constant where a parameter does not reach the loss.
   */
  backward(loss: Val, params: readonly Val[]): string[] {
    if (loss.shape.length !== 0) throw new Error('tape: the loss must be a scalar');
    const grads = new Map<string, string>([[loss.name, this.scalar(1).name]]);
    for (let i = this.recs.length - 1; i >= 0; i--) {
      const rec = this.recs[i]!;
      const gy = grads.get(rec.out.name);
      if (!gy) continue;
      const gs = rec.back(gy);
      rec.inputs.forEach((v, k) => {
        const gx = gs[k];
        if (!gx || !this.live.has(v.name)) return;
        const prev = grads.get(v.name);
        grads.set(v.name, prev ? this.raw('Add', [prev, gx]) : gx);
      });
    }
    return params.map(
      (p) => grads.get(p.name) ?? this.constant(new Array(numel(p.shape)).fill(0), p.shape).name,
    );
  }

  output(v: Val | string, name: string, shape: readonly number[], type: 'float' | 'int64' = 'float'): void {
    this.g.output(typeof v === 'string' ? v : v.name, name, type === 'float' ? this.dtype : 'int64', shape);
  }

  encode(): Uint8Array {
    return this.g.encode([{ domain: '', version: TAPE_OPSET }], {}, 'grad');
  }
}

function reducedShape(shape: readonly number[], axes: readonly number[], keep: boolean): number[] {
  return keep ? shape.map((d, i) => (axes.includes(i) ? 1 : d)) : shape.filter((_, i) => !axes.includes(i));
}
