// CPU Backend (native BLAS/LAPACK addon) against plain float64 TypeScript references.
// Tolerances are relative to a rounding-error bound, so a wrong transpose, triangle or scale fails.

import { describe, it, expect } from "vitest";

import { CpuBackend, gemmPeakGflops, getBackend } from "../src/compute/index.js";
import { loadNativeAddon } from "../src/compute/cpu.js";
import { f16ToF32, useNativeF16Decoder } from "../src/io/dtype.js";
import { BackendError } from "../src/util/errors.js";
import { mulberry32 as rng } from "../src/calibration/sampler.js";
import { GptqHessian } from "../algorithms/gptq.js";

const be = getBackend("cpu");
const U = 2 ** -24; // float32 unit roundoff


function randMat(len: number, rand: () => number): Float32Array {
  const m = new Float32Array(len);
  for (let i = 0; i < len; i++) m[i] = rand() * 2 - 1;
  return m;
}

/** Row-major element (r, c) of op(X) where X is stored rows×cols (or cols×rows when trans). */
function at(X: ArrayLike<number>, trans: boolean, r: number, c: number, rows: number, cols: number): number {
  return trans ? X[c * rows + r]! : X[r * cols + c]!;
}

/** float64 gemm reference; also returns the per-element error bound scale alpha·Σ|a||b| + |beta·c|. */
function refGemm(
  tA: boolean, tB: boolean, M: number, N: number, K: number,
  alpha: number, A: Float32Array, B: Float32Array, beta: number, C0: Float32Array,
): { C: Float64Array; scale: Float64Array } {
  const C = new Float64Array(M * N);
  const scale = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      let sa = 0;
      for (let k = 0; k < K; k++) {
        const p = at(A, tA, i, k, M, K) * at(B, tB, k, j, K, N);
        s += p;
        sa += Math.abs(p);
      }
      C[i * N + j] = alpha * s + beta * C0[i * N + j]!;
      scale[i * N + j] = Math.abs(alpha) * sa + Math.abs(beta * C0[i * N + j]!);
    }
  }
  return { C, scale };
}

/** max_i |got - want| / scale_i must be below tol (scale floored to avoid 0/0). */
function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, scale: ArrayLike<number> | number, tol: number): void {
  expect(got.length).toBe(want.length);
  let worst = 0;
  let where = -1;
  for (let i = 0; i < want.length; i++) {
    const s = Math.max(typeof scale === "number" ? scale : scale[i]!, 1e-30);
    const e = Math.abs(got[i]! - want[i]!) / s;
    if (!(e <= worst)) {
      worst = e;
      where = i;
    }
  }
  expect(worst, `worst relative error ${worst} at index ${where}: got ${got[where]}, want ${want[where]}`).toBeLessThanOrEqual(tol);
}

function maxAbs(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]!));
  return m;
}

/** Well-conditioned SPD matrix: XᵀX/rows + shift·I, float32. */
function spd(n: number, seed: number, shift = 0.5): Float32Array {
  const rand = rng(seed);
  const rows = 2 * n + 3;
  const X = randMat(rows * n, rand);
  const A = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let r = 0; r < rows; r++) s += X[r * n + i]! * X[r * n + j]!;
      const v = s / rows + (i === j ? shift : 0);
      A[i * n + j] = v;
      A[j * n + i] = v;
    }
  }
  return A;
}

/** float64 Cholesky reference: lower L with A = LLᵀ (row-major), or null if not SPD. */
function refCholeskyLower(A: ArrayLike<number>, n: number): Float64Array | null {
  const L = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let d = A[j * n + j]!;
    for (let k = 0; k < j; k++) d -= L[j * n + k]! ** 2;
    if (!(d > 0)) return null;
    const ljj = Math.sqrt(d);
    L[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let s = A[i * n + j]!;
      for (let k = 0; k < j; k++) s -= L[i * n + k]! * L[j * n + k]!;
      L[i * n + j] = s / ljj;
    }
  }
  return L;
}

/** float64 SPD inverse via the reference Cholesky (solve LLᵀ X = I column by column). */
function refInverse(A: ArrayLike<number>, n: number): Float64Array {
  const L = refCholeskyLower(A, n)!;
  const inv = new Float64Array(n * n);
  const y = new Float64Array(n);
  for (let c = 0; c < n; c++) {
    for (let i = 0; i < n; i++) {
      let s = i === c ? 1 : 0;
      for (let k = 0; k < i; k++) s -= L[i * n + k]! * y[k]!;
      y[i] = s / L[i * n + i]!;
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = y[i]!;
      for (let k = i + 1; k < n; k++) s -= L[k * n + i]! * inv[k * n + c]!;
      inv[i * n + c] = s / L[i * n + i]!;
    }
  }
  return inv;
}

