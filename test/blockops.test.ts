// The Backend's block ops (native/src/blockops.cc through CpuBackend): RMSNorm, LayerNorm, RoPE, causal
// attention (GQA, MQA, with and without a KV cache, chunked prompts, decoding), activations and the
// residual add, against the TypeScript reference they replaced (below: the forward pass's code before the
// ops moved behind the Backend, attention on Backend.gemm), on random inputs, with the AVX2 kernels and the
// portable scalar ones, on 1 and 2 threads. Where the native op performs the same float64 steps as the
// reference (RoPE, activations, e^x, norms up to the order of a float64 sum) the results are bit-identical;
// attention's fp32 dot products are summed in another order than sgemm's: fp32 rounding.
// The AVX-512 kernels (attention, SiLU, row log-sum-exp) must give the AVX2 kernels' bits exactly: compared
// byte for byte over many shapes below (skipped on CPUs without AVX-512).

import { afterAll, describe, expect, it } from "vitest";
import { mulberry32 as rng } from "../src/calibration/sampler.js";
import type { ActivationKind, Backend, KvCache } from "../src/compute/backend.js";
import { getBackend, type CpuBackend } from "../src/compute/index.js";
import { RopeTables, fastExp } from "../src/model/ops.js";
import { BackendError } from "../src/util/errors.js";

const be = getBackend("cpu") as CpuBackend;
const SIMD = be.kernelInfo().simdAvailable;
const AVX512 = be.kernelInfo().simdLevels.includes("avx512");
const threads0 = be.getThreads();
afterAll(() => {
  be.setSimd(true);
  be.setThreads(threads0);
});

// ---------------------------------------------------------------------------------------------
// The TypeScript reference (src/model/ops.ts and forward.ts before the block ops became Backend methods)

function rmsNormRef(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[o + i]! * x[o + i]!;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = Math.fround(x[o + i]! * inv) * w[i]!;
  }
}

