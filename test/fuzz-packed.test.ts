// Seeded fuzz of packed checkpoints (issue 10). Small synthetic Llama checkpoints are packed in-process
// with each format's pack() and written with the project's safetensors writer, then mutated: packed code
// bits, scales (NaN/Inf/huge/random fp16), g_idx values, dtypes and shapes in the header, config fields
// (bits, group_size, sym, desc_act, format, ...), missing tensors. Each mutated checkpoint is loaded
// through the one validation path (openModel → validateModel, as inspect does, and loadBlockWeights, as
// eval-ppl/generate do). The outcome must be either a Quant4Error naming a file (one line), or finite
// weights equal to what an independent decoder, written here from FORMATS.md, makes of the same bytes.

import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { getFormat } from "../formats/index.js";
import { f32ToF16 } from "../src/io/dtype.js";
import type { FormatSpec, QuantizedLinear, QuantSettings } from "../formats/types.js";
import type { DType, TensorToWrite } from "../src/io/types.js";
import { writeSafetensors } from "../src/io/writer.js";
import { loadBlockWeights, openModel, validateModel } from "../src/model/model.js";
import { Quant4Error } from "../src/util/errors.js";
import { gaussian, makeTmpDir, removeTmpDirs, rng } from "./helpers.js";

afterAll(removeTmpDirs);

// A tiny Llama whose every Linear every format can hold (in and out multiples of 32).
const H = 64;
const FFN = 96;
const LAYERS = 2;
const CONFIG = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: H, intermediate_size: FFN, num_hidden_layers: LAYERS,
  num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 64, max_position_embeddings: 64, rms_norm_eps: 1e-5,
  rope_theta: 10000, hidden_act: "silu", tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2,
};
const LINEARS: [string, number, number][] = [
  ["self_attn.q_proj", 64, 64], ["self_attn.k_proj", 32, 64], ["self_attn.v_proj", 32, 64], ["self_attn.o_proj", 64, 64],
  ["mlp.gate_proj", 96, 64], ["mlp.up_proj", 96, 64], ["mlp.down_proj", 64, 96],
];

interface Stored {
  name: string;
  dtype: DType;
  shape: number[];
  bytes: Uint8Array;
}

interface Base {
  label: string;
  format: FormatSpec;
  settings: QuantSettings;
  tensors: Stored[];
  config: Record<string, any>;
}

const bytesOf = (v: ArrayBufferView) => new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));

/** fp16-exact value of x (round to nearest even via the bits, as the writer would store it). */
function toF16Exact(x: number): number {
  return f16(f32ToF16(Float32Array.of(x))[0]!);
}

function randomLayer(name: string, out: number, inF: number, s: QuantSettings, r: () => number, outlierFrac = 0): QuantizedLinear {
  const g = s.groupSize === -1 ? 1 : inF / s.groupSize;
  const maxq = (1 << s.bits) - 1;
  const layer: QuantizedLinear = {
    name, outFeatures: out, inFeatures: inF, bits: s.bits, groupSize: s.groupSize, sym: s.sym,
    codes: Uint8Array.from({ length: out * inF }, () => Math.floor(r() * (maxq + 1))),
    scales: Float32Array.from({ length: out * g }, () => 0.001 + 0.05 * r()),
    zeros: Uint8Array.from({ length: out * g }, () => (s.sym ? 1 << (s.bits - 1) : Math.floor(r() * (maxq + 1)))),
  };
  if (s.actOrder && s.groupSize !== -1) {
    const perm = Array.from({ length: inF }, (_, i) => i).sort(() => r() - 0.5);
    layer.gIdx = new Int32Array(inF);
    for (let j = 0; j < inF; j++) layer.gIdx[perm[j]!] = Math.floor(j / s.groupSize);
  }
  if (outlierFrac > 0) {
    // CSR outliers (quant4): some rows none, values well outside the grid, fp16-exact.
    const indptr = new Int32Array(out + 1);
    const idx: number[] = [];
    const val: number[] = [];
    for (let row = 0; row < out; row++) {
      for (let c = 0; c < inF; c++) if (r() < outlierFrac) (idx.push(c), val.push(toF16Exact((r() - 0.5) * 20)));
      indptr[row + 1] = idx.length;
    }
    layer.outliers = { indptr, indices: Int32Array.from(idx), values: Float32Array.from(val) };
  }
  return layer;
}

