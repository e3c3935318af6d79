// --format quant4 (issue 13 item 2): GPTQ v1 tensors plus CSR outliers. Golden tensors written out by hand
// for a tiny layer, the CSR round trip (in memory and through a safetensors file read back with
// Checkpoint), an outlier keeping its exact fp16 value, validation of damaged outlier tensors, the config,
// and the other formats refusing layers with outliers.

import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { f16ToF32, f32ToF16 } from "../src/io/dtype.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import type { TensorToWrite } from "../src/io/types.js";
import { writeSafetensors } from "../src/io/writer.js";
import { packedGetter } from "../src/model/model.js";
import { ModelError } from "../src/util/errors.js";
import { dequantize } from "../formats/dequant.js";
import { detectFormat, FORMATS, getFormat } from "../formats/index.js";
import type { OutlierCSR, QuantizedLinear, QuantSettings, StoredTensor } from "../formats/types.js";
import { makeTmpDir, removeTmpDirs, rng } from "./helpers.js";

afterAll(removeTmpDirs);

const q4 = getFormat("quant4");
const gptq = getFormat("gptq");
const ct = getFormat("compressed-tensors");
const awq = getFormat("awq");

// ---------------------------------------------------------------------------------------------
// helpers

const bytesOf = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);

function store(tensors: TensorToWrite[]): Map<string, StoredTensor> {
  const m = new Map<string, StoredTensor>();
  for (const t of tensors) m.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytesOf(t.data) });
  return m;
}

const FILE = "/ckpt/model.safetensors";
const withFile = (m: Map<string, StoredTensor>) => (n: string) => {
  const t = m.get(n);
  return t && { ...t, file: FILE };
};

const fp16 = (x: number) => f16ToF32(f32ToF16(Float32Array.of(x)))[0]!;
const fp16Round = (a: Float32Array) => f16ToF32(f32ToF16(a));

function settingsOf(l: QuantizedLinear): QuantSettings {
  return { bits: l.bits, groupSize: l.groupSize, sym: l.sym, actOrder: l.gIdx !== undefined };
}

interface Opts {
  out: number;
  in: number;
  bits: number;
  gs: number;
  sym: boolean;
  actOrder?: boolean;
  bias?: boolean;
  /** fraction of weights kept as outliers */
  frac: number;
  seed: number;
}

/** A random layer with random CSR outliers (fp16-exact values far outside the grid). */
function randomLayer(o: Opts): QuantizedLinear {
  const r = rng(o.seed);
  const g = o.gs === -1 ? 1 : o.in / o.gs;
  const maxq = (1 << o.bits) - 1;
  const layer: QuantizedLinear = {
    name: "model.layers.1.mlp.down_proj",
    outFeatures: o.out,
    inFeatures: o.in,
    bits: o.bits,
    groupSize: o.gs,
    sym: o.sym,
    codes: Uint8Array.from({ length: o.out * o.in }, () => Math.floor(r() * (maxq + 1))),
    scales: Float32Array.from({ length: o.out * g }, () => 0.001 + 0.01 * r()),
    zeros: Uint8Array.from({ length: o.out * g }, () => (o.sym ? 1 << (o.bits - 1) : Math.floor(r() * (maxq + 1)))),
  };
  if (o.actOrder) {
    const perm = Array.from({ length: o.in }, (_, i) => i).sort(() => r() - 0.5);
    layer.gIdx = new Int32Array(o.in);
    for (let j = 0; j < o.in; j++) layer.gIdx[perm[j]!] = o.gs === -1 ? 0 : Math.floor(j / o.gs);
  }
  if (o.bias) layer.bias = Float32Array.from({ length: o.out }, () => r() * 2 - 1);
  const indptr = new Int32Array(o.out + 1);
  const idx: number[] = [];
  const val: number[] = [];
  for (let row = 0; row < o.out; row++) {
    if (row % 3 !== 1) for (let c = 0; c < o.in; c++) if (r() < o.frac) (idx.push(c), val.push(fp16((r() - 0.5) * 2000)));
    indptr[row + 1] = idx.length;
  }
  layer.outliers = { indptr, indices: Int32Array.from(idx), values: Float32Array.from(val) };
  return layer;
}

