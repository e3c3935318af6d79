// GPTQ (Frantar et al., 2022), after the reference IST-DASLab/gptq `gptq.py`: the same two verbs,
// `add_batch` (GptqHessian.addBatch) and `fasterquant` (gptqQuantize), on row-major typed arrays.
// Act-order / static-groups / g_idx follow GPTQModel `gptqmodel/quantization/gptq.py`.
//
// Layout: W is [out, in] (PyTorch); the algorithm walks the INPUT columns. Internally the weight is
// held transposed and permuted, Wt[p, r] = W[r, perm[p]], so the column being quantized and every
// row-update touch contiguous memory.
//
// One documented divergence from the reference: group parameters are computed from the fully
// error-updated weights of the group's columns (what the non-lazy algorithm of the paper sees).
// The reference reads them from its outer `W`, which lags the in-block updates, so for a group size
// below the block size (e.g. 32 with blocksize 128) its grid depends on the block size. Here the
// result does not depend on blockSize at all: in-block updates are applied in place, and a block is
// cut short where a group starting inside it would reach past its end. For group size 128 with
// blocksize 128 (the common setting) and for per-row quantization both are identical.

import type { Backend, GptqColumnsJob } from "../src/compute/backend.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { kthLargest, outlierBudget, outliersCsr, topKMask } from "./outliers.js";
import {
  type QuantizedLayer, type QuantOptions, dequantize, maxQ, numGroups, paramsFromRanges, roundToF16, validateQuantOptions,
} from "./quantizer.js";

// ---------------------------------------------------------------------------------------------
// add_batch

/**
 * Running Hessian H = 2/n · Σ XᵀX over the calibration inputs of one Linear, exactly like the
 * reference: for each batch, H *= n/(n+m); n += m; H += (2/n)·XᵀX (one syrk with beta and alpha).
 */
export class GptqHessian {
  readonly inF: number;
  private readonly backend: Backend;
  private readonly h: Float32Array;
  private n = 0;
  /** The batches since the last read updated only the upper triangle (one mirror per read, not per batch). */
  private lowerStale = false;

  constructor(backend: Backend, inF: number) {
    if (!Number.isInteger(inF) || inF < 1) throw new UsageError(`GptqHessian: input features must be a positive integer, got ${inF}`);
    this.backend = backend;
    this.inF = inF;
    this.h = new Float32Array(inF * inF);
  }

  /** [in, in] row-major, both triangles. gptqQuantize may modify it (dead diagonal entries set to 1). */
  get H(): Float32Array {
    if (this.lowerStale) this.backend.symmetrize(this.h, this.inF);
    this.lowerStale = false;
    return this.h;
  }

  /** Samples accumulated so far (the running-mean denominator). */
  get nsamples(): number {
    return this.n;
  }

  /**
   * Adds a batch of inputs X [rows, in] (row-major). `count` is what the batch adds to nsamples:
   * by default its rows (tokens, as GPTQModel counts); the original repository counts sequences.
   * The scale of H does not change the quantized result, only the reported loss.
   */
  addBatch(X: Float32Array, rows: number, count: number = rows): void {
    const inF = this.inF;
    if (!Number.isInteger(rows) || rows < 0) throw new UsageError(`GptqHessian.addBatch: rows must be a non-negative integer, got ${rows}`);
    if (X.length < rows * inF) throw new UsageError(`GptqHessian.addBatch: X holds ${X.length} values, need ${rows}×${inF}`);
    if (!(count > 0) || rows === 0) return; // an empty batch (e.g. an MoE expert no token reached)
    const beta = this.n / (this.n + count);
    this.n += count;
    this.backend.syrk(inF, rows, 2 / this.n, X.length === rows * inF ? X : X.subarray(0, rows * inF), beta, this.h, true);
    this.lowerStale = true;
  }

  /** fasterquant: gptqQuantize with this Hessian (which it may modify). */
  quantize(W: Float32Array, out: number, opts: GptqOptions): GptqResult {
    return gptqQuantize(this.backend, W, this.H, out, this.inF, opts);
  }
}

// ---------------------------------------------------------------------------------------------
// fasterquant

