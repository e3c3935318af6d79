// AWQ GEMM (`--format awq`, issue 12 item 6): golden packed words written out by hand from AutoAWQ's
// interleave, round trips, canHold reasons, config (aliases, modules_to_not_convert, versions), damaged
// tensors, an independent decoder transliterated from AutoAWQ's packing_utils.py, and the CLI end to end
// (RTN g32 asym in awq and gptq: identical codes, so identical weights and perplexity).

import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { f16ToF32, f32ToF16 } from "../src/io/dtype.js";
import type { TensorToWrite } from "../src/io/types.js";
import { loadBlockWeights, openModel, validateModel } from "../src/model/model.js";
import { ModelError } from "../src/util/errors.js";
import { dequantize } from "../formats/dequant.js";
import { detectFormat, FORMATS, getFormat } from "../formats/index.js";
import type { QuantizedLinear, QuantSettings, StoredTensor } from "../formats/types.js";
import { makeTmpDir, removeTmpDirs, rng, runCli, STORIES_VENDORED } from "./helpers.js";

afterAll(removeTmpDirs);

const awq = getFormat("awq");
const gptq = getFormat("gptq");
const ct = getFormat("compressed-tensors");

// ---------------------------------------------------------------------------------------------
// helpers

const ASYM = (groupSize: number): QuantSettings => ({ bits: 4, groupSize, sym: false, actOrder: false });

function bytesOf(d: ArrayBufferView): Uint8Array {
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

function store(tensors: TensorToWrite[]): Map<string, StoredTensor> {
  const m = new Map<string, StoredTensor>();
  for (const t of tensors) m.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytesOf(t.data) });
  return m;
}

const FILE = "/ckpt/model.safetensors";
/** Stored tensors as a checkpoint getter hands them: each with its file. */
const withFile = (m: Map<string, StoredTensor>) => (n: string) => {
  const t = m.get(n);
  return t && { ...t, file: FILE };
};

function fp16Round(a: Float32Array): Float32Array {
  return f16ToF32(f32ToF16(a));
}

function randomLayer(out: number, inF: number, gs: number, seed: number, bias = false): QuantizedLinear {
  const r = rng(seed);
  const g = gs === -1 ? 1 : inF / gs;
  const layer: QuantizedLinear = {
    name: "model.layers.2.self_attn.o_proj",
    outFeatures: out,
    inFeatures: inF,
    bits: 4,
    groupSize: gs,
    sym: false,
    codes: Uint8Array.from({ length: out * inF }, () => Math.floor(r() * 16)),
    scales: Float32Array.from({ length: out * g }, () => (r() + 0.01) * 10 ** (Math.floor(r() * 4) - 3)),
    zeros: Uint8Array.from({ length: out * g }, () => Math.floor(r() * 16)),
  };
  layer.zeros[0] = 0;
  layer.zeros[layer.zeros.length - 1] = 15;
  if (bias) layer.bias = Float32Array.from({ length: out }, () => r() * 2 - 1);
  return layer;
}

const u32 = (x: number): number => x >>> 0;
const words = (t: TensorToWrite | undefined): number[] => Array.from(t!.data as Int32Array, u32);

/**
 * AutoAWQ awq/utils/packing_utils.py dequantize_gemm, transliterated: unpack_awq (nibble j of word c to
 * column 8c + j), reverse_awq_order (column 8c + m ← column 8c + AWQ_REVERSE_ORDER[m]), then
 * (iweight − izeros) · scales with both repeated group_size times along the input dim.
 * Returns W as [out, in] (PyTorch layout; AutoAWQ's result is its transpose).
 */
function autoawqDequantize(qweight: Int32Array, qzeros: Int32Array, scales: Float32Array, out: number, inF: number, groupSize: number): Float32Array {
  const AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7];
  const W = out / 8;
  const unpackAwq = (q: Int32Array, rows: number): number[][] =>
    Array.from({ length: rows }, (_, r) => Array.from({ length: out }, (_, col) => (q[r * W + Math.floor(col / 8)]! >> (4 * (col % 8))) & 15));
  const reverse = (a: number[][]) => a.map((row) => row.map((_, col) => row[8 * Math.floor(col / 8) + AWQ_REVERSE_ORDER[col % 8]!]!));
  const gs = groupSize === -1 ? inF : groupSize;
  const iw = reverse(unpackAwq(qweight, inF));
  const iz = reverse(unpackAwq(qzeros, inF / gs));
  const w = new Float32Array(out * inF);
  for (let i = 0; i < inF; i++)
    for (let o = 0; o < out; o++) {
      const g = Math.floor(i / gs);
      w[o * inF + i] = (iw[i]![o]! - iz[g]![o]!) * scales[g * out + o]!;
    }
  return w;
}

