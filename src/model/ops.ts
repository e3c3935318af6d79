// Model-side helpers of the forward pass: the rotary tables (model data, built once per context, that
// Backend.rope reads) and a float64 e^x for the perplexity's log-sum-exp. The block ops themselves (norms,
// RoPE, attention, activations) are Backend methods (src/compute/backend.ts; native/src/blockops.cc);
// their TypeScript reference lives with the tests that compare against it (test/blockops.test.ts).

import type { RopeTable } from "../compute/backend.js";
import type { RopeSpec } from "./architectures.js";

// ---------------------------------------------------------------------------------------------
// exp

const EXP_N = 64;
/** 2^(j/64), j = 0..63, correctly rounded (computed exactly with BigInt: the 64th root of 2^j). */
const EXP_T = new Float64Array(EXP_N);
for (let j = 0; j < EXP_N; j++) {
  const P = 110;
  const X = 1n << BigInt(j + EXP_N * P); // (2^(j/64) · 2^P)^64
  let y = 1n << BigInt(P + 1);
  for (;;) {
    const y1 = (63n * y + X / y ** 63n) / 64n; // Newton for y^64 = X, from above
    if (y1 >= y) break;
    y = y1;
  }
  while ((y + 1n) ** 64n <= X) y++;
  while (y ** 64n > X) y--;
  const sh = y.toString(2).length - 53;
  let m = y >> BigInt(sh);
  const rem = y - (m << BigInt(sh));
  if (rem * 2n > 1n << BigInt(sh)) m++; // round to nearest (never a tie: 2^(j/64) is irrational for j > 0)
  EXP_T[j] = Number(m) * 2 ** (sh - P);
}
/** 2^e for e = -1040..1049 (index e + 1040). */
const EXP_P2 = new Float64Array(2090);
for (let i = 0; i < EXP_P2.length; i++) EXP_P2[i] = 2 ** (i - 1040);
const EXP_INV = EXP_N / Math.LN2;
const EXP_SHIFT = 6755399441055744; // 1.5·2^52: x + SHIFT − SHIFT rounds x to an integer
// ln2/64 split Cody–Waite style (fdlibm's ln2_hi has 32 trailing zero bits, so k·HI is exact).
const EXP_HI = 6.93147180369123816490e-1 / EXP_N;
const EXP_LO = 1.90821492927058770002e-10 / EXP_N;

/**
 * e^x in float64, about twice as fast as Math.exp under V8 and as accurate (≈1 ulp of a double, as
 * Math.exp): e^x = 2^(k/64) · e^r with |r| ≤ ln2/128, a correctly rounded table for 2^(j/64) and a
 * degree-5 polynomial for e^r − 1. Results rounded to float32 match Math.exp's (none differed in 4M
 * random samples); outside (−700, 700) and for NaN it is Math.exp itself.
 */
export function fastExp(x: number): number {
  if (!(x > -700 && x < 700)) return Math.exp(x);
  const k = x * EXP_INV + EXP_SHIFT - EXP_SHIFT;
  const r = x - k * EXP_HI - k * EXP_LO;
  const ki = k | 0;
  const r2 = r * r;
  const q = r + r2 * (0.5 + r * (1 / 6) + r2 * (1 / 24 + r * (1 / 120)));
  const t = EXP_T[ki & 63]!;
  return (t + t * q) * EXP_P2[(ki >> 6) + 1040]!;
}

/** Rotary tables for positions [0, maxPos): cos/sin[pos*half + i], computed as HF does (fp32 inv_freq). */
export class RopeTables implements RopeTable {
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly half: number;
  constructor(readonly headDim: number, readonly maxPos: number, rope: RopeSpec) {
    const half = headDim / 2;
    this.half = half;
    const invFreq = new Float32Array(half);
    for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(rope.theta, (2 * i) / headDim);
    const s = rope.scaling;
    if (s?.type === "llama3") {
      const lowWl = s.originalMaxPositions / s.lowFreqFactor;
      const highWl = s.originalMaxPositions / s.highFreqFactor;
      for (let i = 0; i < half; i++) {
        const f = invFreq[i]!;
        const wl = (2 * Math.PI) / f;
        if (wl < highWl) continue;
        if (wl > lowWl) invFreq[i] = f / s.factor;
        else {
          const smooth = (s.originalMaxPositions / wl - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
          invFreq[i] = (1 - smooth) * (f / s.factor) + smooth * f;
        }
      }
    }
    const posScale = s?.type === "linear" ? 1 / s.factor : 1;
    this.cos = new Float32Array(maxPos * half);
    this.sin = new Float32Array(maxPos * half);
    for (let p = 0; p < maxPos; p++) {
      const t = Math.fround(p * posScale);
      for (let i = 0; i < half; i++) {
        const a = Math.fround(t * invFreq[i]!);
        this.cos[p * half + i] = Math.cos(a);
        this.sin[p * half + i] = Math.sin(a);
      }
    }
  }
}
