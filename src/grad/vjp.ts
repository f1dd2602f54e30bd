/**
 * Vector-Jacobian products, one per op the tape records: each takes the gradient `gy` of the op's output and
 * emits the nodes for the gradients of its inputs (null for an input that needs none).
 */
import type { Tape, Val } from './tape.js';

type G = string | null;

/** Only emit a gradient for inputs that depend on a parameter. */
const need = (t: Tape, v: Val, make: () => string): G => (t.needsGrad(v) ? make() : null);

export function add(t: Tape, gy: string, a: Val, b: Val, y: Val): G[] {
  return [
    need(t, a, () => t.unbroadcast(gy, y.shape, a.shape)),
    need(t, b, () => t.unbroadcast(gy, y.shape, b.shape)),
  ];
}

export function sub(t: Tape, gy: string, a: Val, b: Val, y: Val): G[] {
  return [
    need(t, a, () => t.unbroadcast(gy, y.shape, a.shape)),
    need(t, b, () => t.unbroadcast(t.raw('Neg', [gy]), y.shape, b.shape)),
  ];
}

export function mul(t: Tape, gy: string, a: Val, b: Val, y: Val): G[] {
  return [
    need(t, a, () => t.unbroadcast(t.raw('Mul', [gy, b.name]), y.shape, a.shape)),
    need(t, b, () => t.unbroadcast(t.raw('Mul', [gy, a.name]), y.shape, b.shape)),
  ];
}

/** y = a / b: da = g / b, db = -g y / b. */
export function div(t: Tape, gy: string, a: Val, b: Val, y: Val): G[] {
  return [
    need(t, a, () => t.unbroadcast(t.raw('Div', [gy, b.name]), y.shape, a.shape)),
    need(t, b, () =>
      t.unbroadcast(t.raw('Neg', [t.raw('Div', [t.raw('Mul', [gy, y.name]), b.name])]), y.shape, b.shape),
    ),
  ];
}

export function neg(t: Tape, gy: string): string {
  return t.raw('Neg', [gy]);
}

export function exp(t: Tape, gy: string, y: Val): string {
  return t.raw('Mul', [gy, y.name]);
}

/** d tanh = 1 - y². */
export function tanh(t: Tape, gy: string, y: Val): string {
  const one = t.scalar(1).name;
  return t.raw('Mul', [gy, t.raw('Sub', [one, t.raw('Mul', [y.name, y.name])])]);
}

/** d sigmoid = y (1 - y). */
export function sigmoid(t: Tape, gy: string, y: Val): string {
  const one = t.scalar(1).name;
  return t.raw('Mul', [gy, t.raw('Mul', [y.name, t.raw('Sub', [one, y.name])])]);
}

/** d sqrt = 1 / (2 y). */
export function sqrt(t: Tape, gy: string, y: Val): string {
  return t.raw('Div', [gy, t.raw('Mul', [t.scalar(2).name, y.name])]);
}

/** Softmax over the last axis: dx = y (g - sum(g y)). */
export function softmax(t: Tape, gy: string, y: Val): string {
  const last = t.ints([y.shape.length - 1]);
  const dot = t.raw('ReduceSum', [t.raw('Mul', [gy, y.name]), last], { keepdims: { int: 1 } });
  return t.raw('Mul', [y.name, t.raw('Sub', [gy, dot])]);
}

/** LogSoftmax over the last axis: dx = g - exp(y) sum(g). */
export function logSoftmax(t: Tape, gy: string, y: Val): string {
  const last = t.ints([y.shape.length - 1]);
  const total = t.raw('ReduceSum', [gy, last], { keepdims: { int: 1 } });
  return t.raw('Sub', [gy, t.raw('Mul', [t.raw('Exp', [y.name]), total])]);
}

/** Where(mask, a, b): the gradient goes to a where the mask holds, to b elsewhere. */
export function where(t: Tape, gy: string, mask: string, a: Val, b: Val, shape: readonly number[]): G[] {
  const zero = t.scalar(0).name;
  return [
    need(t, a, () => t.unbroadcast(t.raw('Where', [mask, gy, zero]), shape, a.shape)),
    need(t, b, () => t.unbroadcast(t.raw('Where', [mask, zero, gy]), shape, b.shape)),
  ];
}

/** Swaps the last two axes. */
function transposeLast(t: Tape, v: string, rank: number): string {
  const perm = [...Array(rank).keys()];
  [perm[rank - 2], perm[rank - 1]] = [perm[rank - 1]!, perm[rank - 2]!];
  return t.raw('Transpose', [v], { perm: { ints: perm } });
}

/** y = a b: da = g bᵀ, db = aᵀ g, each summed over the batch axes broadcasting added. */
export function matmul(t: Tape, gy: string, a: Val, b: Val, yShape: readonly number[]): G[] {
  const r = yShape.length;
  const daShape = [...yShape.slice(0, -1), a.shape[a.shape.length - 1]!];
  const dbShape = [...yShape.slice(0, -2), b.shape[b.shape.length - 2]!, yShape[r - 1]!];
  return [
    need(t, a, () =>
      t.unbroadcast(t.raw('MatMul', [gy, transposeLast(t, b.name, b.shape.length)]), daShape, a.shape),
    ),
    need(t, b, () =>
      t.unbroadcast(t.raw('MatMul', [transposeLast(t, a.name, a.shape.length), gy]), dbShape, b.shape),
    ),
  ];
}

export function reshape(t: Tape, gy: string, x: Val): string {
  return t.raw('Reshape', [gy, t.ints(x.shape)]);
}

export function transpose(t: Tape, gy: string, perm: readonly number[]): string {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => {
    inv[p] = i;
  });
  return t.raw('Transpose', [gy], { perm: { ints: inv } });
}

/** Each input's slice of the gradient. */
export function concat(t: Tape, gy: string, xs: readonly Val[], axis: number): G[] {
  let at = 0;
  return xs.map((x) => {
    const start = at;
    at += x.shape[axis]!;
    return need(t, x, () =>
      t.raw('Slice', [gy, t.ints([start]), t.ints([start + x.shape[axis]!]), t.ints([axis])]),
    );
  });
}

/** The gradient padded back with zeros to the sliced input's shape. */
export function slice(t: Tape, gy: string, x: Val, axis: number, start: number, end: number): string {
  const r = x.shape.length;
  const pads = new Array<number>(2 * r).fill(0);
  pads[axis] = start;
  pads[r + axis] = x.shape[axis]! - end;
  return t.raw('Pad', [gy, t.ints(pads)]);
}

/** The gradient broadcast back over the summed axes. */
export function reduceSum(t: Tape, gy: string, x: Val, axes: readonly number[]): string {
  const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  return t.raw('Expand', [t.raw('Reshape', [gy, t.ints(kept)]), t.ints(x.shape)]);
}

export function reduceMean(t: Tape, gy: string, x: Val, axes: readonly number[], count: number): string {
  return t.raw('Div', [reduceSum(t, gy, x, axes), t.scalar(count).name]);
}

/** GatherElements along the last axis: the gradient scattered back into zeros at the picked indices. */
export function pickLast(t: Tape, gy: string, x: Val, idx: Val): string {
  const zeros = t.raw('Expand', [t.scalar(0).name, t.ints(x.shape)]);
  return t.raw('ScatterElements', [zeros, idx.name, gy], { axis: { int: x.shape.length - 1 } });
}