function layerNormRef(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void {
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

function erfRef(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
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
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return x > 0 ? 1 - erfc : erfc - 1;
}

function activateRef(kind: ActivationKind, x: Float32Array): void {
  const n = x.length;
  switch (kind) {
    case "silu":
      for (let i = 0; i < n; i++) x[i] = x[i]! / (1 + fastExp(-x[i]!));
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
      for (let i = 0; i < n; i++) x[i] = 0.5 * x[i]! * (1 + erfRef(x[i]! / Math.SQRT2));
      return;
  }
}

function activateMulRef(kind: ActivationKind, gate: Float32Array, up: Float32Array): void {
  if (kind === "silu") {
    for (let i = 0; i < gate.length; i++) {
      const v = gate[i]!;
      gate[i] = Math.fround(v / (1 + fastExp(-v))) * up[i]!;
    }
    return;
  }
  activateRef(kind, gate);
  for (let i = 0; i < gate.length; i++) gate[i] = gate[i]! * up[i]!;
}

function ropeRef(t: RopeTables, x: Float32Array, rows: number, T: number, nHeads: number, pos0: number): void {
  const d = t.headDim;
  const half = t.half;
  for (let r = 0; r < rows; r++) {
    const cb = (pos0 + (r % T)) * half;
    for (let h = 0; h < nHeads; h++) {
      const o = r * nHeads * d + h * d;
      for (let i = 0; i < half; i++) {
        const c = t.cos[cb + i]!;
        const s = t.sin[cb + i]!;
        const a = x[o + i]!;
        const b = x[o + i + half]!;
        x[o + i] = a * c - b * s;
        x[o + i + half] = b * c + a * s;
      }
    }
  }
}

function softmaxCausalUnscaled(s: Float32Array, offset: number, rows: number, cols: number, firstVisible: number, inv: Float64Array, invOffset: number): void {
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

interface Shape {
  B: number;
  T: number;
  nH: number;
  nKv: number;
  d: number;
}

/** forward.ts's attention before it became Backend.attention: stacked GQA heads, 128-row causal chunks, sgemm. */
function attentionRef(backend: Backend, s: Shape, q: Float32Array, k: Float32Array, v: Float32Array, pos0: number, cache: KvCache | undefined, out: Float32Array): void {
  const { B, T, nH, nKv, d } = s;
  const CHUNK = 128;
  const qDim = nH * d;
  const kvDim = nKv * d;
  const G = nH / nKv;
  const L = pos0 + T;
  const Tc = Math.min(T, CHUNK);
  const Kh = new Float32Array(L * d);
  const Vh = new Float32Array(L * d);
  const scale = 1 / Math.sqrt(d);
  const inv = new Float64Array(G * Tc);
  for (let b = 0; b < B; b++) {
    let kSrc = k, vSrc = v, kRow0 = b * T;
    if (cache) {
      cache.k.set(k.subarray(0, T * kvDim), pos0 * kvDim);
      cache.v.set(v.subarray(0, T * kvDim), pos0 * kvDim);
      kSrc = cache.k;
      vSrc = cache.v;
      kRow0 = 0;
    }
    for (let kh = 0; kh < nKv; kh++) {
      for (let j = 0; j < L; j++) {
        const src = (kRow0 + j) * kvDim + kh * d;
        for (let i = 0; i < d; i++) {
          Kh[j * d + i] = kSrc[src + i]!;
          Vh[j * d + i] = vSrc[src + i]!;
        }
      }
      for (let t0 = 0; t0 < T; t0 += Tc) {
        const tc = Math.min(Tc, T - t0);
        const Lc = pos0 + t0 + tc;
        const M = G * tc;
        const Qg = new Float32Array(M * d);
        for (let g = 0; g < G; g++)
          for (let t = 0; t < tc; t++)
            for (let i = 0; i < d; i++) Qg[(g * tc + t) * d + i] = q[(b * T + t0 + t) * qDim + (kh * G + g) * d + i]!;
        const S = new Float32Array(M * Lc);
        backend.gemm(false, true, M, Lc, d, scale, Qg, Kh.subarray(0, Lc * d), 0, S);
        for (let g = 0; g < G; g++) softmaxCausalUnscaled(S, g * tc * Lc, tc, Lc, pos0 + t0 + 1, inv, g * tc);
        const Og = new Float32Array(M * d);
        backend.gemm(false, false, M, d, Lc, 1, S, Vh.subarray(0, Lc * d), 0, Og);
        for (let g = 0; g < G; g++)
          for (let t = 0; t < tc; t++)
            for (let i = 0; i < d; i++) out[(b * T + t0 + t) * qDim + (kh * G + g) * d + i] = Og[(g * tc + t) * d + i]! * inv[g * tc + t]!;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

function randn(n: number, seed: number, scale = 1, mean = 0): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(r(), 1e-12);
    const v = r();
    const m = Math.sqrt(-2 * Math.log(u));
    a[i] = mean + scale * m * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) a[i + 1] = mean + scale * m * Math.sin(2 * Math.PI * v);
  }
  return a;
}

/** Largest |a − b| / max(|b|, floor) over the elements. */
function maxRel(a: Float32Array, b: Float32Array, floor = 1e-6): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i]! - b[i]!) / Math.max(Math.abs(b[i]!), floor);
    if (!(e <= m)) m = Number.isNaN(e) ? Infinity : e;
  }
  return m;
}

/** ‖a − b‖₂ / ‖b‖₂ per row of `cols`, the worst row. */
function worstRowRel(a: Float32Array, b: Float32Array, cols: number): number {
  let worst = 0;
  for (let r = 0; r < a.length / cols; r++) {
    let num = 0;
    let den = 0;
    for (let i = r * cols; i < (r + 1) * cols; i++) {
      num += (a[i]! - b[i]!) ** 2;
      den += b[i]! ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / Math.max(den, 1e-30)));
  }
  return worst;
}

function bitsEqual(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let n = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] === ub[i]) n++;
  return n;
}

const MODES: { simd: boolean; threads: number }[] = [
  ...(SIMD ? [{ simd: true, threads: 1 }, { simd: true, threads: 2 }] : []),
  { simd: false, threads: 1 },
  { simd: false, threads: 2 },
];

