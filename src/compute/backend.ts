// The compute interface that the forward pass and the algorithms call. Implementations: the CPU
// backend over the native BLAS/LAPACK addon (cpu.ts) and, later, a CUDA backend. Model and
// algorithm code never touches an addon directly. All matrices are dense, ROW-MAJOR, Float32Array,
// except resident Linear weights (LinearHandle): packed INT2..8 or fp16 weights in the backend's own
// runtime layout, made once at load, that compute y = x·Wᵀ straight from that layout.
// The block ops (norms, RoPE, causal attention over a KV cache, activations, residual add) are Backend
// methods too, so the whole decoder block runs on the backend: forward.ts has no arithmetic of its own.

import type { QuantizedLinear } from "../../formats/types.js";

/** What a backend needs of a quantized Linear to hold it packed (the format-neutral QuantizedLinear). */
export type PackableLinear = Pick<QuantizedLinear, "outFeatures" | "inFeatures" | "bits" | "groupSize" | "codes" | "scales" | "zeros" | "gIdx" | "outliers"> & {
  name?: string;
};

/**
 * A Linear weight [out, in] resident in a backend (packed integer codes with their scales, or fp16),
 * repacked once at load from any on-disk format. The forward pass calls linear() on it instead of a GEMM
 * on an fp32 matrix; every format goes through the same runtime layout and kernels.
 */
export interface LinearHandle {
  readonly kind: "packed" | "f16";
  readonly out: number;
  readonly in: number;
  /** Bytes the backend holds for this weight (codes, scales, zero points, index maps, outliers). */
  readonly bytes: number;
  /** e.g. "int4 g128", "int3 g128 act-order +52 outliers", "fp16". */
  readonly label: string;
  /** y[rows, out] = x[rows, in] · Wᵀ (+ bias[out] on every row). y must not share memory with x. */
  linear(x: Float32Array, rows: number, y: Float32Array, bias?: Float32Array): void;
  /** Rows [r0, r1) of the weight as fp32 into dst [(r1 − r0)·in] (embedding lookups, tests). */
  rows(r0: number, r1: number, dst: Float32Array): void;
}

/** Rotary embedding tables: cos/sin [maxPos, headDim/2] (src/model/ops.ts RopeTables builds them, HF's way). */
export interface RopeTable {
  readonly headDim: number;
  readonly maxPos: number;
  readonly cos: Float32Array;
  readonly sin: Float32Array;
}

/** The MLP activations of the supported architectures (architectures.ts). */
export type ActivationKind = "silu" | "relu" | "gelu_new" | "gelu";

/** Causal self-attention of B sequences of T rows, query heads sharing K/V heads in groups (GQA/MQA). */
export interface AttentionShape {
  B: number;
  T: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Absolute position of each sequence's first row (non-zero only with a cache). */
  pos0: number;
}

/** K/V rows of one sequence and one layer: [capacity, nKvHeads·headDim] each. */
export interface KvCache {
  k: Float32Array;
  v: Float32Array;
  capacity: number;
}

/**
 * GPTQ's column loop state for one Linear (algorithms/gptq.ts gptqQuantize explains the layouts; its
 * gptqColumnsTs is the reference a backend's gptqColumns must match bit for bit).
 */
export interface GptqColumnsJob {
  /** [n, out] transposed, permuted weights (updated in place). */
  Wt: Float32Array;
  /** [n, n] upper Cholesky factor of the damped inverse Hessian, processing order. */
  U: Float32Array;
  /** [n, out] codes, processing order. */
  qt: Uint8Array;
  /** [blockSize, out] the lazy block's scaled errors (row p − i1). */
  err: Float32Array;
  /** [nGroups, out] scales and zeros, transposed. */
  sT: Float32Array;
  zT: Uint8Array;
  /** [n, out] outlier mask and fp16 values (processing order), or null. */
  ot: Uint8Array | null;
  vt: Float32Array | null;
  /** [n] act-order permutation, or null. */
  perm: Int32Array | null;
  n: number;
  out: number;
  bits: number;
  sym: boolean;
  /** −1 = per row. */
  groupSize: number;
  staticGroups: boolean;
  /** Outlier saliency threshold of dynamic groups. */
  tau: number;
  /** [loss, outliers left]: read and updated by every call. */
  state: Float64Array;
}

export interface Backend {
  readonly name: string;

  /** Number of worker threads the BLAS uses. */
  setThreads(n: number): void;
  getThreads(): number;

  /**
   * General matrix multiply, row-major:  C[M×N] = alpha · op(A) · op(B) + beta · C
   * op(A) is M×K (A stored K×M when transA), op(B) is K×N (B stored N×K when transB).
   * Leading dimensions are the natural ones (no strides).
   */
  gemm(
    transA: boolean, transB: boolean,
    M: number, N: number, K: number,
    alpha: number, A: Float32Array, B: Float32Array,
    beta: number, C: Float32Array,
  ): void;

