// Helpers shared by the format modules: group arithmetic, layer validation, reading declared tensors.

import { toF16Checked, toFloat32, typedView } from "../src/io/dtype.js";
import { DTYPE_SIZE, type DType, type TensorToWrite } from "../src/io/types.js";
import { ModelError } from "../src/util/errors.js";
import type { LinearShape, ParamInfo, QuantizedLinear, QuantSettings, TensorGetter } from "./types.js";

/** Number of groups per row: ceil(in / gs), 1 for per-row (gs = −1). */
export function numGroups(inFeatures: number, groupSize: number): number {
  return groupSize === -1 ? 1 : Math.ceil(inFeatures / groupSize);
}

/** The default group of input channel i (no act-order). */
export function defaultGroup(i: number, groupSize: number): number {
  return groupSize === -1 ? 0 : Math.floor(i / groupSize);
}

/** Is `gIdx` just floor(i / gs)? */
export function isTrivialGIdx(gIdx: Int32Array, groupSize: number): boolean {
  for (let i = 0; i < gIdx.length; i++) if (gIdx[i] !== defaultGroup(i, groupSize)) return false;
  return true;
}

/** Why a group size is malformed for `in`, or null. */
export function groupSizeProblem(inFeatures: number, groupSize: number): string | null {
  if (groupSize === -1) return null;
  if (!Number.isInteger(groupSize) || groupSize <= 0) return `group size ${groupSize} is not a positive integer or -1`;
  if (inFeatures % groupSize !== 0) return `group size ${groupSize} does not divide in_features ${inFeatures}`;
  return null;
}

export function settingsOf(layer: QuantizedLinear): QuantSettings {
  return { bits: layer.bits, groupSize: layer.groupSize, sym: layer.sym, actOrder: layer.gIdx !== undefined };
}

/** Check array lengths and value ranges of a layer before packing; throws ModelError naming the layer. */
export function validateLayer(layer: QuantizedLinear): void {
  const { name, outFeatures: out, inFeatures: inF, bits, groupSize } = layer;
  const bad = (detail: string): never => {
    throw new ModelError(`quantized layer ${name}: ${detail}`);
  };
  if (!Number.isInteger(out) || !Number.isInteger(inF) || out <= 0 || inF <= 0) bad(`bad shape [${out}, ${inF}]`);
  if (!Number.isInteger(bits) || bits < 1 || bits > 8) bad(`bad bit width ${bits}`);
  if (groupSize !== -1 && (!Number.isInteger(groupSize) || groupSize <= 0)) bad(`bad group size ${groupSize}`);
  const g = numGroups(inF, groupSize);
  const maxq = (1 << bits) - 1;
  if (layer.codes.length !== out * inF) bad(`codes has ${layer.codes.length} values, expected ${out}×${inF}`);
  if (layer.scales.length !== out * g) bad(`scales has ${layer.scales.length} values, expected ${out}×${g}`);
  if (layer.zeros.length !== out * g) bad(`zeros has ${layer.zeros.length} values, expected ${out}×${g}`);
  for (let i = 0; i < layer.codes.length; i++) {
    if (layer.codes[i]! > maxq) bad(`code ${layer.codes[i]} at ${i} exceeds ${maxq}`);
  }
  const mid = 1 << (bits - 1);
  for (let i = 0; i < layer.zeros.length; i++) {
    const z = layer.zeros[i]!;
    if (z > maxq) bad(`zero point ${z} at ${i} exceeds ${maxq}`);
    if (layer.sym && z !== mid) bad(`symmetric layer has zero point ${z} at ${i} (must be ${mid})`);
  }
  if (layer.gIdx) {
    if (layer.gIdx.length !== inF) bad(`gIdx has ${layer.gIdx.length} values, expected ${inF}`);
    for (let i = 0; i < inF; i++) {
      const v = layer.gIdx[i]!;
      if (v < 0 || v >= g) bad(`gIdx[${i}] = ${v} is outside [0, ${g})`);
    }
  }
  if (layer.bias && layer.bias.length !== out) bad(`bias has ${layer.bias.length} values, expected ${out}`);
}

export { toF16Checked };

/** Transpose a row-major [rows, cols] array into a new [cols, rows] one. */
export function transpose<T extends Uint16Array | Float32Array | Int32Array | Uint8Array>(
  a: T,
  rows: number,
  cols: number,
  make: (n: number) => T,
): T {
  const t = make(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c]!;
  return t;
}

export function biasTensor(layer: QuantizedLinear): TensorToWrite[] {
  if (!layer.bias) return [];
  return [{ name: `${layer.name}.bias`, dtype: "F16", shape: [layer.outFeatures], data: toF16Checked(layer.bias, `${layer.name}.bias`) }];
}

