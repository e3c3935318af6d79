// Element-wise and row-wise ops of the decoder forward pass (norms, activations, RoPE, softmax).
// These are O(n) next to the GEMMs that the Backend runs, so they stay in plain TypeScript; they are
// written as flat index loops (no closures, no subarray views) since for small models they are what
// the forward pass spends most of its time on.

import type { Activation, RopeSpec } from "./architectures.js";

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

/** out[r] = x[r] / rms(x[r]) * w   (HF LlamaRMSNorm, accumulated in float64). */
export function rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i]! * x[o + i]!;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = Math.fround(x[o + i]! * inv) * w[i]!;
  }
}

/** torch.nn.LayerNorm over the last dim (biased variance). */
export function layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let mean = 0;
    for (let i = 0; i < dim; i++) mean += x[o + i]!;
    mean /= dim;
    let v = 0;
    for (let i = 0; i < dim; i++) {
      const d = x[o + i]! - mean;
      v += d * d;
    }
    const inv = 1 / Math.sqrt(v / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = (x[o + i]! - mean) * inv * w[i]! + (b ? b[i]! : 0);
  }
}

export function activate(kind: Activation, x: Float32Array): void {
  const n = x.length;
  switch (kind) {
    case "silu":
      for (let i = 0; i < n; i++) {
        const v = x[i]!;
        x[i] = v / (1 + fastExp(-v));
      }
      return;
    case "relu":
      for (let i = 0; i < n; i++) if (x[i]! < 0) x[i] = 0;
      return;
    case "gelu_new": {
      const c = Math.sqrt(2 / Math.PI);
      for (let i = 0; i < n; i++) {
        const v = x[i]!;
        x[i] = 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v)));
      }
      return;
    }
    case "gelu":
      for (let i = 0; i < n; i++) x[i] = 0.5 * x[i]! * (1 + erf(x[i]! / Math.SQRT2));
      return;
  }
}

/** gate[i] = act(gate[i]) · up[i] (the gated MLP), bit-identical to activate() followed by the product. */
export function activateMul(kind: Activation, gate: Float32Array, up: Float32Array): void {
  const n = gate.length;
  if (kind === "silu") {
    for (let i = 0; i < n; i++) {
      const v = gate[i]!;
      gate[i] = Math.fround(v / (1 + fastExp(-v))) * up[i]!;
    }
    return;
  }
  activate(kind, gate);
  for (let i = 0; i < n; i++) gate[i] = gate[i]! * up[i]!;
}

/** Abramowitz–Stegun 7.1.26 is too coarse for exact GELU; this uses a high-precision series/continued fraction. */
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    // Maclaurin series: converges quickly for |x| < 2.5 in double precision.
    let sum = x;
    let term = x;
    const x2 = x * x;
    for (let n = 1; n < 60; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Continued fraction for erfc at large |x|.
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return x > 0 ? 1 - erfc : erfc - 1;
}

/** Rotary tables for positions [0, maxPos): cos/sin[pos*half + i], computed as HF does (fp32 inv_freq). */
export class RopeTables {
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

  /**
   * Rotate (rotate_half layout) every head of x [rows, nHeads*headDim] in place; row r has position pos0 + (r mod T).
   */
  apply(x: Float32Array, rows: number, T: number, nHeads: number, pos0: number): void {
    const d = this.headDim;
    const half = this.half;
    const stride = nHeads * d;
    const cos = this.cos;
    const sin = this.sin;
    for (let r = 0; r < rows; r++) {
      const p = pos0 + (r % T);
      const cb = p * half;
      for (let h = 0; h < nHeads; h++) {
        const o = r * stride + h * d;
        for (let i = 0; i < half; i++) {
          const c = cos[cb + i]!;
          const s = sin[cb + i]!;
          const a = x[o + i]!;
          const b = x[o + i + half]!;
          x[o + i] = a * c - b * s;
          x[o + i + half] = b * c + a * s;
        }
      }
    }
  }
}

/**
 * Causal softmax of `rows` rows starting at element `offset`, row r seeing its first `firstVisible + r`
 * entries (capped at cols), without the final scaling: the visible entries become e^(s − max) and
 * inv[invOffset + r] = 1 / Σ e, so the caller applies the scale later (to the much smaller S·V).
 */
export function softmaxCausalUnscaled(s: Float32Array, offset: number, rows: number, cols: number, firstVisible: number, inv: Float64Array, invOffset: number): void {
  for (let r = 0; r < rows; r++) {
    const o = offset + r * cols;
    const n = Math.min(cols, firstVisible + r);
    const end = o + n;
    let m = -Infinity;
    for (let j = o; j < end; j++) if (s[j]! > m) m = s[j]!;
    let sum = 0;
    for (let j = o; j < end; j++) {
      const e = fastExp(s[j]! - m);
      s[j] = e;
      sum += e;
    }
    inv[invOffset + r] = 1 / sum;
    if (n < cols) s.fill(0, end, o + cols);
  }
}

