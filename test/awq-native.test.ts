// AWQ's candidate rounding and output error in native code (native/src/gptqloop.cc: Backend.fakeQuant,
// Backend.sumSquaredDiff, Backend.columnSumSquaredDiff) against their TypeScript references (algorithms/awq.ts scaledFakeQuantTs,
// sumSquaredDiffTs, columnSumSquaredDiffTs): bit for bit over bits 2/3/4/8, per-row, ragged and even groups, sym/asym, with and
// without scales, rows of zeros, on both the AVX2 and the portable path and with 1 and 2 threads; the
// reference itself against quantizeRtn; and failures (NaN, Inf, fp16 overflow) raising the reference's error.

import { afterAll, describe, expect, it } from "vitest";

import { awqScales, columnSumSquaredDiff, columnSumSquaredDiffTs, scaledFakeQuant, scaledFakeQuantTs, sumSquaredDiff, sumSquaredDiffTs } from "../algorithms/awq.js";
import { quantizeRtn } from "../algorithms/rtn.js";
import { getBackend } from "../src/compute/index.js";
import type { CpuBackend } from "../src/compute/cpu.js";
import { ModelError } from "../src/util/errors.js";
import { gaussianArray } from "./helpers.js";

const native = getBackend("cpu") as CpuBackend;
afterAll(() => {
  native.setSimd(true);
  native.setThreads(1);
});

function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** Weights with uneven rows and columns, an all-zero row and an exact-half case. */
function weights(out: number, inF: number, seed: number): Float32Array {
  const W = gaussianArray(out * inF, seed, 0.05);
  for (let c = 0; c < inF; c++) W[c] = 0; // row 0: all zeros (the reference's ±1 range)
  for (let r = 1; r < out; r++) for (let c = 0; c < inF; c += 7) W[r * inF + c] = W[r * inF + c]! * (1 + (c % 5));
  return W;
}

describe("native AWQ fake quantization", () => {
  const cases: { bits: number; groupSize: number; sym: boolean; out: number; inF: number }[] = [];
  for (const bits of [2, 3, 4, 8])
    for (const groupSize of [-1, 32, 48])
      for (const sym of [false, true]) cases.push({ bits, groupSize, sym, out: 37, inF: groupSize === 48 ? 200 : 256 });

  for (const simd of [true, false])
    for (const threads of [1, 2])
      it(`matches the reference bit for bit (${simd ? "simd" : "scalar"}, ${threads} thread${threads > 1 ? "s" : ""})`, () => {
        native.setSimd(simd);
        native.setThreads(threads);
        let seed = 1;
        for (const c of cases) {
          const W = weights(c.out, c.inF, seed++);
          const xMean = gaussianArray(c.inF, seed++, 1).map(Math.abs);
          for (const s of [null, awqScales(xMean, 0.5), awqScales(xMean, 0.95)]) {
            const opts = { bits: c.bits, groupSize: c.groupSize, sym: c.sym };
            const want = scaledFakeQuantTs(W, c.out, c.inF, s, opts);
            const got = scaledFakeQuant(W, c.out, c.inF, s, opts, native);
            expect(bytes(got).equals(bytes(want)), JSON.stringify(c)).toBe(true);
          }
        }
      });

  it("the reference is RTN's dequantized weight of W·diag(s), divided by s", () => {
    const W = weights(16, 64, 9);
    const s = awqScales(gaussianArray(64, 10).map(Math.abs), 0.7);
    const opts = { bits: 4, groupSize: 32, sym: false };
    const Ws = W.map((v, i) => v * s[i % 64]!);
    const q = quantizeRtn(Ws, 16, 64, opts).dequant;
    const want = q.map((v, i) => v / s[i % 64]!);
    expect(bytes(scaledFakeQuantTs(W, 16, 64, s, opts)).equals(bytes(want))).toBe(true);
    // and the candidates differ from the weights by at most half a step per group
    const got = scaledFakeQuant(W, 16, 64, null, opts, native);
    expect(bytes(got).equals(bytes(quantizeRtn(W, 16, 64, opts).dequant))).toBe(true);
  });

  it("a NaN, an Inf or an fp16 overflow raises the reference's error", () => {
    const opts = { bits: 4, groupSize: -1, sym: false };
    for (const bad of [NaN, Infinity, -Infinity, 1e9]) {
      const W = weights(8, 32, 3);
      W[5 * 32 + 3] = bad;
      let want = "";
      try {
        scaledFakeQuantTs(W, 8, 32, null, opts);
      } catch (e) {
        want = (e as Error).message;
      }
      expect(want).not.toBe("");
      expect(() => scaledFakeQuant(W, 8, 32, null, opts, native)).toThrow(ModelError);
      expect(() => scaledFakeQuant(W, 8, 32, null, opts, native)).toThrow(want);
    }
  });
});

describe("native sum of squared differences", () => {
  it("equals the reference bit for bit, and the plain sum to float64 rounding", () => {
    for (const n of [0, 1, 7, 8, 9, 1000, 4097]) {
      const a = gaussianArray(n, n + 1);
      const b = gaussianArray(n, n + 2, 0.5);
      const ref = sumSquaredDiffTs(a, b);
      expect(sumSquaredDiff(a, b, native)).toBe(ref);
      let plain = 0;
      for (let i = 0; i < n; i++) plain += (a[i]! - b[i]!) ** 2;
      expect(Math.abs(ref - plain)).toBeLessThanOrEqual(1e-12 * Math.max(1, plain));
    }
    expect(() => sumSquaredDiff(new Float32Array(3), new Float32Array(4), native)).toThrow(/lengths differ/);
  });
});

describe("native per-column sums of squared differences (AWQ's clipping search)", () => {
  it("equal the reference bit for bit on both SIMD paths and 1 or 2 threads, and each column's plain sum", () => {
    for (const [rows, cols] of [[0, 5], [1, 1], [7, 13], [33, 1030], [512, 4099]] as const) {
      const a = gaussianArray(rows * cols, rows + cols, 3);
      const b = gaussianArray(rows * cols, rows * cols + 7, 0.5);
      const ref = new Float64Array(cols);
      columnSumSquaredDiffTs(a, b, rows, cols, ref);
      for (const simd of [true, false])
        for (const threads of [1, 2]) {
          native.setSimd(simd);
          native.setThreads(threads);
          const got = new Float64Array(cols).fill(NaN); // overwritten, not accumulated into
          columnSumSquaredDiff(a, b, rows, cols, got, native);
          expect(Buffer.from(got.buffer).equals(Buffer.from(ref.buffer)), `${rows}×${cols} simd ${simd} threads ${threads}`).toBe(true);
        }
      for (let c = 0; c < cols; c += Math.max(1, Math.floor(cols / 5))) {
        let plain = 0;
        for (let r = 0; r < rows; r++) plain += (a[r * cols + c]! - b[r * cols + c]!) ** 2;
        expect(ref[c]).toBe(plain); // the same order: exactly the plain loop
      }
    }
    native.setSimd(true);
    native.setThreads(1);
    expect(() => columnSumSquaredDiff(new Float32Array(3), new Float32Array(4), 2, 2, new Float64Array(2), native)).toThrow(/shorter than 2×2/);
  });
});
