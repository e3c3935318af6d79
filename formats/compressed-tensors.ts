// compressed-tensors "pack-quantized" checkpoints (llm-compressor output; vLLM loads them natively).
// Layout per /work/shared/FORMATS.md §3.

import { z } from "zod";
import type { TensorToWrite } from "../src/io/types.js";
import { ModelError } from "../src/util/errors.js";
import { packBits, packedWords, unpackBits, type PackLayout } from "./bitpack.js";
import {
  biasTensor,
  checkUnexpectedGIdx,
  declared,
  groupSizeProblem,
  isRecord,
  zodOneLine,
  numGroups,
  PackedReader,
  pyReMatch,
  settingsOf,
  toF16Checked,
  validateLayer,
} from "./common.js";
import type { FormatSpec, LinearShape, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

/** Bit widths written (vLLM's compressed-tensors WNA16 path takes 4 and 8). */
const WRITE_BITS = [4, 8];
/** Bit widths read (pack_to_int32 packs any width ≤ 8). */
const READ_BITS = [2, 3, 4, 8];
// Source: compressed-tensors pack_quantized.py pack_to_int32: pack_factor = 32 // num_bits values per
// word, value i of a word at bit num_bits·i, last word zero-padded.
const SCHEME = "word" as const;

function names(prefix: string) {
  return {
    packed: `${prefix}.weight_packed`,
    scale: `${prefix}.weight_scale`,
    zeroPoint: `${prefix}.weight_zero_point`,
    gIdx: `${prefix}.weight_g_idx`,
    shape: `${prefix}.weight_shape`,
  };
}

/** weight_g_idx is stored only for group act-order; per-row groups make it trivially 0. */
function storesGIdx(s: QuantSettings): boolean {
  return s.actOrder && s.groupSize !== -1;
}

// Source: compressed-tensors pack_quantized.py pack_to_int32(packed_dim=1): weight_packed [out, ceil(in/pf)],
// values = signed int + 2^(bits−1) (our unsigned codes already are that).
function packedLayout(out: number, inF: number, bits: number): PackLayout {
  return { lines: out, lineLen: inF, srcLineStride: inF, srcElemStride: 1, dstLineStride: packedWords(inF, bits, SCHEME), dstWordStride: 1 };
}

// Source: compressed-tensors pack_quantized.py compress_weight → pack_to_int32(zero_point, packed_dim=0):
// weight_zero_point [ceil(out/pf), G], same +2^(bits−1) offset (our unsigned zero already is that).
function zeroPointLayout(out: number, g: number): PackLayout {
  return { lines: g, lineLen: out, srcLineStride: 1, srcElemStride: g, dstLineStride: 1, dstWordStride: g };
}

function paramInfo(prefix: string, shape: LinearShape, s: QuantSettings): ParamInfo[] {
  const n = names(prefix);
  const g = numGroups(shape.in, s.groupSize);
  const info: ParamInfo[] = [
    { name: n.packed, dtype: "I32", shape: [shape.out, packedWords(shape.in, s.bits, SCHEME)] },
    { name: n.scale, dtype: "F16", shape: [shape.out, g] },
  ];
  if (!s.sym) info.push({ name: n.zeroPoint, dtype: "I32", shape: [packedWords(shape.out, s.bits, SCHEME), g] });
  if (storesGIdx(s)) info.push({ name: n.gIdx, dtype: "I32", shape: [shape.in] });
  // compress_weight writes torch.tensor(weight.shape), i.e. int64.
  info.push({ name: n.shape, dtype: "I64", shape: [2] });
  return info;
}

function byName(info: ParamInfo[], name: string): ParamInfo {
  const i = info.find((p) => p.name === name);
  if (!i) throw new Error(`internal: ${name} not declared`);
  return i;
}

function canHold(shape: LinearShape, s: QuantSettings): string | null {
  if (!WRITE_BITS.includes(s.bits)) return `compressed-tensors (vLLM WNA16) holds ${WRITE_BITS.join("/")}-bit weights, not ${s.bits}-bit`;
  // A ragged last group raises in compressed-tensors; per-channel packs any `in` (ceil(in/pf) words).
  return groupSizeProblem(shape.in, s.groupSize);
}

function pack(layer: QuantizedLinear): TensorToWrite[] {
  validateLayer(layer);
  const s = settingsOf(layer);
  const shape = { out: layer.outFeatures, in: layer.inFeatures };
  const why = canHold(shape, s);
  if (why) throw new ModelError(`quantized layer ${layer.name} cannot be stored as compressed-tensors: ${why}`);
  const info = paramInfo(layer.name, shape, s);
  const n = names(layer.name);
  const g = numGroups(shape.in, s.groupSize);
  const out: TensorToWrite[] = [];

  const pInfo = byName(info, n.packed);
  const packed = new Int32Array(pInfo.shape[0]! * pInfo.shape[1]!);
  packBits(layer.codes, packed, s.bits, SCHEME, packedLayout(shape.out, shape.in, s.bits), pInfo.name);
  out.push(declared(pInfo, packed));

  const sInfo = byName(info, n.scale);
  out.push(declared(sInfo, toF16Checked(layer.scales, sInfo.name)));

  if (!s.sym) {
    const zInfo = byName(info, n.zeroPoint);
    const zp = new Int32Array(zInfo.shape[0]! * zInfo.shape[1]!);
    packBits(layer.zeros, zp, s.bits, SCHEME, zeroPointLayout(shape.out, g), zInfo.name);
    out.push(declared(zInfo, zp));
  }
  if (storesGIdx(s)) out.push(declared(byName(info, n.gIdx), Int32Array.from(layer.gIdx!)));
  out.push(declared(byName(info, n.shape), BigInt64Array.from([BigInt(shape.out), BigInt(shape.in)])));
  out.push(...biasTensor(layer));
  return out;
}

function unpack(prefix: string, get: TensorGetter, s: QuantSettings, shape?: LinearShape): QuantizedLinear {
  const n = names(prefix);
  const r: PackedReader = new PackedReader(prefix, get); // typed, so r.fail (never) narrows
  r.get(n.packed); // the layer's file, for errors about its other tensors
  if (!READ_BITS.includes(s.bits)) {
    r.fail(n.packed, `cannot be read: quantization_config asks for ${s.bits}-bit weights (compressed-tensors reads ${READ_BITS.join("/")})`);
  }
  const [out, inF] = r.ints({ name: n.shape, dtype: "I64", shape: [2] }) as [number, number];
  if (!(Number.isSafeInteger(out) && Number.isSafeInteger(inF) && out > 0 && inF > 0)) {
    r.fail(n.shape, `holds [${out}, ${inF}], which is not a valid [out, in]`);
  }
  if (shape && (shape.out !== out || shape.in !== inF)) {
    r.fail(n.shape, `holds [out, in] = [${out}, ${inF}], expected [${shape.out}, ${shape.in}] from config.json`);
  }
  r.context = `${s.bits}-bit, group_size ${s.groupSize}, [out, in] = [${out}, ${inF}]`;
  const why = groupSizeProblem(inF, s.groupSize);
  if (why) r.fail(n.packed, `does not fit quantization_config: ${why}`);
  const g = numGroups(inF, s.groupSize);
  const maxq = (1 << s.bits) - 1;
  const mid = 1 << (s.bits - 1);
  // Declared as for an asymmetric layer, so weight_zero_point is declared even when the config says symmetric.
  const info = paramInfo(prefix, { out, in: inF }, { ...s, sym: false });
  const zpInfo = byName(info, n.zeroPoint);
  const giInfo: ParamInfo = { name: n.gIdx, dtype: "I32", shape: [inF] };

  const codes = new Uint8Array(out * inF);
  unpackBits(r.int32(byName(info, n.packed)), codes, s.bits, SCHEME, packedLayout(out, inF, s.bits));
  const scales = r.finite(byName(info, n.scale), "scales", maxq);

  const zeros = new Uint8Array(out * g);
  if (!s.sym) {
    unpackBits(r.int32(zpInfo, "quantization_config says symmetric: false, which needs zero points"), zeros, s.bits, SCHEME, zeroPointLayout(out, g));
  } else {
    zeros.fill(mid); // symmetric: signed zero point 0
    if (r.has(n.zeroPoint)) {
      // FORMATS.md §3: weight_zero_point is written only for asymmetric layers. One that holds only the
      // symmetric zero agrees with the config; any other zero point would be silently ignored.
      const zp = new Uint8Array(out * g);
      unpackBits(r.int32(zpInfo), zp, s.bits, SCHEME, zeroPointLayout(out, g));
      const i = zp.findIndex((z) => z !== mid);
      if (i >= 0) {
        r.fail(
          n.zeroPoint,
          `holds zero point ${zp[i]! - mid} for [out, group] = [${Math.floor(i / g)}, ${i % g}], but quantization_config says symmetric: true ` +
            `(symmetric layers have zero point 0 and store no weight_zero_point): the config and the tensors disagree`,
        );
      }
    }
  }

  let gIdx: Int32Array | undefined;
  if (storesGIdx(s)) {
    gIdx = r.gIdx(giInfo, g, 'quantization_config says actorder "group", which needs weight_g_idx');
  } else if (r.has(n.gIdx)) {
    const gi = r.gIdx(giInfo, g);
    checkUnexpectedGIdx(r, n.gIdx, gi, s.groupSize, `quantization_config has no group act-order (actorder is not "group" or the strategy is "channel")`);
  }

  const layer: QuantizedLinear = {
    name: prefix,
    outFeatures: out,
    inFeatures: inF,
    bits: s.bits,
    groupSize: s.groupSize,
    sym: s.sym,
    codes,
    scales,
    zeros,
  };
  if (gIdx) layer.gIdx = gIdx;
  const bias = r.bias(out);
  if (bias) layer.bias = bias;
  return layer;
}

function quantizationConfig(s: QuantSettings, skipped: string[]): Record<string, unknown> {
  const perRow = s.groupSize === -1;
  return {
    quant_method: "compressed-tensors",
    format: "pack-quantized",
    quantization_status: "compressed",
    config_groups: {
      group_0: {
        targets: ["Linear"],
        weights: {
          num_bits: s.bits,
          type: "int",
          symmetric: s.sym,
          group_size: perRow ? null : s.groupSize,
          strategy: perRow ? "channel" : "group",
          // compressed-tensors allows actorder only with the group strategy.
          actorder: storesGIdx(s) ? "group" : null,
          dynamic: false,
        },
        input_activations: null,
        output_activations: null,
      },
    },
    ignore: ["lm_head", ...skipped.filter((p) => p !== "lm_head")],
    kv_cache_scheme: null,
  };
}

const Weights = z.object({
  num_bits: z.number().int(),
  type: z.string().nullish(),
  symmetric: z.boolean().nullish(),
  group_size: z.number().int().nullish(),
  strategy: z.string().nullish(),
  actorder: z.union([z.string(), z.boolean()]).nullish(),
  dynamic: z.union([z.boolean(), z.string()]).nullish(),
});

const Group = z.object({
  targets: z.array(z.string()),
  weights: Weights.nullish(),
  input_activations: z.unknown().optional(),
  format: z.string().nullish(),
});

const CtConfig = z.object({
  quant_method: z.string(),
  format: z.string().nullish(),
  config_groups: z.record(z.string(), Group),
  ignore: z.array(z.string()).nullish(),
});

/** compressed-tensors target/ignore matching: "re:<regex>" (re.match), a layer class name, or the exact name. */
function matches(target: string, name: string): boolean {
  if (target.startsWith("re:")) return pyReMatch(target.slice(3), name);
  if (target === "Linear") return true; // callers only ask about Linear modules
  return target === name;
}

function settingsFromConfig(qc: unknown, prefix?: string): QuantSettings | null {
  const r = CtConfig.safeParse(qc);
  if (!r.success) throw new ModelError(`quantization_config (compressed-tensors): ${zodOneLine(r.error)}`);
  const c = r.data;
  if (prefix !== undefined && (c.ignore ?? []).some((t) => matches(t, prefix))) return null;
  const entry = Object.entries(c.config_groups).find(
    ([, grp]) => grp.weights && (prefix === undefined || grp.targets.some((t) => matches(t, prefix))),
  );
  if (!entry) return null;
  const [gname, grp] = entry;
  const where = `quantization_config (compressed-tensors) config_groups.${gname}`;
  const fmt = grp.format ?? c.format;
  if (fmt !== "pack-quantized") throw new ModelError(`${where}: format "${fmt}" is not supported (only "pack-quantized")`);
  if (grp.input_activations != null) throw new ModelError(`${where}: activation quantization is not supported (weight-only)`);
  const w = grp.weights!;
  if ((w.type ?? "int") !== "int") throw new ModelError(`${where}: weight type "${w.type}" is not supported (only "int")`);
  if (w.dynamic === true || typeof w.dynamic === "string") throw new ModelError(`${where}: dynamic weight quantization is not supported`);
  if (!READ_BITS.includes(w.num_bits)) throw new ModelError(`${where}: num_bits ${w.num_bits} is not one of ${READ_BITS.join(", ")}`);
  const strategy = w.strategy ?? (w.group_size != null && w.group_size > 0 ? "group" : w.group_size === -1 ? "channel" : "tensor");
  let groupSize: number;
  if (strategy === "group") {
    if (w.group_size == null || w.group_size <= 0) throw new ModelError(`${where}: strategy "group" needs a positive group_size`);
    groupSize = w.group_size;
  } else if (strategy === "channel") {
    groupSize = -1;
  } else {
    throw new ModelError(`${where}: strategy "${strategy}" is not supported (only "group" and "channel")`);
  }
  // actorder "group" stores weight_g_idx; "weight" reorders only while quantizing (contiguous groups, no g_idx).
  const actOrder = (w.actorder === "group" || w.actorder === true) && groupSize !== -1;
  return { bits: w.num_bits, groupSize, sym: w.symmetric ?? true, actOrder };
}

export const compressedTensorsFormat: FormatSpec = {
  name: "compressed-tensors",
  canHold,
  paramInfo,
  pack,
  unpack,
  isQuantized: (prefix, has) => has(`${prefix}.weight_packed`),
  quantizationConfig,
  sidecarFiles: () => ({}),
  detect: (qc) => isRecord(qc) && qc.quant_method === "compressed-tensors",
  settingsFromConfig,
};