export interface GptqOptions extends QuantOptions {
  /** percdamp: fraction of mean(diag H) added to the diagonal. Default 0.01. */
  damp?: number;
  /** Lazy-batch block size (columns). Default 128. Does not change the result, only speed. */
  blockSize?: number;
  /** desc_act: process columns by decreasing diag(H). Default false. */
  actOrder?: boolean;
  /** Group parameters computed up front from the original weights in natural order. Default false. */
  staticGroups?: boolean;
  /** Layer name, used to prefix error and warning messages. */
  name?: string;
  /** Receives warnings (damping retries). Nothing is printed otherwise. */
  onWarning?: (message: string) => void;
  /**
   * Keep this fraction of the weights exactly (fp16) as outliers, chosen by GPTQ's saliency
   * w²/[H⁻¹]ᵢᵢ² (SpQR): with dynamic groups each group's are picked when the column loop reaches it
   * (from the error-updated weights, against a threshold set by the budget on the initial weights);
   * per row and with static groups they are picked up front. Outliers are left out of their group's
   * min/max and contribute only their fp16 rounding to the error feedback. Default 0.
   */
  outlierFraction?: number;
  /**
   * The damped inverse Cholesky factor of H (gptqFactor), shared by the Linears of one Hessian (q/k/v,
   * gate/up): it depends only on H, damp and actOrder, which must match. Given, H is not read or modified.
   */
  factor?: GptqFactor;
}

/**
 * What gptqQuantize needs of H, computed once per Hessian: dead columns, the act-order permutation and
 * the upper Cholesky factor U of the damped inverse, (H[perm][:, perm] + damp·I)⁻¹ = UᵀU, with dead
 * diagonal entries taken as 1 (as the reference sets them).
 */
export interface GptqFactor {
  readonly n: number;
  /** The percdamp asked for and the act-order setting (checked against the quantize options). */
  readonly percdamp: number;
  readonly actOrder: boolean;
  /** dead[i] = 1 where H_ii = 0 (an input never activated). */
  readonly dead: Uint8Array;
  readonly perm: Int32Array | null;
  /** [n, n] row-major, processing order; read only. */
  readonly U: Float32Array;
  /** The percdamp finally used and how many increases it took. */
  readonly damp: number;
  readonly retries: number;
  /** The percdamp values that failed on the way (a warning each when the factor is used). */
  readonly failedDamps: readonly number[];
}

export interface GptqResult {
  /** [out, in] natural column order. */
  codes: Uint8Array;
  /** [out, nGroups]; with act-order (no static groups) group g is the g-th group in processing order. */
  scales: Float32Array;
  zeros: Uint8Array;
  /** [in] group of each input column; present iff actOrder (natural floor(i/gs) with static groups). */
  gIdx?: Int32Array;
  /** [out, in] float32: the weight the layer now stands for (= dequantize(layer), made on first read). */
  dequant: Float32Array;
  /** Σ (w − q)² / Hinv_ii² / 2 over all weights: the sum of the reference's `Losses`. */
  loss: number;
  /** The percdamp finally used (opts.damp, or ×10 per retry). */
  damp: number;
  /** How many times damping had to be increased (0 normally). */
  dampRetries: number;
  /** The same arrays as a format-neutral layer (add `name` and `bias` to get a QuantizedLinear). */
  layer: QuantizedLayer;
}

const MAX_DAMP_RETRIES = 3;
/** Columns per inner sub-block (an implementation detail: it changes speed, not results). */
const SUB = 16;

/**
 * GPTQ-quantizes W [out, in] (row-major, not modified) given its Hessian H [in, in] (may be modified:
 * dead diagonal entries are set to 1, as the reference does).
 */
