import { describe, expect, it } from "vitest";

import {
  F16_MIN_SUBNORMAL, GptqHessian, computeParams, dequantize, gptqQuantize, maxQ, quantizeRtn, quantizeValue,
  reconstructionError, roundHalfEven, roundToF16,
} from "../algorithms/index.js";
import type { Backend } from "../src/compute/backend.js";
import { getBackend } from "../src/compute/index.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { mulberry32 as rng } from "../src/calibration/sampler.js";
import { gaussianArray } from "./helpers.js";

const backend: Backend = getBackend("cpu");

// ---------------------------------------------------------------------------------------------
// seeded data


const gaussian = gaussianArray;

/** Correlated activations: X = Z·B + 0.1·N with rank-16 Z·B and uneven column scales. */
function correlatedX(rows: number, inF: number, seed: number): Float32Array {
  const k = 16;
  const Z = gaussian(rows * k, seed);
  const B = gaussian(k * inF, seed + 1);
  const N = gaussian(rows * inF, seed + 2, 0.1);
  const X = new Float32Array(rows * inF);
  backend.gemm(false, false, rows, inF, k, 1, Z, B, 0, X);
  const u = rng(seed + 3);
  const colScale = Float32Array.from({ length: inF }, () => 0.2 + 2 * u() ** 3);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < inF; c++) X[r * inF + c] = (X[r * inF + c]! + N[r * inF + c]!) * colScale[c]!;
  }
  return X;
}

function hessianOf(X: Float32Array, rows: number, inF: number): Float32Array {
  const h = new GptqHessian(backend, inF);
  h.addBatch(X, rows);
  return h.H;
}

function identity(n: number, scale = 1): Float32Array {
  const H = new Float32Array(n * n);
  for (let i = 0; i < n; i++) H[i * n + i] = scale;
  return H;
}

