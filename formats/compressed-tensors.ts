// compressed-tensors "pack-quantized" checkpoints (llm-compressor output; vLLM loads them natively).
// Layout per /work/shared/FORMATS.md §3.

import { z } from "zod";
import type { TensorToWrite } from "../src/io/types.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { packBits, packedWords, unpackBits, type PackLayout } from "./bitpack.js";
import {
  applyOverride,
  biasTensor,
  checkUnexpectedGIdx,
  declared,
  distinctOverrides,
  groupSizeProblem,
  isRecord,
  overridesProblem,
  zodOneLine,
  numGroups,
  PackedReader,
  pyReMatch,
  refuseOutliers,
  settingsOf,
  toF16Checked,
  validateLayer,
} from "./common.js";
import type { FormatSpec, LinearShape, ModuleOverride, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

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
  refuseOutliers(layer, "compressed-tensors");
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

/** The `weights` quantization args of one config group. */
function weightArgs(s: QuantSettings): Record<string, unknown> {
  const perRow = s.groupSize === -1;
  return {
    num_bits: s.bits,
    type: "int",
    symmetric: s.sym,
    group_size: perRow ? null : s.groupSize,
    strategy: perRow ? "channel" : "group",
    // compressed-tensors allows actorder only with the group strategy.
    actorder: storesGIdx(s) ? "group" : null,
    dynamic: false,
  };
}

function configGroup(targets: string[], s: QuantSettings): Record<string, unknown> {
  return { targets, weights: weightArgs(s), input_activations: null, output_activations: null };
}

/** Python's str ordering (by code point), as sorted() uses. */
function pyCompare(a: string, b: string): number {
  const x = Array.from(a, (c) => c.codePointAt(0)!);
  const y = Array.from(b, (c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

/** compressed-tensors match_targets order: targets without "re:" first, then by the string. */
function targetOrder(a: string, b: string): number {
  return Number(a.includes("re:")) - Number(b.includes("re:")) || pyCompare(a, b);
}

/**
 * The "re:" targets of the override groups. compressed-tensors tries matching regex targets in sorted order
 * (match_targets), vLLM in config order (find_matched_target); both must see the override list's order
 * (first match wins). When the patterns are not already sorted, each gets the empty-matching prefix
 * "(?:<k>){0}" (k zero-padded), which sorts them by position and matches the same names.
 */
export function overrideTargets(patterns: readonly string[]): string[] {
  const plain = patterns.map((p) => `re:${p}`);
  if (plain.every((t, i) => i === 0 || targetOrder(plain[i - 1]!, t) < 0)) return plain;
  const w = String(patterns.length - 1).length;
  return patterns.map((p, k) => `re:(?:${String(k).padStart(w, "0")}){0}${p}`);
}

function canHoldOverrides(overrides: readonly ModuleOverride[]): string | null {
  return overridesProblem(overrides, "compressed-tensors", WRITE_BITS);
}

/**
 * Overrides become config groups "override_<k>" (targets ["re:<pattern>"]) before group_0 (targets
 * ["Linear"]); a regex target beats the class target in compressed-tensors and vLLM. Skipped modules go
 * into `ignore`.
 */
function quantizationConfig(s: QuantSettings, skipped: string[], overrides: readonly ModuleOverride[] = []): Record<string, unknown> {
  const why = canHoldOverrides(overrides);
  if (why) throw new UsageError(why);
  const ovs = distinctOverrides(overrides);
  const targets = overrideTargets(ovs.map((o) => o.pattern));
  const groups: Record<string, unknown> = {};
  ovs.forEach((o, k) => (groups[`override_${k}`] = configGroup([targets[k]!], applyOverride(s, o))));
  groups.group_0 = configGroup(["Linear"], s);
  return {
    quant_method: "compressed-tensors",
    format: "pack-quantized",
    quantization_status: "compressed",
    config_groups: groups,
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

/** Class-name targets a Linear module matches (compressed-tensors _match_class: a class in its MRO; callers only ask about Linears). */
const LINEAR_CLASSES = new Set(["Linear"]);

/** compressed-tensors match_name: "re:<regex>" (re.match) or the exact module name. */
function matchName(target: string, name: string): boolean {
  if (target.startsWith("re:")) return pyReMatch(target.slice(3), name);
  return target === name;
}

/** compressed-tensors is_match for a Linear module: by name, or by class. */
function matches(target: string, name: string): boolean {
  return matchName(target, name) || LINEAR_CLASSES.has(target);
}

type CtGroup = z.infer<typeof Group>;

/**
 * The config group that quantizes Linear `prefix`, as compressed-tensors apply_quantization_config resolves
 * it: target → group (a target repeated in a later group belongs to the later one), then match_targets'
 * order: an exact module name, then "re:" regexes (in sorted order), then a class name ("Linear"); the
 * first of those wins. Without `prefix` (the global settings): the group targeting "Linear", else the first
 * group with weights.
 */
function resolveGroup(groups: Record<string, CtGroup>, prefix: string | undefined): [string, CtGroup] | undefined {
  const entries = Object.entries(groups);
  if (prefix === undefined) {
    return entries.find(([, g]) => g.weights && g.targets.some((t) => LINEAR_CLASSES.has(t))) ?? entries.find(([, g]) => g.weights);
  }
  const owner = new Map<string, string>();
  for (const [gname, g] of entries) for (const t of g.targets) owner.set(t, gname);
  const sorted = [...owner.keys()].sort(targetOrder);
  const hit = sorted.find((t) => matchName(t, prefix)) ?? sorted.find((t) => LINEAR_CLASSES.has(t));
  if (hit === undefined) return undefined;
  const gname = owner.get(hit)!;
  return [gname, groups[gname]!];
}

function settingsFromConfig(qc: unknown, prefix?: string): QuantSettings | null {
  const r = CtConfig.safeParse(qc);
  if (!r.success) throw new ModelError(`quantization_config (compressed-tensors): ${zodOneLine(r.error)}`);
  const c = r.data;
  if (prefix !== undefined && (c.ignore ?? []).some((t) => matches(t, prefix))) return null;
  const entry = resolveGroup(c.config_groups, prefix);
  if (!entry || !entry[1].weights) return null;
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
  holdsOutliers: false,
  canHold,
  paramInfo,
  pack,
  unpack,
  isQuantized: (prefix, has) => has(`${prefix}.weight_packed`),
  canHoldOverrides,
  quantizationConfig,
  sidecarFiles: (s, skipped, overrides) => {
    quantizationConfig(s, skipped, overrides); // refuses what it cannot describe
    return {};
  },
  detect: (qc) => isRecord(qc) && qc.quant_method === "compressed-tensors",
  settingsFromConfig,
};