export function gptqQuantize(
  backend: Backend, W: Float32Array, H: Float32Array, out: number, inF: number, opts: GptqOptions,
): GptqResult {
  validateQuantOptions(opts, inF);
  const label = opts.name ? `${opts.name}: ` : "";
  if (!Number.isInteger(out) || out < 1) throw new UsageError(`${label}output features must be a positive integer, got ${out}`);
  if (W.length !== out * inF) throw new UsageError(`${label}weight holds ${W.length} values, expected ${out}×${inF}`);
  if (H.length !== inF * inF) throw new UsageError(`${label}Hessian holds ${H.length} values, expected ${inF}×${inF}`);
  const percdamp = opts.damp ?? 0.01;
  if (!(percdamp >= 0) || !Number.isFinite(percdamp)) throw new UsageError(`${label}damp must be a non-negative number, got ${String(opts.damp)}`);
  const blockSize = opts.blockSize ?? 128;
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new UsageError(`${label}blockSize must be a positive integer, got ${String(opts.blockSize)}`);
  const actOrder = opts.actOrder === true;
  const given = opts.factor;
  if (given && (given.n !== inF || given.percdamp !== percdamp || given.actOrder !== actOrder)) {
    throw new UsageError(
      `${label}the shared Hessian factor was made for ${given.n} inputs, damp ${given.percdamp}, actOrder ${given.actOrder}; ` +
      `this Linear has ${inF}, ${percdamp}, ${actOrder}`,
    );
  }
  for (let i = 0; i < W.length; i++) {
    const v = W[i]!;
    if (v - v !== 0) throw new ModelError(`${label}weight holds a non-finite value (NaN or Inf) at row ${Math.floor(i / inF)}, column ${i % inF}`);
  }

  const n = inF;
  const { bits, sym } = opts;
  const grouped = opts.groupSize !== -1;
  const gs = grouped ? opts.groupSize : n;
  const nG = numGroups(n, opts.groupSize);
  const staticG = grouped && opts.staticGroups === true;

  // Group parameters, transposed: sT[g*out + r], zT[g*out + r].
  const sT = new Float32Array(nG * out);
  const zT = new Uint8Array(nG * out);

  // Per-row: find_params on the whole weight, BEFORE dead columns are zeroed (as the reference).
  if (!grouped) rangesToParams(W, out, n, n, 1, null, bits, sym, sT, zT);

  // Dead inputs (never activated): H_ii = 1 (done here to H itself without a shared factor), W[:, i] = 0.
  // Act-order: decreasing diag(H), ties by index. Then the damped inverse Cholesky factor.
  let factor: GptqFactor;
  if (given) {
    factor = given;
  } else {
    factor = gptqFactor(backend, H, n, { damp: percdamp, actOrder, name: opts.name });
    for (let i = 0; i < n; i++) if (factor.dead[i]) H[i * n + i] = 1;
  }
  for (const pd of factor.failedDamps) opts.onWarning?.(`${label}Hessian not positive definite with damp ${pd}; retrying with damp ${nextDamp(pd)}`);
  const { dead, perm, U, damp, retries } = factor;

  if (staticG) rangesToParams(W, out, n, gs, nG, dead, bits, sym, sT, zT);

  // Wt[p, r] = W[r, perm[p]], dead columns zeroed.
  const Wt = new Float32Array(n * out);
  transposeGather(W, out, n, perm, Wt);
  for (let p = 0; p < n; p++) if (dead[perm ? perm[p]! : p]) Wt.fill(0, p * out, (p + 1) * out);

  // ---- outliers: ot[p*out + r] marks a kept weight (processing order), vt holds its fp16 value
  const budget = outlierBudget(opts.outlierFraction ?? 0, out, n);
  const ot = budget > 0 ? new Uint8Array(n * out) : null;
  const vt = budget > 0 ? new Float32Array(n * out) : null;
  let left = budget;
  let tau = Infinity;
  if (ot) {
    const sal = new Float64Array(n * out);
    for (let p = 0; p < n; p++) for (let r = 0; r < out; r++) sal[p * out + r] = saliency(Wt, U, n, out, p, r);
    if (!grouped || staticG) {
      // Parameters are fixed before the loop: pick the outliers now and recompute them without.
      ot.set(topKMask(sal, budget));
      left = 0;
      const natural = new Uint8Array(out * n);
      for (let p = 0; p < n; p++) for (let r = 0; r < out; r++) if (ot[p * out + r]) natural[r * n + (perm ? perm[p]! : p)] = 1;
      rangesToParams(W, out, n, gs, nG, staticG ? dead : null, bits, sym, sT, zT, natural);
    } else {
      tau = kthLargest(sal, budget);
    }
  }

  // ---- the column loop, in lazy-batch blocks
  const qt = new Uint8Array(n * out); // codes, processing order, transposed
  const maxBlock = Math.min(blockSize, n);
  const Err = new Float32Array(maxBlock * out);
  const Ablk = new Float32Array(maxBlock * Math.max(n - 1, 1));
  const Asub = new Float32Array(SUB * maxBlock);
  const job: GptqColumnsJob = {
    Wt, U, qt, err: Err, sT, zT, ot, vt, perm, n, out, bits, sym, groupSize: opts.groupSize, staticGroups: staticG, tau,
    state: new Float64Array([0, left]),
  };
  // The per-column work of a sub-block: the backend's native loop, or the TypeScript reference.
  const columns = backend.gptqColumns
    ? (i1: number, s1: number, s2: number): void => columnsError(backend.gptqColumns!(job, i1, s1, s2), bits)
    : (i1: number, s1: number, s2: number): void => gptqColumnsTs(job, i1, s1, s2);

  for (let i1 = 0; i1 < n;) {
    let i2 = Math.min(i1 + blockSize, n);
    if (grouped && !staticG) {
      // A group starting inside this block must not reach past its end (its columns must be current).
      const g = Math.floor((i2 - 1) / gs) * gs;
      if (g > i1 && Math.min(g + gs, n) > i2) i2 = g;
    }
    const count = i2 - i1;

    // The block is walked in sub-blocks of SUB columns: rank-1 updates inside a sub-block, one gemm
    // for the rest of the block after it (the lazy-batch idea once more, to keep the scalar loop short).
    for (let s1 = i1; s1 < i2;) {
      let s2 = Math.min(s1 + SUB, i2);
      if (grouped && !staticG) s2 = Math.min(s2, (Math.floor(s1 / gs) + 1) * gs); // a group starts a sub-block
      columns(i1, s1, s2);

      if (s2 < i2) {
        const m = i2 - s2;
        const k2 = s2 - s1;
        for (let k = 0; k < k2; k++) {
          const src = (s1 + k) * n;
          Asub.set(U.subarray(src + s2, src + i2), k * m);
        }
        backend.gemm(true, false, m, out, k2, -1, Asub.subarray(0, k2 * m), Err.subarray((s1 - i1) * out, (s2 - i1) * out), 1, Wt.subarray(s2 * out, i2 * out));
      }
      s1 = s2;
    }

    // Lazy batch: W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]   (here Wt[i2:, :] -= Hinv[i1:i2, i2:]ᵀ · Err1)
    if (i2 < n) {
      const m = n - i2;
      for (let k = 0; k < count; k++) {
        const src = (i1 + k) * n;
        Ablk.set(U.subarray(src + i2, src + n), k * m);
      }
      backend.gemm(true, false, m, out, count, -1, Ablk.subarray(0, count * m), Err.subarray(0, count * out), 1, Wt.subarray(i2 * out));
    }
    i1 = i2;
  }
  const loss = job.state[0]!;
  if (!Number.isFinite(loss)) throw new ModelError(`${label}GPTQ produced a non-finite loss (degenerate Hessian?)`);

  // ---- back to natural order
  const codes = new Uint8Array(out * n);
  transposeScatter(qt, out, n, perm, codes);
  const scales = new Float32Array(out * nG);
  const zeros = new Uint8Array(out * nG);
  for (let g = 0; g < nG; g++) {
    for (let r = 0; r < out; r++) {
      scales[r * nG + g] = sT[g * out + r]!;
      zeros[r * nG + g] = zT[g * out + r]!;
    }
  }
  let gIdx: Int32Array | undefined;
  if (actOrder) {
    gIdx = new Int32Array(n);
    if (grouped && !staticG) {
      for (let p = 0; p < n; p++) gIdx[perm![p]!] = Math.floor(p / gs);
    } else {
      for (let i = 0; i < n; i++) gIdx[i] = Math.floor(i / gs);
    }
  }

  let outliers: QuantizedLayer["outliers"];
  if (ot) {
    // Natural order: the kept values (as the loop saw them), then CSR by row.
    const mask = new Uint8Array(out * n);
    const vals = new Float32Array(out * n);
    for (let p = 0; p < n; p++)
      for (let r = 0; r < out; r++)
        if (ot[p * out + r]) {
          const c = perm ? perm[p]! : p;
          mask[r * n + c] = 1;
          vals[r * n + c] = vt![p * out + r]!;
        }
    outliers = outliersCsr(vals, mask, out, n);
  }
  const layer: QuantizedLayer = {
    outFeatures: out, inFeatures: n, bits, groupSize: opts.groupSize, sym, codes, scales, zeros,
    ...(gIdx ? { gIdx } : {}),
    ...(outliers ? { outliers } : {}),
  };
  // dequant is made on first use (the pipeline reads only `layer`).
  let dq: Float32Array | undefined;
  return {
    codes, scales, zeros, ...(gIdx ? { gIdx } : {}),
    get dequant(): Float32Array {
      return (dq ??= dequantize(layer));
    },
    loss, damp, dampRetries: retries, layer,
  };
}

