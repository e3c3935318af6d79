// Outlier retention (SpQR / SqueezeLLM idea, budgeted): a small fraction of a Linear's weights, the most
// salient ones, are kept exactly (fp16) beside the INT grid and left out of their group's min/max, so the
// grid tightens for the rest. Saliency: GPTQ's w²/[H⁻¹]ᵢᵢ² (evaluated in its column loop, see gptq.ts),
// or |w|·‖xᵢ‖ (RTN and AWQ), ‖xᵢ‖ = sqrt(Hᵢᵢ) from the calibration Hessian.

import type { QuantizedLinear } from "../formats/types.js";
import { roundToF16 } from "./quantizer.js";

/** How many weights a fraction of an [out, in] matrix allows (rounded, at least 1 when fraction > 0). */
export function outlierBudget(fraction: number, out: number, inF: number): number {
  if (!(fraction > 0)) return 0;
  return Math.min(out * inF, Math.max(1, Math.round(fraction * out * inF)));
}

/** The k-th largest value of `scores` (k ≥ 1), by a copy and sort (k is small compared with the matrix only in count, not in cost). */
export function kthLargest(scores: Float32Array | Float64Array, k: number): number {
  const s = Float64Array.from(scores).sort();
  return s[Math.max(0, s.length - k)]!;
}

/** Mask [out*in] of the `k` highest-scoring entries (ties broken by index, so exactly k are set). */
export function topKMask(scores: Float32Array | Float64Array, k: number): Uint8Array {
  const mask = new Uint8Array(scores.length);
  if (k <= 0) return mask;
  const t = kthLargest(scores, k);
  let left = k;
  for (let i = 0; i < scores.length && left > 0; i++) if (scores[i]! > t) (mask[i] = 1), left--;
  for (let i = 0; i < scores.length && left > 0; i++) if (scores[i]! === t && !mask[i]) (mask[i] = 1), left--;
  return mask;
}

/** |w|·‖xᵢ‖ saliency of W [out, in], with ‖xᵢ‖² ∝ Hᵢᵢ. */
export function activationSaliency(W: Float32Array, out: number, inF: number, H: Float32Array): Float64Array {
  const xn = new Float64Array(inF);
  for (let i = 0; i < inF; i++) xn[i] = Math.sqrt(Math.max(0, H[i * inF + i]!));
  const s = new Float64Array(out * inF);
  for (let r = 0; r < out; r++) for (let i = 0; i < inF; i++) s[r * inF + i] = Math.abs(W[r * inF + i]!) * xn[i]!;
  return s;
}

/** CSR (by output row) of the masked entries of W [out, in], values rounded to fp16 (what the file keeps). */
export function outliersCsr(W: Float32Array, mask: Uint8Array, out: number, inF: number): NonNullable<QuantizedLinear["outliers"]> {
  const indptr = new Int32Array(out + 1);
  const idx: number[] = [];
  const val: number[] = [];
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < inF; i++)
      if (mask[r * inF + i]) {
        idx.push(i);
        val.push(roundToF16(W[r * inF + i]!));
      }
    indptr[r + 1] = idx.length;
  }
  return { indptr, indices: Int32Array.from(idx), values: Float32Array.from(val) };
}