function makeBase(label: string, formatName: string, settings: QuantSettings, seed: number, outlierFrac = 0): Base {
  const format = getFormat(formatName);
  const r = rng(seed);
  const g = gaussian(r);
  const tensors: Stored[] = [];
  const f32 = (name: string, shape: number[], f: () => number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, dtype: "F32", shape, bytes: bytesOf(Float32Array.from({ length: n }, f)) });
  };
  f32("model.embed_tokens.weight", [64, H], () => g());
  f32("model.norm.weight", [H], () => 1 + 0.1 * g());
  for (let b = 0; b < LAYERS; b++) {
    const p = `model.layers.${b}.`;
    f32(`${p}input_layernorm.weight`, [H], () => 1 + 0.1 * g());
    f32(`${p}post_attention_layernorm.weight`, [H], () => 1 + 0.1 * g());
    for (const [n, out, inF] of LINEARS) {
      expect(format.canHold({ out, in: inF }, settings), `${label} ${n}`).toBeNull();
      for (const t of format.pack(randomLayer(p + n, out, inF, settings, r, outlierFrac))) {
        tensors.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], bytes: bytesOf(t.data) });
      }
    }
  }
  const config = { ...CONFIG, quantization_config: JSON.parse(JSON.stringify(format.quantizationConfig(settings, []))) };
  return { label, format, settings, tensors, config };
}

// ---------------------------------------------------------------------------------------------
// The independent decoder (FORMATS.md §1 GPTQ v1, §2 AWQ GEMM, §3 compressed-tensors pack-quantized)