function sameFraction(a: Uint8Array, b: Uint8Array): number {
  expect(a.length).toBe(b.length);
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

// ---------------------------------------------------------------------------------------------
// quantizer

describe("quantizer", () => {
  it("rounds half to even like torch.round", () => {
    expect([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 2.4999, 2.5001, -2.5001, 7].map((x) => roundHalfEven(x) + 0))
      .toEqual([0, 2, 2, 4, 0, -2, -2, 2, 3, -3, 7]);
  });

  it("rounds to float16 (nearest even, overflow to inf)", () => {
    expect(roundToF16(0.2)).toBe(0.199951171875);
    expect(roundToF16(2 / 15)).toBe(0.13330078125);
    expect(roundToF16(65504)).toBe(65504);
    expect(roundToF16(65519)).toBe(65504);
    expect(roundToF16(65520)).toBe(Infinity);
    expect(roundToF16(2 ** -25)).toBe(0); // tie between 0 and 2^-24 → even (0)
    expect(roundToF16(3 * 2 ** -26)).toBe(2 ** -24);
  });

  it("asymmetric 4-bit: hand-computed scale, zero and codes with the fp16 scale", () => {
    // xmin = -1, xmax = 2 → scale 3/15 = 0.2 → fp16 0.199951171875; zero = round(1/0.19995) = round(5.0012) = 5
    const { scale, zero } = computeParams([-1, 0.5, 2], 4, false);
    expect(scale).toBe(0.199951171875);
    expect(zero).toBe(5);
    // -1/s = -5.0012 → -5 → 0; 0.5/s = 2.5006 → 3 → 8; 2/s = 10.0024 → 10 → 15
    expect([-1, 0.5, 2].map((w) => quantizeValue(w, scale, zero, 15))).toEqual([0, 8, 15]);
  });

  it("ties round half to even in codes and zero point", () => {
    // [0, 7.5]: scale 0.5 (exact in fp16), zero 0; w/s = 0.5, 1.5, 2.5, 7.5 → 0, 2, 2, 8
    const a = computeParams([0, 7.5], 4, false);
    expect(a).toEqual({ scale: 0.5, zero: 0 });
    expect([0.25, 0.75, 1.25, 3.75, 7.5].map((w) => quantizeValue(w, a.scale, a.zero, 15))).toEqual([0, 2, 2, 8, 15]);
    // [-1.25, 6.25]: scale 0.5, -xmin/scale = 2.5 → zero 2 (half-up would give 3)
    expect(computeParams([-1.25, 6.25], 4, false)).toEqual({ scale: 0.5, zero: 2 });
    // [-1.75, 5.75]: -xmin/scale = 3.5 → 4
    expect(computeParams([-1.75, 5.75], 4, false)).toEqual({ scale: 0.5, zero: 4 });
  });

  it("all-zero group: xmin = -1, xmax = +1", () => {
    // scale = 2/15 → fp16 0.13330078125; zero = round(1 / 0.13330078125) = round(7.5018) = 8
    const p = computeParams([0, 0, 0], 4, false);
    expect(p).toEqual({ scale: 0.13330078125, zero: 8 });
    expect(quantizeValue(0, p.scale, p.zero, 15)).toBe(8);
    // symmetric too: zero 8
    expect(computeParams([0, 0], 4, true)).toEqual({ scale: 0.13330078125, zero: 8 });
  });

  it("only-positive / only-negative groups include 0 in the range", () => {
    // [1, 2] → xmin 0, xmax 2 → scale 2/15, zero 0
    expect(computeParams([1, 2], 4, false)).toEqual({ scale: 0.13330078125, zero: 0 });
    // [-3, -1.5] → xmin -3, xmax 0 → scale 0.2 → fp16 0.199951171875, zero round(15.0037) = 15
    expect(computeParams([-3, -1.5], 4, false)).toEqual({ scale: 0.199951171875, zero: 15 });
  });

  it("symmetric: xmax = max(|xmin|, xmax), zero = (maxq+1)/2", () => {
    // [-3, 1.5] → range ±3 → scale 6/15 = 0.4 → fp16 0.39990234375, zero 8
    const p = computeParams([-3, 1.5], 4, true);
    expect(p).toEqual({ scale: 0.39990234375, zero: 8 });
    // -3/s = -7.5018 → -8 → 0; 1.5/s = 3.7509 → 4 → 12
    expect([-3, 1.5].map((w) => quantizeValue(w, p.scale, p.zero, 15))).toEqual([0, 12]);
    // all positive: xmin stays 0 (only negative xmin is mirrored), so scale = 2/15 and the top clamps
    const q = computeParams([1, 2], 4, true);
    expect(q).toEqual({ scale: 0.13330078125, zero: 8 });
    expect(quantizeValue(2, q.scale, q.zero, 15)).toBe(15);
    // other widths
    expect(computeParams([-1, 1], 3, true).zero).toBe(4);
    expect(computeParams([-1, 1], 2, true).zero).toBe(2);
    expect(computeParams([-1, 1], 8, true).zero).toBe(128);
    // 3-bit asym: [-1, 2.5] → scale 3.5/7 = 0.5, zero 2
    expect(computeParams([-1, 2.5], 3, false)).toEqual({ scale: 0.5, zero: 2 });
    // 2-bit asym: [-1, 2] → scale 1, zero 1
    expect(computeParams([-1, 2], 2, false)).toEqual({ scale: 1, zero: 1 });
  });

  it("a scale that underflows fp16 becomes the smallest subnormal; NaN is an error", () => {
    const p = computeParams([1e-9, -1e-9], 4, false);
    expect(p.scale).toBe(F16_MIN_SUBNORMAL);
    expect(quantizeValue(1e-9, p.scale, p.zero, 15)).toBe(p.zero);
    expect(() => computeParams([1, NaN, 2], 4, false)).toThrow(ModelError);
    expect(() => computeParams([Infinity], 4, false)).toThrow(ModelError);
  });
});

// ---------------------------------------------------------------------------------------------
// RTN

describe("RTN", () => {
  const out = 48;
  const inF = 200; // ragged with group 64: 64, 64, 64, 8
  const W = gaussian(out * inF, 7, 0.02);
  W[5] = 0.5; // an outlier

  for (const bits of [2, 3, 4, 8]) {
    for (const sym of [false, true]) {
      for (const groupSize of [-1, 64]) {
        it(`${bits}-bit ${sym ? "sym" : "asym"} g${groupSize}: codes in range, error ≤ scale/2`, () => {
          const { layer, dequant } = quantizeRtn(W, out, inF, { bits, groupSize, sym });
          const nG = groupSize === -1 ? 1 : 4;
          expect(layer.scales.length).toBe(out * nG);
          expect(layer.zeros.length).toBe(out * nG);
          expect(layer.codes.length).toBe(out * inF);
          expect(layer.gIdx).toBeUndefined();
          const maxq = maxQ(bits);
          for (const c of layer.codes) expect(c).toBeLessThanOrEqual(maxq);
          for (const z of layer.zeros) expect(z).toBeLessThanOrEqual(maxq);
          for (let r = 0; r < out; r++) {
            for (let c = 0; c < inF; c++) {
              const g = groupSize === -1 ? 0 : Math.floor(c / groupSize);
              const s = layer.scales[r * nG + g]!;
              expect(roundToF16(s)).toBe(s); // stored scales are exact fp16
              const err = Math.abs(W[r * inF + c]! - dequant[r * inF + c]!);
              // scale/2, plus the shift of the grid's ends that rounding the scale to fp16 causes (≤ maxq·2^-11·scale)
              if (!(err <= s * (0.5 + maxq * 2 ** -11) * 1.001 + 1e-9)) {
                throw new Error(`row ${r} col ${c}: |w - q| = ${err} > scale/2 = ${s / 2}`);
              }
            }
          }
          expect(Array.from(dequantize(layer))).toEqual(Array.from(dequant));
        });
      }
    }
  }

  it("rejects bad options and shapes", () => {
    expect(() => quantizeRtn(W, out, inF, { bits: 5, groupSize: -1, sym: false })).toThrow(UsageError);
    expect(() => quantizeRtn(W, out, inF, { bits: 4, groupSize: 0, sym: false })).toThrow(UsageError);
    expect(() => quantizeRtn(W, out, inF + 1, { bits: 4, groupSize: -1, sym: false })).toThrow(UsageError);
  });
});

// ---------------------------------------------------------------------------------------------
// Hessian

describe("GptqHessian", () => {
  it("keeps the running mean 2/n · Σ XᵀX over batches", () => {
    const inF = 24;
    const h = new GptqHessian(backend, inF);
    const batches = [5, 11, 3].map((rows, i) => ({ rows, X: gaussian(rows * inF, 100 + i) }));
    for (const { rows, X } of batches) h.addBatch(X, rows);
    h.addBatch(new Float32Array(0), 0); // empty batch: no-op
    expect(h.nsamples).toBe(19);
    const ref = new Float64Array(inF * inF);
    for (const { rows, X } of batches) {
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < inF; i++) for (let j = 0; j < inF; j++) ref[i * inF + j] += X[r * inF + i]! * X[r * inF + j]!;
      }
    }
    for (let k = 0; k < ref.length; k++) expect(h.H[k]).toBeCloseTo((2 / 19) * ref[k]!, 4);
  });
});

