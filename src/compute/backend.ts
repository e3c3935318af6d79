// The compute interface that the forward pass and the algorithms call. Implementations: the CPU
// backend over the native BLAS/LAPACK addon (cpu.ts) and, later, a CUDA backend. Model and
// algorithm code never touches an addon directly. All matrices are dense, ROW-MAJOR, Float32Array.

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
   * The FULL symmetric matrix is written (both triangles), so callers never care which one BLAS filled.
   */
  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array): void;

  /**
   * In-place Cholesky factorisation of a symmetric positive-definite n×n matrix (row-major).
   * upper=true leaves U with A = UᵀU in the upper triangle; upper=false leaves L with A = LLᵀ in the lower.
   * The other triangle is zeroed. Returns false (leaving A unspecified) when A is not positive definite.
   */
  cholesky(A: Float32Array, n: number, upper: boolean): boolean;

  /**
   * In-place inverse of an SPD matrix from scratch (potrf + potri), full symmetric result.
   * Returns false when A is not positive definite.
   */
  choleskyInverse(A: Float32Array, n: number): boolean;
}