/** Row-major float64 product of square n×n matrices. */
function matmul(A: ArrayLike<number>, B: ArrayLike<number>, n: number): Float64Array {
  const C = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let k = 0; k < n; k++) {
      const a = A[i * n + k]!;
      for (let j = 0; j < n; j++) C[i * n + j] += a * B[k * n + j]!;
    }
  return C;
}

function transpose(A: ArrayLike<number>, n: number): Float64Array {
  const T = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) T[j * n + i] = A[i * n + j]!;
  return T;
}

function expectSymmetric(A: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) if (A[i * n + j] !== A[j * n + i]) {
    expect.fail(`not symmetric at (${i},${j}): ${A[i * n + j]} vs ${A[j * n + i]}`);
  }
}

describe("getBackend", () => {
  it("returns a cached CpuBackend for cpu (default)", () => {
    expect(be).toBeInstanceOf(CpuBackend);
    expect(be.name).toBe("cpu");
    expect(getBackend()).toBe(be);
    expect(getBackend("cpu")).toBe(be);
  });

  it("cuda is not available in this build", () => {
    expect(() => getBackend("cuda")).toThrow(BackendError);
    expect(() => getBackend("cuda")).toThrow("CUDA backend not available in this build");
  });

  it("reports the linked BLAS", () => {
    expect((be as CpuBackend).blasInfo.length).toBeGreaterThan(0);
  });
});

describe("threads", () => {
  it("set/get round-trips and rejects n < 1", () => {
    const before = be.getThreads();
    expect(before).toBeGreaterThanOrEqual(1);
    try {
      be.setThreads(1);
      expect(be.getThreads()).toBe(1);
    } finally {
      be.setThreads(before);
    }
    expect(be.getThreads()).toBe(before);
    expect(() => be.setThreads(0)).toThrow(BackendError);
    expect(() => be.setThreads(1.5)).toThrow(BackendError);
  });
});

describe("gemm", () => {
  const shapes: Array<[number, number, number]> = [
    [7, 5, 11],
    [1, 9, 4],
    [37, 29, 53],
    [64, 3, 130],
  ];
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      for (const [M, N, K] of shapes) {
        it(`transA=${tA} transB=${tB} M=${M} N=${N} K=${K}, alpha=1.5 beta=-0.75`, () => {
          const rand = rng(1000 * M + 100 * N + K + (tA ? 7 : 0) + (tB ? 13 : 0));
          const A = randMat(M * K, rand);
          const B = randMat(K * N, rand);
          const C = randMat(M * N, rand);
          const { C: want, scale } = refGemm(tA, tB, M, N, K, 1.5, A, B, -0.75, C);
          be.gemm(tA, tB, M, N, K, 1.5, A, B, -0.75, C);
          expectClose(C, want, scale, 4 * (K + 2) * U);
        });
      }
    }
  }

  it("alpha=1 beta=0 overwrites C, even NaN garbage", () => {
    const rand = rng(42);
    const [M, N, K] = [6, 10, 8];
    const A = randMat(M * K, rand);
    const B = randMat(K * N, rand);
    const C = new Float32Array(M * N).fill(Number.NaN);
    const { C: want, scale } = refGemm(false, false, M, N, K, 1, A, B, 0, new Float32Array(M * N));
    be.gemm(false, false, M, N, K, 1, A, B, 0, C);
    expectClose(C, want, scale, 4 * (K + 2) * U);
  });

  it("alpha=0 beta=2 scales C; K=0 gives beta·C", () => {
    const rand = rng(43);
    const A = randMat(12, rand);
    const B = randMat(15, rand);
    const C = randMat(20, rand);
    const c0 = Float64Array.from(C);
    be.gemm(false, false, 4, 5, 3, 0, A, B, 2, C);
    expectClose(C, c0.map((v) => 2 * v), 1, 2 * U);
    const C2 = Float32Array.from(c0);
    be.gemm(false, false, 4, 5, 0, 1, new Float32Array(0), new Float32Array(0), -1, C2);
    expectClose(C2, c0.map((v) => -v), 1, 0);
  });

  it("works in place on subarray views without touching neighbouring memory", () => {
    const rand = rng(44);
    const [M, N, K] = [5, 6, 7];
    const bufA = randMat(M * K + 9, rand);
    const bufB = randMat(K * N + 3, rand);
    const bufC = new Float32Array(M * N + 10).fill(123);
    const A = bufA.subarray(4, 4 + M * K);
    const B = bufB.subarray(1, 1 + K * N);
    const C = bufC.subarray(5, 5 + M * N);
    C.fill(0);
    const { C: want, scale } = refGemm(false, true, M, N, K, 1, A, B, 0, new Float32Array(M * N));
    be.gemm(false, true, M, N, K, 1, A, B, 0, C);
    expectClose(C, want, scale, 4 * (K + 2) * U);
    expect(Array.from(bufC.subarray(0, 5))).toEqual([123, 123, 123, 123, 123]);
    expect(Array.from(bufC.subarray(5 + M * N))).toEqual([123, 123, 123, 123, 123]);
  });

  it("rejects wrong buffer sizes and bad arguments with clear messages", () => {
    const f = (n: number) => new Float32Array(n);
    expect(() => be.gemm(false, false, 4, 5, 4, 1, f(12), f(20), 0, f(20))).toThrow(BackendError);
    expect(() => be.gemm(false, false, 4, 5, 4, 1, f(12), f(20), 0, f(20))).toThrow("gemm: A has 12 elements, expected M*K=16");
    expect(() => be.gemm(true, true, 4, 5, 4, 1, f(16), f(21), 0, f(20))).toThrow("gemm: B has 21 elements, expected K*N=20");
    expect(() => be.gemm(false, false, 4, 5, 4, 1, f(16), f(20), 0, f(19))).toThrow("gemm: C has 19 elements, expected M*N=20");
    expect(() => be.gemm(false, false, -1, 5, 4, 1, f(16), f(20), 0, f(20))).toThrow(/gemm: M must be a non-negative integer/);
    expect(() => be.gemm(false, false, 4, 5, 2.5, 1, f(10), f(20), 0, f(20))).toThrow(/gemm: K must be a non-negative integer/);
    expect(() =>
      be.gemm(false, false, 2, 2, 2, 1, new Float64Array(4) as unknown as Float32Array, f(4), 0, f(4)),
    ).toThrow("gemm: A must be a Float32Array");
    const shared = f(8);
    expect(() => be.gemm(false, false, 2, 2, 2, 1, shared.subarray(0, 4), f(4), 0, shared.subarray(2, 6))).toThrow(
      "gemm: C must not share memory with A or B",
    );
  });
});