/** The grid value of every weight, then the outliers on top (written here, independently of dequantize). */
function expectedWeights(l: QuantizedLinear, scales: Float32Array): Float32Array {
  const g = l.groupSize === -1 ? 1 : l.inFeatures / l.groupSize;
  const w = new Float32Array(l.outFeatures * l.inFeatures);
  for (let o = 0; o < l.outFeatures; o++)
    for (let i = 0; i < l.inFeatures; i++) {
      const grp = l.gIdx ? l.gIdx[i]! : l.groupSize === -1 ? 0 : Math.floor(i / l.groupSize);
      w[o * l.inFeatures + i] = scales[o * g + grp]! * (l.codes[o * l.inFeatures + i]! - l.zeros[o * g + grp]!);
    }
  const ol = l.outliers;
  if (ol) for (let o = 0; o < l.outFeatures; o++) for (let k = ol.indptr[o]!; k < ol.indptr[o + 1]!; k++) w[o * l.inFeatures + ol.indices[k]!] = ol.values[k]!;
  return w;
}

function sameOutliers(a: OutlierCSR | undefined, b: OutlierCSR | undefined): void {
  expect(a).toBeDefined();
  expect(Array.from(a!.indptr)).toEqual(Array.from(b!.indptr));
  expect(Array.from(a!.indices)).toEqual(Array.from(b!.indices));
  expect(Array.from(a!.values)).toEqual(Array.from(b!.values));
}

// ---------------------------------------------------------------------------------------------

describe("quant4 registry", () => {
  it("is registered last, holds outliers, and holds exactly the Linears gptq holds", () => {
    expect(FORMATS.at(-1)).toBe(q4);
    expect(FORMATS.map((f) => [f.name, f.holdsOutliers])).toEqual([
      ["gptq", false],
      ["compressed-tensors", false],
      ["awq", false],
      ["quant4", true],
    ]);
    const s = (bits: number, groupSize: number): QuantSettings => ({ bits, groupSize, sym: true, actOrder: false });
    for (const [shape, st] of [
      [{ out: 64, in: 96 }, s(4, 32)],
      [{ out: 768, in: 172 }, s(4, -1)],
      [{ out: 64, in: 96 }, s(4, 64)],
      [{ out: 64, in: 96 }, s(5, 32)],
      [{ out: 32, in: 64 }, s(3, -1)],
    ] as const) {
      expect(q4.canHold(shape, st) === null).toBe(gptq.canHold(shape, st) === null);
    }
    expect(q4.canHold({ out: 64, in: 96 }, s(5, 32))).toMatch(/^quant4 holds 2\/3\/4\/8-bit weights, not 5-bit/);
  });

  it("declares the GPTQ v1 tensors and the three optional outlier tensors", () => {
    const s: QuantSettings = { bits: 4, groupSize: 32, sym: true, actOrder: false };
    expect(q4.paramInfo("m.q", { out: 64, in: 96 }, s)).toEqual([
      ...gptq.paramInfo("m.q", { out: 64, in: 96 }, s),
      { name: "m.q.outlier_indptr", dtype: "I32", shape: [65], optional: true },
      { name: "m.q.outlier_indices", dtype: "I16", shape: [-1], optional: true },
      { name: "m.q.outlier_values", dtype: "F16", shape: [-1], optional: true },
    ]);
    expect(q4.paramInfo("m.q", { out: 32, in: 32768 }, s)[5]).toMatchObject({ dtype: "I32" });
    expect(q4.paramInfo("m.q", { out: 32, in: 32767 }, { ...s, groupSize: -1 })[5]).toMatchObject({ dtype: "I16" });
  });
});

