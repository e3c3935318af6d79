// The min-max uniform quantizer of the original GPTQ repository (IST-DASLab/gptq `quant.py`,
// `Quantizer.find_params` with perchannel=True, mse=False, and `quantize`), on typed arrays.
//
//   asymmetric: xmin = min(min(x), 0), xmax = max(max(x), 0); both 0 → xmin = −1, xmax = +1
//               scale = (xmax − xmin) / maxq, zero = round(−xmin / scale)
//   symmetric:  xmax = max(|xmin|, xmax), xmin = −xmax (when xmin < 0); scale as above, zero = (maxq + 1) / 2
//   q = clamp(round(w / scale) + zero, 0, maxq),   w ≈ scale · (q − zero)
//
// `round` is round-half-to-even (torch.round). Arithmetic is float32 like the reference (Math.fround
// on every quotient that decides a rounding).
//
// Deliberate difference: every scale is rounded to float16 BEFORE it is used. The checkpoints quant4
// writes store fp16 scales, so the codes (and the zero point) must be computed with exactly the
// scale that will be stored; otherwise a code chosen for the fp32 scale can be off by one for the
// stored one, and GPTQ's error feedback would be computed against a dequantized weight that no
// loader ever sees. The zero is computed from the rounded scale for the same reason. A scale that
// underflows fp16 (a group of |w| < ~1e-7) becomes the smallest fp16 subnormal 2^-24 instead of 0;
// a scale that overflows fp16 is an error. The fp16 rounding itself is the shared, IEEE
// round-to-nearest-even conversion in src/io/dtype.ts (the one the checkpoint writer uses).

import type { QuantizedLinear } from "../formats/types.js";
import { f16ToF32, f32ToF16 } from "../src/io/dtype.js";
import { ModelError, UsageError } from "../src/util/errors.js";

/** A quantized layer without its module name: what the algorithms produce. */
export type QuantizedLayer = Omit<QuantizedLinear, "name">;

export const SUPPORTED_BITS: readonly number[] = [2, 3, 4, 8];

/** Smallest positive float16 (subnormal), used instead of a scale that rounds to 0 in fp16. */
export const F16_MIN_SUBNORMAL = 2 ** -24;

/** Options shared by every quantizer. */
export interface QuantOptions {
  /** 2 | 3 | 4 | 8 */
  bits: number;
  /** −1 = one group per row; otherwise a positive group length along the input dimension. */
  groupSize: number;
  /** Symmetric (zero fixed at 2^(bits−1)) or asymmetric min-max. */
  sym: boolean;
}

/** Largest code, 2^bits − 1. */
export function maxQ(bits: number): number {
  return 2 ** bits - 1;
}

/** Number of groups along an input dimension (ragged last group counts); shared with the formats. */
export { numGroups } from "../formats/common.js";

/** Throws UsageError for unsupported bits / group size. */
export function validateQuantOptions(opts: QuantOptions, inF: number): void {
  if (!SUPPORTED_BITS.includes(opts.bits)) {
    throw new UsageError(`bits must be one of ${SUPPORTED_BITS.join(", ")}, got ${String(opts.bits)}`);
  }
  const gs = opts.groupSize;
  if (!(gs === -1 || (Number.isInteger(gs) && gs >= 1))) {
    throw new UsageError(`group size must be -1 (per row) or a positive integer, got ${String(gs)}`);
  }
  if (!Number.isInteger(inF) || inF < 1) throw new UsageError(`input features must be a positive integer, got ${inF}`);
}

/** Round half to even, like torch.round / numpy.round (JS Math.round rounds halves up). */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Rounds values (in place) to the nearest float16, via the shared IEEE conversion. */
export function roundToF16InPlace(x: Float32Array): Float32Array {
  return f16ToF32(f32ToF16(x), x);
}

/** The nearest float16 value of a number (after rounding it to float32). */
export function roundToF16(x: number): number {
  const a = new Float32Array([x]);
  return roundToF16InPlace(a)[0]!;
}

/**
 * Quantization parameters for many lanes at once (one lane = one row's group) from their ranges.
 * `mins[k]`, `maxs[k]` are the raw min and max of lane k's values; writes the stored (fp16-rounded)
 * scale into `scales[k]` and the zero into `zeros[k]`, for k < count.
 */
export function paramsFromRanges(
  mins: ArrayLike<number>, maxs: ArrayLike<number>, count: number, bits: number, sym: boolean,
  scales: Float32Array, zeros: Uint8Array,
): void {
  const maxq = maxQ(bits);
  const symZero = (maxq + 1) / 2;
  const xminL = new Float32Array(count);
  for (let k = 0; k < count; k++) {
    let xmin = Math.min(mins[k]!, 0);
    let xmax = Math.max(maxs[k]!, 0);
    if (!Number.isFinite(xmin) || !Number.isFinite(xmax)) {
      throw new ModelError(`cannot quantize a group holding a non-finite weight (NaN or Inf)`);
    }
    if (sym) {
      xmax = Math.max(Math.abs(xmin), xmax);
      if (xmin < 0) xmin = -xmax;
    }
    if (xmin === 0 && xmax === 0) {
      xmin = -1;
      xmax = 1;
    }
    xminL[k] = xmin;
    scales[k] = Math.fround(Math.fround(xmax - xmin) / maxq);
  }
  roundToF16InPlace(scales.subarray(0, count));
  for (let k = 0; k < count; k++) {
    let s = scales[k]!;
    if (s === 0) s = scales[k] = F16_MIN_SUBNORMAL;
    if (!Number.isFinite(s)) {
      throw new ModelError(`quantization scale overflows float16 (weights of magnitude above ~${(65504 * maxq / 2).toExponential(2)})`);
    }
    if (sym) {
      zeros[k] = symZero;
    } else {
      const z = roundHalfEven(Math.fround(-xminL[k]! / s));
      zeros[k] = z < 0 ? 0 : z > maxq ? maxq : z;
    }
  }
}

/** Scale (fp16-exact) and zero of one group, `w` being the group's values (e.g. a row slice). */
export function computeParams(w: ArrayLike<number>, bits: number, sym: boolean): { scale: number; zero: number } {
  let mn = Infinity;
  let mx = -Infinity;
  for (let i = 0; i < w.length; i++) {
    const v = w[i]!;
    if (v < mn) mn = v;
    if (v > mx) mx = v;
    if (v !== v) mn = mx = NaN; // NaN never compares; make it visible to paramsFromRanges
  }
  if (w.length === 0) mn = mx = 0;
  const scales = new Float32Array(1);
  const zeros = new Uint8Array(1);
  paramsFromRanges([mn], [mx], 1, bits, sym, scales, zeros);
  return { scale: scales[0]!, zero: zeros[0]! };
}

/** The code of one weight: clamp(round(w / scale) + zero, 0, maxq). */
export function quantizeValue(w: number, scale: number, zero: number, maxq: number): number {
  const q = roundHalfEven(Math.fround(w / scale)) + zero;
  return q < 0 ? 0 : q > maxq ? maxq : q;
}

/** scale · (code − zero), in float32. */
export function dequantizeValue(code: number, scale: number, zero: number): number {
  return Math.fround(scale * (code - zero));
}

/** The float32 weight [out, in] a quantized layer stands for; one implementation, shared with the formats. */
export { dequantize } from "../formats/dequant.js";