describe("syrk", () => {
  for (const [n, rows] of [[13, 29], [40, 7], [1, 5]] as const) {
    it(`H = beta·H + alpha·XᵀX, full symmetric result (n=${n}, rows=${rows})`, () => {
      const rand = rng(n * 31 + rows);
      const X = randMat(rows * n, rand);
      const H = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) H[i * n + j] = H[j * n + i] = rand() * 2 - 1;
      const want = new Float64Array(n * n);
      const scale = new Float64Array(n * n);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          let s = 0;
          let sa = 0;
          for (let r = 0; r < rows; r++) {
            const p = X[r * n + i]! * X[r * n + j]!;
            s += p;
            sa += Math.abs(p);
          }
          want[i * n + j] = 0.25 * H[i * n + j]! + 0.7 * s;
          scale[i * n + j] = 0.25 * Math.abs(H[i * n + j]!) + 0.7 * sa;
        }
      be.syrk(n, rows, 0.7, X, 0.25, H);
      expectClose(H, want, scale, 4 * (rows + 2) * U);
      expectSymmetric(H, n);
    });
  }

  it("accumulates over batches: two calls with beta=1 equal one call over the stacked rows", () => {
    const rand = rng(77);
    const n = 24;
    const X = randMat(50 * n, rand);
    const H1 = new Float32Array(n * n);
    be.syrk(n, 20, 1, X.subarray(0, 20 * n), 0, H1);
    be.syrk(n, 30, 1, X.subarray(20 * n), 1, H1);
    const H2 = new Float32Array(n * n).fill(Number.NaN);
    be.syrk(n, 50, 1, X, 0, H2);
    expectClose(H1, H2, maxAbs(H2), 1e-5);
  });

  it("upperOnly updates the upper triangle only; symmetrize then gives the full call's bits", () => {
    const rand = rng(91);
    // 150: more than two 64-wide mirror tiles, with a ragged last one.
    for (const n of [5, 150]) {
      const X = randMat(40 * n, rand);
      const full = new Float32Array(n * n);
      be.syrk(n, 15, 1, X.subarray(0, 15 * n), 0, full);
      be.syrk(n, 25, 0.5, X.subarray(15 * n), 0.75, full);
      const upper = new Float32Array(n * n).fill(-7);
      be.syrk(n, 15, 1, X.subarray(0, 15 * n), 0, upper, true);
      be.syrk(n, 25, 0.5, X.subarray(15 * n), 0.75, upper, true);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          if (j >= i) expect(upper[i * n + j]).toBe(full[i * n + j]);
          else expect(upper[i * n + j]).toBe(-7);
        }
      be.symmetrize(upper, n);
      expect(Buffer.from(upper.buffer).equals(Buffer.from(full.buffer))).toBe(true);
      expectSymmetric(upper, n);
    }
  });

  it("GptqHessian: batches accumulated upper-only read back as the full symmetric running mean", () => {
    const rand = rng(5);
    const n = 70;
    const X = randMat(60 * n, rand);
    const h = new GptqHessian(be, n);
    h.addBatch(X.subarray(0, 20 * n), 20);
    h.addBatch(X.subarray(20 * n), 40);
    const want = new Float32Array(n * n);
    be.syrk(n, 20, 2 / 20, X.subarray(0, 20 * n), 0, want);
    be.syrk(n, 40, 2 / 60, X.subarray(20 * n), 20 / 60, want);
    expect(Buffer.from(h.H.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    h.addBatch(X.subarray(0, 10 * n), 10); // after a read, a new batch makes the lower triangle stale again
    be.syrk(n, 10, 2 / 70, X.subarray(0, 10 * n), 60 / 70, want);
    expect(Buffer.from(h.H.buffer).equals(Buffer.from(want.buffer))).toBe(true);
  });

  it("rows=0 scales H by beta", () => {
    const H = Float32Array.from([1, 2, 2, 5]);
    be.syrk(2, 0, 1, new Float32Array(0), 3, H);
    expect(Array.from(H)).toEqual([3, 6, 6, 15]);
  });

  it("rejects wrong buffer sizes", () => {
    expect(() => be.syrk(4, 3, 1, new Float32Array(11), 0, new Float32Array(16))).toThrow(BackendError);
    expect(() => be.syrk(4, 3, 1, new Float32Array(11), 0, new Float32Array(16))).toThrow("syrk: X has 11 elements, expected rows*n=12");
    expect(() => be.syrk(4, 3, 1, new Float32Array(12), 0, new Float32Array(15))).toThrow("syrk: H has 15 elements, expected n*n=16");
    expect(() => be.symmetrize(new Float32Array(15), 4)).toThrow("symmetrize: H has 15 elements, expected n*n=16");
  });
});