describe("quant4 golden", () => {
  // 32×32, 4-bit symmetric g16; outliers (row, column) = (0, 3), (0, 17), (5, 0), (31, 31).
  const out = 32;
  const inF = 32;
  const codes = new Uint8Array(out * inF);
  for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) codes[o * inF + i] = (i * 3 + o) % 16;
  const layer: QuantizedLinear = {
    name: "m.q",
    outFeatures: out,
    inFeatures: inF,
    bits: 4,
    groupSize: 16,
    sym: true,
    codes,
    scales: Float32Array.from({ length: out * 2 }, (_, k) => 0.5 + k / 64),
    zeros: new Uint8Array(out * 2).fill(8),
    outliers: {
      indptr: Int32Array.from({ length: out + 1 }, (_, r) => (r === 0 ? 0 : r <= 5 ? 2 : r <= 31 ? 3 : 4)),
      indices: Int32Array.from([3, 17, 0, 31]),
      values: Float32Array.from([1.5, -1024, 2 ** -13, 65504]),
    },
  };

  it("writes the GPTQ v1 tensors byte for byte as gptq does, then the CSR tensors", () => {
    const t = q4.pack(layer);
    const { outliers: _o, ...dense } = layer;
    const g = gptq.pack(dense);
    expect(t.map((x) => x.name)).toEqual([...g.map((x) => x.name), "m.q.outlier_indptr", "m.q.outlier_indices", "m.q.outlier_values"]);
    for (const x of g) {
      const y = t.find((z) => z.name === x.name)!;
      expect([y.dtype, y.shape]).toEqual([x.dtype, x.shape]);
      expect(Buffer.from(bytesOf(y.data)).equals(Buffer.from(bytesOf(x.data)))).toBe(true);
    }
    const get = (n: string) => t.find((x) => x.name === n)!;
    const indptr = get("m.q.outlier_indptr");
    expect([indptr.dtype, indptr.shape]).toEqual(["I32", [33]]);
    // row 0 holds 2, rows 1..4 none, row 5 one, rows 6..30 none, row 31 one
    expect(Array.from(indptr.data as Int32Array)).toEqual([0, 2, 2, 2, 2, 2, 3, ...new Array(25).fill(3), 4]);
    const indices = get("m.q.outlier_indices");
    expect([indices.dtype, indices.shape]).toEqual(["I16", [4]]);
    expect(Array.from(new Uint8Array(bytesOf(indices.data)))).toEqual([3, 0, 17, 0, 0, 0, 31, 0]); // little-endian int16
    const values = get("m.q.outlier_values");
    expect([values.dtype, values.shape]).toEqual(["F16", [4]]);
    // 1.5 = 0x3E00, −1024 = 0xE400, 2^−13 = 0x0800, 65504 = 0x7BFF (largest float16)
    expect(Array.from(values.data as Uint16Array)).toEqual([0x3e00, 0xe400, 0x0800, 0x7bff]);
  });

  it("reads back the CSR and dequantizes with the outliers in place of the grid values", () => {
    const m = store(q4.pack(layer));
    const back = q4.unpack("m.q", withFile(m), settingsOf(layer), { out, in: inF });
    sameOutliers(back.outliers, layer.outliers);
    const w = dequantize(back);
    expect(w[0 * inF + 3]).toBe(1.5);
    expect(w[0 * inF + 17]).toBe(-1024);
    expect(w[5 * inF + 0]).toBe(2 ** -13);
    expect(w[31 * inF + 31]).toBe(65504);
    // a non-outlier keeps its grid value: row 0, column 4: scale[0, g0] · (q − 8), q = 12
    expect(w[4]).toBe(Math.fround(0.5) * (12 - 8));
    expect(Array.from(w)).toEqual(Array.from(expectedWeights(layer, fp16Round(layer.scales))));
  });

  it("writes the quant4 quantization_config (the GPTQ v1 keys after quant_method and version)", () => {
    const s: QuantSettings = { bits: 4, groupSize: 128, sym: true, actOrder: true, damp: 0.02, method: "gptq" };
    const cfg = q4.quantizationConfig(s, ["model.layers.0.mlp.down_proj"]);
    const { quant_method: _m, ...gptqKeys } = gptq.quantizationConfig(s, ["model.layers.0.mlp.down_proj"]);
    expect(cfg).toEqual({ quant_method: "quant4", version: 1, ...gptqKeys });
    expect(Object.keys(cfg).slice(0, 4)).toEqual(["quant_method", "version", "bits", "group_size"]);
    expect(cfg).toMatchObject({ bits: 4, group_size: 128, sym: true, desc_act: true, checkpoint_format: "gptq", dynamic: { "-:^model\\.layers\\.0\\.mlp\\.down_proj$": {} } });
    expect(q4.sidecarFiles(s, [])).toEqual({});
    expect(detectFormat(JSON.parse(JSON.stringify(cfg)))).toBe(q4);
    expect(q4.settingsFromConfig(cfg)).toMatchObject({ bits: 4, groupSize: 128, sym: true, actOrder: true, damp: 0.02, method: "gptq" });
    expect(q4.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toBeNull();
    expect(gptq.detect(cfg)).toBe(false);
    expect(q4.detect(gptq.quantizationConfig(s, []))).toBe(false);
  });

  it("refuses other versions and a missing version clearly", () => {
    const cfg = q4.quantizationConfig({ bits: 4, groupSize: 32, sym: true, actOrder: false }, []);
    expect(() => q4.settingsFromConfig({ ...cfg, version: 2 })).toThrow(ModelError);
    expect(() => q4.settingsFromConfig({ ...cfg, version: 2 })).toThrow(/quantization_config \(quant4\): version 2 is not supported \(this quant4 reads version 1/);
    expect(() => q4.settingsFromConfig({ ...cfg, version: "1" }, "x")).toThrow(/version "1" is not supported/);
    const { version: _v, ...noVersion } = cfg;
    expect(() => q4.settingsFromConfig(noVersion)).toThrow(/quantization_config \(quant4\): missing version/);
    // refused as soon as the format is detected (openModel), with the version named
    expect(() => detectFormat({ ...cfg, version: 7 })).toThrow(/quantization_config \(quant4\): version 7 is not supported/);
    expect(() => detectFormat({ ...cfg, quant_method: "QUANT4", version: null })).toThrow(/version null is not supported/);
    expect(detectFormat({ ...cfg, quant_method: "QUANT4" })).toBe(q4);
    expect(() => q4.settingsFromConfig({ ...cfg, checkpoint_format: "gptq_v2" })).toThrow(/quant4 checkpoint_format "gptq_v2" is not supported/);
    expect(() => q4.settingsFromConfig({ ...cfg, bits: 5 })).toThrow(/quantization_config \(quant4\): bits 5/);
  });
});

describe("quant4 CSR round trip", () => {
  let seed = 300;
  const cases: Omit<Opts, "seed">[] = [
    { out: 32, in: 64, bits: 4, gs: 32, sym: true, frac: 0.02 },
    { out: 64, in: 96, bits: 3, gs: -1, sym: false, bias: true, frac: 0.05 },
    { out: 32, in: 128, bits: 2, gs: 64, sym: false, actOrder: true, frac: 0.01 },
    { out: 32, in: 64, bits: 8, gs: 16, sym: true, actOrder: true, bias: true, frac: 0.1 },
    { out: 32, in: 32, bits: 4, gs: -1, sym: true, frac: 1 }, // every weight of two thirds of the rows
  ];
  for (const c of cases) {
    it(JSON.stringify(c), () => {
      const layer = randomLayer({ ...c, seed: seed++ });
      const m = store(q4.pack(layer));
      const s = settingsOf(layer);
      expect(q4.isQuantized(layer.name, (n) => m.has(n))).toBe(true);
      const back = q4.unpack(layer.name, (n) => m.get(n), s, { out: c.out, in: c.in });
      expect(Buffer.from(back.codes).equals(Buffer.from(layer.codes))).toBe(true);
      expect(Array.from(back.zeros)).toEqual(Array.from(layer.zeros));
      sameOutliers(back.outliers, layer.outliers);
      // without a shape from config.json the tensors say it
      sameOutliers(q4.unpack(layer.name, (n) => m.get(n), s).outliers, layer.outliers);
      expect(Array.from(dequantize(back))).toEqual(Array.from(expectedWeights(layer, fp16Round(layer.scales))));
    });
  }

  it("a layer without outliers (or with none in its CSR) is written as plain GPTQ v1 tensors", () => {
    const layer = randomLayer({ out: 32, in: 64, bits: 4, gs: 32, sym: true, frac: 0, seed: 9 });
    expect(layer.outliers!.values.length).toBe(0);
    const names = q4.pack(layer).map((t) => t.name);
    expect(names.some((n) => n.includes("outlier"))).toBe(false);
    const { outliers: _o, ...plain } = layer;
    expect(q4.pack(plain).map((t) => t.name)).toEqual(names);
    const m = store(q4.pack(layer));
    expect(q4.unpack(layer.name, (n) => m.get(n), settingsOf(layer)).outliers).toBeUndefined();
    // gptq (which cannot store outliers) accepts an empty CSR: nothing is lost
    expect(() => gptq.pack(layer)).not.toThrow();
  });

  it("in > 32767 stores int32 column indices", () => {
    const inF = 32768;
    const layer = randomLayer({ out: 32, in: inF, bits: 4, gs: -1, sym: true, frac: 0, seed: 10 });
    layer.outliers = { indptr: Int32Array.from({ length: 33 }, (_, r) => (r === 0 ? 0 : 2)), indices: Int32Array.from([5, 32767]), values: Float32Array.from([-3.5, 7]) };
    const t = q4.pack(layer);
    const idx = t.find((x) => x.name.endsWith(".outlier_indices"))!;
    expect([idx.dtype, idx.shape, Array.from(idx.data as Int32Array)]).toEqual(["I32", [2], [5, 32767]]);
    const m = store(t);
    const back = q4.unpack(layer.name, (n) => m.get(n), settingsOf(layer), { out: 32, in: inF });
    sameOutliers(back.outliers, layer.outliers);
    const w = dequantize(back);
    expect([w[5], w[32767]]).toEqual([-3.5, 7]);
  });

  it("an outlier keeps its exact fp16 value through a safetensors file read with Checkpoint", () => {
    const layer = randomLayer({ out: 64, in: 96, bits: 3, gs: 32, sym: false, actOrder: true, bias: true, frac: 0.03, seed: 11 });
    // values a 3-bit grid with scales ≤ 0.011 can never produce, and fp16 edge cases
    const special = [65504, -65504, 2 ** -24, -(2 ** -14), 1000.5, -0];
    special.forEach((v, k) => (layer.outliers!.values[k] = v));
    const dir = makeTmpDir();
    const file = path.join(dir, "model.safetensors");
    writeSafetensors(file, q4.pack(layer), { format: "pt" });
    const ckpt = Checkpoint.open(dir);
    try {
      const back = q4.unpack(layer.name, packedGetter(ckpt), settingsOf(layer), { out: 64, in: 96 });
      const w = dequantize(back);
      const ol = layer.outliers!;
      let n = 0;
      for (let o = 0; o < 64; o++)
        for (let k = ol.indptr[o]!; k < ol.indptr[o + 1]!; k++, n++) {
          expect(Object.is(w[o * 96 + ol.indices[k]!], ol.values[k]), `row ${o} column ${ol.indices[k]}`).toBe(true);
        }
      expect(n).toBe(ol.values.length);
      expect(n).toBeGreaterThan(special.length);
      expect(Array.from(w)).toEqual(Array.from(expectedWeights(layer, fp16Round(layer.scales))));
      expect(Array.from(back.bias!)).toEqual(Array.from(fp16Round(layer.bias!)));
    } finally {
      ckpt.close();
    }
  });
});

describe("outliers in the format-neutral layer", () => {
  const base = (): QuantizedLinear => ({
    name: "model.layers.0.self_attn.o_proj",
    outFeatures: 32,
    inFeatures: 32,
    bits: 4,
    groupSize: -1,
    sym: true,
    codes: new Uint8Array(32 * 32).fill(9),
    scales: new Float32Array(32).fill(0.25),
    zeros: new Uint8Array(32).fill(8),
    outliers: { indptr: Int32Array.from({ length: 33 }, (_, r) => (r === 0 ? 0 : r < 3 ? r : 3)), indices: Int32Array.from([4, 0, 31]), values: Float32Array.from([-2, 3, 0.5]) },
  });

  it("dequantize applies them after the grid values (also without a module name)", () => {
    const { name: _n, ...l } = base();
    const w = dequantize(l);
    // row 0 column 4, row 1 column 0, row 2 column 31; the rest stays on the grid: 0.25 · (9 − 8)
    expect([w[4], w[32], w[64 + 31], w[5], w[64]]).toEqual([-2, 3, 0.5, 0.25, 0.25]);
  });

  it("dequantize refuses a CSR that does not fit the layer", () => {
    const l = base();
    l.outliers!.indices[1] = 32;
    expect(() => dequantize(l)).toThrow(/o_proj: outlier index 32 at 1 \(row 1\) is outside \[0, 32\)/);
  });

  const cases: [string, (l: QuantizedLinear) => void, RegExp][] = [
    ["indptr length", (l) => (l.outliers!.indptr = l.outliers!.indptr.subarray(1)), /outlier indptr has 32 values, expected out \+ 1 = 33/],
    ["indptr start", (l) => (l.outliers!.indptr[0] = 1), /outlier indptr\[0\] = 1, expected 0/],
    ["indptr end", (l) => (l.outliers!.indptr[32] = 2), /outlier indptr\[32\] = 2, expected nnz = 3/],
    ["indptr decreasing", (l) => (l.outliers!.indptr[2] = 0), /outlier indptr decreases at row 1 \(1 then 0\)/],
    ["index range", (l) => (l.outliers!.indices[0] = -1), /outlier index -1 at 0 \(row 0\) is outside \[0, 32\)/],
    [
      "indices not increasing",
      (l) => (l.outliers = { indptr: Int32Array.from({ length: 33 }, (_, r) => (r === 0 ? 0 : 2)), indices: Int32Array.from([7, 7]), values: Float32Array.from([1, 2]) }),
      /outlier indices of row 0 are not strictly increasing \(7 then 7 at 1\)/,
    ],
    ["values length", (l) => (l.outliers!.values = Float32Array.from([1, 2])), /outliers have 3 indices but 2 values/],
    ["NaN value", (l) => (l.outliers!.values[2] = NaN), /outlier value NaN at 2 is not finite/],
    ["not fp16-exact", (l) => (l.outliers!.values[1] = 0.1), /outlier value 0\.10000000149011612 at 1 is not exactly representable in float16 \(it would be stored as 0\.0999755859375\)/],
    ["beyond fp16", (l) => (l.outliers!.values[1] = 70000), /outlier value 70000 at 1 is not exactly representable in float16/],
  ];
  for (const [what, damage, msg] of cases) {
    it(`pack (validateLayer) refuses ${what}, naming the layer`, () => {
      const l = base();
      damage(l);
      expect(() => q4.pack(l)).toThrow(ModelError);
      expect(() => q4.pack(l)).toThrow(new RegExp(`^quantized layer model\\.layers\\.0\\.self_attn\\.o_proj: ${msg.source}`));
    });
  }

  it("the formats that cannot hold outliers refuse them, naming the layer and --format quant4", () => {
    for (const f of [gptq, ct]) {
      expect(() => f.pack(base())).toThrow(ModelError);
      expect(() => f.pack(base())).toThrow(
        `quantized layer model.layers.0.self_attn.o_proj keeps 3 outlier weights in fp16, which ${f.name} cannot store; use --format quant4 (or quantize without outliers)`,
      );
    }
    const a = { ...base(), sym: false };
    expect(() => awq.pack(a)).toThrow(/o_proj keeps 3 outlier weights in fp16, which awq cannot store; use --format quant4/);
    expect(() => q4.pack(base())).not.toThrow();
  });
});

describe("quant4 unpack refuses damaged outlier tensors, naming file and tensor", () => {
  const layer = randomLayer({ out: 32, in: 64, bits: 4, gs: 32, sym: true, frac: 0.05, seed: 21 });
  const s = settingsOf(layer);
  const P = layer.name;
  const nnz = layer.outliers!.values.length;
  const ip = layer.outliers!.indptr;
  const ix = layer.outliers!.indices;
  const twoRow = Array.from({ length: 32 }, (_, r) => r).find((r) => ip[r + 1]! - ip[r]! >= 2)!; // a row with ≥ 2 outliers
  const k2 = ip[twoRow]!;
  const set = (m: Map<string, StoredTensor>, name: string, f: (v: Int32Array | Int16Array | Uint16Array) => void) => {
    const t = m.get(name)!;
    const copy = t.data.slice();
    const v = t.dtype === "I32" ? new Int32Array(copy.buffer) : t.dtype === "I16" ? new Int16Array(copy.buffer) : new Uint16Array(copy.buffer);
    f(v);
    m.set(name, { ...t, data: copy });
  };
  const read = (m: Map<string, StoredTensor>) => () => q4.unpack(P, withFile(m), s, { out: 32, in: 64 });
  const tensor = (n: string) => `${FILE}: tensor "${P}.${n}"`;
  const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  it("accepts the undamaged layer", () => {
    expect(nnz).toBeGreaterThan(5);
    sameOutliers(read(store(q4.pack(layer)))().outliers, layer.outliers);
  });

  const cases: [string, (m: Map<string, StoredTensor>) => void, string][] = [
    ["indptr not starting at 0", (m) => set(m, `${P}.outlier_indptr`, (v) => (v[0] = 1)), `${tensor("outlier_indptr")} holds 1 at index 0, expected 0 (CSR row pointers start at 0)`],
    [
      "indptr decreasing",
      (m) => set(m, `${P}.outlier_indptr`, (v) => (v[3] = v[2]! - 1)),
      `${tensor("outlier_indptr")} holds ${ip[2]! - 1} at index 3 after ${ip[2]} at index 2: row pointers must not decrease`,
    ],
    ["indptr beyond out×in", (m) => set(m, `${P}.outlier_indptr`, (v) => (v[32] = 5000)), `${tensor("outlier_indptr")} ends at 5000, more outliers than the 32×64 weights`],
    ["indptr ending elsewhere than the indices", (m) => set(m, `${P}.outlier_indptr`, (v) => (v[32] = v[32]! + 1)), `${tensor("outlier_indices")} has shape [${nnz}], expected [${nnz + 1}]`],
    ["a column out of range", (m) => set(m, `${P}.outlier_indices`, (v) => (v[0] = 64)), `${tensor("outlier_indices")} holds 64 at index 0 (row 0), outside [0, 64)`],
    ["a negative column", (m) => set(m, `${P}.outlier_indices`, (v) => (v[0] = -1)), `${tensor("outlier_indices")} holds -1 at index 0 (row 0), outside [0, 64)`],
    [
      "columns not increasing in a row",
      (m) => set(m, `${P}.outlier_indices`, (v) => (v[k2 + 1] = v[k2]!)),
      `${tensor("outlier_indices")} holds ${ix[k2]} at index ${k2 + 1} after ${ix[k2]} in row ${twoRow}: columns must be strictly increasing within a row`,
    ],
    ["a NaN value", (m) => set(m, `${P}.outlier_values`, (v) => (v[2] = 0x7e00)), `${tensor("outlier_values")} holds NaN at index 2 (element [2]); outlier values must be finite`],
    ["an infinite value", (m) => set(m, `${P}.outlier_values`, (v) => (v[0] = 0xfc00)), `${tensor("outlier_values")} holds -Infinity at index 0`],
    [
      "int32 indices where int16 is specified",
      (m) => {
        const t = m.get(`${P}.outlier_indices`)!;
        m.set(`${P}.outlier_indices`, { dtype: "I32", shape: t.shape, data: bytesOf(Int32Array.from(new Int16Array(t.data.slice().buffer))) });
      },
      `${tensor("outlier_indices")} has dtype I32, expected I16 (declared I16 [${nnz}])`,
    ],
    [
      "F32 values where F16 is specified",
      (m) => {
        const t = m.get(`${P}.outlier_values`)!;
        m.set(`${P}.outlier_values`, { dtype: "F32", shape: t.shape, data: bytesOf(f16ToF32(new Uint16Array(t.data.slice().buffer))) });
      },
      `${tensor("outlier_values")} has dtype F32, expected F16 (declared F16 [${nnz}])`,
    ],
    ["indptr of the wrong shape", (m) => m.set(`${P}.outlier_indptr`, { ...m.get(`${P}.outlier_indptr`)!, shape: [1, 33] }), `${tensor("outlier_indptr")} has shape [1, 33], expected [33]`],
    ["indptr missing", (m) => m.delete(`${P}.outlier_indptr`), `${tensor("outlier_indptr")} is missing (expected I32 [33]: the layer has "${P}.outlier_indices" and "${P}.outlier_values"; outliers need all three CSR tensors`],
    ["values missing", (m) => m.delete(`${P}.outlier_values`), `${tensor("outlier_values")} is missing (expected F16 [${nnz}]: the layer has "${P}.outlier_indptr" and "${P}.outlier_indices"`],
  ];
  for (const [what, damage, msg] of cases) {
    it(what, () => {
      const m = store(q4.pack(layer));
      damage(m);
      expect(read(m)).toThrow(ModelError);
      expect(read(m)).toThrow(new RegExp(`^${esc(msg)}`));
    });
  }

  it("the dense part is validated as gptq validates it, with quant4 named", () => {
    const m = store(q4.pack(layer));
    expect(() => q4.unpack(P, withFile(m), { ...s, bits: 5 })).toThrow(`${tensor("qweight")} cannot be read: quantization_config asks for 5-bit quant4 weights (quant4 holds 2/3/4/8)`);
    m.delete(`${P}.scales`);
    expect(read(m)).toThrow(`${tensor("scales")} is missing (expected F16 [2, 32]`);
  });
});
