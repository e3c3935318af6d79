// GPTQ v1 checkpoints (checkpoint_format "gptq"): what AutoGPTQ writes and HF transformers/optimum,
// vLLM (gptq, gptq_marlin), TGI and ExLlama load. Layout per /work/shared/FORMATS.md §1.
// The v1 tensors, config fields and `dynamic` handling are exported for --format quant4 (formats/quant4.ts),
// which stores exactly these tensors plus CSR outliers.

import { z } from "zod";
import type { TensorToWrite } from "../src/io/types.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { packBits, packedWords, unpackBits, type PackLayout } from "./bitpack.js";
import {
  biasTensor,
  checkUnexpectedGIdx,
  declared,
  defaultGroup,
  distinctOverrides,
  escapeRegex,
  fmtShape,
  groupSizeProblem,
  isRecord,
  zodOneLine,
  numGroups,
  overridesProblem,
  PackedReader,
  pyReMatch,
  refuseOutliers,
  settingsOf,
  toF16Checked,
  transpose,
  validateLayer,
} from "./common.js";
import type { FormatSpec, LinearShape, ModuleOverride, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

/** Bit widths GPTQ v1 holds. */
export const GPTQ_BITS: readonly number[] = [2, 3, 4, 8];
const BITS = GPTQ_BITS;
// Source: AutoGPTQ qlinear_cuda_old.py pack(): rows of intweight OR-ed LSB first, 32/bits per word for
// 2/4/8 bits and 32 values → 3 words straddling word boundaries for 3 bits = one contiguous bitstream.
const SCHEME = "stream" as const;
const QUANTIZER = "quant4:0.1.0";

function names(prefix: string) {
  return {
    qweight: `${prefix}.qweight`,
    qzeros: `${prefix}.qzeros`,
    scales: `${prefix}.scales`,
    gIdx: `${prefix}.g_idx`,
  };
}

// Source: AutoGPTQ qlinear_cuda_old.py pack(): qweight[r, c] holds input rows r·32/bits.. of column c
// (intweight = W.t(), packed along dim 0) → lines are output columns, words stride by `out`.
function qweightLayout(out: number, inF: number): PackLayout {
  return { lines: out, lineLen: inF, srcLineStride: inF, srcElemStride: 1, dstLineStride: 1, dstWordStride: out };
}

// Source: AutoGPTQ qlinear_cuda_old.py pack(): qzeros[g, col] |= zeros[g, j] << bits·(j−i), packed along
// the output dim (no interleave); zeros are held here as [out, G], qzeros as [G, outWords].
function zerosLayout(out: number, g: number, bits: number): PackLayout {
  return { lines: g, lineLen: out, srcLineStride: 1, srcElemStride: g, dstLineStride: packedWords(out, bits, SCHEME), dstWordStride: 1 };
}

/** The GPTQ v1 tensors of one Linear: qweight, qzeros, scales, g_idx (bias aside). */
export function gptqParamInfo(prefix: string, shape: LinearShape, s: QuantSettings): ParamInfo[] {
  const n = names(prefix);
  const g = numGroups(shape.in, s.groupSize);
  return [
    { name: n.qweight, dtype: "I32", shape: [packedWords(shape.in, s.bits, SCHEME), shape.out] },
    { name: n.qzeros, dtype: "I32", shape: [g, packedWords(shape.out, s.bits, SCHEME)] },
    { name: n.scales, dtype: "F16", shape: [g, shape.out] },
    { name: n.gIdx, dtype: "I32", shape: [shape.in] },
  ];
}

const paramInfo = gptqParamInfo;

/** canHold of the GPTQ v1 layout; `format` names the format in the reason. */
export function gptqCanHold(shape: LinearShape, s: QuantSettings, format = "gptq"): string | null {
  if (!BITS.includes(s.bits)) return `${format} holds ${BITS.join("/")}-bit weights, not ${s.bits}-bit`;
  // AutoGPTQ sizes its buffers as in // 32 * bits and out // 32 * bits.
  if (shape.in % 32 !== 0) return `in_features ${shape.in} is not a multiple of 32 (AutoGPTQ sizes qweight as in // 32 * bits)`;
  if (shape.out % 32 !== 0) return `out_features ${shape.out} is not a multiple of 32 (AutoGPTQ sizes qzeros as out // 32 * bits)`;
  return groupSizeProblem(shape.in, s.groupSize);
}

/**
 * The GPTQ v1 tensors (and bias) of a validated layer; `format` names the format in errors. Outliers are
 * not looked at: the caller refuses (gptq) or stores (quant4) them.
 */
export function packGptqV1(layer: QuantizedLinear, format: string): TensorToWrite[] {
  validateLayer(layer);
  const s = settingsOf(layer);
  const shape = { out: layer.outFeatures, in: layer.inFeatures };
  const why = gptqCanHold(shape, s, format);
  if (why) throw new ModelError(`quantized layer ${layer.name} cannot be stored as ${format}: ${why}`);
  const [qwInfo, qzInfo, scInfo, giInfo] = paramInfo(layer.name, shape, s) as [ParamInfo, ParamInfo, ParamInfo, ParamInfo];
  const g = numGroups(shape.in, s.groupSize);
  const mask = (1 << s.bits) - 1;

  const qweight = new Int32Array(qwInfo.shape[0]! * qwInfo.shape[1]!);
  packBits(layer.codes, qweight, s.bits, SCHEME, qweightLayout(shape.out, shape.in), qwInfo.name);

  // v1 stores zero − 1 (loaders add 1 back). An asymmetric true zero of 0 becomes −1; it is masked to
  // 2^bits − 1 in its own field only (AutoGPTQ does not mask and spoils the whole word). Loaders that
  // add 1 without wrapping read that field as 2^bits, so prefer sym for v1 (FORMATS.md §1, limits).
  const zm1 = new Uint8Array(layer.zeros.length);
  for (let i = 0; i < zm1.length; i++) zm1[i] = (layer.zeros[i]! - 1) & mask;
  const qzeros = new Int32Array(qzInfo.shape[0]! * qzInfo.shape[1]!);
  packBits(zm1, qzeros, s.bits, SCHEME, zerosLayout(shape.out, g, s.bits), qzInfo.name);

  const scales = toF16Checked(transpose(layer.scales, shape.out, g, (n) => new Float32Array(n)), scInfo.name);

  const gIdx = new Int32Array(shape.in);
  for (let i = 0; i < shape.in; i++) gIdx[i] = layer.gIdx ? layer.gIdx[i]! : defaultGroup(i, s.groupSize);

  return [
    declared(qwInfo, qweight),
    declared(qzInfo, qzeros),
    declared(scInfo, scales),
    declared(giInfo, gIdx),
    ...biasTensor(layer),
  ];
}

function pack(layer: QuantizedLinear): TensorToWrite[] {
  refuseOutliers(layer, "gptq");
  return packGptqV1(layer, "gptq");
}

/** Reads and validates the GPTQ v1 tensors (and bias) of `r.prefix` through `r`; `format` names the format in errors. */
export function unpackGptqV1(r: PackedReader, s: QuantSettings, shape: LinearShape | undefined, format: string): QuantizedLinear {
  const prefix = r.prefix;
  const n = names(prefix);
  const qw = r.get(n.qweight);
  if (!BITS.includes(s.bits)) r.fail(n.qweight, `cannot be read: quantization_config asks for ${s.bits}-bit ${format} weights (${format} holds ${BITS.join("/")})`);
  let found: LinearShape;
  if (shape) {
    found = shape;
  } else {
    // No shape from the model config: the tensors say it (qweight is [in·bits/32, out]).
    if (!qw) r.fail(n.qweight, "is missing");
    if (qw.shape.length !== 2) r.fail(n.qweight, `has shape ${fmtShape(qw.shape)}, which is not 2-D`);
    const inF = (qw.shape[0]! * 32) / s.bits;
    if (!Number.isInteger(inF)) r.fail(n.qweight, `has ${qw.shape[0]} rows, which do not hold a whole number of ${s.bits}-bit input channels`);
    found = { out: qw.shape[1]!, in: inF };
  }
  r.context = `${s.bits}-bit, group_size ${s.groupSize}, [out, in] = [${found.out}, ${found.in}] from ${shape ? "config.json" : "qweight"}`;
  const why = groupSizeProblem(found.in, s.groupSize);
  if (why) r.fail(n.qweight, `does not fit quantization_config: ${why}`);
  const [qwInfo, qzInfo, scInfo, giInfo] = paramInfo(prefix, found, s) as [ParamInfo, ParamInfo, ParamInfo, ParamInfo];
  const g = numGroups(found.in, s.groupSize);
  const mask = (1 << s.bits) - 1;

  const codes = new Uint8Array(found.out * found.in);
  unpackBits(r.int32(qwInfo), codes, s.bits, SCHEME, qweightLayout(found.out, found.in));

  const zeros = new Uint8Array(found.out * g);
  unpackBits(r.int32(qzInfo), zeros, s.bits, SCHEME, zerosLayout(found.out, g, s.bits));
  const mid = 1 << (s.bits - 1);
  for (let i = 0; i < zeros.length; i++) {
    const stored = zeros[i]!;
    zeros[i] = (stored + 1) & mask; // v1: stored zero − 1
    // AutoGPTQ's symmetric zero is 2^(bits−1) (stored 2^(bits−1) − 1, 7 for 4 bits); another one
    // would be silently replaced by loaders that trust sym (Marlin, ExLlama) → the config and tensors disagree.
    if (s.sym && zeros[i] !== mid) {
      const o = Math.floor(i / g);
      r.fail(
        n.qzeros,
        `holds stored zero ${stored} (zero point ${zeros[i]}) for [group, out] = [${i % g}, ${o}], but quantization_config says sym: true, ` +
          `which stores ${mid - 1} (zero point ${mid}) everywhere: the config and the tensors disagree`,
      );
    }
  }

  const scales = transpose(r.finite(scInfo, "scales", mask), g, found.out, (k) => new Float32Array(k));

  let gIdx: Int32Array | undefined;
  if (r.has(giInfo.name)) {
    gIdx = r.gIdx(giInfo, g);
    if (!s.actOrder) {
      checkUnexpectedGIdx(r, giInfo.name, gIdx, s.groupSize, "quantization_config says desc_act: false");
      gIdx = undefined;
    }
  } else if (s.actOrder) {
    r.int32(giInfo, "quantization_config says desc_act: true, which needs g_idx"); // throws: missing
  }

  const layer: QuantizedLinear = {
    name: prefix,
    outFeatures: found.out,
    inFeatures: found.in,
    bits: s.bits,
    groupSize: s.groupSize,
    sym: s.sym,
    codes,
    scales,
    zeros,
  };
  if (gIdx) layer.gIdx = gIdx;
  const bias = r.bias(found.out);
  if (bias) layer.bias = bias;
  return layer;
}

function unpack(prefix: string, get: TensorGetter, s: QuantSettings, shape?: LinearShape): QuantizedLinear {
  return unpackGptqV1(new PackedReader(prefix, get), s, shape, "gptq");
}

/** canHoldOverrides of gptq and quant4: GPTQModel `dynamic` holds bits (2/3/4/8), group_size and sym per module. */
export function gptqCanHoldOverrides(overrides: readonly ModuleOverride[], format = "gptq"): string | null {
  return overridesProblem(overrides, format, BITS);
}

/**
 * GPTQModel `dynamic` (gptqmodel/quantization/config.py dynamic_get: keys in order, re.match, first match
 * wins; "-:regex" skips a module, "+:regex" overrides its bits/group_size/sym): one "-:^<name>$" per skipped
 * module, then one "+:<pattern>" per override with only the keys it gives. undefined when both are empty.
 */
export function gptqDynamic(skipped: readonly string[], overrides: readonly ModuleOverride[]): Record<string, Record<string, unknown>> | undefined {
  const d: Record<string, Record<string, unknown>> = {};
  for (const p of skipped) d[`-:^${escapeRegex(p)}$`] = {};
  for (const o of distinctOverrides(overrides)) {
    const v: Record<string, unknown> = {};
    if (o.bits !== undefined) v.bits = o.bits;
    if (o.groupSize !== undefined) v.group_size = o.groupSize;
    if (o.sym !== undefined) v.sym = o.sym;
    d[`+:${o.pattern}`] = v;
  }
  return Object.keys(d).length > 0 ? d : undefined;
}

/**
 * The GPTQ v1 quantization_config fields after quant_method (and quant4's version): bits, group_size, ...,
 * meta, dynamic. Overrides the format cannot describe are a UsageError.
 */
export function gptqConfigFields(s: QuantSettings, skipped: readonly string[], overrides: readonly ModuleOverride[], format: string): Record<string, unknown> {
  const why = gptqCanHoldOverrides(overrides, format);
  if (why) throw new UsageError(why);
  const cfg: Record<string, unknown> = {
    bits: s.bits,
    group_size: s.groupSize,
    desc_act: s.actOrder,
    sym: s.sym,
    damp_percent: s.damp ?? 0.01,
    true_sequential: s.trueSequential ?? true,
    static_groups: s.staticGroups ?? false,
    checkpoint_format: "gptq",
    pack_dtype: "int32",
    lm_head: false,
    // GPTQModel reads meta.quantizer as "name:version".
    meta: { quantizer: QUANTIZER, ...(s.method ? { method: s.method } : {}) },
  };
  const dynamic = gptqDynamic(skipped, overrides);
  if (dynamic) cfg.dynamic = dynamic;
  return cfg;
}

function quantizationConfig(s: QuantSettings, skipped: string[], overrides: readonly ModuleOverride[] = []): Record<string, unknown> {
  return { quant_method: "gptq", ...gptqConfigFields(s, skipped, overrides, "gptq") };
}

const Override = z.object({
  bits: z.number().int().optional(),
  group_size: z.number().int().optional(),
  sym: z.boolean().optional(),
  desc_act: z.boolean().optional(),
  damp_percent: z.number().optional(),
});

const GptqConfig = z.object({
  quant_method: z.string(),
  bits: z.number().int().optional(),
  w_bit: z.number().int().optional(),
  group_size: z.number().int().optional(),
  q_group_size: z.number().int().optional(),
  desc_act: z.boolean().nullish(),
  sym: z.boolean().nullish(),
  damp_percent: z.number().nullish(),
  true_sequential: z.boolean().nullish(),
  static_groups: z.boolean().nullish(),
  checkpoint_format: z.string().nullish(),
  format: z.string().nullish(),
  lm_head: z.boolean().nullish(),
  dynamic: z.record(z.string(), z.unknown()).nullish(),
  meta: z.record(z.string(), z.unknown()).nullish(),
});

function checkSettings(where: string, s: QuantSettings): QuantSettings {
  if (!BITS.includes(s.bits)) throw new ModelError(`${where}: bits ${s.bits} is not one of ${BITS.join(", ")}`);
  if (s.groupSize !== -1 && s.groupSize <= 0) throw new ModelError(`${where}: group_size ${s.groupSize} must be positive or -1`);
  return s;
}

/** settingsFromConfig of the GPTQ v1 fields (gptq and quant4); `format` names the format in errors. */
export function gptqSettingsFromConfig(qc: unknown, prefix: string | undefined, format = "gptq"): QuantSettings | null {
  const where = `quantization_config (${format})`;
  const r = GptqConfig.safeParse(qc);
  if (!r.success) throw new ModelError(`${where}: ${zodOneLine(r.error)}`);
  const c = r.data;
  const fmt = c.checkpoint_format ?? c.format ?? "gptq";
  if (fmt !== "gptq") {
    throw new ModelError(`quantization_config: ${format} checkpoint_format "${fmt}" is not supported (only "gptq", i.e. v1)`);
  }
  const bits = c.bits ?? c.w_bit;
  if (bits === undefined) throw new ModelError(`${where}: missing bits`);
  const base: QuantSettings = {
    bits,
    groupSize: c.group_size ?? c.q_group_size ?? -1,
    sym: c.sym ?? true,
    actOrder: c.desc_act ?? false,
  };
  if (c.damp_percent != null) base.damp = c.damp_percent;
  if (c.true_sequential != null) base.trueSequential = c.true_sequential;
  if (c.static_groups != null) base.staticGroups = c.static_groups;
  if (isRecord(c.meta) && typeof c.meta.method === "string") base.method = c.meta.method;
  checkSettings(where, base);
  if (prefix === undefined) return base;

  if (prefix === "lm_head" && c.lm_head !== true) return null;
  // First matching key wins, as in GPTQModel's dynamic_get.
  for (const [key, value] of Object.entries(c.dynamic ?? {})) {
    if (key.startsWith("-:")) {
      if (pyReMatch(key.slice(2), prefix)) return null;
      continue;
    }
    const pattern = key.startsWith("+:") ? key.slice(2) : key;
    if (!pyReMatch(pattern, prefix)) continue;
    const o = Override.safeParse(value ?? {});
    if (!o.success) throw new ModelError(`${where} dynamic["${key}"]: ${zodOneLine(o.error)}`);
    const s: QuantSettings = {
      ...base,
      bits: o.data.bits ?? base.bits,
      groupSize: o.data.group_size ?? base.groupSize,
      sym: o.data.sym ?? base.sym,
      actOrder: o.data.desc_act ?? base.actOrder,
    };
    if (o.data.damp_percent !== undefined) s.damp = o.data.damp_percent;
    return checkSettings(`${where} dynamic["${key}"]`, s);
  }
  return base;
}

export const gptqFormat: FormatSpec = {
  name: "gptq",
  holdsOutliers: false,
  canHold: (shape, s) => gptqCanHold(shape, s, "gptq"),
  paramInfo,
  pack,
  unpack,
  isQuantized: (prefix, has) => has(`${prefix}.qweight`),
  canHoldOverrides: (overrides) => gptqCanHoldOverrides(overrides, "gptq"),
  quantizationConfig,
  sidecarFiles: (s, skipped, overrides) => ({ "quantize_config.json": JSON.stringify(quantizationConfig(s, skipped, overrides), null, 2) + "\n" }),
  detect: (qc) => isRecord(qc) && typeof qc.quant_method === "string" && qc.quant_method.toLowerCase() === "gptq",
  settingsFromConfig: (qc, prefix) => gptqSettingsFromConfig(qc, prefix, "gptq"),
};