function f16(h: number): number {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

function floats(t: Stored): number[] {
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const n = t.bytes.byteLength;
  switch (t.dtype) {
    case "F16": return Array.from({ length: n / 2 }, (_, i) => f16(dv.getUint16(2 * i, true)));
    case "BF16": return Array.from({ length: n / 2 }, (_, i) => new Float32Array(Uint32Array.of(dv.getUint16(2 * i, true) << 16).buffer)[0]!);
    case "F32": return Array.from({ length: n / 4 }, (_, i) => dv.getFloat32(4 * i, true));
    default: throw new Error(`reference: ${t.name} is ${t.dtype}, not a float`);
  }
}

function ints(t: Stored): number[] {
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  if (t.dtype === "I32") return Array.from({ length: t.bytes.byteLength / 4 }, (_, i) => dv.getInt32(4 * i, true));
  if (t.dtype === "I64") return Array.from({ length: t.bytes.byteLength / 8 }, (_, i) => Number(dv.getBigInt64(8 * i, true)));
  if (t.dtype === "I16") return Array.from({ length: t.bytes.byteLength / 2 }, (_, i) => dv.getInt16(2 * i, true));
  throw new Error(`reference: ${t.name} is ${t.dtype}, not an int`);
}

/** Value k of a little-endian bitstream held in words[base + w·stride]. */
function streamAt(words: number[], base: number, stride: number, k: number, bits: number): number {
  const bit = k * bits;
  const w = Math.floor(bit / 32);
  const sh = bit % 32;
  let v = words[base + w * stride]! >>> sh;
  if (sh + bits > 32) v |= words[base + (w + 1) * stride]! << (32 - sh);
  return v & ((1 << bits) - 1);
}

/** The dequantized [out*in] weight of `prefix` as the config and the stored bytes say. */
function referenceDecode(tensors: Map<string, Stored>, qc: any, prefix: string, out: number, inF: number): Float32Array {
  const w = new Float32Array(out * inF);
  const method = String(qc.quant_method).toLowerCase();
  if (method === "quant4") {
    // README "quant4 format": the GPTQ v1 decode, then w[r, indices[k]] = values[k] for k in indptr[r] .. indptr[r+1]−1.
    const dense = referenceDecode(tensors, { ...qc, quant_method: "gptq" }, prefix, out, inF);
    const ip = tensors.get(`${prefix}.outlier_indptr`);
    if (!ip) return dense;
    const indptr = ints(ip);
    const indices = ints(tensors.get(`${prefix}.outlier_indices`)!);
    const values = floats(tensors.get(`${prefix}.outlier_values`)!);
    for (let r = 0; r < out; r++) for (let k = indptr[r]!; k < indptr[r + 1]!; k++) dense[r * inF + indices[k]!] = values[k]!;
    return dense;
  }
  if (method === "gptq") {
    const bits: number = qc.bits;
    const gs: number = qc.group_size;
    const qw = ints(tensors.get(`${prefix}.qweight`)!);
    const qz = ints(tensors.get(`${prefix}.qzeros`)!);
    const sc = floats(tensors.get(`${prefix}.scales`)!);
    const gi = tensors.has(`${prefix}.g_idx`) && qc.desc_act ? ints(tensors.get(`${prefix}.g_idx`)!) : null;
    const zw = Math.ceil((out * bits) / 32);
    for (let o = 0; o < out; o++)
      for (let i = 0; i < inF; i++) {
        const g = gi ? gi[i]! : gs === -1 ? 0 : Math.floor(i / gs);
        const q = streamAt(qw, o, out, i, bits); // column o, input channels down the rows
        const z = (streamAt(qz, g * zw, 1, o, bits) + 1) & ((1 << bits) - 1);
        w[o * inF + i] = sc[g * out + o]! * (q - z);
      }
    return w;
  }
  if (String(qc.quant_method).toLowerCase() === "awq") {
    // FORMATS.md §2 / AutoAWQ packing_utils.py dequantize_gemm: qweight [in, out/8], column 8c + m in
    // nibble AWQ_REVERSE_ORDER[m] of word c; qzeros [G, out/8] likewise, true zeros; group_size = in ⇔ per row.
    const REVERSE = [0, 4, 1, 5, 2, 6, 3, 7];
    const gsCfg: number = qc.group_size ?? qc.q_group_size;
    const gs = gsCfg === -1 ? inF : gsCfg;
    const qw = ints(tensors.get(`${prefix}.qweight`)!);
    const qz = ints(tensors.get(`${prefix}.qzeros`)!);
    const sc = floats(tensors.get(`${prefix}.scales`)!);
    const nib = (words: number[], row: number, o: number) => (words[row * (out / 8) + Math.floor(o / 8)]! >>> (4 * REVERSE[o % 8]!)) & 15;
    for (let o = 0; o < out; o++)
      for (let i = 0; i < inF; i++) {
        const g = Math.floor(i / gs);
        w[o * inF + i] = sc[g * out + o]! * (nib(qw, i, o) - nib(qz, g, o));
      }
    return w;
  }
  const wq = qc.config_groups.group_0.weights;
  const bits: number = wq.num_bits;
  const gs: number = wq.strategy === "channel" ? -1 : wq.group_size;
  const G = gs === -1 ? 1 : inF / gs;
  const pf = Math.floor(32 / bits);
  const mask = (1 << bits) - 1;
  const sym = wq.symmetric ?? true;
  const wp = ints(tensors.get(`${prefix}.weight_packed`)!);
  const sc = floats(tensors.get(`${prefix}.weight_scale`)!);
  const zp = sym ? null : ints(tensors.get(`${prefix}.weight_zero_point`)!);
  const gi = wq.actorder === "group" && gs !== -1 ? ints(tensors.get(`${prefix}.weight_g_idx`)!) : null;
  const W = Math.ceil(inF / pf);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inF; i++) {
      const g = gi ? gi[i]! : gs === -1 ? 0 : Math.floor(i / gs);
      const q = (wp[o * W + Math.floor(i / pf)]! >>> ((i % pf) * bits)) & mask;
      const z = zp ? (zp[Math.floor(o / pf) * G + g]! >>> ((o % pf) * bits)) & mask : 1 << (bits - 1);
      w[o * inF + i] = sc[o * G + g]! * (q - z);
    }
  return w;
}

