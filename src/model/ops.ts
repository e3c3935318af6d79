// Element-wise and row-wise ops of the decoder forward pass (norms, activations, RoPE, softmax).
// These are O(n) next to the GEMMs that the Backend runs, so they stay in plain TypeScript.

import type { Activation, RopeSpec } from "./architectures.js";

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
      for (let i = 0; i < n; i++) x[i] = x[i]! / (1 + Math.exp(-x[i]!));
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
    for (let r = 0; r < rows; r++) {
      const p = pos0 + (r % T);
      const cb = p * half;
      for (let h = 0; h < nHeads; h++) {
        const o = r * stride + h * d;
        for (let i = 0; i < half; i++) {
          const c = this.cos[cb + i]!;
          const s = this.sin[cb + i]!;
          const a = x[o + i]!;
          const b = x[o + i + half]!;
          x[o + i] = a * c - b * s;
          x[o + i + half] = b * c + a * s;
        }
      }
    }
  }
}

/** Numerically safe in-place softmax of each row's first `len[r]` entries; the rest become 0. */
export function softmaxRowsCausal(s: Float32Array, rows: number, cols: number, visible: (r: number) => number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    const n = visible(r);
    let m = -Infinity;
    for (let j = 0; j < n; j++) if (s[o + j]! > m) m = s[o + j]!;
    let sum = 0;
    for (let j = 0; j < n; j++) {
      const e = Math.exp(s[o + j]! - m);
      s[o + j] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let j = 0; j < n; j++) s[o + j] = s[o + j]! * inv;
    for (let j = n; j < cols; j++) s[o + j] = 0;
  }
}
