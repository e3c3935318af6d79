// Round-to-nearest: every group of every row quantized independently with the min-max quantizer.
// This is the reference's "RTN" baseline (quant.py's Quantizer on the weight, no calibration data).

import { UsageError } from "../src/util/errors.js";
import { outliersCsr } from "./outliers.js";
import {
  type QuantizedLayer, type QuantOptions, dequantize, maxQ, numGroups, paramsFromRanges, roundHalfEven,
  validateQuantOptions,
} from "./quantizer.js";

export interface RtnResult {
  layer: QuantizedLayer;
  /** [out, in] float32: the weight the layer now stands for (= dequantize(layer)). */
  dequant: Float32Array;
}

/**
 * RTN-quantizes W [out, in] (row-major, not modified). `outliers` (a mask [out*in]) marks weights kept
 * exactly in fp16: they are left out of their group's min/max and stored in the layer's CSR outliers.
 */
export function quantizeRtn(W: Float32Array, out: number, inF: number, opts: QuantOptions, outliers?: Uint8Array): RtnResult {
  validateQuantOptions(opts, inF);
  if (!Number.isInteger(out) || out < 1) throw new UsageError(`output features must be a positive integer, got ${out}`);
  if (W.length !== out * inF) throw new UsageError(`weight holds ${W.length} values, expected ${out}×${inF}`);
  const { bits, sym } = opts;
  const gs = opts.groupSize === -1 ? inF : opts.groupSize;
  const nG = numGroups(inF, opts.groupSize);
  const maxq = maxQ(bits);

  const codes = new Uint8Array(out * inF);
  const scales = new Float32Array(out * nG);
  const zeros = new Uint8Array(out * nG);
  const mins = new Float32Array(nG);
  const maxs = new Float32Array(nG);

  for (let r = 0; r < out; r++) {
    const ro = r * inF;
    for (let g = 0; g < nG; g++) {
      const c1 = Math.min(inF, (g + 1) * gs);
      let mn = Infinity;
      let mx = -Infinity;
      for (let c = g * gs; c < c1; c++) {
        if (outliers && outliers[ro + c]) continue;
        const v = W[ro + c]!;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
        if (v !== v) mn = mx = NaN;
      }
      // A group made only of outliers quantizes nothing that is used: give it a zero range.
      mins[g] = mn === Infinity ? 0 : mn;
      maxs[g] = mx === -Infinity ? 0 : mx;
    }
    const sr = scales.subarray(r * nG, (r + 1) * nG);
    const zr = zeros.subarray(r * nG, (r + 1) * nG);
    paramsFromRanges(mins, maxs, nG, bits, sym, sr, zr);
    for (let g = 0; g < nG; g++) {
      const s = sr[g]!;
      const z = zr[g]!;
      const c1 = Math.min(inF, (g + 1) * gs);
      for (let c = g * gs; c < c1; c++) {
        const q = roundHalfEven(Math.fround(W[ro + c]! / s)) + z;
        codes[ro + c] = q < 0 ? 0 : q > maxq ? maxq : q;
      }
    }
  }

  const layer: QuantizedLayer = {
    outFeatures: out, inFeatures: inF, bits, groupSize: opts.groupSize, sym, codes, scales, zeros,
    ...(outliers ? { outliers: outliersCsr(W, outliers, out, inF) } : {}),
  };
  return { layer, dequant: dequantize(layer) };
}