// ---------------------------------------------------------------------------------------------
// Mutations

type Mutation = { what: string; kind: "data" | "outlier" | "header" | "config" | "missing" };

const SAME_SIZE: Partial<Record<DType, DType[]>> = {
  I32: ["F32"], F32: ["I32"], F16: ["BF16", "I16"], BF16: ["F16", "I16"], I64: ["F64"], I16: ["F16", "BF16"],
};

function mutate(b: Base, r: () => number): { tensors: Stored[]; config: Record<string, any>; m: Mutation } {
  const tensors = b.tensors.map((t) => ({ ...t, shape: [...t.shape], bytes: t.bytes.slice() }));
  const config = structuredClone(b.config);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const packed = tensors.filter((t) =>
    /\.(qweight|qzeros|scales|g_idx|weight_packed|weight_scale|weight_zero_point|weight_g_idx|weight_shape|outlier_indptr|outlier_indices|outlier_values)$/.test(t.name),
  );
  const byRole = (re: RegExp) => packed.filter((t) => re.test(t.name));
  const hasOutliers = byRole(/outlier_/).length > 0;
  const kinds = ["bits", "bits", "scale", "scale", "gidx", "dtype", "shape", "config", "config", "missing"] as const;
  const kind = hasOutliers ? pick([...kinds, "outlier", "outlier", "outlier"] as const) : pick(kinds);
  switch (kind) {
    case "outlier": {
      // One CSR entry: a row pointer, a column index or a value (edge values, random ones, bit flips).
      const t = pick(byRole(/outlier_/));
      const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
      const size = t.dtype === "I32" ? 4 : 2;
      const n = t.bytes.length / size;
      if (n === 0) return mutate(b, r);
      const i = Math.floor(r() * n);
      if (/values$/.test(t.name)) {
        const v = pick([0x7e00, 0x7c00, 0xfc00, 0x7bff, 0x0001, 0x8000, Math.floor(r() * 65536)]);
        dv.setUint16(2 * i, v, true);
        return { tensors, config, m: { what: `${t.name}[${i}] = fp16 0x${v.toString(16)}`, kind: "outlier" } };
      }
      const old = size === 4 ? dv.getInt32(4 * i, true) : dv.getInt16(2 * i, true);
      const v = pick([old + 1, old - 1, -1, 0, 64, 95, 96, 10000, old ^ (1 << Math.floor(r() * 15))]);
      if (size === 4) dv.setInt32(4 * i, v, true);
      else dv.setInt16(2 * i, v, true);
      return { tensors, config, m: { what: `${t.name}[${i}] ${old} → ${v}`, kind: "outlier" } };
    }
    case "bits": {
      // Flip 1–8 random bits of one packed integer tensor (codes or zero points).
      const t = pick(byRole(/\.(qweight|qzeros|weight_packed|weight_zero_point)$/));
      const n = 1 + Math.floor(r() * 8);
      for (let k = 0; k < n; k++) t.bytes[Math.floor(r() * t.bytes.length)]! ^= 1 << Math.floor(r() * 8);
      return { tensors, config, m: { what: `${n} bit flips in ${t.name}`, kind: "data" } };
    }
    case "scale": {
      const t = pick(byRole(/\.(scales|weight_scale)$/));
      const i = Math.floor(r() * (t.bytes.length / 2));
      const v = pick([0x7e00, 0x7c00, 0xfc00, 0x7bff, 0xfbff, 0x0001, 0x0000, Math.floor(r() * 65536), Math.floor(r() * 65536)]);
      new DataView(t.bytes.buffer).setUint16(2 * i, v, true);
      return { tensors, config, m: { what: `${t.name}[${i}] = fp16 0x${v.toString(16)}`, kind: "data" } };
    }
    case "gidx": {
      const gt = byRole(/g_idx$/);
      if (gt.length === 0) return mutate(b, r);
      const t = pick(gt);
      const i = Math.floor(r() * (t.bytes.length / 4));
      const v = Math.floor(r() * 8) - 3;
      new DataView(t.bytes.buffer).setInt32(4 * i, v, true);
      return { tensors, config, m: { what: `${t.name}[${i}] = ${v}`, kind: "data" } };
    }
    case "dtype": {
      const t = pick(packed);
      const to = SAME_SIZE[t.dtype];
      if (!to) return mutate(b, r);
      const d = pick(to);
      const was = t.dtype;
      t.dtype = d;
      return { tensors, config, m: { what: `${t.name} ${was} → ${d}`, kind: "header" } };
    }
    case "shape": {
      const t = pick(packed);
      const n = t.shape.reduce((a, c) => a * c, 1);
      const options = [[n], [...t.shape].reverse(), [1, n], t.shape.length === 2 && t.shape[0]! % 2 === 0 ? [t.shape[0]! / 2, t.shape[1]! * 2] : [n, 1]];
      const s = pick(options);
      if (s.join() === t.shape.join()) return mutate(b, r);
      const was = t.shape.join(", ");
      t.shape = s;
      return { tensors, config, m: { what: `${t.name} [${was}] → [${s.join(", ")}]`, kind: "header" } };
    }
    case "config": {
      const qc = config.quantization_config;
      const w = qc.config_groups?.group_0?.weights;
      const method = String(qc.quant_method).toLowerCase();
      const gptqEdits: [string, () => unknown][] = [
        ["bits", () => (qc.bits = pick([2, 3, 5, 8, 16]))],
        ["group_size", () => (qc.group_size = pick([-1, 0, 16, 48, 64, 128]))],
        ["sym", () => (qc.sym = !qc.sym)],
        ["desc_act", () => (qc.desc_act = !qc.desc_act)],
        ["checkpoint_format", () => (qc.checkpoint_format = pick(["gptq_v2", "marlin", "awq"]))],
        ["bits", () => (qc.bits = "4")],
      ];
      const edits: [string, () => unknown][] =
        method === "quant4"
          ? [
              ...gptqEdits,
              ["version", () => (qc.version = pick([0, 2, "1", null]))],
              ["quant_method", () => (qc.quant_method = pick(["QUANT4", "gptq", 4]))],
            ]
          : method === "awq"
          ? [
              ["bits", () => (qc.bits = pick([2, 3, 5, 8, 16]))],
              ["group_size", () => (qc.group_size = pick([-1, 0, 16, 48, 64, 128]))],
              ["zero_point", () => (qc.zero_point = false)],
              ["version", () => (qc.version = pick(["gemv", "GEMV_fast", "marlin", "exllama", "GEMM"]))],
              ["quant_method", () => (qc.quant_method = pick(["AWQ", "gptq", 4]))],
              ["w_bit", () => (qc.w_bit = pick([4, 8]))],
              ["backend", () => (qc.backend = pick(["autoawq", "llm-awq"]))],
            ]
          : method === "gptq"
          ? [...gptqEdits, ["quant_method", () => (qc.quant_method = pick(["GPTQ", "awq", 4]))]]
          : [
              ["num_bits", () => (w.num_bits = pick([2, 3, 5, 8, 16]))],
              ["group_size", () => (w.group_size = pick([null, 0, 16, 48, 64, 128]))],
              ["symmetric", () => (w.symmetric = !(w.symmetric ?? true))],
              ["actorder", () => (w.actorder = pick([null, "group", "weight", true]))],
              ["strategy", () => (w.strategy = pick(["tensor", "channel", "group", "block"]))],
              ["format", () => (qc.format = pick(["float-quantized", "int-quantized", "naive-quantized"]))],
              ["type", () => (w.type = "float")],
            ];
      const [name, edit] = pick(edits);
      const value = edit();
      return { tensors, config, m: { what: `config ${name} → ${JSON.stringify(value)}`, kind: "config" } };
    }
    case "missing": {
      const t = pick(packed);
      return { tensors: tensors.filter((x) => x !== t), config, m: { what: `${t.name} removed`, kind: "missing" } };
    }
  }
}

