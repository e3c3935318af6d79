// The packed-weight runtime (native/src/qkernels.cc through Backend.packLinear / f16Linear): for every
// format and bit width, layers written by the format and read back by its unpack are repacked into the
// one runtime layout, and the kernels' outputs are checked against dequantize-then-fp32-GEMM on random
// inputs (relative error < 1e-5), on the GEMV path (decoding) and the GEMM path (dequantized tiles +
// sgemm), at every SIMD level the CPU has (AVX-512, AVX2, the portable scalar kernels). Then whole models: eval-ppl and generate of
// quantized stories260K checkpoints on the packed kernels against --dequantize.

import { execFileSync } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mulberry32 as rng } from "../src/calibration/sampler.js";
import { getBackend, type CpuBackend, type CpuLinearHandle, type KernelPath, type SimdLevel } from "../src/compute/index.js";
import { f16ToF32, f32ToF16 } from "../src/io/dtype.js";
import type { TensorToWrite } from "../src/io/types.js";
import { Model } from "../src/model/model.js";
import { BackendError } from "../src/util/errors.js";
import { dequantize } from "../formats/dequant.js";
import { getFormat } from "../formats/index.js";
import type { QuantizedLinear, QuantSettings, StoredTensor } from "../formats/types.js";
import { makeTmpDir, removeTmpDirs, ROOT, runCli, STORIES_VENDORED, writeSyntheticModel } from "./helpers.js";

const be = getBackend("cpu") as CpuBackend;
// Two kernel threads even on a shared CI machine, so the chunked pool is exercised.
be.setThreads(2);
const SIMD = be.kernelInfo().simdAvailable;
const HAS_AVX512 = be.kernelInfo().simdLevels.includes("avx512");
afterAll(() => {
  be.setSimd(true);
  removeTmpDirs();
});

// ---------------------------------------------------------------------------------------------
// random layers

interface Opts {
  out: number;
  in: number;
  bits: number;
  gs: number;
  sym: boolean;
  /** "gptq": GPTQ's act-order g_idx (a permutation cut into groups of gs); "uneven": any group per column. */
  actOrder?: "gptq" | "uneven";
  /** fraction of weights kept as (fp16-exact) outliers */
  outliers?: number;
  bias?: boolean;
  seed: number;
}

const fp16 = (v: number) => f16ToF32(f32ToF16(Float32Array.of(v)))[0]!;

function randomLayer(o: Opts): QuantizedLinear {
  const r = rng(o.seed);
  const g = o.gs === -1 ? 1 : Math.ceil(o.in / o.gs);
  const maxq = (1 << o.bits) - 1;
  const layer: QuantizedLinear = {
    name: "model.layers.0.mlp.up_proj",
    outFeatures: o.out,
    inFeatures: o.in,
    bits: o.bits,
    groupSize: o.gs,
    sym: o.sym,
    codes: Uint8Array.from({ length: o.out * o.in }, () => Math.floor(r() * (maxq + 1))),
    scales: Float32Array.from({ length: o.out * g }, () => fp16(0.002 + 0.02 * r())),
    zeros: Uint8Array.from({ length: o.out * g }, () => (o.sym ? 1 << (o.bits - 1) : Math.floor(r() * (maxq + 1)))),
  };
  if (o.actOrder === "gptq") {
    const perm = Array.from({ length: o.in }, (_, i) => i);
    for (let i = o.in - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    layer.gIdx = new Int32Array(o.in);
    for (let j = 0; j < o.in; j++) layer.gIdx[perm[j]!] = o.gs === -1 ? 0 : Math.floor(j / o.gs);
  } else if (o.actOrder === "uneven") {
    layer.gIdx = Int32Array.from({ length: o.in }, () => Math.floor(r() * r() * g));
  }
  if (o.bias) layer.bias = Float32Array.from({ length: o.out }, () => fp16(r() * 2 - 1));
  if (o.outliers) {
    const indptr = new Int32Array(o.out + 1);
    const idx: number[] = [];
    const val: number[] = [];
    for (let row = 0; row < o.out; row++) {
      if (row % 5 !== 2) for (let c = 0; c < o.in; c++) if (r() < o.outliers) (idx.push(c), val.push(fp16((r() - 0.5) * 4)));
      indptr[row + 1] = idx.length;
    }
    layer.outliers = { indptr, indices: Int32Array.from(idx), values: Float32Array.from(val) };
  }
  return layer;
}

/** The layer as the format writes it and reads it back (its unpack validates everything). */
function throughFormat(format: string, layer: QuantizedLinear): QuantizedLinear {
  const fmt = getFormat(format);
  const s: QuantSettings = { bits: layer.bits, groupSize: layer.groupSize, sym: layer.sym, actOrder: layer.gIdx !== undefined };
  const shape = { out: layer.outFeatures, in: layer.inFeatures };
  expect(fmt.canHold(shape, s)).toBeNull();
  const m = new Map<string, StoredTensor>();
  for (const t of fmt.pack(layer) as TensorToWrite[]) {
    const d = t.data as ArrayBufferView;
    m.set(t.name, { dtype: t.dtype, shape: t.shape, data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength) });
  }
  return fmt.unpack(layer.name, (n) => m.get(n), s, shape);
}