// ---------------------------------------------------------------------------------------------
// helpers

/** GPTQ's saliency of weight (p, r) in processing order: w² / [H⁻¹]ₚₚ² (= U_pp⁴, compared consistently). */
function saliency(Wt: Float32Array, U: Float32Array, n: number, out: number, p: number, r: number): number {
  const w = Wt[p * out + r]!;
  const d = U[p * n + p]!;
  return (w * w) / (d * d);
}

/** A backend's gptqColumns result as the reference's error (paramsFromRanges' messages). */
function columnsError(rc: number, bits: number): void {
  if (rc === 0) return;
  if (rc === 1) throw new ModelError(`cannot quantize a group holding a non-finite weight (NaN or Inf)`);
  throw new ModelError(`quantization scale overflows float16 (weights of magnitude above ~${(65504 * maxQ(bits) / 2).toExponential(2)})`);
}

/**
 * The per-column work of columns [s1, s2) of the lazy block starting at i1: find_params at a dynamic
 * group's first column (outlier picking included), quantize each column, its scaled error into
 * job.err, and the rank-1 updates of the rest of [s1, s2). The reference for Backend.gptqColumns
 * (native/src/gptqloop.cc), which must match it bit for bit; used when a backend has none.
 */
export function gptqColumnsTs(job: GptqColumnsJob, i1: number, s1: number, s2: number): void {
  const { Wt, U, qt, err: Err, sT, zT, ot, vt, perm, n, out, bits, sym, staticGroups: staticG, tau, state } = job;
  const maxq = maxQ(bits);
  const grouped = job.groupSize !== -1;
  const gs = grouped ? job.groupSize : n;
  let loss = state[0]!;
  let left = state[1]!;
  try {
    for (let p = s1; p < s2; p++) {
      let base = 0;
      if (grouped) {
        if (staticG) {
          base = Math.floor((perm ? perm[p]! : p) / gs) * out;
        } else {
          const g = Math.floor(p / gs);
          base = g * out;
          if (p % gs === 0) {
            // find_params on the (current) weights of this group's columns.
            const mins = new Float32Array(out).fill(Infinity);
            const maxs = new Float32Array(out).fill(-Infinity);
            const p1 = Math.min(p + gs, n);
            if (ot && left > 0)
              for (let c = p; c < p1 && left > 0; c++)
                for (let r = 0; r < out && left > 0; r++) if (saliency(Wt, U, n, out, c, r) >= tau) (ot[c * out + r] = 1), left--;
            for (let c = p; c < p1; c++) {
              const off = c * out;
              for (let r = 0; r < out; r++) {
                if (ot && ot[off + r]) continue;
                const v = Wt[off + r]!;
                if (v < mins[r]!) mins[r] = v;
                if (v > maxs[r]!) maxs[r] = v;
              }
            }
            for (let r = 0; r < out; r++) if (mins[r] === Infinity) mins[r] = maxs[r] = 0; // a row of outliers only
            paramsFromRanges(mins, maxs, out, bits, sym, sT.subarray(base, base + out), zT.subarray(base, base + out));
          }
        }
      }

      const d = U[p * n + p]!;
      const rowOff = p * out;
      const eOff = (p - i1) * out;
      let lsum = 0;
      for (let r = 0; r < out; r++) {
        const w = Wt[rowOff + r]!;
        const s = sT[base + r]!;
        const z = zT[base + r]!;
        // q = clamp(round_half_even(w / s) + z, 0, maxq). For |t| ≤ 2^22, adding and removing
        // 1.5·2^23 in float32 rounds t to an integer, half to even (exactly roundHalfEven).
        let t = Math.fround(w / s);
        t = t > 4194304 ? 4194304 : t < -4194304 ? -4194304 : t;
        let q = Math.fround(t + 12582912) - 12582912 + z;
        q = q < 0 ? 0 : q > maxq ? maxq : q;
        qt[rowOff + r] = q;
        let kept = Math.fround(s * (q - z));
        if (ot && ot[rowOff + r]) kept = vt![rowOff + r] = roundToF16(w);
        const diff = w - kept;
        lsum += diff * diff;
        Err[eOff + r] = diff / d;
      }
      loss += lsum / (d * d) / 2;

      // W1[:, j] -= err · Hinv[p, j] for the rest of the sub-block (rank-1 update, row by row).
      const uRow = p * n;
      for (let j = p + 1; j < s2; j++) {
        const h = U[uRow + j]!;
        if (h === 0) continue;
        const jo = j * out;
        for (let r = 0; r < out; r++) Wt[jo + r] -= Err[eOff + r]! * h;
      }
    }
  } finally {
    state[0] = loss;
    state[1] = left;
  }
}

