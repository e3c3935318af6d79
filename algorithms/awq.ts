// AWQ (Lin et al., "Activation-aware Weight Quantization", and mit-han-lab/llm-awq auto_scale.py /
// auto_clip.py) as pure functions on typed arrays:
//  - per-channel activation statistics and the candidate scales s = mean|x|^α / sqrt(max·min);
//  - the scale search: the α on a grid whose scaled-quantized-unscaled weights give the lowest output MSE
//    (the caller scores a candidate on the real module, so this file knows nothing of models);
//  - exact folding of the chosen scales (input columns × s, the producer ÷ s);
//  - the clipping search: per output row and group, the shrink of the max |w| with the lowest output MSE.
// Every candidate is quantized with the same min-max quantizer and fp16 scales as RTN and GPTQ.

import type { Backend } from "../src/compute/backend.js";
import { UsageError } from "../src/util/errors.js";
import { numGroups, validateQuantOptions, type QuantOptions } from "./quantizer.js";
import { quantizeRtn } from "./rtn.js";

/** Grid size of both searches (llm-awq n_grid). */
export const AWQ_GRID = 20;
/** The clip search shrinks max |w| by at most this fraction (llm-awq max_shrink). */
export const AWQ_MAX_SHRINK = 0.5;

/** Mean |x| of each of the `inF` input channels over `rows` rows of x [rows, inF] (float64 sums). */
export function meanAbsPerChannel(x: Float32Array, rows: number, inF: number): Float32Array {
  const acc = new Float64Array(inF);
  for (let r = 0; r < rows; r++) {
    const o = r * inF;
    for (let c = 0; c < inF; c++) acc[c]! += Math.abs(x[o + c]!);
  }
  const m = new Float32Array(inF);
  for (let c = 0; c < inF; c++) m[c] = acc[c]! / Math.max(1, rows);
  return m;
}

/** Candidate scales for ratio α: s = max(mean|x|^α, 1e-4), normalised by sqrt(max(s)·min(s)) (llm-awq). */
export function awqScales(xMean: Float32Array, alpha: number): Float32Array {
  const s = new Float32Array(xMean.length);
  let mx = -Infinity;
  let mn = Infinity;
  for (let i = 0; i < s.length; i++) {
    const v = Math.max(Math.pow(xMean[i]!, alpha), 1e-4);
    s[i] = v;
    if (v > mx) mx = v;
    if (v < mn) mn = v;
  }
  const norm = Math.sqrt(mx * mn);
  for (let i = 0; i < s.length; i++) s[i] = s[i]! / norm;
  return s;
}

/**
 * The weight a candidate stands for: Q(W·diag(s))·diag(1/s), Q the min-max quantizer of `opts` (s null:
 * Q(W)). Runs the backend's native version when it has one (bit-identical), else the reference below.
 */
export function scaledFakeQuant(W: Float32Array, out: number, inF: number, s: Float32Array | null, opts: QuantOptions, backend?: Backend): Float32Array {
  if (!backend?.fakeQuant) return scaledFakeQuantTs(W, out, inF, s, opts);
  validateQuantOptions(opts, inF);
  const q = new Float32Array(W.length);
  // A failure (non-finite weight, fp16 overflow) reruns the reference for its exact error message.
  if (backend.fakeQuant(W, out, inF, opts, s, q) !== 0) scaledFakeQuantTs(W, out, inF, s, opts);
  return q;
}

/** The TypeScript reference of scaledFakeQuant (and of Backend.fakeQuant). */
export function scaledFakeQuantTs(W: Float32Array, out: number, inF: number, s: Float32Array | null, opts: QuantOptions): Float32Array {
  if (!s) return quantizeRtn(W, out, inF, opts).dequant;
  const Ws = new Float32Array(W.length);
  for (let r = 0; r < out; r++) for (let c = 0; c < inF; c++) Ws[r * inF + c] = W[r * inF + c]! * s[c]!;
  const q = quantizeRtn(Ws, out, inF, opts).dequant;
  for (let r = 0; r < out; r++) for (let c = 0; c < inF; c++) q[r * inF + c] = q[r * inF + c]! / s[c]!;
  return q;
}

/**
 * Σ (a − b)² in float64 with a fixed order (element i into partial sum i mod 8, the eight added
 * pairwise), so the backend's vectorised version (Backend.sumSquaredDiff) gives the same bits.
 */