// ---------------------------------------------------------------------------------------------

function writeCheckpoint(dir: string, tensors: Stored[], config: Record<string, unknown>): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(config));
  const file = path.join(dir, "model.safetensors");
  writeSafetensors(file, tensors.map((t): TensorToWrite => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: t.bytes })), { format: "pt" });
  return file;
}

type Outcome = { ok: true } | { ok: false; error: unknown };

/** Load every packed layer the way inspect and inference do; compare accepted weights to the reference. */
function loadAndCheck(dir: string, tensors: Stored[], config: Record<string, any>): Outcome {
  let blocks: Map<string, Float32Array>[];
  try {
    const src = openModel(dir);
    try {
      validateModel(src);
      blocks = Array.from({ length: LAYERS }, (_, i) => loadBlockWeights(src, i));
    } finally {
      src.ckpt.close();
    }
  } catch (error) {
    return { ok: false, error };
  }
  const byName = new Map(tensors.map((t) => [t.name, t]));
  for (let b = 0; b < LAYERS; b++)
    for (const [n, out, inF] of LINEARS) {
      const got = blocks[b]!.get(`${n}.weight`)!;
      const want = referenceDecode(byName, config.quantization_config, `model.layers.${b}.${n}`, out, inF);
      for (let k = 0; k < got.length; k++) {
        if (!Number.isFinite(got[k]!)) throw new Error(`accepted layer ${b}.${n} has a non-finite weight ${got[k]} at ${k}`);
        if (got[k] !== want[k]) throw new Error(`accepted layer ${b}.${n}: weight ${k} = ${got[k]}, the reference decodes ${want[k]}`);
      }
    }
  return { ok: true };
}

