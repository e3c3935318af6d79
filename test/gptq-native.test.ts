// GPTQ's column loop in native code (native/src/gptqloop.cc, Backend.gptqColumns) against the
// TypeScript reference (algorithms/gptq.ts gptqColumnsTs, what a backend without gptqColumns runs):
// bit for bit — codes, scales, zeros, g_idx, outliers, the dequantized weight and the loss — on random
// and on real (stories260K, block 0, its calibration Hessians) weights, over bits 2/3/4/8, per-row,
// dynamic and static groups (ragged ones too), sym/asym, act-order, outliers and dead columns. And the
// shared damped inverse Cholesky factor (gptqFactor) against one made per Linear.

import { describe, expect, it } from "vitest";

import { type GptqFactor, GptqHessian, type GptqOptions, type GptqResult, gptqColumnsTs, gptqFactor, gptqQuantize } from "../algorithms/gptq.js";
import { mulberry32 as rng, sampleWindows } from "../src/calibration/sampler.js";
import { resolveText } from "../src/calibration/texts.js";
import type { Backend, GptqColumnsJob } from "../src/compute/backend.js";
import { getBackend } from "../src/compute/index.js";
import { blockForward, createContext } from "../src/model/forward.js";
import { embedTokens, loadBlockWeights, loadGlobalWeights, openModel } from "../src/model/model.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { ModelError } from "../src/util/errors.js";
import { gaussianArray, STORIES_VENDORED } from "./helpers.js";

const native = getBackend("cpu");
native.setThreads(1);

/** The same backend without gptqColumns: gptqQuantize then runs its TypeScript loop. */
const reference: Backend = new Proxy(native, {
  get(target, key) {
    if (key === "gptqColumns") return undefined;
    const v = Reflect.get(target, key, target) as unknown;
    return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
  },
});

