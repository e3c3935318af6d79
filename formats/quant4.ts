// quant4's own format (--format quant4, version 1), for what inference engines cannot hold: exactly the
// GPTQ v1 tensors of formats/gptq.ts (qweight, qzeros, scales, g_idx, bias) plus, per Linear that keeps
// outlier weights, three CSR tensors (by output row):
//   <prefix>.outlier_indptr   int32 [out+1]   row r's outliers are entries indptr[r] .. indptr[r+1]−1
//   <prefix>.outlier_indices  int16 [nnz] when in ≤ 32767, else int32: the input column of each outlier
//   <prefix>.outlier_values   float16 [nnz]   the weight, kept exactly
// Dequantize: w = scale·(q − zero) per GPTQ v1, then w[r, indices[k]] = values[k] for every outlier k.
// quantization_config: { quant_method: "quant4", version: 1, <the GPTQ v1 keys: bits, group_size, desc_act,
// sym, ..., checkpoint_format: "gptq", dynamic?> }. Read by quant4 only (eval-ppl, generate, inspect).

import { z } from "zod";
import { f32ToF16 } from "../src/io/dtype.js";
import type { DType, TensorToWrite } from "../src/io/types.js";
import { ModelError } from "../src/util/errors.js";
import { declared, isRecord, outlierCount, PackedReader, zodOneLine } from "./common.js";
import {
  gptqCanHold,
  gptqCanHoldOverrides,
  gptqConfigFields,
  gptqParamInfo,
  gptqSettingsFromConfig,
  packGptqV1,
  unpackGptqV1,
} from "./gptq.js";
import type { FormatSpec, LinearShape, ModuleOverride, OutlierCSR, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

const NAME = "quant4";
/** The format version this code writes and reads. */
export const QUANT4_VERSION = 1;
/** Largest input width whose columns fit int16 outlier indices. */
const I16_MAX_IN = 32767;

function outlierNames(prefix: string) {
  return { indptr: `${prefix}.outlier_indptr`, indices: `${prefix}.outlier_indices`, values: `${prefix}.outlier_values` };
}

/** dtype of outlier_indices: int16 when every column index (< in) fits, else int32. */
export function outlierIndexDtype(inFeatures: number): DType {
  return inFeatures <= I16_MAX_IN ? "I16" : "I32";
}

/** The three outlier tensors of a Linear with `nnz` outliers (−1: not known yet). */
function outlierInfo(prefix: string, shape: LinearShape, nnz: number): [ParamInfo, ParamInfo, ParamInfo] {
  const n = outlierNames(prefix);
  return [
    { name: n.indptr, dtype: "I32", shape: [shape.out + 1], optional: true },
    { name: n.indices, dtype: outlierIndexDtype(shape.in), shape: [nnz], optional: true },
    { name: n.values, dtype: "F16", shape: [nnz], optional: true },
  ];
}

/** The GPTQ v1 tensors, then the optional outlier tensors (nnz dimension −1: known only from the data). */
function paramInfo(prefix: string, shape: LinearShape, s: QuantSettings): ParamInfo[] {
  return [...gptqParamInfo(prefix, shape, s), ...outlierInfo(prefix, shape, -1)];
}

function pack(layer: QuantizedLinear): TensorToWrite[] {
  const tensors = packGptqV1(layer, NAME); // validates the layer, outliers included
  const nnz = outlierCount(layer);
  if (nnz === 0) return tensors;
  const o = layer.outliers!;
  const [pInfo, iInfo, vInfo] = outlierInfo(layer.name, { out: layer.outFeatures, in: layer.inFeatures }, nnz);
  const indices = iInfo.dtype === "I16" ? Int16Array.from(o.indices) : Int32Array.from(o.indices);
  // Values are fp16-exact (validateLayer checked), so this conversion is exact.
  const values = f32ToF16(Float32Array.from(o.values));
  return [...tensors, declared(pInfo, Int32Array.from(o.indptr)), declared(iInfo, indices), declared(vInfo, values)];
}

/**
 * The outliers of a layer through `r` (errors `<file>: tensor "<name>" <problem>`): none when the layer has
 * none of the three tensors; all three otherwise, validated (indptr from 0, non-decreasing, ending at nnz;
 * indices in [0, in), strictly increasing within a row; values finite F16).
 */
function readOutliers(r: PackedReader, shape: LinearShape): OutlierCSR | undefined {
  const n = outlierNames(r.prefix);
  const present = [n.indptr, n.indices, n.values].filter((x) => r.has(x));
  if (present.length === 0) return undefined;
  const why = `the layer has ${present.map((x) => `"${x}"`).join(" and ")}; outliers need all three CSR tensors`;
  const { out, in: inF } = shape;
  const [pInfo] = outlierInfo(r.prefix, shape, -1);
  const indptr = r.exactInts(pInfo, why);
  if (indptr[0] !== 0) r.fail(n.indptr, `holds ${indptr[0]} at index 0, expected 0 (CSR row pointers start at 0)`);
  for (let row = 0; row < out; row++) {
    if (indptr[row + 1]! < indptr[row]!) {
      r.fail(n.indptr, `holds ${indptr[row + 1]} at index ${row + 1} after ${indptr[row]} at index ${row}: row pointers must not decrease`);
    }
  }
  const nnz = indptr[out]!;
  if (nnz > out * inF) r.fail(n.indptr, `ends at ${nnz}, more outliers than the ${out}×${inF} weights`);
  const [, iInfo, vInfo] = outlierInfo(r.prefix, shape, nnz);
  const indices = r.exactInts(iInfo, why);
  for (let row = 0; row < out; row++) {
    for (let k = indptr[row]!; k < indptr[row + 1]!; k++) {
      const c = indices[k]!;
      if (c < 0 || c >= inF) r.fail(n.indices, `holds ${c} at index ${k} (row ${row}), outside [0, ${inF})`);
      if (k > indptr[row]! && c <= indices[k - 1]!) {
        r.fail(n.indices, `holds ${c} at index ${k} after ${indices[k - 1]} in row ${row}: columns must be strictly increasing within a row`);
      }
    }
  }
  const values = r.finite(vInfo, "outlier values", 1, true, why);
  if (nnz === 0) return undefined;
  return { indptr, indices, values };
}

function unpack(prefix: string, get: TensorGetter, s: QuantSettings, shape?: LinearShape): QuantizedLinear {
  const r: PackedReader = new PackedReader(prefix, get);
  const layer = unpackGptqV1(r, s, shape, NAME);
  const outliers = readOutliers(r, { out: layer.outFeatures, in: layer.inFeatures });
  if (outliers) layer.outliers = outliers;
  return layer;
}

function quantizationConfig(s: QuantSettings, skipped: string[], overrides: readonly ModuleOverride[] = []): Record<string, unknown> {
  return { quant_method: NAME, version: QUANT4_VERSION, ...gptqConfigFields(s, skipped, overrides, NAME) };
}

const Header = z.object({ quant_method: z.string(), version: z.unknown().optional() });
const WHERE = `quantization_config (${NAME})`;

/** Throws a ModelError unless a quant4 quantization_config says version 1 (the one this code reads). */
function checkVersion(qc: unknown): void {
  const h = Header.safeParse(qc);
  if (!h.success) throw new ModelError(`${WHERE}: ${zodOneLine(h.error)}`);
  const v = h.data.version;
  if (v === undefined) throw new ModelError(`${WHERE}: missing version (this quant4 reads version ${QUANT4_VERSION})`);
  if (v !== QUANT4_VERSION) {
    throw new ModelError(`${WHERE}: version ${JSON.stringify(v)} is not supported (this quant4 reads version ${QUANT4_VERSION}; a newer quant4 wrote it?)`);
  }
}

function settingsFromConfig(qc: unknown, prefix?: string): QuantSettings | null {
  checkVersion(qc);
  return gptqSettingsFromConfig(qc, prefix, NAME);
}

/** quant_method "quant4" (any case); a quant4 config of another version is refused here, when the checkpoint is opened. */
function detect(qc: unknown): boolean {
  if (!(isRecord(qc) && typeof qc.quant_method === "string" && qc.quant_method.toLowerCase() === NAME)) return false;
  checkVersion(qc);
  return true;
}

export const quant4Format: FormatSpec = {
  name: NAME,
  holdsOutliers: true,
  // Exactly gptq's limits, so quant4 never holds more Linears than gptq (the automatic choice never prefers it).
  canHold: (shape, s) => gptqCanHold(shape, s, NAME),
  paramInfo,
  pack,
  unpack,
  isQuantized: (prefix, has) => has(`${prefix}.qweight`),
  canHoldOverrides: (overrides) => gptqCanHoldOverrides(overrides, NAME),
  quantizationConfig,
  // No sidecar: nothing else reads quant4 checkpoints, and config.json holds the whole config.
  sidecarFiles: () => ({}),
  detect,
  settingsFromConfig,
};