const BASES: [string, string, QuantSettings, number?][] = [
  ["gptq 4-bit g32 sym", "gptq", { bits: 4, groupSize: 32, sym: true, actOrder: false }],
  ["gptq 4-bit g32 asym act-order", "gptq", { bits: 4, groupSize: 32, sym: false, actOrder: true }],
  ["gptq 3-bit per-row asym", "gptq", { bits: 3, groupSize: -1, sym: false, actOrder: false }],
  ["gptq 8-bit g16 sym act-order", "gptq", { bits: 8, groupSize: 16, sym: true, actOrder: true }],
  ["ct 4-bit g32 asym actorder group", "compressed-tensors", { bits: 4, groupSize: 32, sym: false, actOrder: true }],
  ["ct 4-bit per-channel sym", "compressed-tensors", { bits: 4, groupSize: -1, sym: true, actOrder: false }],
  ["ct 8-bit g16 asym", "compressed-tensors", { bits: 8, groupSize: 16, sym: false, actOrder: false }],
  ["awq 4-bit g32", "awq", { bits: 4, groupSize: 32, sym: false, actOrder: false }],
  ["awq 4-bit per-row", "awq", { bits: 4, groupSize: -1, sym: false, actOrder: false }],
  // quant4: GPTQ v1 plus CSR outliers (the last number: fraction of each Linear's weights kept as outliers)
  ["quant4 4-bit g32 sym outliers", "quant4", { bits: 4, groupSize: 32, sym: true, actOrder: false }, 0.02],
  ["quant4 3-bit per-row asym act-order outliers", "quant4", { bits: 3, groupSize: -1, sym: false, actOrder: true }, 0.01],
  ["quant4 8-bit g16 sym act-order outliers", "quant4", { bits: 8, groupSize: 16, sym: true, actOrder: true }, 0.05],
];
const CASES_PER_BASE = 30; // 12 × 30 = 360 mutated checkpoints (≈ 4 s here)