function bytes(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

const gaussian = gaussianArray;

/** Correlated activations with uneven column scales; `dead` columns never activated. */
function hessian(rows: number, inF: number, seed: number, dead: number[] = []): Float32Array {
  const k = 12;
  const Z = gaussian(rows * k, seed);
  const B = gaussian(k * inF, seed + 1);
  const X = gaussian(rows * inF, seed + 2, 0.1);
  native.gemm(false, false, rows, inF, k, 1, Z, B, 1, X);
  const u = rng(seed + 3);
  for (let c = 0; c < inF; c++) {
    const s = dead.includes(c) ? 0 : 0.2 + 2 * u() ** 3;
    for (let r = 0; r < rows; r++) X[r * inF + c]! *= s;
  }
  const h = new GptqHessian(native, inF);
  h.addBatch(X, rows);
  return h.H;
}

/** Every output of two results equal bit for bit. */
function expectSame(a: GptqResult, b: GptqResult, what: string): void {
  expect(bytes(a.codes).equals(bytes(b.codes)), `${what}: codes`).toBe(true);
  expect(bytes(a.scales).equals(bytes(b.scales)), `${what}: scales`).toBe(true);
  expect(bytes(a.zeros).equals(bytes(b.zeros)), `${what}: zeros`).toBe(true);
  expect(a.gIdx === undefined, `${what}: gIdx presence`).toBe(b.gIdx === undefined);
  if (a.gIdx && b.gIdx) expect(bytes(a.gIdx).equals(bytes(b.gIdx)), `${what}: gIdx`).toBe(true);
  expect(bytes(a.dequant).equals(bytes(b.dequant)), `${what}: dequant`).toBe(true);
  expect(Object.is(a.loss, b.loss), `${what}: loss ${a.loss} vs ${b.loss}`).toBe(true);
  expect([a.damp, a.dampRetries]).toEqual([b.damp, b.dampRetries]);
  const oa = a.layer.outliers;
  const ob = b.layer.outliers;
  expect(oa === undefined, `${what}: outliers presence`).toBe(ob === undefined);
  if (oa && ob) {
    expect(bytes(oa.indptr).equals(bytes(ob.indptr)), `${what}: outlier indptr`).toBe(true);
    expect(bytes(oa.indices).equals(bytes(ob.indices)), `${what}: outlier indices`).toBe(true);
    expect(bytes(oa.values).equals(bytes(ob.values)), `${what}: outlier values`).toBe(true);
  }
}

interface Case {
  bits: number;
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  staticGroups: boolean;
  outlierFraction: number;
  blockSize: number;
}

function cases(groupSizes: number[], blockSizes: number[]): Case[] {
  const all: Case[] = [];
  let i = 0;
  for (const bits of [2, 3, 4, 8])
    for (const groupSize of groupSizes)
      for (const sym of [true, false])
        for (const actOrder of [false, true])
          for (const staticGroups of groupSize === -1 ? [false] : [false, true])
            for (const outlierFraction of [0, 0.02])
              all.push({ bits, groupSize, sym, actOrder, staticGroups, outlierFraction, blockSize: blockSizes[i++ % blockSizes.length]! });
  return all;
}

const label = (c: Case): string =>
  `${c.bits}-bit ${c.groupSize === -1 ? "per-row" : `g${c.groupSize}`}${c.staticGroups ? " static" : ""} ${c.sym ? "sym" : "asym"}` +
  `${c.actOrder ? " act-order" : ""}${c.outlierFraction ? ` outliers ${c.outlierFraction}` : ""} block ${c.blockSize}`;

/** Native and TypeScript loops on one weight and Hessian, every case; returns how many ran. */
function compareAll(W: Float32Array, H: Float32Array, out: number, inF: number, list: Case[], what: string): number {
  for (const c of list) {
    const opts: GptqOptions = { ...c, damp: 0.01 };
    const got = gptqQuantize(native, W, H.slice(), out, inF, opts);
    const want = gptqQuantize(reference, W, H.slice(), out, inF, opts);
    expectSame(got, want, `${what} ${label(c)}`);
  }
  return list.length;
}

describe("native GPTQ column loop = the TypeScript loop, bit for bit", () => {
  it("native addon exports it", () => {
    expect(typeof native.gptqColumns).toBe("function");
    expect((reference as { gptqColumns?: unknown }).gptqColumns).toBeUndefined();
  });

  it("random weights: 2/3/4/8 bits × per-row, g16, ragged g24 × sym/asym × act-order × static × outliers × block sizes; dead columns", () => {
    const out = 40;
    const inF = 100; // g24: 4 full groups and a ragged one of 4; g16 ragged too
    const W = gaussian(out * inF, 11, 0.05);
    for (let i = 0; i < 30; i++) W[(i * 37) % W.length] = 0.6 * (i % 2 ? 1 : -1); // a few large weights
    const H = hessian(300, inF, 21, [3, 50, 99]);
    const n = compareAll(W, H, out, inF, cases([-1, 16, 24], [16, 37, 128]), "random");
    expect(n).toBe(4 * (2 * 2 * 2 + 2 * (2 * 2 * 2 * 2)));
  });

  it("a wider random layer across several lazy blocks (default block size 128)", () => {
    const out = 96;
    const inF = 320;
    const W = gaussian(out * inF, 12, 0.02);
    const H = hessian(600, inF, 22, [7]);
    const list: Case[] = [
      { bits: 4, groupSize: 128, sym: true, actOrder: false, staticGroups: false, outlierFraction: 0, blockSize: 128 },
      { bits: 4, groupSize: 32, sym: false, actOrder: true, staticGroups: false, outlierFraction: 0.01, blockSize: 128 },
      { bits: 3, groupSize: 128, sym: false, actOrder: true, staticGroups: true, outlierFraction: 0.005, blockSize: 128 },
      { bits: 2, groupSize: -1, sym: true, actOrder: true, staticGroups: false, outlierFraction: 0.01, blockSize: 128 },
      { bits: 8, groupSize: 64, sym: true, actOrder: false, staticGroups: false, outlierFraction: 0, blockSize: 100 },
    ];
    compareAll(W, H, out, inF, list, "wide");
  });

  it("real weights: stories260K block 0 (q, gate, down) on their calibration Hessians", () => {
    const src = openModel(STORIES_VENDORED);
    const arch = src.arch;
    const text = resolveText("tinystories");
    const T = 128;
    const N = 4;
    const windows = sampleWindows(loadTokenizer(STORIES_VENDORED).encode(text.text), N, T, 0, text.name);
    const x = embedTokens(arch, loadGlobalWeights(src), windows, T);
    const w = loadBlockWeights(src, 0);
    const ctx = createContext(arch, native, Math.max(arch.maxPositions, T));
    const want = ["self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"];
    const hs = new Map<string, GptqHessian>();
    blockForward(ctx, w, x, N, T, {
      onLinearInput: (name, xin, rows) => {
        if (!want.includes(name)) return;
        const l = arch.linears.find((l) => l.name === name)!;
        let h = hs.get(name);
        if (!h) hs.set(name, (h = new GptqHessian(native, l.in)));
        h.addBatch(xin, rows);
      },
    });
    let ran = 0;
    for (const name of want) {
      const l = arch.linears.find((l) => l.name === name)!;
      const H = hs.get(name)!.H;
      // 64- and 172-wide inputs: g32 (ragged on 172) and g16 and per-row.
      ran += compareAll(w.get(`${name}.weight`)!, H, l.out, l.in, cases([-1, 32], [128, 48]), `stories260K ${name}`);
    }
    expect(ran).toBeGreaterThan(100);
  });

  it("the baseline (non-AVX2) build of the per-element loops too (setSimd(false), as QUANT4_NO_SIMD=1)", () => {
    const cpu = native as ReturnType<typeof getBackend> & { setSimd?: (on: boolean) => boolean };
    if (!cpu.setSimd) return;
    const out = 24;
    const inF = 72;
    const W = gaussian(out * inF, 13, 0.05);
    const H = hessian(200, inF, 23, [9]);
    cpu.setSimd(false);
    try {
      compareAll(W, H, out, inF, cases([-1, 16], [16, 128]).filter((_, i) => i % 3 === 0), "baseline");
    } finally {
      cpu.setSimd(true);
    }
  });

  it("errors: a non-finite weight reaching find_params and a float16 scale overflow are the reference's ModelErrors", () => {
    const n = 8;
    const out = 4;
    const U = new Float32Array(n * n);
    for (let i = 0; i < n; i++) for (let j = i; j < n; j++) U[i * n + j] = i === j ? 1 : 0.1;
    const job = (Wt: Float32Array, bits: number): GptqColumnsJob => ({
      Wt, U, qt: new Uint8Array(n * out), err: new Float32Array(n * out), sT: new Float32Array(2 * out), zT: new Uint8Array(2 * out),
      ot: null, vt: null, perm: null, n, out, bits, sym: false, groupSize: 4, staticGroups: false, tau: Infinity, state: new Float64Array([0, 0]),
    });
    const inf = new Float32Array(n * out).fill(0.5);
    inf[4 * out + 2] = Infinity; // column 4 = the second group's first column
    expect(native.gptqColumns!(job(inf.slice(), 4), 0, 0, 4)).toBe(0);
    expect(native.gptqColumns!(job(inf.slice(), 4), 4, 4, 8)).toBe(1);
    expect(() => gptqColumnsTs(job(inf.slice(), 4), 4, 4, 8)).toThrow(/non-finite weight/);
    const big = new Float32Array(n * out).fill(1e6);
    expect(native.gptqColumns!(job(big.slice(), 2), 0, 0, 4)).toBe(2);
    expect(() => gptqColumnsTs(job(big.slice(), 2), 0, 0, 4)).toThrow(/overflows float16/);
    // Through gptqQuantize: the same ModelError either way.
    const W = new Float32Array(out * n).fill(1e6);
    const H = hessian(50, n, 5);
    const o: GptqOptions = { bits: 2, groupSize: 4, sym: true };
    let a = "";
    let b = "";
    try { gptqQuantize(native, W, H.slice(), out, n, o); } catch (e) { expect(e).toBeInstanceOf(ModelError); a = (e as Error).message; }
    try { gptqQuantize(reference, W, H.slice(), out, n, o); } catch (e) { expect(e).toBeInstanceOf(ModelError); b = (e as Error).message; }
    expect(a).toMatch(/overflows float16/);
    expect(a).toBe(b);
  });

  it("NaN weights in the loop: both store code 0 and end in the same non-finite loss error", () => {
    const n = 8;
    const out = 4;
    const U = new Float32Array(n * n);
    for (let i = 0; i < n; i++) for (let j = i; j < n; j++) U[i * n + j] = i === j ? 1 : 0.25;
    const mk = (): GptqColumnsJob => {
      const Wt = gaussian(n * out, 3, 0.1);
      Wt[1] = NaN;
      const sT = new Float32Array(out).fill(0.01);
      const zT = new Uint8Array(out).fill(8);
      return { Wt, U, qt: new Uint8Array(n * out).fill(9), err: new Float32Array(n * out), sT, zT, ot: null, vt: null, perm: null, n, out, bits: 4, sym: true, groupSize: -1, staticGroups: false, tau: Infinity, state: new Float64Array([0, 0]) };
    };
    const a = mk();
    const b = mk();
    expect(native.gptqColumns!(a, 0, 0, n)).toBe(0);
    gptqColumnsTs(b, 0, 0, n);
    expect(bytes(a.qt).equals(bytes(b.qt))).toBe(true);
    expect(a.qt[1]).toBe(0);
    expect(bytes(a.Wt).equals(bytes(b.Wt))).toBe(true);
    expect(bytes(a.err).equals(bytes(b.err))).toBe(true);
    expect(Number.isNaN(a.state[0])).toBe(true);
    expect(Number.isNaN(b.state[0])).toBe(true);
  });
});

describe("one damped inverse Cholesky per shared Hessian", () => {
  it("a shared gptqFactor gives the same bytes as a factor made per Linear (q/k/v-like, act-order, dead columns, retries)", () => {
    const inF = 96;
    const H = hessian(400, inF, 31, [5, 6]);
    const Hcopy = H.slice();
    for (const actOrder of [false, true]) {
      const factor = gptqFactor(native, H, inF, { damp: 0.01, actOrder });
      expect(bytes(H).equals(bytes(Hcopy)), "gptqFactor leaves H unchanged").toBe(true);
      for (const [k, out] of [[0, 48], [1, 32], [2, 64]] as const) {
        const W = gaussian(out * inF, 40 + k, 0.05);
        const opts: GptqOptions = { bits: 4, groupSize: 32, sym: k !== 1, actOrder, damp: 0.01, outlierFraction: k === 2 ? 0.01 : 0 };
        const shared = gptqQuantize(native, W, H, out, inF, { ...opts, factor });
        const own = gptqQuantize(native, W, H.slice(), out, inF, opts);
        expectSame(shared, own, `actOrder ${actOrder} Linear ${k}`);
      }
      expect(bytes(H).equals(bytes(Hcopy)), "gptqQuantize with a factor leaves H unchanged").toBe(true);
    }
    // A Hessian that needs damping retries: the same damp, retries and warnings (named per Linear).
    const bad = new Float32Array(inF * inF);
    for (let i = 0; i < inF; i++) for (let j = 0; j < inF; j++) bad[i * inF + j] = 1; // rank 1
    const factor: GptqFactor = gptqFactor(native, bad, inF, { damp: 0, name: "l0.q" });
    expect(factor.retries).toBeGreaterThan(0);
    const W = gaussian(16 * inF, 50, 0.05);
    const w1: string[] = [];
    const w2: string[] = [];
    const a = gptqQuantize(native, W, bad, 16, inF, { bits: 4, groupSize: -1, sym: true, damp: 0, factor, name: "l0.k", onWarning: (m) => w1.push(m) });
    const b = gptqQuantize(native, W, bad.slice(), 16, inF, { bits: 4, groupSize: -1, sym: true, damp: 0, name: "l0.k", onWarning: (m) => w2.push(m) });
    expectSame(a, b, "retries");
    expect(w1).toEqual(w2);
    expect(w1.length).toBe(factor.retries);
    expect(w1[0]).toMatch(/^l0\.k: Hessian not positive definite with damp 0; retrying with damp 0\.01$/);
  });

  it("a factor made for other settings is refused", () => {
    const inF = 16;
    const H = hessian(50, inF, 7);
    const factor = gptqFactor(native, H, inF, { damp: 0.01, actOrder: false });
    const W = gaussian(8 * inF, 1, 0.1);
    expect(() => gptqQuantize(native, W, H, 8, inF, { bits: 4, groupSize: -1, sym: true, actOrder: true, factor })).toThrow(/shared Hessian factor/);
    expect(() => gptqQuantize(native, W, H, 8, inF, { bits: 4, groupSize: -1, sym: true, damp: 0.1, factor })).toThrow(/shared Hessian factor/);
  });
});
