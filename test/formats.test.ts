import { describe, expect, it } from "vitest";
import { f16ToF32, f32ToF16 } from "../src/io/dtype.js";
import type { TensorToWrite } from "../src/io/types.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { dequantize } from "../formats/dequant.js";
import { detectFormat, FORMATS, formatNames, getFormat } from "../formats/index.js";
import type { FormatSpec, QuantizedLinear, QuantSettings, StoredTensor } from "../formats/types.js";
import { mulberry32 as rng } from "../src/calibration/sampler.js";

const gptq = getFormat("gptq");
const ct = getFormat("compressed-tensors");

// ---------------------------------------------------------------------------------------------
// helpers


function nGroups(inF: number, gs: number): number {
  return gs === -1 ? 1 : Math.ceil(inF / gs);
}

interface LayerOpts {
  out: number;
  in: number;
  bits: number;
  gs: number;
  sym: boolean;
  actOrder?: boolean;
  bias?: boolean;
  seed: number;
}

function randomLayer(o: LayerOpts): QuantizedLinear {
  const r = rng(o.seed);
  const g = nGroups(o.in, o.gs);
  const maxq = (1 << o.bits) - 1;
  const codes = Uint8Array.from({ length: o.out * o.in }, () => Math.floor(r() * (maxq + 1)));
  const scales = Float32Array.from({ length: o.out * g }, () => (r() + 0.01) * 10 ** (Math.floor(r() * 4) - 3));
  const zeros = Uint8Array.from({ length: o.out * g }, () => (o.sym ? 1 << (o.bits - 1) : Math.floor(r() * (maxq + 1))));
  if (!o.sym) zeros[0] = 0; // exercises the GPTQ v1 zero − 1 masking
  const layer: QuantizedLinear = {
    name: "model.layers.3.mlp.up_proj",
    outFeatures: o.out,
    inFeatures: o.in,
    bits: o.bits,
    groupSize: o.gs,
    sym: o.sym,
    codes,
    scales,
    zeros,
  };
  if (o.actOrder) {
    const perm = Array.from({ length: o.in }, (_, i) => i);
    for (let i = o.in - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    const gIdx = new Int32Array(o.in);
    // As GPTQ writes it: channel perm[j] is processed j-th and lands in group floor(j / gs).
    for (let j = 0; j < o.in; j++) gIdx[perm[j]!] = o.gs === -1 ? 0 : Math.floor(j / o.gs);
    layer.gIdx = gIdx;
  }
  if (o.bias) layer.bias = Float32Array.from({ length: o.out }, () => r() * 2 - 1);
  return layer;
}

function bytesOf(d: ArrayBufferView): Uint8Array {
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

function store(tensors: TensorToWrite[]): Map<string, StoredTensor> {
  const m = new Map<string, StoredTensor>();
  for (const t of tensors) m.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytesOf(t.data) });
  return m;
}

function settingsOf(l: QuantizedLinear): QuantSettings {
  return { bits: l.bits, groupSize: l.groupSize, sym: l.sym, actOrder: l.gIdx !== undefined };
}

function fp16Round(a: Float32Array): Float32Array {
  return f16ToF32(f32ToF16(a));
}

function effectiveGIdx(l: QuantizedLinear): number[] {
  return Array.from({ length: l.inFeatures }, (_, i) => (l.gIdx ? l.gIdx[i]! : l.groupSize === -1 ? 0 : Math.floor(i / l.groupSize)));
}

function roundTrip(fmt: FormatSpec, layer: QuantizedLinear): void {
  const s = settingsOf(layer);
  const shape = { out: layer.outFeatures, in: layer.inFeatures };
  expect(fmt.canHold(shape, s)).toBeNull();
  const written = fmt.pack(layer);
  // every declared tensor is written with the declared dtype and shape
  for (const p of fmt.paramInfo(layer.name, shape, s)) {
    const t = written.find((w) => w.name === p.name);
    expect(t, p.name).toBeDefined();
    expect(t!.dtype).toBe(p.dtype);
    expect(t!.shape).toEqual(p.shape);
  }
  const m = store(written);
  expect(fmt.isQuantized(layer.name, (n) => m.has(n))).toBe(true);
  expect(fmt.isQuantized("other", (n) => m.has(n))).toBe(false);
  const back = fmt.unpack(layer.name, (n) => m.get(n), s, shape);
  expect(back.outFeatures).toBe(layer.outFeatures);
  expect(back.inFeatures).toBe(layer.inFeatures);
  expect(back.bits).toBe(layer.bits);
  expect(back.groupSize).toBe(layer.groupSize);
  expect(back.sym).toBe(layer.sym);
  expect(Buffer.from(back.codes).equals(Buffer.from(layer.codes))).toBe(true);
  expect(Array.from(back.zeros)).toEqual(Array.from(layer.zeros));
  expect(Array.from(back.scales)).toEqual(Array.from(fp16Round(layer.scales)));
  expect(effectiveGIdx(back)).toEqual(effectiveGIdx(layer));
  if (layer.bias) expect(Array.from(back.bias!)).toEqual(Array.from(fp16Round(layer.bias)));
  else expect(back.bias).toBeUndefined();
}

function u32(x: number): number {
  return x >>> 0;
}

function wordsOf(t: TensorToWrite | undefined): number[] {
  expect(t).toBeDefined();
  return Array.from(t!.data as Int32Array, u32);
}