describe("fuzzed packed checkpoints: a Quant4Error naming a file, or finite weights equal to an independent decode", () => {
  it("unmutated bases load and equal the reference decode", () => {
    const tmp = makeTmpDir();
    for (const [label, f, s, frac] of BASES) {
      const b = makeBase(label, f, s, 7, frac);
      const dir = path.join(tmp, label.replace(/\W+/g, "-"));
      writeCheckpoint(dir, b.tensors, b.config);
      const o = loadAndCheck(dir, b.tensors, b.config);
      expect(o.ok ? "ok" : String((o as { error: unknown }).error), label).toBe("ok");
    }
  });

  it(`${BASES.length * CASES_PER_BASE} seeded mutations`, () => {
    const t0 = performance.now();
    const tmp = makeTmpDir();
    const r = rng(20240610);
    const counts = { accepted: 0, rejected: 0 };
    const byKind: Record<string, { accepted: number; rejected: number }> = {};
    let c = 0;
    for (const [label, f, s, frac] of BASES) {
      const base = makeBase(label, f, s, 11 + c, frac);
      for (let k = 0; k < CASES_PER_BASE; k++, c++) {
        const { tensors, config, m } = mutate(base, r);
        const dir = path.join(tmp, `case-${c}`);
        const file = writeCheckpoint(dir, tensors, config);
        const where = `case ${c} (${label}): ${m.what}`;
        let o: Outcome;
        try {
          o = loadAndCheck(dir, tensors, config);
        } catch (e) {
          throw new Error(`${where}: ${(e as Error).message}`);
        }
        const tally = (byKind[m.kind] ??= { accepted: 0, rejected: 0 });
        if (o.ok) {
          counts.accepted++;
          tally.accepted++;
          continue;
        }
        counts.rejected++;
        tally.rejected++;
        const e = o.error;
        if (!(e instanceof Quant4Error)) throw new Error(`${where}: not a Quant4Error: ${(e as Error)?.stack ?? String(e)}`);
        expect(e.message, where).not.toMatch(/\n/);
        // Every refusal names what it is about: the safetensors file and the tensor, config.json, or
        // (a tensor missing from the whole checkpoint) the checkpoint directory and the tensor.
        const cfg = path.join(dir, "config.json");
        const msg = `${where}: ${e.message}`;
        if (m.kind === "config") expect(e.message.startsWith(`${cfg}: `) || e.message.startsWith(`${file}: tensor "`), msg).toBe(true);
        else if (m.kind === "missing") expect(e.message.startsWith(`${file}: tensor "`) || e.message.startsWith(`${dir}: tensor "`), msg).toBe(true);
        else expect(e.message.startsWith(`${file}: tensor "`), msg).toBe(true);
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    console.log(`fuzz-packed: ${c} mutated checkpoints, ${counts.rejected} refused with a Quant4Error, ${counts.accepted} accepted and equal to the reference decode (${seconds.toFixed(1)} s); by kind ${JSON.stringify(byKind)}`);
    expect(c).toBeGreaterThanOrEqual(100);
    // Both branches are exercised: NaN scales, bad shapes ... are refused; flipped code bits decode.
    expect(counts.rejected).toBeGreaterThan(30);
    expect(counts.accepted).toBeGreaterThan(30);
    // quant4's CSR tensors: damaged ones are refused, still-valid ones (another column, another value) decode.
    expect(byKind.outlier?.rejected).toBeGreaterThan(5);
    expect(byKind.outlier?.accepted).toBeGreaterThan(5);
  });
});