/**
 * Min-max parameters of every (row, natural group) of W, written transposed into sT/zT[g*out + r].
 * Columns flagged in `dead` count as 0.
 */
function rangesToParams(
  W: Float32Array, out: number, n: number, gs: number, nG: number, dead: Uint8Array | null,
  bits: number, sym: boolean, sT: Float32Array, zT: Uint8Array, skip?: Uint8Array,
): void {
  const mins = new Float32Array(nG * out);
  const maxs = new Float32Array(nG * out);
  for (let r = 0; r < out; r++) {
    const ro = r * n;
    for (let g = 0; g < nG; g++) {
      let mn = Infinity;
      let mx = -Infinity;
      const c1 = Math.min(n, (g + 1) * gs);
      for (let c = g * gs; c < c1; c++) {
        if (skip && skip[ro + c]) continue; // an outlier, kept exactly
        const v = dead && dead[c] ? 0 : W[ro + c]!;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      mins[g * out + r] = mn === Infinity ? 0 : mn;
      maxs[g * out + r] = mx === -Infinity ? 0 : mx;
    }
  }
  paramsFromRanges(mins, maxs, nG * out, bits, sym, sT, zT);
}

/** 64: 1.5× faster than 32 for the fp32 gather at 7B shapes (32 and 128 measured); same copies. */
const TILE = 64;

/** Wt[p*out + r] = W[r*n + perm[p]] (perm null = identity), tiled for cache locality. */
function transposeGather(W: Float32Array, out: number, n: number, perm: Int32Array | null, Wt: Float32Array): void {
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let p0 = 0; p0 < n; p0 += TILE) {
      const p1 = Math.min(n, p0 + TILE);
      for (let p = p0; p < p1; p++) {
        const c = perm ? perm[p]! : p;
        const po = p * out;
        for (let r = r0; r < r1; r++) Wt[po + r] = W[r * n + c]!;
      }
    }
  }
}