// ---------------------------------------------------------------------------------------------

describe("awq registry", () => {
  it("is registered after gptq and compressed-tensors (the automatic choice prefers earlier formats on ties)", () => {
    expect(FORMATS.map((f) => f.name)).toEqual(["gptq", "compressed-tensors", "awq", "quant4"]);
    expect(awq.name).toBe("awq");
  });

  it("detects quant_method awq in any case, and nothing else", () => {
    expect(detectFormat({ quant_method: "awq", bits: 4, group_size: 128, zero_point: true, version: "gemm" })).toBe(awq);
    expect(detectFormat({ quant_method: "AWQ", w_bit: 4, q_group_size: 128, version: "GEMM" })).toBe(awq);
    expect(awq.detect(gptq.quantizationConfig({ bits: 4, groupSize: 128, sym: false, actOrder: false }, []))).toBe(false);
    expect(awq.detect(ct.quantizationConfig({ bits: 4, groupSize: 128, sym: false, actOrder: false }, []))).toBe(false);
    expect(gptq.detect(awq.quantizationConfig(ASYM(128), []))).toBe(false);
    expect(ct.detect(awq.quantizationConfig(ASYM(128), []))).toBe(false);
    expect(awq.detect({ quant_method: 4 })).toBe(false);
    expect(awq.detect(null)).toBe(false);
  });
});