  /**
   * Hessian accumulation: H[n×n] = beta·H + alpha · Xᵀ X, X is rows×n row-major.
   * The FULL symmetric matrix is written (both triangles), so callers never care which one BLAS filled;
   * with `upperOnly` only the upper triangle is updated (the lower one keeps whatever it held), for
   * callers that accumulate many batches and `symmetrize` once at the end.
   */
  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array, upperOnly?: boolean): void;

  /** Copies the upper triangle of the n×n row-major H onto its lower triangle. */
  symmetrize(H: Float32Array, n: number): void;

  /**
   * In-place Cholesky factorisation of a symmetric positive-definite n×n matrix (row-major).
   * upper=true leaves U with A = UᵀU in the upper triangle; upper=false leaves L with A = LLᵀ in the lower.
   * The other triangle is zeroed. Returns false (leaving A unspecified) when A is not positive definite.
   */
  cholesky(A: Float32Array, n: number, upper: boolean): boolean;

  /**
   * In place: the SPD matrix A becomes the upper triangular U with A⁻¹ = UᵀU (GPTQ's inverse factor),
   * lower triangle zeroed, from one Cholesky factorisation and one triangular inverse (of A with its
   * order reversed). Returns false (leaving A unspecified) when A is not positive definite.
   */
  inverseCholesky(A: Float32Array, n: number): boolean;

  /**
   * A resident packed weight for a quantized Linear (outliers included). Absent on a backend without a
   * packed runtime: callers then dequantize to fp32 (formats/dequant.ts) and use gemm.
   */
  packLinear?(q: PackableLinear): LinearHandle;

  /** A resident fp16 weight [out, in] from raw IEEE half bits. Absent: callers widen to fp32. */
  f16Linear?(w: Uint16Array, out: number, inF: number): LinearHandle;

  /**
   * GPTQ's per-column work on columns [s1, s2) of the lazy block starting at i1 (find_params at a dynamic
   * group's first column, quantize, error, rank-1 updates inside [s1, s2)), bit-identical to
   * algorithms/gptq.ts gptqColumnsTs. Returns 0, 1 (a group holds a non-finite weight) or 2 (a scale
   * overflows float16). Absent: gptqQuantize runs its TypeScript loop.
   */
  gptqColumns?(job: GptqColumnsJob, i1: number, s1: number, s2: number): number;

  /**
   * RTN fake quantization: dst = dequant(Q(W·diag(s)))·diag(1/s) for W [out, in] (s absent: plain RTN),
   * bit-identical to algorithms/awq.ts scaledFakeQuantTs. Returns 0, 1 (a group holds a non-finite
   * weight) or 2 (a scale overflows float16). Absent: the TypeScript reference runs.
   */
  fakeQuant?(W: Float32Array, out: number, inF: number, opts: { bits: number; groupSize: number; sym: boolean }, s: Float32Array | null, dst: Float32Array): number;

  /** Σ (a − b)², equal bit for bit to algorithms/awq.ts sumSquaredDiffTs. Absent: the reference runs. */
  sumSquaredDiff?(a: Float32Array, b: Float32Array): number;

  /** acc[c] = Σ_r (a − b)²[r, c] over [rows, cols], equal bit for bit to algorithms/awq.ts columnSumSquaredDiffTs. Absent: the reference runs. */
  columnSumSquaredDiff?(a: Float32Array, b: Float32Array, rows: number, cols: number, acc: Float64Array): void;

  // --- Block ops. Row-wise, on rows of `dim` (or the shapes given); `out` may be `x` itself. ---

  /** out[r] = x[r] / rms(x[r]) · w  (HF LlamaRMSNorm: sum of squares in float64). */
  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void;

  /** torch.nn.LayerNorm over the last dim (biased variance), optional bias. */
  layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void;

  /**
   * Rotary embedding in place, rotate_half layout (element i pairs with i + headDim/2), every head of
   * x [rows, nHeads·headDim]; row r has position pos0 + (r mod T).
   */
  rope(x: Float32Array, rows: number, T: number, nHeads: number, pos0: number, table: RopeTable): void;

  /**
   * Causal self-attention, softmax(q·kᵀ/√d)·v per head: q [B·T, nHeads·d], k/v [B·T, nKvHeads·d] (RoPE
   * applied), query head h reading K/V head ⌊h·nKvHeads/nHeads⌋. With a cache (B = 1) this call's k/v rows
   * are stored at pos0 and row t attends to positions [0, pos0 + t]. Result in out [B·T, nHeads·d].
   */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, shape: AttentionShape, cache: KvCache | undefined, out: Float32Array): void;

  /** x = act(x) in place. */
  activate(kind: ActivationKind, x: Float32Array): void;

  /** gate = act(gate) · up, in place (the gated MLP). */
  activateMul(kind: ActivationKind, gate: Float32Array, up: Float32Array): void;

  /** out = a + b (the residual stream); out may be a or b. */
  add(a: Float32Array, b: Float32Array, out: Float32Array): void;

  /**
   * Per row of x [rows, vocab] (the perplexity's log-sum-exp): max[r] (NaN skipped), top[r] its first
   * index, sum[r] = Σ_j e^(x_j − max) in float64 added left to right with ops.ts's fastExp, the same bits
   * as src/eval/perplexity.ts's TypeScript loop (used when a backend lacks this).
   */
  rowLse?(x: Float32Array, rows: number, vocab: number, max: Float32Array, sum: Float64Array, top: Int32Array): void;
}