export function sumSquaredDiff(a: Float32Array, b: Float32Array, backend?: Backend): number {
  if (a.length !== b.length) throw new UsageError(`sumSquaredDiff: lengths differ (${a.length} vs ${b.length})`);
  return backend?.sumSquaredDiff ? backend.sumSquaredDiff(a, b) : sumSquaredDiffTs(a, b);
}

export function sumSquaredDiffTs(a: Float32Array, b: Float32Array): number {
  const acc = new Float64Array(8);
  const n = a.length;
  let i = 0;
  for (; i + 8 <= n; i += 8)
    for (let k = 0; k < 8; k++) {
      const d = a[i + k]! - b[i + k]!;
      acc[k]! += d * d;
    }
  for (let k = 0; i < n; i++, k++) {
    const d = a[i]! - b[i]!;
    acc[k]! += d * d;
  }
  return (acc[0]! + acc[1]! + (acc[2]! + acc[3]!)) + (acc[4]! + acc[5]! + (acc[6]! + acc[7]!));
}

/**
 * acc[c] = Σ_r (a − b)²[r, c] for [rows, cols] arrays, in float64 with the rows in order; on the
 * backend when it has it (Backend.columnSumSquaredDiff: the same bits, columns as vector lanes).
 */
export function columnSumSquaredDiff(a: Float32Array, b: Float32Array, rows: number, cols: number, acc: Float64Array, backend?: Backend): void {
  if (a.length < rows * cols || b.length < rows * cols || acc.length < cols) throw new UsageError(`columnSumSquaredDiff: arrays shorter than ${rows}×${cols}`);
  if (backend?.columnSumSquaredDiff) backend.columnSumSquaredDiff(a, b, rows, cols, acc);
  else columnSumSquaredDiffTs(a, b, rows, cols, acc);
}

export function columnSumSquaredDiffTs(a: Float32Array, b: Float32Array, rows: number, cols: number, acc: Float64Array): void {
  acc.fill(0, 0, cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let c = 0; c < cols; c++) {
      const d = a[o + c]! - b[o + c]!;
      acc[c]! += d * d;
    }
  }
}

export interface ScaleSearch {
  /** The chosen ratio α (0 = no scaling). */
  alpha: number;
  scales: Float32Array;
  /** Output MSE of each α on the grid, in grid order. */
  losses: number[];
}

/**
 * Grid search over α ∈ {0, 1/n, …, (n−1)/n}: `score(s)` is the output MSE of the module with the
 * group's Linears replaced by scaledFakeQuant(W, s). Ties keep the smaller α (strict improvement only, as llm-awq).
 */
export function searchScale(xMean: Float32Array, score: (s: Float32Array) => number, nGrid = AWQ_GRID): ScaleSearch {
  let best: { alpha: number; scales: Float32Array; loss: number } = { alpha: -1, scales: new Float32Array(0), loss: Infinity };
  const losses: number[] = [];
  for (let g = 0; g < nGrid; g++) {
    const alpha = g / nGrid;
    const s = awqScales(xMean, alpha);
    const loss = score(s);
    losses.push(loss);
    if (loss < best.loss) best = { alpha, scales: s, loss };
  }
  if (best.alpha < 0) throw new UsageError(`AWQ scale search: no candidate had a finite output error (${losses.join(", ")})`);
  return { alpha: best.alpha, scales: best.scales, losses };
}

/** Fold scales into a consumer: W[:, c] ·= s[c] (in place). */
export function scaleInputColumns(W: Float32Array, out: number, inF: number, s: Float32Array): void {
  for (let r = 0; r < out; r++) for (let c = 0; c < inF; c++) W[r * inF + c] = W[r * inF + c]! * s[c]!;
}

/** Fold scales into a producer: W[r, :] /= s[r] and b[r] /= s[r] (in place); also for a norm's weight/bias (inF = 1). */
export function divideOutputRows(W: Float32Array, out: number, inF: number, s: Float32Array, bias?: Float32Array): void {
  for (let r = 0; r < out; r++) {
    const d = s[r]!;
    for (let c = 0; c < inF; c++) W[r * inF + c] = W[r * inF + c]! / d;
    if (bias) bias[r] = bias[r]! / d;
  }
}

export interface ClipResult {
  /** W with every (row, group) clamped to ±its chosen max (a new array). */
  clipped: Float32Array;
  /** Mean shrink fraction over all (row, group) lanes (0 = nothing clipped). */
  meanShrink: number;
}