describe("awq golden words (written out by hand from the interleave: nibble i of word c = column 8c + [0,2,4,6,1,3,5,7][i])", () => {
  // out = 16 (two words per input row), in = 4, group size 2 (two groups).
  const out = 16;
  const inF = 4;
  const codes = new Uint8Array(out * inF); // [out, in]
  for (let o = 0; o < out; o++) {
    codes[o * inF + 0] = o; // input row 0: column o holds o
    codes[o * inF + 1] = 15 - o; // input row 1: column o holds 15 − o
    codes[o * inF + 2] = o === 5 ? 15 : 0; // input row 2: only column 5
    codes[o * inF + 3] = o === 15 ? 9 : o === 8 ? 1 : 0; // input row 3: columns 8 and 15
  }
  const zeros = new Uint8Array(out * 2); // [out, group]
  for (let o = 0; o < out; o++) {
    zeros[o * 2 + 0] = o;
    zeros[o * 2 + 1] = o === 3 ? 12 : 0;
  }
  const scales = Float32Array.from({ length: out * 2 }, (_, k) => 0.5 + Math.floor(k / 2) / 16 + (k % 2)); // [o, g]
  const layer: QuantizedLinear = {
    name: "m.q",
    outFeatures: out,
    inFeatures: inF,
    bits: 4,
    groupSize: 2,
    sym: false,
    codes,
    scales,
    zeros,
    bias: Float32Array.from({ length: out }, (_, o) => o / 4 - 1),
  };
  const t = awq.pack(layer);
  const get = (n: string) => t.find((x) => x.name === n);

  it("qweight is I32 [in, out/8], interleaved along the output dim, high nibbles make negative words", () => {
    const qw = get("m.q.qweight")!;
    expect(qw.dtype).toBe("I32");
    expect(qw.shape).toEqual([4, 2]);
    // Row 0, word 0: nibbles 0..7 hold columns 0,2,4,6,1,3,5,7 = values 0,2,4,6,1,3,5,7 → 0x75316420.
    // Row 0, word 1: columns 8,10,12,14,9,11,13,15 → 0xFDB9ECA8 (negative as int32).
    // Row 1 (15 − o): word 0 nibbles 15,13,11,9,14,12,10,8 → 0x8ACE9BDF; word 1 nibbles 7,5,3,1,6,4,2,0 → 0x02461357.
    // Row 2: column 5 = 8·0 + order[6] → nibble 6 of word 0 → 0x0F000000.
    // Row 3: column 8 = 8·1 + order[0] → nibble 0; column 15 = 8·1 + order[7] → nibble 7 → 0x90000001.
    expect(words(qw)).toEqual([0x75316420, 0xfdb9eca8, 0x8ace9bdf, 0x02461357, 0x0f000000, 0, 0, 0x90000001]);
    const raw = Array.from(qw.data as Int32Array);
    expect(raw[1]).toBe(0xfdb9eca8 - 2 ** 32);
    expect(raw[1]).toBeLessThan(0);
    expect(raw[2]).toBeLessThan(0);
    expect(raw[7]).toBe(0x90000001 - 2 ** 32);
  });

  it("qzeros are I32 [n_groups, out/8], same interleave, true zeros (no −1)", () => {
    const qz = get("m.q.qzeros")!;
    expect(qz.dtype).toBe("I32");
    expect(qz.shape).toEqual([2, 2]);
    // Group 0 holds zero o for column o (as qweight row 0); group 1 only column 3 = order[5] → nibble 5 → 0x00C00000.
    // A zero point of 0 is stored as 0 (GPTQ v1 would store 0xF).
    expect(words(qz)).toEqual([0x75316420, 0xfdb9eca8, 0x00c00000, 0]);
  });

  it("scales are F16 [n_groups, out]; bias F16 [out]; nothing else is written", () => {
    const sc = get("m.q.scales")!;
    expect(sc.dtype).toBe("F16");
    expect(sc.shape).toEqual([2, 16]);
    const s = f16ToF32(sc.data as Uint16Array);
    expect(s[0]).toBe(0.5); // [g=0, o=0]
    expect(s[3]).toBe(0.5 + 3 / 16); // [g=0, o=3]
    expect(s[16 + 3]).toBe(1.5 + 3 / 16); // [g=1, o=3]
    const b = get("m.q.bias")!;
    expect(b.dtype).toBe("F16");
    expect(b.shape).toEqual([16]);
    expect(t.map((x) => x.name).sort()).toEqual(["m.q.bias", "m.q.qweight", "m.q.qzeros", "m.q.scales"]);
  });

  it("AutoAWQ's dequantize_gemm (transliterated) and unpack agree with the layer", () => {
    const m = store(t);
    const back = awq.unpack("m.q", (n) => m.get(n), ASYM(2), { out, in: inF });
    expect(Array.from(back.codes)).toEqual(Array.from(codes));
    expect(Array.from(back.zeros)).toEqual(Array.from(zeros));
    const ref = autoawqDequantize(
      get("m.q.qweight")!.data as Int32Array,
      get("m.q.qzeros")!.data as Int32Array,
      f16ToF32(get("m.q.scales")!.data as Uint16Array),
      out,
      inF,
      2,
    );
    expect(Array.from(dequantize(back))).toEqual(Array.from(ref));
    expect(Array.from(ref)).toEqual(Array.from(dequantize(layer))); // scales here are exact in fp16
  });
});