// ---------------------------------------------------------------------------------------------

describe("registry", () => {
  it("lists the formats and finds them by name", () => {
    expect(formatNames()).toEqual(["gptq", "compressed-tensors", "awq", "quant4"]);
    expect(FORMATS.map((f) => f.name)).toEqual(formatNames());
    expect(() => getFormat("gguf")).toThrow(UsageError);
    expect(() => getFormat("gguf")).toThrow(/gptq, compressed-tensors, awq, quant4/);
  });

  it("detects a format from quantization_config and names an unknown quant_method", () => {
    expect(detectFormat({ quant_method: "gptq", bits: 4 })).toBe(gptq);
    expect(detectFormat(ct.quantizationConfig({ bits: 4, groupSize: 128, sym: true, actOrder: false }, []))).toBe(ct);
    expect(() => detectFormat({ quant_method: "bitsandbytes" })).toThrow(ModelError);
    expect(() => detectFormat({ quant_method: "bitsandbytes" })).toThrow(/"bitsandbytes".*gptq, compressed-tensors, awq/);
    expect(() => detectFormat({ bits: 4 })).toThrow(/no quant_method/);
    expect(() => detectFormat(null)).toThrow(ModelError);
  });
});

describe("gptq round trip", () => {
  let seed = 1;
  for (const bits of [2, 3, 4, 8]) {
    const cases: Omit<LayerOpts, "bits" | "seed">[] = [
      { out: 64, in: 96, gs: 32, sym: true },
      { out: 32, in: 128, gs: 64, sym: false, bias: true },
      { out: 96, in: 64, gs: -1, sym: false },
      { out: 32, in: 192, gs: 32, sym: true, actOrder: true, bias: true },
      { out: 64, in: 64, gs: 16, sym: false, actOrder: true },
      { out: 32, in: 64, gs: -1, sym: true, actOrder: true },
    ];
    for (const c of cases) {
      const o = { ...c, bits, seed: seed++ };
      it(`${bits}-bit ${JSON.stringify(c)}`, () => roundTrip(gptq, randomLayer(o)));
    }
  }
});

describe("compressed-tensors round trip", () => {
  let seed = 100;
  for (const bits of [4, 8]) {
    const cases: Omit<LayerOpts, "bits" | "seed">[] = [
      { out: 48, in: 256, gs: 128, sym: true },
      { out: 7, in: 64, gs: 32, sym: false, bias: true }, // out not a multiple of 8: padded zero-point words
      { out: 13, in: 172, gs: -1, sym: true }, // per-row holds any in (ragged last word)
      { out: 9, in: 172, gs: -1, sym: false, bias: true },
      { out: 33, in: 96, gs: 32, sym: true, actOrder: true },
      { out: 5, in: 48, gs: 16, sym: false, actOrder: true, bias: true },
    ];
    for (const c of cases) {
      const o = { ...c, bits, seed: seed++ };
      it(`${bits}-bit ${JSON.stringify(c)}`, () => roundTrip(ct, randomLayer(o)));
    }
  }

  it("per-row act-order drops the trivial g_idx (compressed-tensors allows actorder only with groups)", () => {
    const layer = randomLayer({ out: 8, in: 40, bits: 4, gs: -1, sym: true, actOrder: true, seed: 7 });
    const names = ct.pack(layer).map((t) => t.name);
    expect(names).not.toContain(`${layer.name}.weight_g_idx`);
    roundTrip(ct, layer);
  });
});

// ---------------------------------------------------------------------------------------------
// golden tests: expected words computed here from the bit-layout text of FORMATS.md / the packers

/** AutoGPTQ qlinear_cuda_old.py pack(), transliterated: packs rows of `v` ([n, cols]) along dim 0. */
function autogptqPackRows(v: number[][], bits: number): number[][] {
  const cols = v[0]!.length;
  const rows = (v.length / 32) * bits;
  const q = Array.from({ length: rows }, () => new Array<number>(cols).fill(0));
  const or = (r: number, c: number, x: number) => (q[r]![c] = u32(q[r]![c]! | x));
  let i = 0;
  let row = 0;
  while (row < rows) {
    for (let c = 0; c < cols; c++) {
      const col = (j: number) => v[j]![c]!;
      let ii = i;
      let rr = row;
      if (bits !== 3) {
        for (let j = ii; j < ii + 32 / bits; j++) or(rr, c, col(j) << (bits * (j - ii)));
        continue;
      }
      for (let j = ii; j < ii + 10; j++) or(rr, c, col(j) << (3 * (j - ii)));
      ii += 10;
      or(rr, c, col(ii) << 30);
      rr++;
      or(rr, c, (col(ii) >> 2) & 1);
      ii++;
      for (let j = ii; j < ii + 10; j++) or(rr, c, col(j) << (3 * (j - ii) + 1));
      ii += 10;
      or(rr, c, col(ii) << 31);
      rr++;
      or(rr, c, (col(ii) >> 1) & 0x3);
      ii++;
      for (let j = ii; j < ii + 10; j++) or(rr, c, col(j) << (3 * (j - ii) + 2));
    }
    if (bits === 3) {
      i += 32;
      row += 3;
    } else {
      i += 32 / bits;
      row += 1;
    }
  }
  return q;
}

