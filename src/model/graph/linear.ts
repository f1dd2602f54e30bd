/**
 * A linear layer's weights and its GEMM, in whichever scheme the profile asks for: a float MatMul, per-column
 * int8 through com.microsoft DynamicQuantizeMatMul (activations quantised per tensor at run time, u8 x s8 on
 * the VNNI kernels), or blockwise int4/int8 through com.microsoft MatMulNBits. See `benchmarks/quantKernels.ts`
 * for the measurements that chose between them.
 */
import { f32ToF16 } from '../../io/halfFloat.js';
import type { GraphBuilder } from '../../onnx/builder.js';
import { blockCount, quantizeBlockwise, quantizeInt8Columns } from './quantize.js';
import type { Profile } from './transformer.js';
import { type LinearPart, packTransposed } from './weights.js';

export type LinearScheme =
  | { readonly kind: 'float'; readonly type: 'float32' | 'float16' }
  | { readonly kind: 'int8-columns' }
  | {
      readonly kind: 'nbits';
      readonly bits: 4 | 8;
      readonly blockSize: number;
      /** MatMulNBits' `accuracy_level`: 4 quantises the activations to int8 per block (the VNNI path). */
      readonly accuracyLevel: 0 | 1 | 2 | 3 | 4;
    };

/** The initializers of one linear layer, ready for {@link emitLinear}. */
export interface LinearWeight {
  readonly scheme: LinearScheme;
  readonly inDim: number;
  readonly outDim: number;
  /** The weight inputs of the GEMM node after the activation (`B`, then scales for the quantised ones). */
  readonly inputs: readonly string[];
}

/** Bytes a linear layer's weights take in a scheme (what `info` reports per profile). */
export function linearBytes(scheme: LinearScheme, inDim: number, outDim: number): number {
  switch (scheme.kind) {
    case 'float':
      return inDim * outDim * (scheme.type === 'float16' ? 2 : 4);
    case 'int8-columns':
      return inDim * outDim + 4 * outDim;
    case 'nbits': {
      const blocks = blockCount(inDim, scheme.blockSize);
      return outDim * blocks * ((scheme.blockSize * scheme.bits) / 8 + 4);
    }
  }
}

/**
 * Declares the weights of a linear layer `[.., inDim] -> [.., outDim]` whose HF matrices `parts()` yields (read
 * only when the data file is written). A quantised layer's initializers come from one quantisation, kept only
 * until its last initializer is written, so at most the parts and one quantised copy are alive at once.
 */
export async function linearWeight(
  g: GraphBuilder,
  name: string,
  scheme: LinearScheme,
  inDim: number,
  outDim: number,
  parts: () => Promise<readonly LinearPart[]>,
): Promise<LinearWeight> {
  const of = (inputs: string[]): LinearWeight => ({ scheme, inDim, outDim, inputs });
  switch (scheme.kind) {
    case 'float': {
      const half = scheme.type === 'float16';
      const w = await g.weight(name, scheme.type, [inDim, outDim], async () => {
        const packed = packTransposed(await parts(), inDim); // [in, out]
        return half ? f32ToF16(packed) : packed;
      });
      return of([w]);
    }
    case 'int8-columns': {
      let made: Promise<ReturnType<typeof quantizeInt8Columns>> | undefined;
      const get = () => {
        made ??= parts().then((p) => quantizeInt8Columns(p, inDim));
        return made;
      };
      const q = await g.weight(`${name}.q8`, 'int8', [inDim, outDim], async () => (await get()).q);
      const s = await g.weight(`${name}.scales`, 'float32', [outDim], async () => {
        const { scales } = await get();
        made = undefined;
        return scales;
      });
      return of([q, s]);
    }
    case 'nbits': {
      const { bits, blockSize } = scheme;
      let made: Promise<ReturnType<typeof quantizeBlockwise>> | undefined;
      const get = () => {
        made ??= parts().then((p) => quantizeBlockwise(p, inDim, bits, blockSize));
        return made;
      };
      const blocks = blockCount(inDim, blockSize);
      const q = await g.weight(
        `${name}.q${bits}b${blockSize}`,
        'uint8',
        [outDim, blocks, (blockSize * bits) / 8],
        async () => (await get()).data,
      );
      const s = await g.weight(`${name}.scales${blockSize}`, 'float32', [outDim * blocks], async () => {
        const { scales } = await get();
        made = undefined;
        return scales;
      });
      return of([q, s]);
    }
  }
}

/** `x W (+ b)` for a weight from {@link linearWeight}, written under `out` when given. */
export function emitLinear(
  g: GraphBuilder,
  x: string,
  w: LinearWeight,
  bias: string | null,
  out?: string,
): string {
  /** One node; the layer's last one writes `out` when given. */
  const node = (
    op: string,
    inputs: readonly string[],
    last: boolean,
    extra: { domain?: string; attrs?: Parameters<GraphBuilder['op']>[2] } = {},
  ): string =>
    last && out ? g.node(op, inputs, { ...extra, outputs: [out] })[0] : g.node(op, inputs, extra)[0];
  const scheme = w.scheme;
  let y: string;
  switch (scheme.kind) {
    case 'float':
      y = node('MatMul', [x, ...w.inputs], !bias);
      break;
    case 'int8-columns':
      // the bias goes into the kernel (its fifth input), which saves a pass over the output
      return node('DynamicQuantizeMatMul', [x, ...w.inputs, '', ...(bias ? [bias] : [])], true, {
        domain: 'com.microsoft',
      });
    case 'nbits':
      y = node('MatMulNBits', [x, ...w.inputs], !bias, {
        domain: 'com.microsoft',
        attrs: {
          K: { int: w.inDim },
          N: { int: w.outDim },
          bits: { int: scheme.bits },
          block_size: { int: scheme.blockSize },
          accuracy_level: { int: scheme.accuracyLevel },
        },
      });
      break;
  }
  return bias ? node('Add', [y, bias], true) : y;
}

/**
 * The scheme of a profile's block GEMMs and LM head, chosen by `benchmarks/quantKernels.ts` (results in
 * benchmarks/results/quantKernels.json; 0.5B block shapes, 6 blocks so the weights stream from memory, 2 threads,
 * this AMD EPYC with AVX-512 VNNI and no AMX): per-column int8 DynamicQuantizeMatMul ran 3.4x fp32 MatMul at
 * 1 row, 2.3x at 128 and 2.5x at 512 rows, and beat every MatMulNBits variant at every row count, so int8 needs
 * no per-regime graph. For int4, MatMulNBits with blocks of 128 ran 2.95x fp32 at 1 row (blocks of 32: 2.4x)
 * and 1.4-1.5x at 128-512 rows (blocks of 32: 1.0-1.1x).
 */
export function linearSchemeFor(profile: Profile): LinearScheme {
  switch (profile) {
    case 'fp32':
      return { kind: 'float', type: 'float32' };
    case 'fp16':
      return { kind: 'float', type: 'float16' };
    case 'int8':
      return { kind: 'int8-columns' };
    case 'int4':
      return { kind: 'nbits', bits: 4, blockSize: INT4_BLOCK, accuracyLevel: 4 };
  }
}

/** Block size of the int4 profile. */
export const INT4_BLOCK = 128;