describe("awq round trip", () => {
  const cases: { out: number; in: number; gs: number; bias?: boolean; readGs?: number }[] = [
    { out: 8, in: 16, gs: -1 },
    { out: 64, in: 96, gs: 32, bias: true },
    { out: 32, in: 128, gs: 16 },
    { out: 16, in: 40, gs: 8, bias: true },
    { out: 24, in: 172, gs: -1 }, // per row holds any in
    { out: 40, in: 64, gs: 64, readGs: -1 }, // a group as wide as the row is per row
    { out: 48, in: 128, gs: 128, bias: true, readGs: -1 },
  ];
  let seed = 300;
  for (const c of cases) {
    it(JSON.stringify(c), () => {
      const layer = randomLayer(c.out, c.in, c.gs, seed++, c.bias);
      const s = ASYM(c.gs);
      const shape = { out: c.out, in: c.in };
      expect(awq.canHold(shape, s)).toBeNull();
      const written = awq.pack(layer);
      for (const p of awq.paramInfo(layer.name, shape, s)) {
        const w = written.find((x) => x.name === p.name);
        expect(w, p.name).toBeDefined();
        expect(w!.dtype).toBe(p.dtype);
        expect(w!.shape).toEqual(p.shape);
      }
      const m = store(written);
      expect(awq.isQuantized(layer.name, (n) => m.has(n))).toBe(true);
      expect(awq.isQuantized("other", (n) => m.has(n))).toBe(false);
      // Read with the config's group size, with the shape from config.json and from the tensors.
      for (const sh of [shape, undefined]) {
        const back = awq.unpack(layer.name, (n) => m.get(n), s, sh);
        expect(back).toMatchObject({ outFeatures: c.out, inFeatures: c.in, bits: 4, sym: false, groupSize: c.readGs ?? c.gs });
        expect(back.gIdx).toBeUndefined();
        expect(Buffer.from(back.codes).equals(Buffer.from(layer.codes))).toBe(true);
        expect(Array.from(back.zeros)).toEqual(Array.from(layer.zeros));
        expect(Array.from(back.scales)).toEqual(Array.from(fp16Round(layer.scales)));
        if (layer.bias) expect(Array.from(back.bias!)).toEqual(Array.from(fp16Round(layer.bias)));
        else expect(back.bias).toBeUndefined();
        const expected = dequantize({ ...layer, scales: fp16Round(layer.scales) });
        expect(Array.from(dequantize(back))).toEqual(Array.from(expected));
        // and what AutoAWQ's own dequantizer makes of the bytes
        const ref = autoawqDequantize(
          new Int32Array(m.get(`${layer.name}.qweight`)!.data.slice().buffer),
          new Int32Array(m.get(`${layer.name}.qzeros`)!.data.slice().buffer),
          f16ToF32(new Uint16Array(m.get(`${layer.name}.scales`)!.data.slice().buffer)),
          c.out,
          c.in,
          c.gs,
        );
        expect(Array.from(ref)).toEqual(Array.from(expected));
      }
    });
  }

  it("per row reads back from group_size −1 or group_size = in (AutoAWQ's spelling)", () => {
    const layer = randomLayer(16, 48, -1, 7);
    const m = store(awq.pack(layer));
    for (const gs of [-1, 48]) {
      const back = awq.unpack(layer.name, (n) => m.get(n), ASYM(gs), { out: 16, in: 48 });
      expect(back.groupSize).toBe(-1);
      expect(Buffer.from(back.codes).equals(Buffer.from(layer.codes))).toBe(true);
    }
    // A group size that is neither: qzeros and scales would have 3 groups.
    expect(() => awq.unpack(layer.name, (n) => m.get(n), ASYM(16), { out: 16, in: 48 })).toThrow(/qzeros" has shape \[1, 2\], expected \[3, 2\]/);
  });
});

describe("awq canHold", () => {
  it("holds 4-bit asymmetric layers with out a multiple of 8 and a group size dividing in (or per row)", () => {
    expect(awq.canHold({ out: 64, in: 64 }, ASYM(32))).toBeNull();
    expect(awq.canHold({ out: 8, in: 172 }, ASYM(-1))).toBeNull();
    expect(awq.canHold({ out: 4096, in: 11008 }, ASYM(128))).toBeNull();
  });
  it("gives a reason for everything else", () => {
    expect(awq.canHold({ out: 64, in: 64 }, { ...ASYM(32), sym: true })).toMatch(/asymmetric weights only \(zero_point: true; use --asym\)/);
    expect(awq.canHold({ out: 64, in: 64 }, { ...ASYM(32), bits: 8 })).toMatch(/4-bit weights only.*not 8-bit/);
    expect(awq.canHold({ out: 64, in: 64 }, { ...ASYM(32), bits: 3 })).toMatch(/not 3-bit/);
    expect(awq.canHold({ out: 64, in: 64 }, { ...ASYM(32), actOrder: true })).toMatch(/no g_idx.*act-order/);
    expect(awq.canHold({ out: 172, in: 64 }, ASYM(32))).toMatch(/out_features 172 is not a multiple of 8/);
    expect(awq.canHold({ out: 172, in: 64 }, ASYM(-1))).toMatch(/out_features 172 is not a multiple of 8/);
    expect(awq.canHold({ out: 64, in: 172 }, ASYM(32))).toMatch(/group size 32 does not divide in_features 172/);
    expect(awq.canHold({ out: 64, in: 192 }, ASYM(128))).toMatch(/group size 128 does not divide in_features 192/);
  });
  it("pack refuses what canHold refuses, and validates the layer", () => {
    expect(() => awq.pack({ ...randomLayer(8, 32, 16, 1), sym: true, zeros: new Uint8Array(16).fill(8) })).toThrow(/cannot be stored as awq: .*asymmetric/);
    const l = randomLayer(12, 32, 16, 2);
    expect(() => awq.pack(l)).toThrow(/cannot be stored as awq: out_features 12/);
    const bad = randomLayer(8, 32, 16, 3);
    bad.codes[5] = 16;
    expect(() => awq.pack(bad)).toThrow(/code 16 at 5 exceeds 15/);
    expect(() => awq.pack({ ...randomLayer(8, 32, 16, 4), scales: new Float32Array(3) })).toThrow(ModelError);
  });
});

describe("awq config", () => {
  const SKIP = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"];

  it("writes AutoAWQ's transformers dict and quant_config.json", () => {
    expect(awq.quantizationConfig(ASYM(128), SKIP)).toEqual({
      quant_method: "awq",
      bits: 4,
      group_size: 128,
      zero_point: true,
      version: "gemm",
      modules_to_not_convert: SKIP,
    });
    expect(awq.quantizationConfig(ASYM(64), []).modules_to_not_convert).toBeNull();
    // Per row stays −1 in the config (the loaders map it to each layer's in_features).
    expect(awq.quantizationConfig(ASYM(-1), []).group_size).toBe(-1);
    const side = awq.sidecarFiles(ASYM(128), SKIP);
    expect(Object.keys(side)).toEqual(["quant_config.json"]);
    expect(JSON.parse(side["quant_config.json"]!)).toEqual({ zero_point: true, q_group_size: 128, w_bit: 4, version: "GEMM", modules_to_not_convert: SKIP });
    expect(() => awq.quantizationConfig({ ...ASYM(128), sym: true }, [])).toThrow(/symmetric/);
  });

  it("round trips through JSON; modules_to_not_convert skip by substring, as transformers and vLLM do", () => {
    const cfg = JSON.parse(JSON.stringify(awq.quantizationConfig(ASYM(128), SKIP)));
    expect(awq.settingsFromConfig(cfg)).toEqual(ASYM(128));
    expect(awq.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toBeNull();
    expect(awq.settingsFromConfig(cfg, "model.layers.1.self_attn.o_proj")).toBeNull();
    expect(awq.settingsFromConfig(cfg, "model.layers.10.mlp.down_proj")).toEqual(ASYM(128)); // not a substring
    expect(awq.settingsFromConfig(cfg, "model.layers.0.mlp.up_proj")).toEqual(ASYM(128));
    expect(awq.settingsFromConfig(cfg, "lm_head")).toBeNull();
    // AutoAWQ-style short keys match every block.
    const short = { ...cfg, modules_to_not_convert: ["down_proj", "self_attn.k"] };
    expect(awq.settingsFromConfig(short, "model.layers.7.mlp.down_proj")).toBeNull();
    expect(awq.settingsFromConfig(short, "model.layers.7.self_attn.k_proj")).toBeNull();
    expect(awq.settingsFromConfig(short, "model.layers.7.self_attn.q_proj")).not.toBeNull();
    expect(awq.settingsFromConfig({ ...cfg, modules_to_not_convert: null }, "model.layers.0.mlp.down_proj")).not.toBeNull();
  });

  it("reads AutoAWQ's aliases and defaults", () => {
    const side = JSON.parse(awq.sidecarFiles(ASYM(64), [])["quant_config.json"]!);
    expect(awq.settingsFromConfig({ quant_method: "awq", ...side })).toEqual(ASYM(64));
    expect(awq.settingsFromConfig({ quant_method: "AWQ", w_bit: 4, q_group_size: 32, zero_point: true, version: "GEMM" })).toEqual(ASYM(32));
    expect(awq.settingsFromConfig({ quant_method: "awq", bits: 4, w_bit: 4, group_size: -1 })).toEqual(ASYM(-1));
    // version and zero_point absent: transformers' defaults (gemm, true); group size absent: 128.
    expect(awq.settingsFromConfig({ quant_method: "awq", bits: 4 })).toEqual(ASYM(128));
    expect(awq.settingsFromConfig({ quant_method: "awq", bits: 4, backend: "autoawq", do_fuse: false, fuse_max_seq_len: null })).toEqual(ASYM(128));
  });

  it("refuses other versions, backends, bits, zero_point false and bad group sizes with one-line ModelErrors", () => {
    const base = { quant_method: "awq", bits: 4, group_size: 128, zero_point: true };
    for (const version of ["gemv", "GEMV", "gemv_fast", "marlin", "exllama", "ipex"]) {
      const cfg = { ...base, version };
      expect(detectFormat(cfg)).toBe(awq); // an AWQ checkpoint, of a version quant4 does not read
      expect(() => awq.settingsFromConfig(cfg)).toThrow(ModelError);
      expect(() => awq.settingsFromConfig(cfg, "model.layers.0.mlp.up_proj")).toThrow(new RegExp(`version "${version}" is not supported: quant4 reads AWQ GEMM checkpoints only`));
    }
    expect(() => awq.settingsFromConfig({ ...base, backend: "llm-awq" })).toThrow(/backend "llm-awq" is not supported/);
    expect(() => awq.settingsFromConfig({ ...base, bits: 8 })).toThrow(/bits 8 is not supported/);
    expect(() => awq.settingsFromConfig({ ...base, bits: 4, w_bit: 8 })).toThrow(/bits and w_bit disagree \(4 and 8\)/);
    expect(() => awq.settingsFromConfig({ ...base, q_group_size: 64 })).toThrow(/group_size and q_group_size disagree/);
    expect(() => awq.settingsFromConfig({ quant_method: "awq", group_size: 128 })).toThrow(/missing bits/);
    expect(() => awq.settingsFromConfig({ ...base, zero_point: false })).toThrow(/zero_point false is not supported/);
    expect(() => awq.settingsFromConfig({ ...base, group_size: 0 })).toThrow(/group_size 0/);
    expect(() => awq.settingsFromConfig({ ...base, bits: "4" })).toThrow(/quantization_config \(awq\): bits/);
    expect(() => awq.settingsFromConfig({ ...base, modules_to_not_convert: "lm_head" })).toThrow(/modules_to_not_convert/);
    try {
      awq.settingsFromConfig({ ...base, version: "gemv" });
    } catch (e) {
      expect((e as Error).message).not.toMatch(/\n/);
    }
  });
});

describe("awq unpack refuses damaged or disagreeing layers, naming the file and the tensor", () => {
  const layer = randomLayer(32, 64, 32, 21, true);
  const s = ASYM(32);
  const f16At = (m: Map<string, StoredTensor>, name: string, i: number, bits: number) => {
    const t = m.get(name)!;
    const u = new Uint16Array(t.data.slice().buffer);
    u[i] = bits;
    m.set(name, { ...t, data: new Uint8Array(u.buffer) });
  };

  it("a NaN, ±Inf or float32-overflowing scale; a NaN bias", () => {
    const m = store(awq.pack(layer));
    f16At(m, `${layer.name}.scales`, 33, 0x7e00); // scales [G, out]: index 33 = [1, 1]
    expect(() => awq.unpack(layer.name, withFile(m), s)).toThrow(
      `${FILE}: tensor "${layer.name}.scales" holds NaN at index 33 (element [1, 1]); scales must be finite`,
    );
    f16At(m, `${layer.name}.scales`, 33, 0xfc00);
    expect(() => awq.unpack(layer.name, withFile(m), s)).toThrow(/scales" holds -Infinity at index 33/);
    const f = store(awq.pack(layer));
    const sc = Float32Array.from(f16ToF32(new Uint16Array(f.get(`${layer.name}.scales`)!.data.slice().buffer)));
    sc[4] = 1e38;
    f.set(`${layer.name}.scales`, { dtype: "F32", shape: [2, 32], data: bytesOf(sc) });
    expect(() => awq.unpack(layer.name, withFile(f), s)).toThrow(/scales" holds 1e\+38 at index 4 .*overflows float32 when multiplied by codes up to 15/);
    const b = store(awq.pack(layer));
    f16At(b, `${layer.name}.bias`, 0, 0x7e00);
    expect(() => awq.unpack(layer.name, withFile(b), s)).toThrow(/bias" holds NaN at index 0 \(element \[0\]\); biases must be finite/);
  });

  it("missing, wrongly typed and wrongly shaped tensors", () => {
    const m = store(awq.pack(layer));
    m.delete(`${layer.name}.qzeros`);
    expect(() => awq.unpack(layer.name, withFile(m), s)).toThrow(`${FILE}: tensor "${layer.name}.qzeros" is missing (expected I32 [2, 4]`);
    const d = store(awq.pack(layer));
    d.set(`${layer.name}.qweight`, { ...d.get(`${layer.name}.qweight`)!, dtype: "F32" });
    expect(() => awq.unpack(layer.name, withFile(d), s)).toThrow(`${FILE}: tensor "${layer.name}.qweight" has dtype F32, expected I32`);
    const k = store(awq.pack(layer));
    expect(() => awq.unpack(layer.name, withFile(k), s, { out: 32, in: 128 })).toThrow(
      /qweight" has shape \[64, 4\], expected \[128, 4\] \(I32; 4-bit, group_size 32, \[out, in\] = \[32, 128\] from config.json\)/,
    );
    expect(() => awq.unpack(layer.name, withFile(k), ASYM(48))).toThrow(/qweight" does not fit quantization_config: group size 48 does not divide in_features 64/);
    expect(() => awq.unpack(layer.name, withFile(k), s, { out: 36, in: 64 })).toThrow(/qweight" cannot hold out_features 36/);
    // A GPTQ-laid-out layer ([in/8, out]) read as AWQ ([in, out/8]).
    const g = store(gptq.pack({ ...layer, name: layer.name }));
    expect(() => awq.unpack(layer.name, withFile(g), s, { out: 32, in: 64 })).toThrow(new RegExp(`^${FILE}: tensor "${layer.name.replace(/\./g, "\\.")}\\.qweight" has shape \\[8, 32\\], expected \\[64, 4\\]`));
  });

  it("settings awq cannot hold", () => {
    const m = store(awq.pack(layer));
    expect(() => awq.unpack(layer.name, withFile(m), { ...s, bits: 8 })).toThrow(/qweight" cannot be read: .*8-bit/);
    expect(() => awq.unpack(layer.name, withFile(m), { ...s, sym: true })).toThrow(/qweight" cannot be read as symmetric/);
    expect(() => awq.unpack(layer.name, withFile(m), { ...s, actOrder: true })).toThrow(/qweight" cannot be read with act-order/);
  });
});

// ---------------------------------------------------------------------------------------------
// End to end through the CLI on the vendored stories260K (RTN needs no calibration text).

describe("awq end to end: quantize, eval-ppl, inspect", () => {
  let tmp: string;
  const quantize = (out: string, format: string, gs: string) =>
    runCli(["quantize", STORIES_VENDORED, out, "--method", "rtn", "--asym", "--group-size", gs, "--format", format, "--threads", "1"]);
  const EVAL = ["--text", "tinystories", "--seqlen", "256", "--max-windows", "4", "--threads", "1"];
  const ppl = (stdout: string): string => /^perplexity (\S+)/m.exec(stdout)?.[1] ?? `no perplexity in: ${stdout}`;

  beforeAll(() => {
    tmp = makeTmpDir("quant4-awq-");
  });

  it("g32 asym: the attention Linears are packed, the 172-wide MLP stays fp16; same weights and perplexity as gptq g32 asym", async () => {
    const a = path.join(tmp, "awq");
    const g = path.join(tmp, "gptq");
    const [qa, qg] = await Promise.all([quantize(a, "awq", "32"), quantize(g, "gptq", "32")]);
    expect(qa.code, qa.stderr).toBe(0);
    expect(qg.code, qg.stderr).toBe(0);
    expect(qa.stdout).toMatch(/\(awq, rtn 4-bit g32 asym\)/);
    expect(qa.stdout).toMatch(/linears +20 quantized, 15 kept fp16/);
    expect(qa.stderr).toMatch(/gate_proj \[172×64\] stays fp16: out_features 172 is not a multiple of 8/);
    expect(qa.stderr).toMatch(/down_proj \[64×172\] stays fp16: group size 32 does not divide in_features 172/);

    const cfg = JSON.parse(fs.readFileSync(path.join(a, "config.json"), "utf8"));
    expect(cfg.quantization_config).toMatchObject({ quant_method: "awq", bits: 4, group_size: 32, zero_point: true, version: "gemm" });
    const skipped: string[] = cfg.quantization_config.modules_to_not_convert;
    expect(skipped).toHaveLength(15);
    expect(skipped).toContain("model.layers.4.mlp.down_proj");
    expect(JSON.parse(fs.readFileSync(path.join(a, "quant_config.json"), "utf8"))).toEqual({
      zero_point: true,
      q_group_size: 32,
      w_bit: 4,
      version: "GEMM",
      modules_to_not_convert: skipped,
    });

    // The written tensors: AWQ names, dtypes and shapes; every weight equal to the gptq output's.
    const sa = openModel(a);
    const sg = openModel(g);
    try {
      expect(sa.quant!.format).toBe(awq);
      const info = (n: string) => ({ dtype: sa.ckpt.info(n).dtype, shape: sa.ckpt.info(n).shape });
      expect(info("model.layers.0.self_attn.q_proj.qweight")).toEqual({ dtype: "I32", shape: [64, 8] });
      expect(info("model.layers.0.self_attn.k_proj.qzeros")).toEqual({ dtype: "I32", shape: [2, 4] });
      expect(info("model.layers.0.self_attn.o_proj.scales")).toEqual({ dtype: "F16", shape: [2, 64] });
      expect(sa.ckpt.has("model.layers.0.self_attn.q_proj.g_idx")).toBe(false);
      expect(sa.ckpt.has("model.layers.0.mlp.gate_proj.weight")).toBe(true);
      validateModel(sa);
      for (let b = 0; b < sa.arch.nLayers; b++) {
        const wa = loadBlockWeights(sa, b);
        const wg = loadBlockWeights(sg, b);
        for (const [name, w] of wg) expect(Buffer.from(wa.get(name)!.buffer).equals(Buffer.from(w.buffer)), `block ${b} ${name}`).toBe(true);
      }
    } finally {
      sa.ckpt.close();
      sg.ckpt.close();
    }

    const [ea, eg] = await Promise.all([runCli(["eval-ppl", a, ...EVAL]), runCli(["eval-ppl", g, ...EVAL])]);
    expect(ea.code, ea.stderr).toBe(0);
    expect(eg.code, eg.stderr).toBe(0);
    // RTN codes are identical in both formats: the perplexities match to 4 decimals.
    expect(Number(ppl(ea.stdout))).toBeGreaterThan(1);
    expect(Number(ppl(ea.stdout)).toFixed(4)).toBe(Number(ppl(eg.stdout)).toFixed(4));

    const ins = await runCli(["inspect", a]);
    expect(ins.code, ins.stderr).toBe(0);
    expect(ins.stdout).toMatch(/quantization: awq, 20\/35 linears packed/);
  }, 120_000);

  it("per row asym: down_proj (in 172) is packed per row with group_size −1 and reads back", async () => {
    const a = path.join(tmp, "awq-perrow");
    const q = await quantize(a, "awq", "-1");
    expect(q.code, q.stderr).toBe(0);
    expect(q.stdout).toMatch(/linears +25 quantized, 10 kept fp16/);
    const cfg = JSON.parse(fs.readFileSync(path.join(a, "config.json"), "utf8"));
    expect(cfg.quantization_config.group_size).toBe(-1);
    const src = openModel(a);
    try {
      expect(src.ckpt.info("model.layers.0.mlp.down_proj.qweight").shape).toEqual([172, 8]);
      expect(src.ckpt.info("model.layers.0.mlp.down_proj.scales").shape).toEqual([1, 64]);
      validateModel(src);
    } finally {
      src.ckpt.close();
    }
    const e = await runCli(["eval-ppl", a, ...EVAL]);
    expect(e.code, e.stderr).toBe(0);
    expect(Number(ppl(e.stdout))).toBeGreaterThan(1);
    expect(Number(ppl(e.stdout))).toBeLessThan(50);
  }, 120_000);

  it("sym weights are refused for --format awq with the reason", async () => {
    const r = await runCli(["quantize", STORIES_VENDORED, path.join(tmp, "sym"), "--method", "rtn", "--group-size", "32", "--format", "awq", "--threads", "1"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/format awq cannot hold any Linear.*asymmetric weights only/);
  });
});