describe("gptq golden", () => {
  it("4-bit 32×32: qweight[r, c] holds q[8r + j][c] in bits 4j..4j+3, qzeros hold zero − 1 along out", () => {
    const out = 32;
    const inF = 32;
    const gs = 16;
    const codes = new Uint8Array(out * inF);
    for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) codes[o * inF + i] = (i * 3 + o) % 16;
    const zeros = new Uint8Array(out * 2);
    for (let o = 0; o < out; o++) for (let g = 0; g < 2; g++) zeros[o * 2 + g] = (o * 5 + g) % 16; // zeros[0] = 0
    const scales = Float32Array.from({ length: out * 2 }, (_, k) => 0.5 + k / 64);
    const layer: QuantizedLinear = { name: "m.q", outFeatures: out, inFeatures: inF, bits: 4, groupSize: gs, sym: false, codes, scales, zeros };
    const t = gptq.pack(layer);
    const get = (n: string) => t.find((x) => x.name === n);

    const qweight: number[] = [];
    for (let r = 0; r < inF / 8; r++)
      for (let c = 0; c < out; c++) {
        let w = 0;
        for (let j = 0; j < 8; j++) w += ((8 * r + j) * 3 + c) % 16 * 2 ** (4 * j);
        qweight.push(w);
      }
    expect(get("m.q.qweight")!.shape).toEqual([4, 32]);
    expect(wordsOf(get("m.q.qweight"))).toEqual(qweight);

    const qzeros: number[] = [];
    for (let g = 0; g < 2; g++)
      for (let c = 0; c < out / 8; c++) {
        let w = 0;
        for (let j = 0; j < 8; j++) {
          const z = ((8 * c + j) * 5 + g) % 16;
          w += ((z - 1) & 0xf) * 2 ** (4 * j); // zero 0 → 0xF in its own nibble only
        }
        qzeros.push(w);
      }
    expect(get("m.q.qzeros")!.shape).toEqual([2, 4]);
    expect(wordsOf(get("m.q.qzeros"))).toEqual(qzeros);
    expect(wordsOf(get("m.q.qzeros"))[0]! & 0xf).toBe(0xf);
    expect(wordsOf(get("m.q.qzeros"))[0]! >>> 4 & 0xf).toBe((5 - 1) & 0xf);

    // scales are [G, out]; g_idx is i // gs
    const sc = get("m.q.scales")!;
    expect(sc.dtype).toBe("F16");
    expect(sc.shape).toEqual([2, 32]);
    expect(f16ToF32(sc.data as Uint16Array)[1]).toBe(Math.fround(0.5 + 2 / 64)); // scales[o=1, g=0]
    expect(Array.from(get("m.q.g_idx")!.data as Int32Array)).toEqual(Array.from({ length: 32 }, (_, i) => Math.floor(i / 16)));
  });

  for (const bits of [2, 3, 8]) {
    it(`${bits}-bit qweight and qzeros equal AutoGPTQ's pack() loop`, () => {
      const out = 64;
      const inF = 64;
      const layer = randomLayer({ out, in: inF, bits, gs: 32, sym: false, seed: 40 + bits });
      const t = gptq.pack(layer);
      // intweight = codes transposed to [in, out]
      const intweight = Array.from({ length: inF }, (_, i) => Array.from({ length: out }, (_, o) => layer.codes[o * inF + i]!));
      const expectQw = autogptqPackRows(intweight, bits);
      const qw = t.find((x) => x.name.endsWith(".qweight"))!;
      expect(qw.shape).toEqual([(inF / 32) * bits, out]);
      expect(wordsOf(qw)).toEqual(expectQw.flat());
      // qzeros: AutoGPTQ packs zeros − 1 ([G, out]) along out, i.e. the rows of its transpose
      const mask = (1 << bits) - 1;
      const zt = Array.from({ length: out }, (_, o) => [0, 1].map((g) => (layer.zeros[o * 2 + g]! - 1) & mask));
      const expectQz = autogptqPackRows(zt, bits); // [out*bits/32, G]
      const qz = t.find((x) => x.name.endsWith(".qzeros"))!;
      expect(qz.shape).toEqual([2, (out / 32) * bits]);
      const got = wordsOf(qz);
      for (let g = 0; g < 2; g++) for (let w = 0; w < qz.shape[1]!; w++) expect(got[g * qz.shape[1]! + w]).toBe(expectQz[w]![g]);
    });
  }

  it("writes the config and sidecar with a dynamic skip per skipped module", () => {
    const s: QuantSettings = { bits: 4, groupSize: 128, sym: true, actOrder: true, damp: 0.02 };
    const cfg = gptq.quantizationConfig(s, ["model.layers.0.mlp.down_proj"]);
    expect(cfg).toMatchObject({
      quant_method: "gptq",
      bits: 4,
      group_size: 128,
      desc_act: true,
      sym: true,
      damp_percent: 0.02,
      true_sequential: true,
      static_groups: false,
      checkpoint_format: "gptq",
      pack_dtype: "int32",
      dynamic: { "-:^model\\.layers\\.0\\.mlp\\.down_proj$": {} },
    });
    expect((cfg.meta as Record<string, unknown>).quantizer).toMatch(/^quant4/);
    expect(JSON.parse(gptq.sidecarFiles(s, ["model.layers.0.mlp.down_proj"])["quantize_config.json"]!)).toEqual(cfg);
    expect(gptq.quantizationConfig(s, [])).not.toHaveProperty("dynamic");
  });
});