describe.each(MODES)("block ops (SIMD $simd (the best level), $threads thread(s))", ({ simd, threads }) => {
  const setup = () => {
    expect(be.setSimd(simd)).toBe(simd);
    be.setThreads(threads);
  };

  it("fastExp: the addon's float64 e^x is the reference's, bit for bit", () => {
    setup();
    const r = rng(1);
    for (let i = 0; i < 20000; i++) {
      const x = (r() - 0.5) * (i < 10000 ? 40 : 1416);
      // (outside (−700, 700) both fall back to the platform's exp: Math.exp and libm may differ by an ulp)
      if (Math.abs(x) < 700) expect(be.nativeExp(x)).toBe(fastExp(x));
      else expect(Math.abs(be.nativeExp(x) - fastExp(x))).toBeLessThanOrEqual(1e-15 * fastExp(x) + 1e-300);
    }
  });

  it.each([
    [1, 64],
    [7, 172],
    [300, 256],
    [65, 7],
    [3, 4096],
  ])("rmsNorm %i rows × %i (and in place)", (rows, dim) => {
    setup();
    const x = randn(rows * dim, rows + dim, 3, 0.5);
    const w = randn(dim, 7);
    const ref = new Float32Array(rows * dim);
    rmsNormRef(x, rows, dim, w, 1e-5, ref);
    const out = new Float32Array(rows * dim);
    be.rmsNorm(x, rows, dim, w, 1e-5, out);
    expect(maxRel(out, ref)).toBeLessThan(3e-7);
    expect(bitsEqual(out, ref)).toBeGreaterThan(0.999 * ref.length);
    be.rmsNorm(x, rows, dim, w, 1e-5, x);
    expect(bitsEqual(x, out)).toBe(out.length);
  });

  it.each([true, false])("layerNorm (bias %s)", (bias) => {
    setup();
    for (const [rows, dim] of [[5, 64], [200, 768], [2, 13]] as const) {
      const x = randn(rows * dim, dim, 2, 3);
      const w = randn(dim, 3);
      const b = bias ? randn(dim, 4) : undefined;
      const ref = new Float32Array(rows * dim);
      layerNormRef(x, rows, dim, w, b, 1e-5, ref);
      const out = new Float32Array(rows * dim);
      be.layerNorm(x, rows, dim, w, b, 1e-5, out);
      expect(maxRel(out, ref, 1e-4)).toBeLessThan(1e-6);
      expect(bitsEqual(out, ref)).toBeGreaterThan(0.999 * ref.length);
    }
  });

  it.each([
    [8, 4, 17, 3, 0],
    [64, 2, 40, 2, 5],
    [64, 32, 1, 1, 300],
    [128, 8, 9, 1, 100],
    [6, 3, 5, 2, 1],
  ])("rope headDim %i × %i heads, T %i, B %i, pos0 %i: bit-identical", (d, nH, T, B, pos0) => {
    setup();
    const tables = new RopeTables(d, 512, { theta: 10000, scaling: null });
    const rows = B * T;
    const x = randn(rows * nH * d, d * nH + T, 2);
    const ref = x.slice();
    ropeRef(tables, ref, rows, T, nH, pos0);
    be.rope(x, rows, T, nH, pos0, tables);
    expect(bitsEqual(x, ref)).toBe(ref.length);
  });

  it.each(["silu", "relu", "gelu_new", "gelu"] as const)("%s and %s·up", (kind) => {
    setup();
    const n = 100_003;
    const x = randn(n, 11, 4);
    x[5] = 0;
    x[6] = -800; // e^800 in silu: outside the polynomial's range
    x[7] = 90;
    const up = randn(n, 12);
    const ref = x.slice();
    activateRef(kind, ref);
    const got = x.slice();
    be.activate(kind, got);
    const refMul = x.slice();
    activateMulRef(kind, refMul, up);
    const gotMul = x.slice();
    be.activateMul(kind, gotMul, up);
    expect(maxRel(got, ref, 1e-30)).toBeLessThan(kind === "gelu_new" ? 2.5e-7 : 1e-12);
    expect(maxRel(gotMul, refMul, 1e-30)).toBeLessThan(kind === "gelu_new" ? 2.5e-7 : 1e-12);
    if (kind !== "gelu_new") {
      expect(bitsEqual(got, ref)).toBe(n);
      expect(bitsEqual(gotMul, refMul)).toBe(n);
    }
  });

  it("add (and in place)", () => {
    setup();
    const a = randn(70_001, 1);
    const b = randn(70_001, 2);
    const ref = a.map((v, i) => v + b[i]!);
    const out = new Float32Array(a.length);
    be.add(a, b, out);
    expect(bitsEqual(out, ref)).toBe(ref.length);
    be.add(a, b, a);
    expect(bitsEqual(a, ref)).toBe(ref.length);
  });

  it.each([
    { B: 2, T: 37, nH: 4, nKv: 2, d: 64 },
    { B: 1, T: 300, nH: 8, nKv: 4, d: 8 },
    { B: 3, T: 70, nH: 4, nKv: 4, d: 32 },
    { B: 1, T: 33, nH: 6, nKv: 1, d: 16 },
    { B: 2, T: 9, nH: 2, nKv: 1, d: 12 },
    { B: 1, T: 1, nH: 4, nKv: 2, d: 64 },
    { B: 1, T: 140, nH: 2, nKv: 2, d: 128 },
  ])("attention B $B × T $T, $nH/$nKv heads × $d (no cache)", (s) => {
    setup();
    const rows = s.B * s.T;
    const q = randn(rows * s.nH * s.d, 1, 1.5);
    const k = randn(rows * s.nKv * s.d, 2, 1.5);
    const v = randn(rows * s.nKv * s.d, 3);
    const ref = new Float32Array(rows * s.nH * s.d);
    attentionRef(be, s, q, k, v, 0, undefined, ref);
    const out = new Float32Array(ref.length).fill(NaN);
    be.attention(q, k, v, { B: s.B, T: s.T, nHeads: s.nH, nKvHeads: s.nKv, headDim: s.d, pos0: 0 }, undefined, out);
    expect(worstRowRel(out, ref, s.d)).toBeLessThan(2e-6);
  });

  it.each([
    { nH: 4, nKv: 2, d: 64 },
    { nH: 8, nKv: 4, d: 8 },
    { nH: 3, nKv: 1, d: 20 },
  ])("attention with a KV cache, $nH/$nKv heads × $d: prompt, decoded tokens, a later chunk", (s) => {
    setup();
    const kvDim = s.nKv * s.d;
    const cap = 200;
    const cacheRef: KvCache = { k: new Float32Array(cap * kvDim), v: new Float32Array(cap * kvDim), capacity: cap };
    const cache: KvCache = { k: new Float32Array(cap * kvDim), v: new Float32Array(cap * kvDim), capacity: cap };
    let pos0 = 0;
    let seed = 10;
    for (const T of [130, 1, 1, 1, 7, 1, 40]) {
      const q = randn(T * s.nH * s.d, seed++, 1.5);
      const k = randn(T * kvDim, seed++, 1.5);
      const v = randn(T * kvDim, seed++);
      const ref = new Float32Array(T * s.nH * s.d);
      attentionRef(be, { B: 1, T, ...s }, q, k, v, pos0, cacheRef, ref);
      const out = new Float32Array(ref.length);
      be.attention(q, k, v, { B: 1, T, nHeads: s.nH, nKvHeads: s.nKv, headDim: s.d, pos0 }, cache, out);
      expect(worstRowRel(out, ref, s.d)).toBeLessThan(2e-6);
      pos0 += T;
    }
    expect(bitsEqual(cache.k, cacheRef.k)).toBe(cache.k.length);
    expect(bitsEqual(cache.v, cacheRef.v)).toBe(cache.v.length);
  });
});

