// AWQ "GEMM" checkpoints (version "gemm"): what AutoAWQ writes (WQLinear_GEMM) and HF transformers and
// vLLM (`awq`, `awq_marlin`) load. Layout per /work/shared/FORMATS.md §2.

import { z } from "zod";
import type { TensorToWrite } from "../src/io/types.js";
import { ModelError, UsageError } from "../src/util/errors.js";
import { packBits, packedWords, unpackBits, type PackLayout } from "./bitpack.js";
import {
  biasTensor,
  declared,
  fmtShape,
  groupSizeProblem,
  isRecord,
  numGroups,
  overrideSetsAnything,
  PackedReader,
  refuseOutliers,
  settingsOf,
  toF16Checked,
  transpose,
  validateLayer,
  zodOneLine,
} from "./common.js";
import type { FormatSpec, LinearShape, ModuleOverride, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

// AutoAWQ WQLinear_GEMM (and vLLM's AWQConfig) hold 4-bit weights only.
const BITS = 4;
const SCHEME = "word" as const;
/** Output columns per int32 word. */
const PACK = 32 / BITS;
// Source: AutoAWQ awq/modules/linear/gemm.py WQLinear_GEMM.from_linear: order_map = [0, 2, 4, 6, 1, 3, 5, 7];
// qweight[:, col] |= intweight[:, col·8 + order_map[i]] << 4i, i.e. nibble i holds column 8·col + order_map[i].
// Column 8·col + m therefore sits in nibble SLOTS[m] (awq/utils/packing_utils.py AWQ_REVERSE_ORDER).
const ORDER = [0, 2, 4, 6, 1, 3, 5, 7] as const;
const SLOTS: readonly number[] = ORDER.map((_, m) => ORDER.indexOf(m as (typeof ORDER)[number]));

function names(prefix: string) {
  return { qweight: `${prefix}.qweight`, qzeros: `${prefix}.qzeros`, scales: `${prefix}.scales` };
}

// Source: from_linear: intweight = W.t() [in, out], packed along dim 1 (output columns) → one line per input
// channel i; codes are held here as [out, in], so value k (= output column) of line i is codes[k·in + i].
function qweightLayout(out: number, inF: number): PackLayout {
  return { lines: inF, lineLen: out, srcLineStride: 1, srcElemStride: inF, dstLineStride: out / PACK, dstWordStride: 1, slots: SLOTS };
}

// Source: from_linear: zeros [n_groups, out] packed along dim 1 with the same order_map, no −1 offset;
// zeros are held here as [out, G], qzeros as [G, out/8].
function qzerosLayout(out: number, g: number): PackLayout {
  return { lines: g, lineLen: out, srcLineStride: 1, srcElemStride: g, dstLineStride: out / PACK, dstWordStride: 1, slots: SLOTS };
}

function paramInfo(prefix: string, shape: LinearShape, s: QuantSettings): ParamInfo[] {
  const n = names(prefix);
  const g = numGroups(shape.in, s.groupSize);
  const words = packedWords(shape.out, BITS, SCHEME);
  return [
    { name: n.qweight, dtype: "I32", shape: [shape.in, words] },
    { name: n.qzeros, dtype: "I32", shape: [g, words] },
    { name: n.scales, dtype: "F16", shape: [g, shape.out] },
  ];
}

/** Per row is group_size −1; a group as wide as the row (AutoAWQ's per-row spelling) is the same thing. */
function effectiveGroupSize(inF: number, groupSize: number): number {
  return groupSize === inF ? -1 : groupSize;
}

function canHold(shape: LinearShape, s: QuantSettings): string | null {
  if (s.bits !== BITS) return `awq holds 4-bit weights only (AutoAWQ WQLinear_GEMM, vLLM awq), not ${s.bits}-bit`;
  if (s.sym) return "awq holds asymmetric weights only (zero_point: true; use --asym), not symmetric";
  if (s.actOrder) return "awq has no g_idx, so act-order (desc_act) groups cannot be stored";
  // WQLinear_GEMM asserts out_features % (32 // w_bit) == 0.
  if (shape.out % PACK !== 0) return `out_features ${shape.out} is not a multiple of 8 (AWQ packs 8 output columns per int32)`;
  // WQLinear_GEMM asserts in_features % group_size == 0 (−1 means in_features).
  return groupSizeProblem(shape.in, s.groupSize);
}

function pack(layer: QuantizedLinear): TensorToWrite[] {
  refuseOutliers(layer, "awq");
  validateLayer(layer);
  const s = settingsOf(layer);
  const shape = { out: layer.outFeatures, in: layer.inFeatures };
  const why = canHold(shape, s);
  if (why) throw new ModelError(`quantized layer ${layer.name} cannot be stored as awq: ${why}`);
  const [qwInfo, qzInfo, scInfo] = paramInfo(layer.name, shape, s) as [ParamInfo, ParamInfo, ParamInfo];
  const g = numGroups(shape.in, s.groupSize);

  const qweight = new Int32Array(qwInfo.shape[0]! * qwInfo.shape[1]!);
  packBits(layer.codes, qweight, BITS, SCHEME, qweightLayout(shape.out, shape.in), qwInfo.name);
  const qzeros = new Int32Array(qzInfo.shape[0]! * qzInfo.shape[1]!);
  packBits(layer.zeros, qzeros, BITS, SCHEME, qzerosLayout(shape.out, g), qzInfo.name); // true zeros
  const scales = toF16Checked(transpose(layer.scales, shape.out, g, (n) => new Float32Array(n)), scInfo.name);

  return [declared(qwInfo, qweight), declared(qzInfo, qzeros), declared(scInfo, scales), ...biasTensor(layer)];
}

function unpack(prefix: string, get: TensorGetter, s: QuantSettings, shape?: LinearShape): QuantizedLinear {
  const n = names(prefix);
  const r: PackedReader = new PackedReader(prefix, get); // typed, so r.fail (never) narrows
  const qw = r.get(n.qweight);
  if (s.bits !== BITS) r.fail(n.qweight, `cannot be read: quantization_config asks for ${s.bits}-bit awq weights (AWQ GEMM holds 4-bit only)`);
  if (s.sym) r.fail(n.qweight, "cannot be read as symmetric: AWQ GEMM always stores zero points (zero_point: true)");
  if (s.actOrder) r.fail(n.qweight, "cannot be read with act-order: AWQ GEMM has no g_idx");
  let found: LinearShape;
  if (shape) {
    found = shape;
  } else {
    // No shape from the model config: the tensors say it (qweight is [in, out/8]).
    if (!qw) r.fail(n.qweight, "is missing");
    if (qw.shape.length !== 2) r.fail(n.qweight, `has shape ${fmtShape(qw.shape)}, which is not 2-D`);
    found = { out: qw.shape[1]! * PACK, in: qw.shape[0]! };
  }
  const gs = effectiveGroupSize(found.in, s.groupSize);
  r.context = `4-bit, group_size ${s.groupSize}, [out, in] = [${found.out}, ${found.in}] from ${shape ? "config.json" : "qweight"}`;
  if (found.out % PACK !== 0) r.fail(n.qweight, `cannot hold out_features ${found.out}: AWQ packs 8 output columns per int32 (${r.context})`);
  const why = groupSizeProblem(found.in, gs);
  if (why) r.fail(n.qweight, `does not fit quantization_config: ${why}`);
  const settings = { ...s, groupSize: gs };
  const [qwInfo, qzInfo, scInfo] = paramInfo(prefix, found, settings) as [ParamInfo, ParamInfo, ParamInfo];
  const g = numGroups(found.in, gs);

  const codes = new Uint8Array(found.out * found.in);
  unpackBits(r.int32(qwInfo), codes, BITS, SCHEME, qweightLayout(found.out, found.in));
  // True zeros: every 4-bit value 0..15 is a valid zero point.
  const zeros = new Uint8Array(found.out * g);
  unpackBits(r.int32(qzInfo), zeros, BITS, SCHEME, qzerosLayout(found.out, g));
  const scales = transpose(r.finite(scInfo, "scales", (1 << BITS) - 1), g, found.out, (k) => new Float32Array(k));

  const layer: QuantizedLinear = {
    name: prefix,
    outFeatures: found.out,
    inFeatures: found.in,
    bits: BITS,
    groupSize: gs,
    sym: false,
    codes,
    scales,
    zeros,
  };
  const bias = r.bias(found.out);
  if (bias) layer.bias = bias;
  return layer;
}

function checkWritable(s: QuantSettings): void {
  const why = s.bits !== BITS ? `${s.bits}-bit` : s.sym ? "symmetric" : s.actOrder ? "act-order" : null;
  if (why) throw new ModelError(`awq cannot describe ${why} settings (4-bit asymmetric without act-order only)`);
}

/**
 * config.json quantization_config, as AutoAWQ's AwqConfig.to_transformers_dict writes it. Per row stays
 * group_size −1: one value must fit every Linear (in_features differ between layers), and AutoAWQ's
 * WQLinear_GEMM, transformers and vLLM's awq_marlin read −1 as in_features. modules_to_not_convert
 * holds full module names; transformers and vLLM skip a module whose name contains one (substring).
 */
/** AutoAWQ's config has one bits/group_size for every module: no per-module settings at all. */
function canHoldOverrides(overrides: readonly ModuleOverride[]): string | null {
  const o = overrides.find(overrideSetsAnything);
  if (!o) return null;
  return (
    `awq cannot hold per-module settings (AutoAWQ's config has one bits and group_size for every module; ` +
    `override ${JSON.stringify(o.pattern)}): use --format gptq or --format quant4`
  );
}

function quantizationConfig(s: QuantSettings, skipped: string[], overrides: readonly ModuleOverride[] = []): Record<string, unknown> {
  const why = canHoldOverrides(overrides);
  if (why) throw new UsageError(why);
  checkWritable(s);
  return {
    quant_method: "awq",
    bits: BITS,
    group_size: s.groupSize,
    zero_point: true,
    version: "gemm",
    modules_to_not_convert: skipped.length > 0 ? [...new Set(skipped)] : null,
  };
}

/** AutoAWQ's quant_config.json (AwqConfig.to_dict: exactly these keys, AwqConfig(**json) rejects others). */
function sidecarFiles(s: QuantSettings, skipped: string[], overrides: readonly ModuleOverride[] = []): Record<string, string> {
  const qc = quantizationConfig(s, skipped, overrides);
  const sidecar = {
    zero_point: true,
    q_group_size: qc.group_size,
    w_bit: BITS,
    version: "GEMM",
    modules_to_not_convert: qc.modules_to_not_convert,
  };
  return { "quant_config.json": JSON.stringify(sidecar, null, 2) + "\n" };
}

const AwqConfig = z.object({
  quant_method: z.string(),
  bits: z.number().int().nullish(),
  w_bit: z.number().int().nullish(),
  group_size: z.number().int().nullish(),
  q_group_size: z.number().int().nullish(),
  zero_point: z.boolean().nullish(),
  version: z.string().nullish(),
  backend: z.string().nullish(),
  modules_to_not_convert: z.array(z.string()).nullish(),
});

const WHERE = "quantization_config (awq)";

/** One value from a key and its alias; both given and different is an error. */
function either(a: number | null | undefined, b: number | null | undefined, names: string): number | undefined {
  if (a != null && b != null && a !== b) throw new ModelError(`${WHERE}: ${names} disagree (${a} and ${b})`);
  return a ?? b ?? undefined;
}

function settingsFromConfig(qc: unknown, prefix?: string): QuantSettings | null {
  const r = AwqConfig.safeParse(qc);
  if (!r.success) throw new ModelError(`${WHERE}: ${zodOneLine(r.error)}`);
  const c = r.data;
  const version = (c.version ?? "gemm").toLowerCase();
  if (version !== "gemm") {
    throw new ModelError(
      `${WHERE}: version "${c.version}" is not supported: quant4 reads AWQ GEMM checkpoints only (version "gemm"); ` +
        `GEMV, GEMV_fast, Marlin, ExLlama and IPEX checkpoints pack qweight differently`,
    );
  }
  if (c.backend != null && c.backend.toLowerCase() !== "autoawq") {
    throw new ModelError(`${WHERE}: backend "${c.backend}" is not supported (only AutoAWQ's GEMM packing, backend "autoawq")`);
  }
  const bits = either(c.bits, c.w_bit, "bits and w_bit");
  if (bits === undefined) throw new ModelError(`${WHERE}: missing bits (or w_bit)`);
  if (bits !== BITS) throw new ModelError(`${WHERE}: bits ${bits} is not supported (AWQ GEMM holds 4-bit weights only)`);
  // AutoAWQ and transformers default to group size 128.
  const groupSize = either(c.group_size, c.q_group_size, "group_size and q_group_size") ?? 128;
  if (groupSize !== -1 && groupSize <= 0) throw new ModelError(`${WHERE}: group_size ${groupSize} must be positive or -1`);
  if (c.zero_point === false) {
    throw new ModelError(`${WHERE}: zero_point false is not supported (AutoAWQ's GEMM layers always store zero points in qzeros)`);
  }
  const base: QuantSettings = { bits, groupSize, sym: false, actOrder: false };
  if (prefix === undefined) return base;
  // transformers never quantizes the LM head of an AWQ model; vLLM's lm_head is no LinearBase.
  if (prefix === "lm_head") return null;
  // transformers replace_with_awq_linear and vLLM is_layer_skipped_awq: `any(key in name for key in ...)`.
  if ((c.modules_to_not_convert ?? []).some((key) => prefix.includes(key))) return null;
  return base;
}

export const awqFormat: FormatSpec = {
  name: "awq",
  holdsOutliers: false,
  canHold,
  paramInfo,
  pack,
  unpack,
  isQuantized: (prefix, has) => has(`${prefix}.qweight`),
  canHoldOverrides,
  quantizationConfig,
  sidecarFiles,
  detect: (qc) => isRecord(qc) && typeof qc.quant_method === "string" && qc.quant_method.toLowerCase() === "awq",
  settingsFromConfig,
};