// ---------------------------------------------------------------------------------------------
// GPTQ

/** A plain, straightforward port of the reference fasterquant: no lazy batching, whole-row updates. */
function plainFasterquant(
  W0: Float32Array, H0: Float32Array, out: number, n: number,
  o: { bits: number; groupSize: number; sym: boolean; actOrder: boolean; damp: number },
): Uint8Array {
  const H = H0.slice();
  const W = W0.slice();
  const maxq = maxQ(o.bits);
  // per-row params from the original weight
  let scale = new Float64Array(out);
  let zero = new Float64Array(out);
  for (let r = 0; r < out; r++) {
    const p = computeParams(W.subarray(r * n, (r + 1) * n), o.bits, o.sym);
    scale[r] = p.scale;
    zero[r] = p.zero;
  }
  for (let i = 0; i < n; i++) {
    if (H[i * n + i] === 0) {
      H[i * n + i] = 1;
      for (let r = 0; r < out; r++) W[r * n + i] = 0;
    }
  }
  let perm = Array.from({ length: n }, (_, i) => i);
  if (o.actOrder) perm = perm.sort((a, b) => H[b * n + b]! - H[a * n + a]! || a - b);
  const Wp = new Float32Array(out * n);
  const Hp = new Float32Array(n * n);
  for (let r = 0; r < out; r++) for (let j = 0; j < n; j++) Wp[r * n + j] = W[r * n + perm[j]!]!;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) Hp[i * n + j] = H[perm[i]! * n + perm[j]!]!;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += Hp[i * n + i]!;
  const damp = Math.fround(o.damp * (mean / n));
  for (let i = 0; i < n; i++) Hp[i * n + i] += damp;
  expect(backend.inverseCholesky(Hp, n)).toBe(true);
  const Q = new Uint8Array(out * n);
  const err = new Float32Array(out);
  for (let i = 0; i < n; i++) {
    if (o.groupSize !== -1 && i % o.groupSize === 0) {
      scale = new Float64Array(out);
      zero = new Float64Array(out);
      const cols = Math.min(o.groupSize, n - i);
      for (let r = 0; r < out; r++) {
        const p = computeParams(Wp.subarray(r * n + i, r * n + i + cols), o.bits, o.sym);
        scale[r] = p.scale;
        zero[r] = p.zero;
      }
    }
    const d = Hp[i * n + i]!;
    for (let r = 0; r < out; r++) {
      const w = Wp[r * n + i]!;
      const q = quantizeValue(w, scale[r]!, zero[r]!, maxq);
      Q[r * n + perm[i]!] = q;
      err[r] = (w - Math.fround(scale[r]! * (q - zero[r]!))) / d;
    }
    for (let r = 0; r < out; r++) {
      for (let j = i + 1; j < n; j++) Wp[r * n + j] -= err[r]! * Hp[i * n + j]!;
    }
  }
  return Q;
}

