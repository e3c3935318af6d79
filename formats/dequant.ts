// Format-neutral dequantization: w[o, i] = scale[o, g] · (q[o, i] − zero[o, g]), g = gIdx[i] or floor(i / gs);
// then each outlier weight (CSR by row) replaces the grid value at its (row, column).

import { numGroups, outlierProblem } from "./common.js";
import type { QuantizedLinear } from "./types.js";
import { ModelError } from "../src/util/errors.js";

/** The fields dequantization needs (the algorithms call it before a layer has a module name). */
export type DequantInput = Pick<QuantizedLinear, "outFeatures" | "inFeatures" | "groupSize" | "codes" | "scales" | "zeros" | "gIdx" | "outliers"> & {
  name?: string;
};

/** [out*in] fp32 row-major weight of a quantized layer: the one dequantizer used by algorithms, loaders and the pipeline. */
export function dequantize(layer: DequantInput): Float32Array {
  const { outFeatures: out, inFeatures: inF, groupSize } = layer;
  const g = numGroups(inF, groupSize);
  if (layer.codes.length !== out * inF || layer.scales.length !== out * g || layer.zeros.length !== out * g) {
    throw new ModelError(`quantized layer ${layer.name ?? ""}: codes/scales/zeros sizes do not match [${out}, ${inF}] with ${g} groups`);
  }
  const { codes, scales, zeros, gIdx } = layer; // locals: the loops below run out·in times
  const w = new Float32Array(out * inF);
  if (!gIdx) {
    // Contiguous groups: one scale and zero point per run of columns.
    const gs = groupSize === -1 ? inF : groupSize;
    for (let o = 0; o < out; o++) {
      const row = o * inF;
      for (let gi = 0; gi < g; gi++) {
        const s = scales[o * g + gi]!;
        const z = zeros[o * g + gi]!;
        const i1 = row + Math.min(inF, (gi + 1) * gs);
        for (let i = row + gi * gs; i < i1; i++) w[i] = s * (codes[i]! - z);
      }
    }
  } else {
    const group = new Int32Array(inF);
    for (let i = 0; i < inF; i++) {
      const v = gIdx[i]!;
      if (!(v >= 0 && v < g)) throw new ModelError(`quantized layer ${layer.name ?? ""}: gIdx[${i}] = ${v} is outside [0, ${g})`);
      group[i] = v;
    }
    for (let o = 0; o < out; o++) {
      const row = o * inF;
      const grow = o * g;
      for (let i = 0; i < inF; i++) {
        const k = grow + group[i]!;
        w[row + i] = scales[k]! * (codes[row + i]! - zeros[k]!);
      }
    }
  }
  const ol = layer.outliers;
  if (ol) {
    const why = outlierProblem(ol, out, inF);
    if (why) throw new ModelError(`quantized layer ${layer.name ?? ""}: ${why}`);
    for (let o = 0; o < out; o++) {
      const row = o * inF;
      for (let k = ol.indptr[o]!; k < ol.indptr[o + 1]!; k++) w[row + ol.indices[k]!] = ol.values[k]!;
    }
  }
  return w;
}