describe("native half → float32 (F16C, installed by the CPU backend)", () => {
  it("gives the table's values for every half (NaN stays NaN), ragged tails and longer destinations", () => {
    const addon = loadNativeAddon(); // the backend above loaded it: the decoder is installed
    const all = Uint16Array.from({ length: 65536 + 5 }, (_, i) => (i * 40503) & 0xffff); // every pattern, 5 more: a tail
    const fast = f16ToF32(all, new Float32Array(all.length + 3));
    useNativeF16Decoder(null);
    let ref: Float32Array;
    try {
      ref = f16ToF32(all);
    } finally {
      useNativeF16Decoder((src, dst) => addon.f16ToF32(src, dst));
    }
    for (let i = 0; i < all.length; i++) {
      if (Number.isNaN(ref[i]!)) expect(Number.isNaN(fast[i]!)).toBe(true);
      else if (!Object.is(fast[i], ref[i])) expect.fail(`half 0x${all[i]!.toString(16)}: native ${fast[i]}, table ${ref[i]}`);
    }
    expect(fast[all.length]).toBe(0); // the destination's extra values are left alone
    // The addon call itself converts exactly src.length values and says whether it did.
    const d = new Float32Array(9);
    expect(typeof addon.f16ToF32(Uint16Array.of(0x3c00, 0, 0, 0, 0, 0, 0, 0, 0xc200), d)).toBe("boolean");
    expect(() => addon.f16ToF32(Uint16Array.of(1, 2), new Float32Array(3))).toThrow("f16ToF32: dst has 3 elements, expected src.length=2");
  });
});