/** Runs fn at the avx2 and the avx512 level; the outputs it returns must be the same bytes. */
function sameAtBothLevels(fn: () => ArrayBufferView[], what: string): void {
  const out: Uint8Array[][] = [];
  for (const level of ["avx2", "avx512"] as const) {
    expect(be.setSimd(level)).toBe(level);
    out.push(fn().map((a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)));
  }
  for (let i = 0; i < out[0]!.length; i++) {
    const [a, b] = [out[0]![i]!, out[1]![i]!];
    let diff = 0;
    for (let j = 0; j < a.length; j++) if (a[j] !== b[j]) diff++;
    expect(diff, `${what}: output ${i}, bytes that differ between avx2 and avx512`).toBe(0);
  }
}

function lse(x: Float32Array, rows: number, V: number): ArrayBufferView[] {
  const max = new Float32Array(rows);
  const sum = new Float64Array(rows);
  const top = new Int32Array(rows);
  be.rowLse(x, rows, V, max, sum, top);
  return [max, sum, top];
}

describe.skipIf(!AVX512)("AVX-512 kernels: the AVX2 kernels' bits", () => {
  afterAll(() => {
    be.setSimd(true);
    be.setThreads(threads0);
  });

  // Head dims 8..128 (24: a last 8-column P·V pass), GQA 1/2/4, T to 600 (ragged against the 32-row query
  // chunks, the 4-row P·V groups, the 2-row and 4-pair score blocks and the 4-key sums), B > 1.
  it("attention without a cache: random shapes", () => {
    const r = rng(20);
    const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
    let calls = 0;
    for (const d of [8, 16, 24, 64, 128])
      for (const G of [1, 2, 4])
        for (let rep = 0; rep < 4; rep++) {
          const T = rep === 0 ? pick([1, 2, 3, 5, 31, 33]) : 1 + Math.floor(r() * (d >= 64 ? 600 : 300));
          const B = pick([1, 1, 2, 3]);
          const nKv = pick([1, 2]);
          const nH = nKv * G;
          const rows = B * T;
          const seed = 1000 * d + 100 * G + rep;
          // scale 3: scores spread over tens of units, so the softmax's e^x covers a wide range (and underflows)
          const q = randn(rows * nH * d, seed, 3);
          const k = randn(rows * nKv * d, seed + 1, 3);
          const v = randn(rows * nKv * d, seed + 2);
          const shape = { B, T, nHeads: nH, nKvHeads: nKv, headDim: d, pos0: 0 };
          be.setThreads(rep % 2 === 0 ? 1 : 2);
          sameAtBothLevels(() => {
            const out = new Float32Array(rows * nH * d);
            be.attention(q, k, v, shape, undefined, out);
            return [out];
          }, `d ${d}, ${nH}/${nKv} heads, B ${B}, T ${T}`);
          calls++;
        }
    expect(calls).toBe(60);
  });

  it("attention with a KV cache: prompt chunks and decoding from pos0 > 0", () => {
    for (const [nH, nKv, d] of [[4, 2, 64], [8, 2, 16], [4, 4, 128], [6, 3, 8], [2, 1, 24]] as const) {
      const kvDim = nKv * d;
      const cap = 640;
      const outs: Float32Array[][] = [[], []];
      const caches = [0, 1].map(() => ({ k: new Float32Array(cap * kvDim), v: new Float32Array(cap * kvDim), capacity: cap }) as KvCache);
      let pos0 = 0;
      let seed = 50 + d;
      for (const T of [37, 1, 1, 3, 130, 1, 64, 7, 300]) {
        const q = randn(T * nH * d, seed++, 2);
        const k = randn(T * kvDim, seed++, 2);
        const v = randn(T * kvDim, seed++);
        (["avx2", "avx512"] as const).forEach((level, i) => {
          be.setSimd(level);
          const out = new Float32Array(T * nH * d);
          be.attention(q, k, v, { B: 1, T, nHeads: nH, nKvHeads: nKv, headDim: d, pos0 }, caches[i], out);
          outs[i]!.push(out);
        });
        pos0 += T;
      }
      const a = outs[0]!, b = outs[1]!;
      for (let i = 0; i < a.length; i++) expect(bitsEqual(b[i]!, a[i]!), `${nH}/${nKv} × ${d}, call ${i}`).toBe(a[i]!.length);
    }
  });

  it("attention on constant, tied and extreme scores, NaN and ∞ inputs", () => {
    const [B, T, nH, nKv, d] = [2, 70, 4, 2, 64];
    const rows = B * T;
    const q = randn(rows * nH * d, 5, 1);
    const k = randn(rows * nKv * d, 6, 1);
    const v = randn(rows * nKv * d, 7);
    const qBig = q.map((x) => x * 40); // scores in the thousands: e^(s − max) is 0 for all but a few keys
    const kSame = k.map((_, i) => k[i % (nKv * d)]!); // every key equal: ties everywhere
    const zeros = new Float32Array(q.length); // all scores 0
    const qNaN = q.slice();
    qNaN[5 * nH * d + 3] = NaN; // one query row of head 0 NaN
    const vInf = v.slice();
    vInf[40 * nKv * d + 7] = Infinity; // 0 · ∞ in the rows of a 4-row P·V group that cannot see key 40
    for (const [name, qq, kk, vv] of [["big", qBig, k, v], ["ties", q, kSame, v], ["zero q", zeros, k, v], ["NaN q", qNaN, k, v], ["∞ v", q, k, vInf]] as const)
      sameAtBothLevels(() => {
        const out = new Float32Array(rows * nH * d);
        be.attention(qq, kk, vv, { B, T, nHeads: nH, nKvHeads: nKv, headDim: d, pos0: 0 }, undefined, out);
        return [out];
      }, name);
  });

  it("silu and silu·up: ragged lengths, out-of-range values, 1 and 2 threads", () => {
    for (const threads of [1, 2])
      for (const n of [1, 3, 4, 7, 8, 9, 15, 16, 17, 1000, 20_001, 100_003]) {
        be.setThreads(threads);
        const x = randn(n, n + threads, 6);
        if (n > 40) {
          x[n - 9] = -800; // |x| ≥ 700: ExpPd's scalar branch, late in the array
          x[n - 30] = 750;
          x[Math.floor(n / 2)] = 0;
        }
        const up = randn(n, n + 7);
        sameAtBothLevels(() => {
          const a = x.slice();
          be.activate("silu", a);
          const b = x.slice();
          be.activateMul("silu", b, up);
          return [a, b];
        }, `n ${n}, ${threads} thread(s)`);
      }
  });

  it("rowLse: vocabularies with and without a tail, −∞, NaN, a wide spread", () => {
    for (const V of [7, 8, 100, 512, 1003, 4096, 32000, 50257])
      for (const rows of [1, 3, 4, 9]) {
        const x = randn(rows * V, V + rows, 5);
        if (rows >= 4) {
          x[V + 3] = -Infinity;
          x[2 * V + Math.floor(V / 2)] = NaN;
          for (let j = 0; j < V; j += 3) x[3 * V + j] = -900 + j / V; // x − max ≤ −700: ExpScalar
        }
        be.setThreads(rows % 2 === 0 ? 2 : 1);
        sameAtBothLevels(() => lse(x, rows, V), `V ${V}, ${rows} rows`);
      }
  });

  it("rowLse: e^x of single elements, through sums of 1 + e^(x − max)", () => {
    // A sum's last bit hides a term's last-bit differences, so each row here is one 8-lane block holding
    // the max (e^0 = 1), one probe x with e^(x − max) in (0.5, 1) and six terms of ~e^−690 (lost in the
    // sum): the sum 1 + e^(x − max) then shows a changed last bit of the probe's e^x about half the time.
    const rows = 40_000;
    const x = new Float32Array(rows * 8).fill(-690);
    const r = rng(77);
    for (let i = 0; i < rows; i++) {
      const lane = i % 8;
      x[i * 8 + lane] = -r() * 0.69;
      x[i * 8 + ((lane + 1 + (i % 7)) % 8)] = 0;
    }
    be.setThreads(1);
    sameAtBothLevels(() => lse(x, rows, 8), "probes");
  });
});