/** The writer-facing tensor of one declaration, after checking the data matches it. */
export function declared(info: ParamInfo, data: Int32Array | Uint16Array | BigInt64Array): TensorToWrite {
  const n = info.shape.reduce((a, b) => a * b, 1);
  if (data.length !== n) {
    throw new ModelError(`tensor ${info.name}: ${data.length} values do not fill the declared shape [${info.shape.join(", ")}]`);
  }
  return { name: info.name, dtype: info.dtype, shape: info.shape, data };
}

const FLOATS: readonly DType[] = ["F16", "BF16", "F32"];
const INTS: readonly DType[] = ["I32", "I64"];

/**
 * Dtypes accepted on read for a declared dtype: float params may come as any float (bf16 models),
 * int params declared I64 may come as I32 (compressed-tensors' own param info says int32 for
 * weight_shape while compress_weight writes int64); packed I32 data must be I32.
 */
function accepted(d: DType): readonly DType[] {
  if (FLOATS.includes(d)) return FLOATS;
  if (d === "I64") return INTS;
  return [d];
}

function fmtShape(shape: number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Wrap a getter so each tensor is fetched (read from disk) at most once during one unpack. */
export function memoGetter(get: TensorGetter): TensorGetter {
  const seen = new Map<string, ReturnType<TensorGetter>>();
  return (name) => {
    if (!seen.has(name)) seen.set(name, get(name));
    return seen.get(name);
  };
}

/** Fetch one declared tensor, validating presence, dtype, shape and byte length. */
export function readDeclared(get: TensorGetter, info: ParamInfo): { dtype: DType; data: Uint8Array } {
  const t = get(info.name);
  if (!t) throw new ModelError(`tensor ${info.name} is missing (expected ${info.dtype} ${fmtShape(info.shape)})`);
  if (!accepted(info.dtype).includes(t.dtype)) {
    throw new ModelError(`tensor ${info.name}: dtype ${t.dtype}, expected ${info.dtype} (shape ${fmtShape(info.shape)})`);
  }
  if (t.shape.length !== info.shape.length || t.shape.some((d, i) => d !== info.shape[i])) {
    throw new ModelError(`tensor ${info.name}: shape ${fmtShape(t.shape)}, expected ${fmtShape(info.shape)} (${info.dtype})`);
  }
  const n = info.shape.reduce((a, b) => a * b, 1);
  if (t.data.byteLength !== n * DTYPE_SIZE[t.dtype]) {
    throw new ModelError(`tensor ${info.name}: ${t.data.byteLength} bytes, expected ${n * DTYPE_SIZE[t.dtype]} for ${t.dtype} ${fmtShape(info.shape)}`);
  }
  return { dtype: t.dtype, data: t.data };
}

export function readInt32(get: TensorGetter, info: ParamInfo): Int32Array {
  const t = readDeclared(get, info);
  return typedView(t.dtype, t.data) as Int32Array;
}

/** An integer tensor (I32 or I64) as plain numbers. */
export function readInts(get: TensorGetter, info: ParamInfo): number[] {
  const t = readDeclared(get, info);
  const v = typedView(t.dtype, t.data) as Int32Array | BigInt64Array;
  return Array.from(v as ArrayLike<number | bigint>, (x) => Number(x));
}

export function readFloat32(get: TensorGetter, info: ParamInfo): Float32Array {
  const t = readDeclared(get, info);
  return toFloat32(t.dtype, t.data);
}

/** Read `<prefix>.bias` [out] if the checkpoint has it. */
export function readBias(get: TensorGetter, prefix: string, out: number): Float32Array | undefined {
  const info: ParamInfo = { name: `${prefix}.bias`, dtype: "F16", shape: [out] };
  if (!get(info.name)) return undefined;
  return Float32Array.from(readFloat32(get, info));
}

/** Validate a g_idx read from disk. */
export function checkGIdx(name: string, gIdx: Int32Array, nGroups: number): void {
  for (let i = 0; i < gIdx.length; i++) {
    const v = gIdx[i]!;
    if (v < 0 || v >= nGroups) throw new ModelError(`tensor ${name}: value ${v} at ${i} is outside [0, ${nGroups})`);
  }
}

export function shapeMismatch(prefix: string, given: LinearShape | undefined, found: LinearShape): void {
  if (given && (given.out !== found.out || given.in !== found.in)) {
    throw new ModelError(
      `quantized layer ${prefix}: tensors say [out, in] = [${found.out}, ${found.in}], expected [${given.out}, ${given.in}]`,
    );
  }
}

/** Escape a literal for use inside a regular expression (same set as Python's re.escape for names). */
export function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Python `re.match(pattern, s)`: the pattern must match at the start of s (not necessarily the end). */
export function pyReMatch(pattern: string, s: string): boolean {
  let re: RegExp;
  try {
    re = new RegExp(`^(?:${pattern})`);
  } catch (e) {
    throw new ModelError(`quantization_config: invalid module regex ${JSON.stringify(pattern)}: ${(e as Error).message}`);
  }
  return re.test(s);
}

export function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