describe("cholesky", () => {
  for (const n of [1, 17, 96]) {
    for (const upper of [true, false]) {
      it(`${upper ? "upper: A = UᵀU" : "lower: A = LLᵀ"}, other triangle zeroed (n=${n})`, () => {
        const A0 = spd(n, 500 + n);
        const F = Float32Array.from(A0);
        expect(be.cholesky(F, n, upper)).toBe(true);
        for (let i = 0; i < n; i++)
          for (let j = 0; j < n; j++) {
            const inZeroTriangle = upper ? j < i : j > i;
            if (inZeroTriangle && F[i * n + j] !== 0) expect.fail(`F(${i},${j}) = ${F[i * n + j]} should be 0`);
          }
        for (let i = 0; i < n; i++) expect(F[i * n + i]).toBeGreaterThan(0);
        // Reconstruction A ≈ FᵀF (upper) or FFᵀ (lower).
        const recon = upper ? matmul(transpose(F, n), F, n) : matmul(F, transpose(F, n), n);
        expectClose(recon, A0, maxAbs(A0), 8 * n * U);
        // Factor itself against the float64 reference.
        const Lref = refCholeskyLower(A0, n)!;
        const ref = upper ? transpose(Lref, n) : Lref;
        expectClose(F, ref, maxAbs(ref), 8 * n * U + 1e-6);
      });
    }
  }

  it("returns false for non-SPD matrices", () => {
    expect(be.cholesky(Float32Array.from([1, 2, 2, 1]), 2, true)).toBe(false); // eigenvalues 3, -1
    expect(be.cholesky(Float32Array.from([1, 2, 2, 1]), 2, false)).toBe(false);
    expect(be.cholesky(new Float32Array(9), 3, true)).toBe(false); // zero matrix
    const A = spd(20, 9);
    A[15 * 20 + 15] = -1;
    expect(be.cholesky(A, 20, false)).toBe(false);
  });

  it("n=0 is trivially true; wrong sizes throw", () => {
    expect(be.cholesky(new Float32Array(0), 0, true)).toBe(true);
    expect(() => be.cholesky(new Float32Array(8), 3, true)).toThrow(BackendError);
    expect(() => be.cholesky(new Float32Array(8), 3, true)).toThrow("cholesky: A has 8 elements, expected n*n=9");
  });
});

describe("inverseCholesky", () => {
  /** float64 upper U with M = UᵀU. */
  const refUpper = (M: Float64Array, n: number): Float64Array => {
    const U = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      let d = M[i * n + i]!;
      for (let k = 0; k < i; k++) d -= U[k * n + i]! ** 2;
      U[i * n + i] = Math.sqrt(d);
      for (let j = i + 1; j < n; j++) {
        let v = M[i * n + j]!;
        for (let k = 0; k < i; k++) v -= U[k * n + i]! * U[k * n + j]!;
        U[i * n + j] = v / U[i * n + i]!;
      }
    }
    return U;
  };
  for (const n of [1, 9, 80, 150]) {
    it(`upper U with A⁻¹ = UᵀU, lower triangle zero, ≈ the float64 reference factor (n=${n})`, () => {
      const A0 = spd(n, 900 + n);
      const U = Float32Array.from(A0);
      expect(be.inverseCholesky(U, n)).toBe(true);
      for (let i = 0; i < n; i++) {
        expect(U[i * n + i]).toBeGreaterThan(0);
        for (let j = 0; j < i; j++) expect(U[i * n + j]).toBe(0);
      }
      // UᵀU·A ≈ I
      const UtU = new Float64Array(n * n);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < n; j++) {
          let v = 0;
          for (let k = 0; k <= Math.min(i, j); k++) v += U[k * n + i]! * U[k * n + j]!;
          UtU[i * n + j] = v;
        }
      const I = new Float64Array(n * n);
      for (let i = 0; i < n; i++) I[i * n + i] = 1;
      expectClose(matmul(UtU, A0, n), I, 1, 1e-4);
      const ref = refUpper(refInverse(A0, n), n);
      expectClose(U, ref, maxAbs(ref), 1e-4);
    });
  }

  it("returns false for non-SPD matrices", () => {
    expect(be.inverseCholesky(Float32Array.from([1, 2, 2, 1]), 2)).toBe(false);
    expect(be.inverseCholesky(Float32Array.from([-4]), 1)).toBe(false);
    const A = spd(12, 3);
    A[0] = -2;
    expect(be.inverseCholesky(A, 12)).toBe(false);
    expect(be.inverseCholesky(new Float32Array(0), 0)).toBe(true);
  });

  it("wrong sizes throw", () => {
    expect(() => be.inverseCholesky(new Float32Array(10), 3)).toThrow(BackendError);
    expect(() => be.inverseCholesky(new Float32Array(10), 3)).toThrow("inverseCholesky: A has 10 elements, expected n*n=9");
  });
});

describe("gemmPeakGflops", () => {
  it("returns a positive finite rate", () => {
    const g = gemmPeakGflops(be, 64, 2);
    expect(Number.isFinite(g)).toBe(true);
    expect(g).toBeGreaterThan(0);
    expect(() => gemmPeakGflops(be, 0)).toThrow(BackendError);
  });
});