describe("block ops: argument checks", () => {
  it("refuses wrong sizes, an overfull cache, pos0 without a cache, aliasing", () => {
    const s = { B: 1, T: 4, nHeads: 2, nKvHeads: 1, headDim: 8, pos0: 0 };
    const q = new Float32Array(4 * 16);
    const kv = new Float32Array(4 * 8);
    const out = new Float32Array(4 * 16);
    expect(() => be.attention(q, kv, kv.slice(), s, undefined, new Float32Array(10))).toThrow(BackendError);
    expect(() => be.attention(q, kv, kv.slice(), { ...s, pos0: 2 }, undefined, out)).toThrow(/pos0 must be 0 without a KV cache/);
    const small: KvCache = { k: new Float32Array(5 * 8), v: new Float32Array(5 * 8), capacity: 5 };
    expect(() => be.attention(q, kv, kv.slice(), { ...s, pos0: 2 }, small, out)).toThrow(/capacity 5 exceeded/);
    expect(() => be.attention(q, kv, kv.slice(), { ...s, B: 2, T: 2 }, small, out)).toThrow(/single sequence/);
    expect(() => be.attention(q, kv, kv.slice(), { ...s, nKvHeads: 3 }, undefined, out)).toThrow(BackendError);
    expect(() => be.attention(q, kv, kv.slice(), s, undefined, q)).toThrow(/must not share memory/);
    const x = new Float32Array(8);
    expect(() => be.rmsNorm(x, 2, 4, new Float32Array(3), 1e-5, x)).toThrow(/w has 3 elements/);
    const buf = new Float32Array(12);
    expect(() => be.rmsNorm(buf.subarray(0, 8), 2, 4, new Float32Array(4), 1e-5, buf.subarray(2, 10))).toThrow(/out must be x itself/);
    const tables = new RopeTables(8, 4, { theta: 10000, scaling: null });
    expect(() => be.rope(new Float32Array(3 * 8), 3, 3, 1, 2, tables)).toThrow(/do not cover positions up to 5/);
    expect(() => be.activateMul("silu", x, new Float32Array(7))).toThrow(BackendError);
    expect(() => be.add(x, x, new Float32Array(9))).toThrow(BackendError);
  });
});