function randomInput(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

/** ‖y − ref‖₂ / ‖ref‖₂ */
function relError(y: Float32Array, ref: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < y.length; i++) {
    num += (y[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

/** dequantize-then-fp32-GEMM: what inference computed before the packed runtime (forward.ts linear()). */
function reference(W: Float32Array, x: Float32Array, rows: number, out: number, inF: number, bias?: Float32Array): Float32Array {
  const y = new Float32Array(rows * out);
  if (bias) for (let r = 0; r < rows; r++) y.set(bias, r * out);
  be.gemm(false, true, rows, out, inF, 1, x, W, bias ? 1 : 0, y);
  return y;
}

/** Every SIMD level this CPU runs, best first ("avx512" only where the CPU has AVX-512 F/DQ/BW/VL). */
const SIMD_MODES: SimdLevel[] = be.kernelInfo().simdLevels;
const PATHS: KernelPath[] = ["gemv", "gemm", "auto"];

/** Every path × SIMD mode × row count against the reference; returns the worst relative error. */
function checkKernels(q: QuantizedLinear, h: CpuLinearHandle, rowCounts: number[], seed: number): number {
  const W = dequantize(q);
  let worst = 0;
  for (const rows of rowCounts) {
    const x = randomInput(rows * q.inFeatures, seed + rows);
    const ref = reference(W, x, rows, q.outFeatures, q.inFeatures, q.bias);
    for (const simd of SIMD_MODES) {
      expect(be.setSimd(simd)).toBe(simd);
      expect(be.kernelInfo().simd).toBe(simd);
      for (const p of PATHS) {
        const y = new Float32Array(rows * q.outFeatures).fill(Number.NaN);
        h.linear(x, rows, y, q.bias, p);
        const e = relError(y, ref);
        if (!(e < 1e-5)) throw new Error(`${h.label} [${q.outFeatures}, ${q.inFeatures}] rows ${rows} ${p} ${simd}: relative error ${e}`);
        worst = Math.max(worst, e);
      }
    }
  }
  be.setSimd(true);
  return worst;
}

/** The runtime layout dequantizes to exactly dequantize()'s weights (every SIMD level). */
function checkRows(q: QuantizedLinear, h: CpuLinearHandle): void {
  const W = dequantize(q);
  for (const simd of SIMD_MODES) {
    be.setSimd(simd);
    const D = new Float32Array(W.length);
    h.rows(0, q.outFeatures, D);
    expect(Buffer.from(D.buffer).equals(Buffer.from(W.buffer)), `rows() ${simd}`).toBe(true);
  }
  be.setSimd(true);
}

// ---------------------------------------------------------------------------------------------

describe("packed kernels match dequantize-then-fp32-GEMM (relative error < 1e-5)", () => {
  const worst: Record<string, number> = {};
  afterAll(() => {
    // The measured errors, for the record (README "INT4 runtime").
    console.log(Object.entries(worst).map(([k, v]) => `${k}: ${v.toExponential(2)}`).join("\n"));
  });

  const cases: Array<{ format: string } & Omit<Opts, "seed">> = [
    // gptq: every bit width, groups, per row, act-order (GPTQ needs out and in multiples of 32)
    { format: "gptq", out: 96, in: 256, bits: 2, gs: 64, sym: true },
    { format: "gptq", out: 96, in: 256, bits: 3, gs: 64, sym: false, actOrder: "gptq" },
    { format: "gptq", out: 96, in: 256, bits: 4, gs: 32, sym: true, bias: true },
    { format: "gptq", out: 96, in: 256, bits: 4, gs: 64, sym: false, actOrder: "gptq" },
    { format: "gptq", out: 64, in: 160, bits: 4, gs: -1, sym: false },
    { format: "gptq", out: 96, in: 256, bits: 8, gs: 128, sym: true, actOrder: "gptq" },
    { format: "gptq", out: 64, in: 160, bits: 8, gs: 32, sym: false },
    { format: "gptq", out: 32, in: 96, bits: 2, gs: -1, sym: false },
    // compressed-tensors pack-quantized: 4 and 8 bits, groups and channels (out 74: a tail after 4-row blocks)
    { format: "compressed-tensors", out: 74, in: 256, bits: 4, gs: 128, sym: true },
    { format: "compressed-tensors", out: 74, in: 172, bits: 4, gs: -1, sym: false },
    { format: "compressed-tensors", out: 74, in: 256, bits: 8, gs: 64, sym: false, bias: true },
    // awq GEMM
    { format: "awq", out: 72, in: 256, bits: 4, gs: 64, sym: false },
    { format: "awq", out: 64, in: 384, bits: 4, gs: 128, sym: false, bias: true },
    // quant4: GPTQ v1 + CSR outliers
    { format: "quant4", out: 96, in: 256, bits: 4, gs: 32, sym: true, outliers: 0.02 },
    { format: "quant4", out: 96, in: 256, bits: 3, gs: 64, sym: true, actOrder: "gptq", outliers: 0.01 },
    { format: "quant4", out: 96, in: 160, bits: 8, gs: -1, sym: false, outliers: 0.03, bias: true },
    { format: "quant4", out: 64, in: 256, bits: 2, gs: 128, sym: false, actOrder: "gptq", outliers: 0.02 },
  ];
  for (const [i, c] of cases.entries()) {
    const { format, ...o } = c;
    const title = `${format} ${o.bits}-bit ${o.gs === -1 ? "per-row" : `g${o.gs}`} ${o.sym ? "sym" : "asym"}${o.actOrder ? " act-order" : ""}${o.outliers ? " +outliers" : ""}${o.bias ? " +bias" : ""} [${o.out}, ${o.in}]`;
    it(title, () => {
      const q = throughFormat(format, randomLayer({ ...o, seed: 100 + i }));
      const h = be.packLinear(q);
      expect(h.kind).toBe("packed");
      expect([h.out, h.in]).toEqual([o.out, o.in]);
      checkRows(q, h);
      worst[title] = checkKernels(q, h, [1, 3, 9], 1000 + i);
    });
  }

  // Layouts no format writes but the runtime must handle: ragged last groups, act-order groups of uneven sizes.
  const direct: Array<Omit<Opts, "seed">> = [
    { out: 33, in: 100, bits: 4, gs: 32, sym: false },
    { out: 33, in: 100, bits: 3, gs: 24, sym: false, actOrder: "uneven", outliers: 0.02 },
    { out: 17, in: 72, bits: 2, gs: 16, sym: true, actOrder: "uneven" },
    { out: 19, in: 90, bits: 8, gs: 50, sym: false, outliers: 0.05 },
  ];
  for (const [i, o] of direct.entries()) {
    const title = `ragged/uneven: ${o.bits}-bit g${o.gs}${o.actOrder ? " uneven act-order" : ""}${o.outliers ? " +outliers" : ""} [${o.out}, ${o.in}]`;
    it(title, () => {
      const q = randomLayer({ ...o, seed: 200 + i });
      const h = be.packLinear(q);
      checkRows(q, h);
      worst[title] = checkKernels(q, h, [1, 5], 2000 + i);
    });
  }

  it("a Llama-shaped layer (4-bit g128 act-order, 608 × 4096): several GEMM tiles, the threaded GEMV", () => {
    const q = throughFormat("gptq", randomLayer({ out: 608, in: 4096, bits: 4, gs: 128, sym: true, actOrder: "gptq", seed: 7 }));
    const h = be.packLinear(q);
    // 4.5 bits per weight: codes, fp32 scale and u8 zero per group of 128, the column order.
    expect(h.bytes).toBeLessThan(608 * 4096 * 0.6);
    worst["gptq 4-bit g128 act-order [608, 4096]"] = checkKernels(q, h, [1, 6], 3000);
  });

  it("2–16 input rows in one pass over the weights: bit-identical to the GEMV once per row", () => {
    const layers: [string, QuantizedLinear][] = [
      ["gptq 4-bit g128 act-order + bias", throughFormat("gptq", randomLayer({ out: 256, in: 512, bits: 4, gs: 128, sym: true, actOrder: "gptq", bias: true, seed: 31 }))],
      ["2-bit g64 asym", randomLayer({ out: 130, in: 256, bits: 2, gs: 64, sym: false, seed: 32 })],
      ["8-bit per row", randomLayer({ out: 67, in: 320, bits: 8, gs: -1, sym: true, seed: 33 })],
      ["3-bit g32 with outliers", randomLayer({ out: 96, in: 256, bits: 3, gs: 32, sym: false, outliers: 0.02, seed: 34 })],
      ["4-bit ragged groups", randomLayer({ out: 41, in: 172, bits: 4, gs: 64, sym: true, seed: 35 })],
    ];
    for (const [what, q] of layers) {
      const h = be.packLinear(q);
      const bias = q.bias ?? randomInput(q.outFeatures, 36);
      for (const rows of [2, 3, 4, 5, 8, 11, 16]) {
        const x = randomInput(rows * q.inFeatures, rows * 7);
        for (const simd of SIMD_MODES) {
          be.setSimd(simd);
          const y = new Float32Array(rows * q.outFeatures);
          h.linear(x, rows, y, bias, "gemv");
          const one = new Float32Array(rows * q.outFeatures);
          for (let i = 0; i < rows; i++)
            h.linear(x.subarray(i * q.inFeatures, (i + 1) * q.inFeatures), 1, one.subarray(i * q.outFeatures, (i + 1) * q.outFeatures), bias, "gemv");
          expect(Buffer.from(y.buffer).equals(Buffer.from(one.buffer)), `${what}, ${rows} rows, ${simd}`).toBe(true);
        }
      }
    }
    be.setSimd(true);
  });

  it("inputs with a large mean or a few huge channels (real activations): no cancellation in the GEMV", () => {
    // Σ(q − z)·x computed as Σq·x − z·Σx would lose ~1e-5 here (codes centred on z, x ≈ 1 everywhere).
    for (const [bits, sym] of [[4, true], [4, false], [2, false], [8, true]] as const) {
      const r = rng(bits * 10 + Number(sym));
      const q = randomLayer({ out: 64, in: 4096, bits, gs: 128, sym, seed: bits });
      const mid = 1 << (bits - 1);
      for (let i = 0; i < q.codes.length; i++) q.codes[i] = Math.min(2 * mid - 1, Math.max(0, Math.round(mid + (r() + r() + r() - 1.5) * (mid / 1.5))));
      const W = dequantize(q);
      const h = be.packLinear(q);
      const inputs = {
        "mean 1 ± 0.005": Float32Array.from({ length: 4096 }, () => 1 + 0.01 * (r() - 0.5)),
        "every 512th channel ×500": Float32Array.from({ length: 4096 }, (_, i) => (i % 512 === 0 ? 500 : 1) * (r() - 0.5)),
      };
      for (const [what, x] of Object.entries(inputs)) {
        const ref = reference(W, x, 1, 64, 4096);
        for (const simd of SIMD_MODES) {
          be.setSimd(simd);
          const y = new Float32Array(64);
          h.linear(x, 1, y, undefined, "gemv");
          expect(relError(y, ref), `${bits}-bit ${sym ? "sym" : "asym"}, x ${what}, ${simd}`).toBeLessThan(2e-6);
        }
      }
    }
    be.setSimd(true);
  });

  it("fp16 weights (embeddings, LM head): rows() is the exact widening, linear() matches the fp32 GEMM", () => {
    const out = 70;
    const inF = 131;
    const w16 = f32ToF16(randomInput(out * inF, 5));
    const W = f16ToF32(w16);
    const h = be.f16Linear(w16, out, inF);
    expect(h.kind).toBe("f16");
    expect(h.bytes).toBe(2 * out * inF);
    for (const simd of SIMD_MODES) {
      be.setSimd(simd);
      const D = new Float32Array(out * inF);
      h.rows(0, out, D);
      expect(Buffer.from(D.buffer).equals(Buffer.from(W.buffer))).toBe(true);
      for (const rows of [1, 7]) {
        const x = randomInput(rows * inF, rows);
        const ref = reference(W, x, rows, out, inF);
        for (const p of PATHS) {
          const y = new Float32Array(rows * out);
          h.linear(x, rows, y, undefined, p);
          expect(relError(y, ref)).toBeLessThan(1e-5);
        }
      }
    }
    be.setSimd(true);
  });

  it("fp16 specials: subnormals and signed zeros widen exactly on both kernels", () => {
    const bits = Uint16Array.of(0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x3c00, 0xc000, 0x7bff);
    const h = be.f16Linear(bits, 1, bits.length);
    for (const simd of SIMD_MODES) {
      be.setSimd(simd);
      const D = new Float32Array(bits.length);
      h.rows(0, 1, D);
      expect(Array.from(D)).toEqual(Array.from(f16ToF32(bits)));
    }
    be.setSimd(true);
  });
});

describe("packed kernels: errors", () => {
  const q = randomLayer({ out: 8, in: 64, bits: 4, gs: 32, sym: true, seed: 1 });
  it("refuses bit widths, codes and zero points the layout cannot hold", () => {
    expect(() => be.packLinear({ ...q, bits: 5 })).toThrow(BackendError);
    expect(() => be.packLinear({ ...q, bits: 2 })).toThrow(/code \d+ at \(\d+, \d+\) exceeds 2 bits/);
    expect(() => be.packLinear({ ...q, zeros: new Uint8Array(q.zeros.length).fill(16) })).toThrow(/zero point 16 exceeds 4 bits/);
    expect(() => be.packLinear({ ...q, gIdx: new Int32Array(64).fill(2) })).toThrow(/group of input column 0 is 2/);
    expect(() => be.packLinear({ ...q, codes: q.codes.subarray(1) })).toThrow(/codes has 511 elements, expected 512/);
  });
  it("linear() checks sizes", () => {
    const h = be.packLinear(q);
    expect(() => h.linear(new Float32Array(63), 1, new Float32Array(8))).toThrow(/x has 63 elements/);
    expect(() => h.linear(new Float32Array(64), 1, new Float32Array(9))).toThrow(/y has 9 elements/);
    const x = new Float32Array(128);
    expect(() => h.linear(x.subarray(0, 64), 1, new Float32Array(x.buffer, 32 * 4, 8))).toThrow(/must not share memory/);
  });
  it("QUANT4_NO_SIMD=1 and QUANT4_SIMD=scalar|avx2|avx512 choose the starting level (capped at the CPU's)", () => {
    const code = `import("./src/compute/index.ts").then((m) => console.log(JSON.stringify(m.getBackend("cpu").kernelInfo())))`;
    const run = (env: NodeJS.ProcessEnv) => JSON.parse(execFileSync(process.execPath, ["--import", "tsx", "-e", code], { cwd: ROOT, env: { ...process.env, QUANT4_SIMD: "", QUANT4_NO_SIMD: "", ...env }, encoding: "utf8" }));
    const best = SIMD_MODES[0];
    expect(run({ QUANT4_NO_SIMD: "1" }).simd).toBe("scalar");
    expect(run({ QUANT4_NO_SIMD: "1", QUANT4_SIMD: "avx512" }).simd).toBe("scalar");
    expect(run({}).simd).toBe(best);
    expect(run({ QUANT4_SIMD: "scalar" }).simd).toBe("scalar");
    expect(run({ QUANT4_SIMD: "avx2" }).simd).toBe(SIMD ? "avx2" : "scalar");
    expect(run({ QUANT4_SIMD: "avx512" }).simd).toBe(best);
    expect(run({}).simdLevels).toEqual(SIMD_MODES);
  });
  it("setSimd: booleans as before (true = the best level), levels capped at the CPU's, bad levels refused", () => {
    expect(be.setSimd(false)).toBe(false);
    expect(be.kernelInfo().simd).toBe("scalar");
    expect(be.setSimd(true)).toBe(SIMD);
    expect(be.kernelInfo().simd).toBe(SIMD_MODES[0]);
    expect(be.setSimd("avx512")).toBe(SIMD_MODES[0]);
    expect(be.setSimd("avx2")).toBe(SIMD ? "avx2" : "scalar");
    expect(() => be.setSimd("sse" as SimdLevel)).toThrow(/setSimd: level must be "avx512", "avx2" or "scalar", got "sse"/);
    be.setSimd(true);
  });
  // Where the CPU lacks AVX-512 the loops above run AVX2 and scalar only; say so in the test list.
  it.skipIf(!HAS_AVX512)(
    HAS_AVX512 ? "the AVX-512 kernels are in every loop above (this CPU has AVX-512 F/BW/VL)" : "AVX-512 kernels NOT tested: this CPU lacks AVX-512 F/BW/VL",
    () => {
      expect(SIMD_MODES).toEqual(["avx512", "avx2", "scalar"]);
    },
  );
});

// ---------------------------------------------------------------------------------------------
// whole models

describe.each(["opt", "gpt2", "qwen2", "llama3"] as const)("a packed synthetic %s checkpoint", (kind) => {
  it("logits on the packed runtime match --dequantize (biases, learned positions, Conv1D, fp16 globals)", async () => {
    const syn = writeSyntheticModel(path.join(makeTmpDir(`quant4-k-${kind}-`), "model"), kind, 7);
    const out = path.join(path.dirname(syn.dir), "out");
    const r = await runCli(["quantize", syn.dir, out, "--method", "rtn", "--scheme", "w4-perrow-asym", "--format", "compressed-tensors"]);
    expect(r.code, r.stderr).toBe(0);
    const packed = Model.load(out, be);
    const deq = Model.load(out, be, undefined, { dequantize: true });
    expect(packed.weightMemory().packedLinears).toBe(packed.arch.nLayers * packed.arch.linears.length);
    expect(packed.weightMemory().f16).toBeGreaterThan(0); // quantize writes the embeddings (and LM head) fp16
    const T = 24;
    const toks = Array.from({ length: 2 * T }, (_, i) => (i * 37 + 5) % packed.arch.vocabSize);
    // Two sequences (the GEMM path: 48 rows), then decoding with a KV cache (the GEMV path).
    expect(relError(packed.forward(toks, 2, T), deq.forward(toks, 2, T))).toBeLessThan(1e-5);
    const cp = packed.newCache(T);
    const cd = deq.newCache(T);
    for (let t = 0; t < 6; t++) {
      expect(relError(packed.forward([toks[t]!], 1, 1, { pos0: t, cache: cp }), deq.forward([toks[t]!], 1, 1, { pos0: t, cache: cd }))).toBeLessThan(1e-5);
    }
  });
});

describe("quantized stories260K on the packed kernels vs --dequantize", () => {
  const dirs: Record<string, string> = {};
  const variants: Record<string, string[]> = {
    "rtn w4-perrow-asym (gptq format)": ["--method", "rtn", "--scheme", "w4-perrow-asym", "--format", "gptq"],
    "rtn w8-perrow (compressed-tensors)": ["--method", "rtn", "--scheme", "w8-perrow", "--format", "compressed-tensors"],
    "gptq w3 g32 act-order + 1% outliers (quant4)": ["--method", "gptq", "--bits", "3", "--group-size", "32", "--act-order", "--format", "quant4", "--outliers", "0.01", "--nsamples", "8", "--seqlen", "256"],
  };
  beforeAll(async () => {
    const tmp = makeTmpDir();
    for (const [k, args] of Object.entries(variants)) {
      const out = path.join(tmp, k.replace(/[^a-z0-9]+/gi, "-"));
      const r = await runCli(["quantize", STORIES_VENDORED, out, ...args]);
      expect(r.code, r.stderr).toBe(0);
      dirs[k] = out;
    }
  }, 300_000);

  for (const k of Object.keys(variants)) {
    it(`${k}: eval-ppl equal to 4 significant digits; weights stay packed`, async () => {
      const ppl = async (extra: string[]) => {
        const r = await runCli(["eval-ppl", dirs[k]!, "--text", "tinystories", "--seqlen", "256", "--max-windows", "12", "--json", ...extra]);
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(r.stdout).ppl as number;
      };
      const packed = await ppl([]);
      const deq = await ppl(["--dequantize"]);
      expect(packed.toPrecision(4)).toBe(deq.toPrecision(4));
      expect(Math.abs(packed / deq - 1)).toBeLessThan(1e-5);

      const m = Model.load(dirs[k]!, be).weightMemory();
      const d = Model.load(dirs[k]!, be, undefined, { dequantize: true }).weightMemory();
      expect(m.packedLinears).toBeGreaterThan(0);
      expect(d.packedLinears).toBe(0);
      expect(m.total).toBeLessThan(d.total);
    });
  }

  it("quant4 bench --baseline: both models measured side by side (--json), packed vs fp32, --dequantize", async () => {
    const k = Object.keys(variants)[0]!;
    const r = await runCli(["bench", dirs[k]!, "--baseline", STORIES_VENDORED, "--prompt-len", "16", "--gen", "4", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.model.runtime).toBe("packed");
    expect(j.model.linears).toEqual(["fp16", "int4 per-row"]); // gptq keeps the 172-wide down_proj fp16
    expect(j.baseline.runtime).toBe("fp32");
    for (const m of [j.model, j.baseline]) {
      expect(m.promptTokens).toBe(16);
      expect(m.genTokens).toBe(4);
      for (const f of ["timeToFirstTokenSeconds", "promptTokensPerSecond", "decodeTokensPerSecond", "decodeMsPerTokenMedian", "peakRssBytes"]) expect(m[f], f).toBeGreaterThan(0);
      expect(typeof m.residentWeightBytes).toBe("number");
    }
    expect(j.model.weightMemory.total).toBeLessThan(j.baseline.weightMemory.total / 2); // fp16 down_proj and embeddings
    const d = await runCli(["bench", dirs[k]!, "--prompt-len", "8", "--gen", "2", "--dequantize"]);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toMatch(/linears\s+fp32/);
    expect(d.stdout).toMatch(/decode tokens\/s/);
    const bad = await runCli(["bench", dirs[k]!, "--prompt-len", "500", "--gen", "100"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/exceeds the model's context of 512 tokens/);
  });

  it("generate: the same greedy text with and without --dequantize", async () => {
    const k = Object.keys(variants)[0]!;
    const gen = async (extra: string[]) => {
      const r = await runCli(["generate", dirs[k]!, "--max-tokens", "64", ...extra]);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    };
    expect(await gen([])).toBe(await gen(["--dequantize"]));
  });
});