describe("compressed-tensors golden", () => {
  it("4-bit 8(out)×16(in) asymmetric g8: weight_packed rows LSB first, zero points packed along out", () => {
    const out = 8;
    const inF = 16;
    const codes = new Uint8Array(out * inF);
    for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) codes[o * inF + i] = (i * 3 + o) % 16;
    const zeros = new Uint8Array(out * 2);
    for (let o = 0; o < out; o++) for (let g = 0; g < 2; g++) zeros[o * 2 + g] = (o * 5 + g) % 16;
    const scales = Float32Array.from({ length: out * 2 }, (_, k) => 0.25 + k / 128);
    const layer: QuantizedLinear = { name: "m.k", outFeatures: out, inFeatures: inF, bits: 4, groupSize: 8, sym: false, codes, scales, zeros };
    const t = ct.pack(layer);
    const get = (n: string) => t.find((x) => x.name === n);

    const packed: number[] = [];
    for (let o = 0; o < out; o++)
      for (let w = 0; w < 2; w++) {
        let v = 0;
        for (let j = 0; j < 8; j++) v += ((8 * w + j) * 3 + o) % 16 * 2 ** (4 * j);
        packed.push(v);
      }
    expect(get("m.k.weight_packed")!.shape).toEqual([8, 2]);
    expect(wordsOf(get("m.k.weight_packed"))).toEqual(packed);

    const zp: number[] = [];
    for (let g = 0; g < 2; g++) {
      let v = 0;
      for (let j = 0; j < 8; j++) v += ((j * 5 + g) % 16) * 2 ** (4 * j); // true zero (signed + 8), no −1
      zp.push(v);
    }
    expect(get("m.k.weight_zero_point")!.shape).toEqual([1, 2]);
    expect(wordsOf(get("m.k.weight_zero_point"))).toEqual(zp);

    const sc = get("m.k.weight_scale")!;
    expect(sc.dtype).toBe("F16");
    expect(sc.shape).toEqual([8, 2]);
    expect(f16ToF32(sc.data as Uint16Array)[3]).toBe(Math.fround(0.25 + 3 / 128)); // [o=1, g=1]
    const ws = get("m.k.weight_shape")!;
    expect(ws.dtype).toBe("I64");
    expect(Array.from(ws.data as BigInt64Array)).toEqual([8n, 16n]);
    expect(get("m.k.weight_g_idx")).toBeUndefined();
  });

  it("8-bit per-row with in=6 pads the last word with zeros", () => {
    const codes = Uint8Array.from([1, 2, 3, 4, 5, 255, 10, 20, 30, 40, 50, 60]);
    const layer: QuantizedLinear = {
      name: "p",
      outFeatures: 2,
      inFeatures: 6,
      bits: 8,
      groupSize: -1,
      sym: true,
      codes,
      scales: Float32Array.from([1, 2]),
      zeros: Uint8Array.from([128, 128]),
    };
    const t = ct.pack(layer);
    const wp = t.find((x) => x.name === "p.weight_packed")!;
    expect(wp.shape).toEqual([2, 2]);
    expect(wordsOf(wp)).toEqual([u32(1 | (2 << 8) | (3 << 16) | (4 << 24)), 5 | (255 << 8), u32(10 | (20 << 8) | (30 << 16) | (40 << 24)), 50 | (60 << 8)]);
    expect(t.find((x) => x.name === "p.weight_zero_point")).toBeUndefined();
  });

  it("writes the compressed-tensors quantization_config", () => {
    const g = ct.quantizationConfig({ bits: 4, groupSize: 128, sym: true, actOrder: true }, ["model.layers.1.mlp.down_proj"]);
    expect(g).toEqual({
      quant_method: "compressed-tensors",
      format: "pack-quantized",
      quantization_status: "compressed",
      config_groups: {
        group_0: {
          targets: ["Linear"],
          weights: { num_bits: 4, type: "int", symmetric: true, group_size: 128, strategy: "group", actorder: "group", dynamic: false },
          input_activations: null,
          output_activations: null,
        },
      },
      ignore: ["lm_head", "model.layers.1.mlp.down_proj"],
      kv_cache_scheme: null,
    });
    const c = ct.quantizationConfig({ bits: 8, groupSize: -1, sym: false, actOrder: false }, []);
    expect((c.config_groups as any).group_0.weights).toMatchObject({ num_bits: 8, symmetric: false, group_size: null, strategy: "channel", actorder: null });
    expect(ct.sidecarFiles({ bits: 4, groupSize: 128, sym: true, actOrder: false }, [])).toEqual({});
  });
});

// ---------------------------------------------------------------------------------------------