/** codes[r*n + perm[p]] = qt[p*out + r], tiled. */
function transposeScatter(qt: Uint8Array, out: number, n: number, perm: Int32Array | null, codes: Uint8Array): void {
  for (let r0 = 0; r0 < out; r0 += TILE) {
    const r1 = Math.min(out, r0 + TILE);
    for (let p0 = 0; p0 < n; p0 += TILE) {
      const p1 = Math.min(n, p0 + TILE);
      for (let p = p0; p < p1; p++) {
        const c = perm ? perm[p]! : p;
        const po = p * out;
        for (let r = r0; r < r1; r++) codes[r * n + c] = qt[po + r]!;
      }
    }
  }
}

/**
 * The damped inverse Cholesky factor of H for gptqQuantize (GptqOptions.factor), computed once and shared
 * by the Linears of one Hessian. H is not modified (dead diagonal entries are read as 1). Throws
 * ModelError for a non-finite diagonal, an all-zero H, or an H not positive definite after the retries.
 */
export function gptqFactor(
  backend: Backend, H: Float32Array, n: number, opts: { damp?: number; actOrder?: boolean; name?: string | undefined },
): GptqFactor {
  const label = opts.name ? `${opts.name}: ` : "";
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${label}input features must be a positive integer, got ${n}`);
  if (H.length !== n * n) throw new UsageError(`${label}Hessian holds ${H.length} values, expected ${n}×${n}`);
  const percdamp = opts.damp ?? 0.01;
  if (!(percdamp >= 0) || !Number.isFinite(percdamp)) throw new UsageError(`${label}damp must be a non-negative number, got ${String(opts.damp)}`);
  const actOrder = opts.actOrder === true;

  // Dead inputs (never activated): H_ii taken as 1.
  const dead = new Uint8Array(n);
  const diag = new Float32Array(n);
  let nDead = 0;
  for (let i = 0; i < n; i++) {
    const d = H[i * n + i]!;
    if (!Number.isFinite(d)) throw new ModelError(`${label}Hessian has a non-finite diagonal entry at column ${i}`);
    if (d === 0) {
      dead[i] = 1;
      nDead++;
    }
    diag[i] = d === 0 ? 1 : d;
  }
  if (nDead === n) {
    throw new ModelError(`${label}Hessian is all zero: no calibration activations reached this layer (GPTQ would zero the whole weight)`);
  }

  // Act-order: decreasing diag(H), ties by index (a stable sort).
  let perm: Int32Array | null = null;
  if (actOrder) {
    const idx = Array.from({ length: n }, (_, i) => i);
    idx.sort((a, b) => diag[b]! - diag[a]! || a - b);
    perm = Int32Array.from(idx);
  }
  const { U, damp, retries, failedDamps } = dampedInverseCholesky(backend, H, diag, n, perm, percdamp, label);
  return { n, percdamp, actOrder, dead, perm, U, damp, retries, failedDamps };
}

function nextDamp(pd: number): number {
  return pd === 0 ? 0.01 : pd * 10;
}

/**
 * Hinv = upper Cholesky factor of (H[perm][:, perm] + damp·I)⁻¹, damp = percdamp·mean(diag H), with diag H
 * read from `diag` (dead entries 1). The reference computes it as cholesky, cholesky_inverse, cholesky
 * upper; Backend.inverseCholesky gets the same factor (up to fp32 rounding) with half the flops.
 * Not positive definite → percdamp ×10, up to MAX_DAMP_RETRIES times, then a ModelError.
 */
function dampedInverseCholesky(
  backend: Backend, H: Float32Array, diag: Float32Array, n: number, perm: Int32Array | null, percdamp: number, label: string,
): { U: Float32Array; damp: number; retries: number; failedDamps: number[] } {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += diag[i]!;
  mean /= n;
  const U = new Float32Array(n * n);
  const failedDamps: number[] = [];
  let pd = percdamp;
  for (let attempt = 0; ; attempt++) {
    if (perm) {
      for (let i = 0; i < n; i++) {
        const src = perm[i]! * n;
        const dst = i * n;
        for (let j = 0; j < n; j++) U[dst + j] = H[src + perm[j]!]!;
      }
    } else {
      U.set(H);
    }
    const add = Math.fround(pd * mean);
    for (let i = 0; i < n; i++) U[i * n + i] = diag[perm ? perm[i]! : i]! + add;
    if (backend.inverseCholesky(U, n) && positiveDiagonal(U, n)) {
      return { U, damp: pd, retries: attempt, failedDamps };
    }
    if (attempt >= MAX_DAMP_RETRIES) {
      throw new ModelError(
        `${label}Hessian is not positive definite even with damp ${pd} (${attempt} increases from ${percdamp}); ` +
        `use more or more varied calibration samples, or a larger --damp`,
      );
    }
    failedDamps.push(pd);
    pd = nextDamp(pd);
  }
}

function positiveDiagonal(U: Float32Array, n: number): boolean {
  for (let i = 0; i < n; i++) {
    const d = U[i * n + i]!;
    if (!(d > 0) || !Number.isFinite(d)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// evaluation

/**
 * Relative output error of a quantized weight on inputs X [rows, in]: ‖X·Wᵀ − X·Qᵀ‖² / ‖X·Wᵀ‖²
 * (W, Q [out, in]). Computed as ‖X·(W − Q)ᵀ‖² to avoid cancellation; 0 when X·Wᵀ is 0 and Q = W.
 */
export function reconstructionError(
  backend: Backend, W: Float32Array, Q: Float32Array, X: Float32Array, rows: number, out: number, inF: number,
): number {
  if (W.length !== out * inF || Q.length !== out * inF) throw new UsageError(`reconstructionError: W/Q must hold ${out}×${inF} values`);
  if (X.length < rows * inF) throw new UsageError(`reconstructionError: X holds ${X.length} values, need ${rows}×${inF}`);
  const Xs = X.length === rows * inF ? X : X.subarray(0, rows * inF);
  const D = new Float32Array(out * inF);
  for (let i = 0; i < D.length; i++) D[i] = W[i]! - Q[i]!;
  const Y = new Float32Array(rows * out);
  backend.gemm(false, true, rows, out, inF, 1, Xs, W, 0, Y);
  const E = new Float32Array(rows * out);
  backend.gemm(false, true, rows, out, inF, 1, Xs, D, 0, E);
  let num = 0;
  let den = 0;
  for (let i = 0; i < Y.length; i++) {
    num += E[i]! * E[i]!;
    den += Y[i]! * Y[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return num / den;
}