/**
 * llm-awq auto_clip_layer: for each output row and group, try max_val = max|w|·(1 − i/n) for
 * i < maxShrink·n, clamp the group to ±max_val, quantize, and keep the max_val whose partial outputs
 * Σ_{c∈group} x_t,c·q_c over the sampled tokens are closest (MSE) to the original's. X is [tokens, inF].
 */
export function searchClip(
  backend: Backend,
  W: Float32Array,
  out: number,
  inF: number,
  X: Float32Array,
  tokens: number,
  opts: QuantOptions,
  nGrid = AWQ_GRID,
  maxShrink = AWQ_MAX_SHRINK,
): ClipResult {
  const gs = opts.groupSize === -1 ? inF : opts.groupSize;
  const nG = numGroups(inF, opts.groupSize);
  const lanes = out * nG;
  const orgMax = new Float32Array(lanes);
  for (let r = 0; r < out; r++)
    for (let g = 0; g < nG; g++) {
      let m = 0;
      for (let c = g * gs; c < Math.min(inF, (g + 1) * gs); c++) m = Math.max(m, Math.abs(W[r * inF + c]!));
      orgMax[r * nG + g] = m;
    }
  // Per group: the group's columns of X [tokens, width] and of a weight [out, width] → partial outputs [tokens, out].
  const Xg: Float32Array[] = [];
  const orgOut: Float32Array[] = [];
  const Wg = (src: Float32Array, g: number): Float32Array => {
    const c0 = g * gs;
    const w = Math.min(inF, c0 + gs) - c0;
    const a = new Float32Array(out * w);
    for (let r = 0; r < out; r++) a.set(src.subarray(r * inF + c0, r * inF + c0 + w), r * w);
    return a;
  };
  for (let g = 0; g < nG; g++) {
    const c0 = g * gs;
    const w = Math.min(inF, c0 + gs) - c0;
    const xg = new Float32Array(tokens * w);
    for (let t = 0; t < tokens; t++) xg.set(X.subarray(t * inF + c0, t * inF + c0 + w), t * w);
    Xg.push(xg);
    const o = new Float32Array(tokens * out);
    backend.gemm(false, true, tokens, out, w, 1, xg, Wg(W, g), 0, o);
    orgOut.push(o);
  }
  const bestErr = new Float64Array(lanes).fill(Infinity);
  const bestMax = Float32Array.from(orgMax);
  const cur = new Float32Array(W.length);
  const part = new Float32Array(tokens * out);
  const errs = new Float64Array(out);
  const steps = Math.floor(maxShrink * nGrid);
  for (let i = 0; i < steps; i++) {
    const f = 1 - i / nGrid;
    for (let r = 0; r < out; r++)
      for (let g = 0; g < nG; g++) {
        const mv = orgMax[r * nG + g]! * f;
        for (let c = g * gs; c < Math.min(inF, (g + 1) * gs); c++) {
          const v = W[r * inF + c]!;
          cur[r * inF + c] = v > mv ? mv : v < -mv ? -mv : v;
        }
      }
    const q = scaledFakeQuant(cur, out, inF, null, opts, backend);
    for (let g = 0; g < nG; g++) {
      const w = Math.min(inF, g * gs + gs) - g * gs;
      backend.gemm(false, true, tokens, out, w, 1, Xg[g]!, Wg(q, g), 0, part);
      const o = orgOut[g]!;
      // Σ_t per output row (columns of [tokens, out]), each in token order.
      columnSumSquaredDiff(part, o, tokens, out, errs, backend);
      for (let r = 0; r < out; r++) {
        const e = errs[r]! / Math.max(1, tokens);
        const k = r * nG + g;
        if (e < bestErr[k]!) {
          bestErr[k] = e;
          bestMax[k] = orgMax[k]! * f;
        }
      }
    }
  }
  const clipped = new Float32Array(W.length);
  let shrink = 0;
  for (let r = 0; r < out; r++)
    for (let g = 0; g < nG; g++) {
      const k = r * nG + g;
      const mv = bestMax[k]!;
      if (orgMax[k]! > 0) shrink += 1 - mv / orgMax[k]!;
      for (let c = g * gs; c < Math.min(inF, (g + 1) * gs); c++) {
        const v = W[r * inF + c]!;
        clipped[r * inF + c] = v > mv ? mv : v < -mv ? -mv : v;
      }
    }
  return { clipped, meanShrink: shrink / lanes };
}