describe("canHold", () => {
  const s4 = (groupSize: number): QuantSettings => ({ bits: 4, groupSize, sym: true, actOrder: false });
  it("gptq refuses in/out not multiples of 32, non-dividing groups and odd bit widths", () => {
    expect(gptq.canHold({ out: 768, in: 172 }, s4(-1))).toMatch(/172.*multiple of 32/);
    expect(gptq.canHold({ out: 172, in: 768 }, s4(-1))).toMatch(/172.*multiple of 32/);
    expect(gptq.canHold({ out: 64, in: 96 }, s4(64))).toMatch(/group size 64 does not divide.*96/);
    expect(gptq.canHold({ out: 64, in: 96 }, { ...s4(32), bits: 5 })).toMatch(/5-bit/);
    expect(gptq.canHold({ out: 64, in: 96 }, s4(32))).toBeNull();
    expect(gptq.canHold({ out: 64, in: 96 }, { ...s4(-1), bits: 3, sym: false })).toBeNull();
  });
  it("compressed-tensors refuses a ragged last group and non-4/8 bits, holds any in per-row", () => {
    expect(ct.canHold({ out: 64, in: 192 }, s4(128))).toMatch(/group size 128 does not divide in_features 192/);
    expect(ct.canHold({ out: 64, in: 192 }, { ...s4(64), bits: 3 })).toMatch(/3-bit/);
    expect(ct.canHold({ out: 768, in: 172 }, s4(-1))).toBeNull();
    expect(ct.canHold({ out: 7, in: 192 }, s4(64))).toBeNull();
  });
  it("pack refuses a layer canHold refuses", () => {
    const layer = randomLayer({ out: 8, in: 172, bits: 4, gs: -1, sym: true, seed: 3 });
    expect(() => gptq.pack(layer)).toThrow(/cannot be stored as gptq.*172/);
  });
});