describe("GPTQ", () => {
  it("with H = I reduces exactly to RTN (no correlations → no error feedback)", () => {
    const out = 40;
    const inF = 100;
    const W = gaussian(out * inF, 11, 0.05);
    for (const bits of [3, 4]) {
      for (const sym of [false, true]) {
        for (const groupSize of [-1, 32, 25]) {
          for (const actOrder of [false, true]) {
            for (const staticGroups of [false, true]) {
              const rtn = quantizeRtn(W, out, inF, { bits, groupSize, sym });
              const g = gptqQuantize(backend, W, identity(inF), out, inF, { bits, groupSize, sym, actOrder, staticGroups, blockSize: 16 });
              const what = `bits ${bits} sym ${sym} g${groupSize} act ${actOrder} static ${staticGroups}`;
              expect(Array.from(g.codes), what).toEqual(Array.from(rtn.layer.codes));
              expect(Array.from(g.scales), what).toEqual(Array.from(rtn.layer.scales));
              expect(Array.from(g.zeros), what).toEqual(Array.from(rtn.layer.zeros));
              expect(Array.from(g.dequant), what).toEqual(Array.from(rtn.dequant));
            }
          }
        }
      }
    }
  });

  it("with a diagonal H and act-order, per-row codes still equal RTN; gIdx all 0", () => {
    const out = 16;
    const inF = 64;
    const W = gaussian(out * inF, 12, 0.05);
    const H = identity(inF);
    const u = rng(5);
    for (let i = 0; i < inF; i++) H[i * inF + i] = 0.1 + u();
    const rtn = quantizeRtn(W, out, inF, { bits: 4, groupSize: -1, sym: false });
    const g = gptqQuantize(backend, W, H, out, inF, { bits: 4, groupSize: -1, sym: false, actOrder: true });
    expect(Array.from(g.codes)).toEqual(Array.from(rtn.layer.codes));
    expect(Array.from(g.gIdx!)).toEqual(new Array(inF).fill(0));
  });

  describe("on correlated activations beats RTN clearly", () => {
    const rows = 512;
    const inF = 256;
    const out = 128;
    const X = correlatedX(rows, inF, 21);
    const W = gaussian(out * inF, 22, 0.05);
    const H = hessianOf(X, rows, inF);
    for (const bits of [4, 3]) {
      for (const groupSize of [32, -1]) {
        it(`${bits}-bit g${groupSize}`, () => {
          const rtn = quantizeRtn(W, out, inF, { bits, groupSize, sym: false });
          const eRtn = reconstructionError(backend, W, rtn.dequant, X, rows, out, inF);
          for (const actOrder of [false, true]) {
            const Wcopy = W.slice();
            const g = gptqQuantize(backend, W, H.slice(), out, inF, { bits, groupSize, sym: false, actOrder });
            expect(Array.from(W)).toEqual(Array.from(Wcopy)); // W not modified
            const eG = reconstructionError(backend, W, g.dequant, X, rows, out, inF);
            expect(eG, `act ${actOrder}: gptq ${eG} vs rtn ${eRtn}`).toBeLessThan(0.5 * eRtn);
            expect(g.loss).toBeGreaterThan(0);
            expect(g.dampRetries).toBe(0);
          }
        });
      }
    }
  });

  it("act-order gIdx is a valid grouping in processing order; dequantize(codes, scales, zeros, gIdx) = dequant", () => {
    const rows = 256;
    const inF = 200; // group 32: six full groups and a ragged one of 8
    const out = 64;
    const gs = 32;
    const X = correlatedX(rows, inF, 31);
    const W = gaussian(out * inF, 32, 0.05);
    const H = hessianOf(X, rows, inF);
    const diag = Array.from({ length: inF }, (_, i) => H[i * inF + i]!);
    const g = gptqQuantize(backend, W, H, out, inF, { bits: 4, groupSize: gs, sym: true, actOrder: true, blockSize: 48 });
    const gIdx = g.gIdx!;
    expect(gIdx.length).toBe(inF);
    const counts = new Array(7).fill(0);
    for (const v of gIdx) counts[v]++;
    expect(counts).toEqual([32, 32, 32, 32, 32, 32, 8]);
    // group g holds the columns ranked g*gs .. g*gs+gs-1 by decreasing diag(H)
    const perm = Array.from({ length: inF }, (_, i) => i).sort((a, b) => diag[b]! - diag[a]! || a - b);
    for (let j = 0; j < inF; j++) expect(gIdx[perm[j]!]).toBe(Math.floor(j / gs));
    expect(g.scales.length).toBe(out * 7);
    const deq = dequantize({ outFeatures: out, inFeatures: inF, groupSize: gs, codes: g.codes, scales: g.scales, zeros: g.zeros, gIdx });
    expect(Array.from(deq)).toEqual(Array.from(g.dequant));
    expect(g.layer.gIdx).toBe(gIdx);
    expect(g.layer.codes).toBe(g.codes);
    // without act-order: no gIdx
    expect(gptqQuantize(backend, W, hessianOf(X, rows, inF), out, inF, { bits: 4, groupSize: gs, sym: true }).gIdx).toBeUndefined();
  });

  it("static groups: parameters are RTN's on the original weight; act-order gIdx is natural", () => {
    const rows = 384;
    const inF = 160;
    const out = 64;
    const gs = 32;
    const X = correlatedX(rows, inF, 41);
    const W = gaussian(out * inF, 42, 0.05);
    const H = hessianOf(X, rows, inF);
    const rtn = quantizeRtn(W, out, inF, { bits: 4, groupSize: gs, sym: false });
    const eRtn = reconstructionError(backend, W, rtn.dequant, X, rows, out, inF);
    for (const actOrder of [false, true]) {
      const g = gptqQuantize(backend, W, H.slice(), out, inF, { bits: 4, groupSize: gs, sym: false, actOrder, staticGroups: true });
      expect(Array.from(g.scales)).toEqual(Array.from(rtn.layer.scales));
      expect(Array.from(g.zeros)).toEqual(Array.from(rtn.layer.zeros));
      if (actOrder) expect(Array.from(g.gIdx!)).toEqual(Array.from({ length: inF }, (_, i) => Math.floor(i / gs)));
      else expect(g.gIdx).toBeUndefined();
      const deq = dequantize({ outFeatures: out, inFeatures: inF, groupSize: gs, codes: g.codes, scales: g.scales, zeros: g.zeros, gIdx: g.gIdx });
      expect(Array.from(deq)).toEqual(Array.from(g.dequant));
      const eG = reconstructionError(backend, W, g.dequant, X, rows, out, inF);
      expect(eG).toBeLessThan(0.5 * eRtn);
    }
  });

  it("lazy batching gives the codes of a plain port of the reference (≥ 99.9% identical), for any block size", () => {
    const rows = 256;
    const inF = 192;
    const out = 64;
    const X = correlatedX(rows, inF, 51);
    const W = gaussian(out * inF, 52, 0.05);
    const H = hessianOf(X, rows, inF);
    const cases = [
      { bits: 4, groupSize: -1, sym: false, actOrder: false },
      { bits: 4, groupSize: 32, sym: false, actOrder: true },
      { bits: 3, groupSize: 48, sym: true, actOrder: false }, // 48 does not divide the block sizes: groups cross blocks
      { bits: 4, groupSize: 40, sym: false, actOrder: true }, // ragged last group
    ];
    for (const c of cases) {
      const ref = plainFasterquant(W, H, out, inF, { ...c, damp: 0.01 });
      for (const blockSize of [128, 32, 7, inF]) {
        const g = gptqQuantize(backend, W, H.slice(), out, inF, { ...c, blockSize });
        const f = sameFraction(g.codes, ref);
        expect(f, `${JSON.stringify(c)} blockSize ${blockSize}`).toBeGreaterThanOrEqual(0.999);
      }
    }
  });

  it("dead inputs (diag H = 0) are zeroed and quantized to the zero point", () => {
    const rows = 128;
    const inF = 64;
    const out = 32;
    const X = correlatedX(rows, inF, 61);
    for (let r = 0; r < rows; r++) X[r * inF + 3] = X[r * inF + 40] = 0;
    const W = gaussian(out * inF, 62, 0.05);
    const H = hessianOf(X, rows, inF);
    for (const actOrder of [false, true]) {
      const g = gptqQuantize(backend, W, H.slice(), out, inF, { bits: 4, groupSize: 16, sym: false, actOrder });
      for (let r = 0; r < out; r++) {
        expect(g.dequant[r * inF + 3]).toBe(0);
        expect(g.dequant[r * inF + 40]).toBe(0);
      }
    }
  });

  it("raises damping when H is not positive definite, and then gives up with a clear error", () => {
    const rows = 32;
    const inF = 64; // rank ≤ 32: singular
    const out = 8;
    const X = gaussian(rows * inF, 71);
    const H = hessianOf(X, rows, inF);
    let mean = 0;
    for (let i = 0; i < inF; i++) mean += H[i * inF + i]! / inF;
    // H − 0.05·mean·I has negative eigenvalues; damp 0.01 is not enough, 0.1 is.
    for (let i = 0; i < inF; i++) H[i * inF + i] -= 0.05 * mean;
    const W = gaussian(out * inF, 72, 0.05);
    const warnings: string[] = [];
    const g = gptqQuantize(backend, W, H, out, inF, { bits: 4, groupSize: -1, sym: false, name: "l0.q", onWarning: (m) => warnings.push(m) });
    expect(g.dampRetries).toBe(1);
    expect(g.damp).toBeCloseTo(0.1, 10);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^l0\.q: Hessian not positive definite with damp 0\.01/);

    expect(() => gptqQuantize(backend, W, identity(inF, -1), out, inF, { bits: 4, groupSize: -1, sym: false, name: "l0.k" }))
      .toThrow(/l0\.k: Hessian is not positive definite even with damp 10/);
    expect(() => gptqQuantize(backend, W, new Float32Array(inF * inF), out, inF, { bits: 4, groupSize: -1, sym: false }))
      .toThrow(/Hessian is all zero/);
    const bad = W.slice();
    bad[10] = NaN;
    expect(() => gptqQuantize(backend, bad, identity(inF), out, inF, { bits: 4, groupSize: -1, sym: false })).toThrow(ModelError);
    expect(() => gptqQuantize(backend, W, identity(inF), out, inF, { bits: 4, groupSize: -1, sym: false, blockSize: 0 })).toThrow(UsageError);
  });

  it("reconstructionError is 0 for Q = W and grows with the perturbation", () => {
    const rows = 32;
    const inF = 16;
    const out = 8;
    const X = gaussian(rows * inF, 81);
    const W = gaussian(out * inF, 82);
    expect(reconstructionError(backend, W, W, X, rows, out, inF)).toBe(0);
    const Q = W.map((v) => v * 1.1);
    expect(reconstructionError(backend, W, Q, X, rows, out, inF)).toBeCloseTo(0.01, 5);
  });
});