describe("settingsFromConfig", () => {
  it("gptq honours dynamic -: skips and +: overrides (first match wins, re.match semantics)", () => {
    const base: QuantSettings = { bits: 4, groupSize: 128, sym: true, actOrder: false };
    const cfg = JSON.parse(JSON.stringify(gptq.quantizationConfig(base, ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"])));
    expect(gptq.detect(cfg)).toBe(true);
    expect(gptq.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toBeNull();
    expect(gptq.settingsFromConfig(cfg, "model.layers.1.self_attn.o_proj")).toBeNull();
    expect(gptq.settingsFromConfig(cfg, "model.layers.0.mlp.down_projx")).toMatchObject(base);
    expect(gptq.settingsFromConfig(cfg, "model.layers.10.mlp.down_proj")).toMatchObject(base);
    expect(gptq.settingsFromConfig(cfg, "model.layers.0.mlp.up_proj")).toMatchObject({ ...base, damp: 0.01, trueSequential: true });
    expect(gptq.settingsFromConfig(cfg)).toMatchObject(base);
    expect(gptq.settingsFromConfig(cfg, "lm_head")).toBeNull();

    const dyn = { ...cfg, dynamic: { "+:.*\\.mlp\\..*": { bits: 8, group_size: 32 }, "-:.*mlp.*": {}, ".*o_proj": { sym: false } } };
    expect(gptq.settingsFromConfig(dyn, "model.layers.2.mlp.gate_proj")).toMatchObject({ bits: 8, groupSize: 32, sym: true });
    expect(gptq.settingsFromConfig(dyn, "model.layers.2.self_attn.o_proj")).toMatchObject({ bits: 4, groupSize: 128, sym: false });
    expect(gptq.settingsFromConfig(dyn, "model.layers.2.self_attn.q_proj")).toMatchObject(base);
    // re.match anchors at the start only
    expect(gptq.settingsFromConfig({ ...cfg, dynamic: { "-:layers": {} } }, "model.layers.0.mlp.up_proj")).not.toBeNull();
  });

  it("gptq reads aliases and refuses v2 / bad bits", () => {
    expect(gptq.settingsFromConfig({ quant_method: "gptq", w_bit: 3, q_group_size: 64, sym: false, desc_act: true })).toEqual({
      bits: 3,
      groupSize: 64,
      sym: false,
      actOrder: true,
    });
    expect(() => gptq.settingsFromConfig({ quant_method: "gptq", bits: 4, checkpoint_format: "gptq_v2" })).toThrow(/gptq_v2/);
    expect(() => gptq.settingsFromConfig({ quant_method: "gptq", bits: 5 })).toThrow(/bits 5/);
  });

  it("compressed-tensors honours ignore (names and re:) and targets", () => {
    const cfg = JSON.parse(
      JSON.stringify(ct.quantizationConfig({ bits: 4, groupSize: 64, sym: false, actOrder: true }, ["model.layers.0.mlp.down_proj"])),
    );
    expect(ct.detect(cfg)).toBe(true);
    expect(gptq.detect(cfg)).toBe(false);
    expect(ct.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toBeNull();
    expect(ct.settingsFromConfig(cfg, "lm_head")).toBeNull();
    expect(ct.settingsFromConfig(cfg, "model.layers.0.mlp.up_proj")).toEqual({ bits: 4, groupSize: 64, sym: false, actOrder: true });
    cfg.ignore.push("re:.*gate_proj$");
    expect(ct.settingsFromConfig(cfg, "model.layers.5.mlp.gate_proj")).toBeNull();
    cfg.config_groups.group_0.targets = ["re:.*self_attn.*"];
    expect(ct.settingsFromConfig(cfg, "model.layers.5.mlp.up_proj")).toBeNull();
    expect(ct.settingsFromConfig(cfg, "model.layers.5.self_attn.k_proj")).not.toBeNull();
  });

  it("compressed-tensors reads channel strategy and refuses what it cannot read", () => {
    const cfg = ct.quantizationConfig({ bits: 8, groupSize: -1, sym: true, actOrder: false }, []) as any;
    expect(ct.settingsFromConfig(cfg)).toEqual({ bits: 8, groupSize: -1, sym: true, actOrder: false });
    expect(() => ct.settingsFromConfig({ ...cfg, format: "float-quantized" })).toThrow(/float-quantized/);
    const w8a8 = structuredClone(cfg);
    w8a8.config_groups.group_0.input_activations = { num_bits: 8, type: "int" };
    expect(() => ct.settingsFromConfig(w8a8)).toThrow(/activation/);
    const tensor = structuredClone(cfg);
    tensor.config_groups.group_0.weights.strategy = "tensor";
    expect(() => ct.settingsFromConfig(tensor)).toThrow(/"tensor"/);
  });
});

describe("dequantize", () => {
  it("computes scale·(q − zero) with g_idx", () => {
    // out = 2, in = 4, gs = 2, act-order groups: channels 1,2 → group 0; channels 0,3 → group 1
    const layer: QuantizedLinear = {
      name: "t",
      outFeatures: 2,
      inFeatures: 4,
      bits: 4,
      groupSize: 2,
      sym: false,
      codes: Uint8Array.from([3, 15, 0, 7, 8, 1, 2, 9]),
      scales: Float32Array.from([0.5, 2, 0.25, 1]), // [o, g]
      zeros: Uint8Array.from([4, 6, 8, 0]),
      gIdx: Int32Array.from([1, 0, 0, 1]),
    };
    // row 0: ch0 g1: 2*(3-6)=-6; ch1 g0: 0.5*(15-4)=5.5; ch2 g0: 0.5*(0-4)=-2; ch3 g1: 2*(7-6)=2
    // row 1: ch0 g1: 1*(8-0)=8; ch1 g0: 0.25*(1-8)=-1.75; ch2 g0: 0.25*(2-8)=-1.5; ch3 g1: 1*(9-0)=9
    expect(Array.from(dequantize(layer))).toEqual([-6, 5.5, -2, 2, 8, -1.75, -1.5, 9]);
    const { gIdx: _drop, ...plain } = layer;
    // without g_idx: ch0,1 → g0, ch2,3 → g1
    expect(Array.from(dequantize(plain))).toEqual([-0.5, 5.5, -12, 2, 0, -1.75, 2, 9]);
  });

  it("agrees after a pack/unpack round trip", () => {
    const layer = randomLayer({ out: 32, in: 64, bits: 4, gs: 16, sym: false, actOrder: true, seed: 9 });
    const m = store(gptq.pack(layer));
    const back = gptq.unpack(layer.name, (n) => m.get(n), settingsOf(layer));
    const expected = dequantize({ ...layer, scales: fp16Round(layer.scales) });
    expect(Array.from(dequantize(back))).toEqual(Array.from(expected));
  });
});

describe("unpack validation", () => {
  const layer = randomLayer({ out: 32, in: 64, bits: 4, gs: 32, sym: false, bias: true, seed: 11 });
  const s = settingsOf(layer);

  it("gptq: wrong-shaped scales name the tensor and the expected shape", () => {
    const m = store(gptq.pack(layer));
    m.set(`${layer.name}.scales`, { dtype: "F16", shape: [32, 2], data: new Uint8Array(128) });
    expect(() => gptq.unpack(layer.name, (n) => m.get(n), s)).toThrow(ModelError);
    expect(() => gptq.unpack(layer.name, (n) => m.get(n), s)).toThrow(/model\.layers\.3\.mlp\.up_proj\.scales.*expected \[2, 32\]/);
  });

  it("gptq: wrong dtype, missing tensor, shape disagreement", () => {
    const m = store(gptq.pack(layer));
    const qz = m.get(`${layer.name}.qzeros`)!;
    m.set(`${layer.name}.qzeros`, { ...qz, dtype: "F32" });
    expect(() => gptq.unpack(layer.name, (n) => m.get(n), s)).toThrow(/qzeros" has dtype F32, expected I32/);
    m.delete(`${layer.name}.qzeros`);
    expect(() => gptq.unpack(layer.name, (n) => m.get(n), s)).toThrow(/qzeros" is missing \(expected I32 \[2, 4\]/);
    const m2 = store(gptq.pack(layer));
    expect(() => gptq.unpack(layer.name, (n) => m2.get(n), s, { out: 32, in: 128 })).toThrow(
      /qweight" has shape \[8, 32\], expected \[16, 32\] \(I32; 4-bit, group_size 32, \[out, in\] = \[32, 128\] from config.json\)/,
    );
    expect(() => gptq.unpack(layer.name, (n) => m2.get(n), { ...s, groupSize: 16 })).toThrow(/qzeros" has shape \[2, 4\], expected \[4, 4\]/);
    expect(() => gptq.unpack(layer.name, (n) => m2.get(n), { ...s, groupSize: 48 })).toThrow(/qweight" does not fit quantization_config: group size 48 does not divide in_features 64/);
  });

  it("compressed-tensors: wrong-shaped weight_packed names the tensor and the expected shape", () => {
    const l = randomLayer({ out: 12, in: 64, bits: 4, gs: 32, sym: false, seed: 12 });
    const m = store(ct.pack(l));
    m.set(`${l.name}.weight_packed`, { dtype: "I32", shape: [8, 12], data: new Uint8Array(8 * 12 * 4) });
    expect(() => ct.unpack(l.name, (n) => m.get(n), settingsOf(l))).toThrow(/weight_packed" has shape \[8, 12\], expected \[12, 8\]/);
  });

  it("compressed-tensors: reads an int32 weight_shape and bf16 scales", () => {
    const l = randomLayer({ out: 12, in: 64, bits: 4, gs: 32, sym: true, seed: 13 });
    const m = store(ct.pack(l));
    m.set(`${l.name}.weight_shape`, { dtype: "I32", shape: [2], data: bytesOf(Int32Array.from([12, 64])) });
    const bf = new Uint16Array(new Float32Array(l.scales).buffer.slice(0)).filter((_, i) => i % 2 === 1); // top halves
    m.set(`${l.name}.weight_scale`, { dtype: "BF16", shape: [12, 2], data: bytesOf(bf) });
    const back = ct.unpack(l.name, (n) => m.get(n), settingsOf(l));
    expect(Buffer.from(back.codes).equals(Buffer.from(l.codes))).toBe(true);
    expect(back.scales[0]).toBeCloseTo(l.scales[0]!, 1);
  });
});

// ---------------------------------------------------------------------------------------------
// issue 10: what unpack refuses, and that its errors name the file when the getter knows it

describe("unpack refuses damaged or disagreeing layers", () => {
  const FILE = "/ckpt/model-00002-of-00002.safetensors";
  /** Stored tensors as a checkpoint getter hands them: each with its file. */
  const withFile = (m: Map<string, StoredTensor>) => (n: string) => {
    const t = m.get(n);
    return t && { ...t, file: FILE };
  };
  const f16At = (m: Map<string, StoredTensor>, name: string, i: number, bits: number) => {
    const t = m.get(name)!;
    const u = new Uint16Array(t.data.slice().buffer);
    u[i] = bits;
    m.set(name, { ...t, data: new Uint8Array(u.buffer) });
  };
  const i32At = (m: Map<string, StoredTensor>, name: string, i: number, v: number) => {
    const t = m.get(name)!;
    const a = new Int32Array(t.data.slice().buffer);
    a[i] = v;
    m.set(name, { ...t, data: new Uint8Array(a.buffer) });
  };
  const gl = randomLayer({ out: 32, in: 64, bits: 4, gs: 32, sym: true, bias: true, seed: 21 });
  const cl = randomLayer({ out: 12, in: 64, bits: 4, gs: 32, sym: false, seed: 22 });

  it("names the file of the tensor, and for a missing tensor the file of the layer's other tensors", () => {
    const m = store(gptq.pack(gl));
    f16At(m, `${gl.name}.scales`, 33, 0x7e00);
    expect(() => gptq.unpack(gl.name, withFile(m), settingsOf(gl))).toThrow(
      `${FILE}: tensor "${gl.name}.scales" holds NaN at index 33 (element [1, 1]); scales must be finite`,
    );
    m.delete(`${gl.name}.scales`);
    expect(() => gptq.unpack(gl.name, withFile(m), settingsOf(gl))).toThrow(`${FILE}: tensor "${gl.name}.scales" is missing (expected F16 [2, 32]`);
  });

  it("NaN, ±Inf and float32-overflowing scales, in both formats; a NaN bias", () => {
    for (const [bits, what] of [[0x7c00, "Infinity"], [0xfc00, "-Infinity"], [0x7e01, "NaN"]] as const) {
      const m = store(gptq.pack(gl));
      f16At(m, `${gl.name}.scales`, 3, bits);
      expect(() => gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl))).toThrow(new RegExp(`scales" holds ${what} at index 3 `));
      const c = store(ct.pack(cl));
      f16At(c, `${cl.name}.weight_scale`, 5, bits);
      expect(() => ct.unpack(cl.name, (n) => c.get(n), settingsOf(cl))).toThrow(new RegExp(`weight_scale" holds ${what} at index 5 \\(element \\[2, 1\\]\\)`));
    }
    // F32 scales are accepted, but 1e38 · 15 overflows float32: the dequantized weight would be Inf.
    const c = store(ct.pack(cl));
    const sc = Float32Array.from(cl.scales);
    sc[7] = 1e38;
    c.set(`${cl.name}.weight_scale`, { dtype: "F32", shape: [12, 2], data: bytesOf(sc) });
    expect(() => ct.unpack(cl.name, (n) => c.get(n), settingsOf(cl))).toThrow(/weight_scale" holds 1e\+38 at index 7 .*overflows float32 when multiplied by codes up to 15/);
    sc[7] = 1e37; // 1.5e38 still fits
    c.set(`${cl.name}.weight_scale`, { dtype: "F32", shape: [12, 2], data: bytesOf(sc) });
    expect(Array.from(dequantize(ct.unpack(cl.name, (n) => c.get(n), settingsOf(cl)))).every(Number.isFinite)).toBe(true);

    const m = store(gptq.pack(gl));
    f16At(m, `${gl.name}.bias`, 0, 0x7e00);
    expect(() => gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl))).toThrow(/bias" holds NaN at index 0 \(element \[0\]\); biases must be finite/);
  });

  it("gptq sym: true needs stored zero 2^(bits−1) − 1 everywhere (7 for 4 bits)", () => {
    const m = store(gptq.pack(gl));
    expect(new Set(new Int32Array(m.get(`${gl.name}.qzeros`)!.data.slice().buffer))).toEqual(new Set([0x77777777]));
    i32At(m, `${gl.name}.qzeros`, 5, 0x77777787); // qzeros [G, out/8]: word 5 = group 1, outs 8..15; nibble 1 → out 9 stores 8
    expect(() => gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl))).toThrow(
      /qzeros" holds stored zero 8 \(zero point 9\) for \[group, out\] = \[1, 9\], but quantization_config says sym: true, which stores 7/,
    );
    // The same tensors read as asymmetric are fine data.
    const asym = gptq.unpack(gl.name, (n) => m.get(n), { ...settingsOf(gl), sym: false });
    expect(asym.zeros[9 * 2 + 1]).toBe(9);
    // 8-bit symmetric stores 127.
    const l8 = randomLayer({ out: 32, in: 64, bits: 8, gs: -1, sym: true, seed: 23 });
    const m8 = store(gptq.pack(l8));
    expect(new Set(new Int32Array(m8.get(`${l8.name}.qzeros`)!.data.slice().buffer))).toEqual(new Set([0x7f7f7f7f]));
    i32At(m8, `${l8.name}.qzeros`, 0, 0x7f7f7f7e);
    expect(() => gptq.unpack(l8.name, (n) => m8.get(n), settingsOf(l8))).toThrow(/stored zero 126 .*stores 127/);
  });

  it("compressed-tensors: symmetric with a non-zero weight_zero_point present, asymmetric without one", () => {
    const c = store(ct.pack(cl));
    expect(() => ct.unpack(cl.name, withFile(c), { ...settingsOf(cl), sym: true })).toThrow(
      new RegExp(`^${FILE}: tensor "${cl.name}\\.weight_zero_point" holds zero point -?\\d+ for \\[out, group\\] = \\[\\d+, \\d\\], but quantization_config says symmetric: true`),
    );
    // A zero point tensor holding only the symmetric zero agrees with symmetric: true.
    const sym = randomLayer({ ...{ out: 12, in: 64, bits: 4, gs: 32, seed: 24 }, sym: true });
    const withZp = store(ct.pack({ ...sym, sym: false }));
    const back = ct.unpack(sym.name, (n) => withZp.get(n), settingsOf(sym));
    expect(Array.from(dequantize(back))).toEqual(Array.from(dequantize({ ...sym, scales: fp16Round(sym.scales) })));
    c.delete(`${cl.name}.weight_zero_point`);
    expect(() => ct.unpack(cl.name, withFile(c), settingsOf(cl))).toThrow(
      `${FILE}: tensor "${cl.name}.weight_zero_point" is missing (expected I32 [2, 2]: quantization_config says symmetric: false, which needs zero points`,
    );
  });

  it("g_idx: out of range; non-trivial without act-order in the config; missing with act-order", () => {
    const m = store(gptq.pack(gl));
    i32At(m, `${gl.name}.g_idx`, 10, 2);
    expect(() => gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl))).toThrow(/g_idx" holds 2 at index 10, outside \[0, 2\)/);
    i32At(m, `${gl.name}.g_idx`, 10, 1); // channel 10 in group 1: act-order data, config says desc_act false
    expect(() => gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl))).toThrow(/g_idx" holds 1 at index 10 .*desc_act: false.*disagree/);
    const ao = gptq.unpack(gl.name, (n) => m.get(n), { ...settingsOf(gl), actOrder: true });
    expect(ao.gIdx![10]).toBe(1);
    m.delete(`${gl.name}.g_idx`);
    expect(gptq.unpack(gl.name, (n) => m.get(n), settingsOf(gl)).gIdx).toBeUndefined();
    expect(() => gptq.unpack(gl.name, (n) => m.get(n), { ...settingsOf(gl), actOrder: true })).toThrow(/g_idx" is missing .*desc_act: true/);

    const al = randomLayer({ out: 12, in: 64, bits: 4, gs: 32, sym: true, actOrder: true, seed: 25 });
    const c = store(ct.pack(al));
    expect(() => ct.unpack(al.name, (n) => c.get(n), { ...settingsOf(al), actOrder: false })).toThrow(/weight_g_idx" holds \d at index \d+ .*no group act-order.*disagree/);
    c.delete(`${al.name}.weight_g_idx`);
    expect(() => ct.unpack(al.name, (n) => c.get(n), settingsOf(al))).toThrow(/weight_g_idx" is missing .*actorder "group"/);
  });

  it("compressed-tensors weight_shape must be a valid [out, in] agreeing with config.json", () => {
    const c = store(ct.pack(cl));
    c.set(`${cl.name}.weight_shape`, { dtype: "I64", shape: [2], data: bytesOf(BigInt64Array.from([-12n, 64n])) });
    expect(() => ct.unpack(cl.name, (n) => c.get(n), settingsOf(cl))).toThrow(/weight_shape" holds \[-12, 64\], which is not a valid \[out, in\]/);
    const c2 = store(ct.pack(cl));
    expect(() => ct.unpack(cl.name, (n) => c2.get(n), settingsOf(cl), { out: 12, in: 128 })).toThrow(
      /weight_shape" holds \[out, in\] = \[12, 64\], expected \[12, 128\] from config.json/,
    );
  });
});
