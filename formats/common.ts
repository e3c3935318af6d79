// Helpers shared by the format modules: group arithmetic, layer validation, reading declared tensors.

import { f16ToF32, f32ToF16, toF16Checked, toFloat32, typedView } from "../src/io/dtype.js";
import { DTYPE_SIZE, type DType, type TensorToWrite } from "../src/io/types.js";
import { ModelError } from "../src/util/errors.js";
import type { ModuleOverride, OutlierCSR, ParamInfo, QuantizedLinear, QuantSettings, StoredTensor, TensorGetter } from "./types.js";

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
  const { codes, zeros } = layer; // locals: out·in iterations
  for (let i = 0; i < codes.length; i++) {
    if (codes[i]! > maxq) bad(`code ${codes[i]} at ${i} exceeds ${maxq}`);
  }
  const mid = 1 << (bits - 1);
  for (let i = 0; i < zeros.length; i++) {
    const z = zeros[i]!;
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
  if (layer.outliers) {
    const why = outlierProblem(layer.outliers, out, inF);
    if (why) bad(why);
    const v = layer.outliers.values;
    const h = f16ToF32(f32ToF16(Float32Array.from(v)));
    for (let k = 0; k < v.length; k++) {
      if (!Number.isFinite(v[k]!)) bad(`outlier value ${v[k]} at ${k} is not finite`);
      if (!Object.is(h[k], v[k])) bad(`outlier value ${v[k]} at ${k} is not exactly representable in float16 (it would be stored as ${h[k]})`);
    }
  }
}

/** Number of outlier weights of a layer (0 without outliers). */
export function outlierCount(layer: Pick<QuantizedLinear, "outliers">): number {
  return layer.outliers ? layer.outliers.values.length : 0;
}

/**
 * Why a CSR outlier structure does not fit an [out, in] Linear, or null: indptr [out+1] from 0 to nnz
 * without decreasing, indices [nnz] in [0, in) strictly increasing within each row, values [nnz].
 */
export function outlierProblem(o: OutlierCSR, out: number, inF: number): string | null {
  const { indptr, indices, values } = o;
  if (indptr.length !== out + 1) return `outlier indptr has ${indptr.length} values, expected out + 1 = ${out + 1}`;
  const nnz = indices.length;
  if (values.length !== nnz) return `outliers have ${nnz} indices but ${values.length} values`;
  if (indptr[0] !== 0) return `outlier indptr[0] = ${indptr[0]}, expected 0`;
  if (indptr[out] !== nnz) return `outlier indptr[${out}] = ${indptr[out]}, expected nnz = ${nnz}`;
  for (let r = 0; r < out; r++) {
    const a = indptr[r]!;
    const b = indptr[r + 1]!;
    if (b < a) return `outlier indptr decreases at row ${r} (${a} then ${b})`;
    for (let k = a; k < b; k++) {
      const c = indices[k]!;
      if (!(c >= 0 && c < inF)) return `outlier index ${c} at ${k} (row ${r}) is outside [0, ${inF})`;
      if (k > a && c <= indices[k - 1]!) return `outlier indices of row ${r} are not strictly increasing (${indices[k - 1]} then ${c} at ${k})`;
    }
  }
  return null;
}

/** pack() of a format without `holdsOutliers`: refuse a layer that has outlier weights (they would be lost). */
export function refuseOutliers(layer: QuantizedLinear, format: string): void {
  const n = outlierCount(layer);
  if (n > 0) {
    throw new ModelError(
      `quantized layer ${layer.name} keeps ${n} outlier weight${n === 1 ? "" : "s"} in fp16, which ${format} cannot store; use --format quant4 (or quantize without outliers)`,
    );
  }
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
export function declared(info: ParamInfo, data: Int32Array | Int16Array | Uint16Array | BigInt64Array): TensorToWrite {
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

export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Row-major multi-index of flat index i in `shape`, e.g. "[1, 5]". */
function multiIndex(i: number, shape: readonly number[]): string {
  const idx: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d]!;
    idx.unshift(n > 0 ? i % n : 0);
    i = n > 0 ? Math.floor(i / n) : 0;
  }
  return fmtShape(idx);
}

/** The shortest decimal that reads back as float32 `x` (1e38, not 9.999999680285692e+37). */
function fmtF32(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  for (let p = 1; p < 9; p++) {
    const s = Number(x.toPrecision(p));
    if (Math.fround(s) === x) return String(s);
  }
  return String(Number(x.toPrecision(9)));
}

/** Largest finite float32. */
const F32_MAX = 3.4028234663852886e38;

/**
 * Reads one packed Linear's tensors through a getter (each tensor fetched at most once) and is the one
 * place unpack errors are worded: ModelError `<file>: tensor "<name>" <problem>`. The file is the tensor's
 * own (StoredTensor.file), or for a missing tensor the file of another tensor of the same layer; a getter
 * that knows no files (in-memory tensors) gives `tensor "<name>" <problem>`.
 */
export class PackedReader {
  private readonly seen = new Map<string, StoredTensor | undefined>();
  private layerFile: string | undefined;

  /** `context` (e.g. "4-bit, group_size 32, [out, in] = [64, 64] from quantization_config") follows an "expected". */
  constructor(
    readonly prefix: string,
    private readonly getter: TensorGetter,
    public context = "",
  ) {}

  get(name: string): StoredTensor | undefined {
    if (!this.seen.has(name)) {
      const t = this.getter(name);
      this.seen.set(name, t);
      if (t?.file && this.layerFile === undefined) this.layerFile = t.file;
    }
    return this.seen.get(name);
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  /** Throw `<file>: tensor "<name>" <problem>`. */
  fail(name: string, problem: string): never {
    const file = this.get(name)?.file ?? this.layerFile;
    throw new ModelError(`${file ? `${file}: ` : ""}tensor "${name}" ${problem}`);
  }

  private ctx(): string {
    return this.context ? `; ${this.context}` : "";
  }

  /**
   * Fetch one declared tensor, validating presence, dtype, shape and byte length. `exactDtype`: only the
   * declared dtype is accepted (not the other floats / I32 for I64).
   */
  declared(info: ParamInfo, why = "", exactDtype = false): { dtype: DType; shape: number[]; data: Uint8Array } {
    const t = this.get(info.name);
    const decl = `${info.dtype} ${fmtShape(info.shape)}`;
    if (!t) this.fail(info.name, `is missing (expected ${decl}${why ? `: ${why}` : ""}${this.ctx()})`);
    const ok = exactDtype ? [info.dtype] : accepted(info.dtype);
    if (!ok.includes(t.dtype)) {
      this.fail(info.name, `has dtype ${t.dtype}, expected ${ok.join("/")} (declared ${decl})`);
    }
    if (t.shape.length !== info.shape.length || t.shape.some((d, i) => d !== info.shape[i])) {
      this.fail(info.name, `has shape ${fmtShape(t.shape)}, expected ${fmtShape(info.shape)} (${info.dtype}${this.ctx()})`);
    }
    const n = info.shape.reduce((a, b) => a * b, 1);
    if (t.data.byteLength !== n * DTYPE_SIZE[t.dtype]) {
      this.fail(info.name, `holds ${t.data.byteLength} bytes, expected ${n * DTYPE_SIZE[t.dtype]} for ${t.dtype} ${fmtShape(info.shape)}`);
    }
    return { dtype: t.dtype, shape: t.shape, data: t.data };
  }

  int32(info: ParamInfo, why = ""): Int32Array {
    const t = this.declared(info, why);
    return typedView(t.dtype, t.data) as Int32Array;
  }

  /** An I16 or I32 tensor of exactly the declared dtype, as a new Int32Array. */
  exactInts(info: ParamInfo, why = ""): Int32Array {
    const t = this.declared(info, why, true);
    return Int32Array.from(typedView(t.dtype, t.data) as Int16Array | Int32Array);
  }

  /** An integer tensor (I32 or I64) as plain numbers; each must be a safe integer. */
  ints(info: ParamInfo): number[] {
    const t = this.declared(info);
    const v = typedView(t.dtype, t.data) as Int32Array | BigInt64Array;
    return Array.from(v as ArrayLike<number | bigint>, (x) => Number(x));
  }

  /**
   * A float tensor as fp32 where every value v is finite and |v|·maxFactor stays finite in float32
   * (scales are multiplied by code − zero, up to 2^bits − 1 in size), so what it scales is finite too.
   */
  finite(info: ParamInfo, what: string, maxFactor = 1, exactDtype = false, why = ""): Float32Array {
    const t = this.declared(info, why, exactDtype);
    const v = Float32Array.from(toFloat32(t.dtype, t.data));
    for (let i = 0; i < v.length; i++) {
      const x = v[i]!;
      if (!Number.isFinite(x)) this.fail(info.name, `holds ${x} at index ${i} (element ${multiIndex(i, t.shape)}); ${what} must be finite`);
      if (Math.abs(x) * maxFactor > F32_MAX) {
        this.fail(info.name, `holds ${fmtF32(x)} at index ${i} (element ${multiIndex(i, t.shape)}), which overflows float32 when multiplied by codes up to ${maxFactor}`);
      }
    }
    return v;
  }

  /** A g_idx tensor: every value in [0, nGroups). */
  gIdx(info: ParamInfo, nGroups: number, why = ""): Int32Array {
    const g = Int32Array.from(this.int32(info, why));
    for (let i = 0; i < g.length; i++) {
      const v = g[i]!;
      if (v < 0 || v >= nGroups) this.fail(info.name, `holds ${v} at index ${i}, outside [0, ${nGroups}) (${nGroups} group${nGroups === 1 ? "" : "s"}${this.ctx()})`);
    }
    return g;
  }

  /** `<prefix>.bias` [out] if the checkpoint has it (any float dtype, finite). */
  bias(out: number): Float32Array | undefined {
    const info: ParamInfo = { name: `${this.prefix}.bias`, dtype: "F16", shape: [out] };
    if (!this.has(info.name)) return undefined;
    return this.finite(info, "biases");
  }
}

/** Throw through `r` if a g_idx that the config does not call for is not the trivial i // group_size. */
export function checkUnexpectedGIdx(r: PackedReader, name: string, gIdx: Int32Array, groupSize: number, configSays: string): void {
  if (isTrivialGIdx(gIdx, groupSize)) return;
  const i = gIdx.findIndex((v, k) => v !== defaultGroup(k, groupSize));
  r.fail(
    name,
    `holds ${gIdx[i]} at index ${i} (act-order groups), but ${configSays}: the config and the tensors disagree (a loader following the config would ignore g_idx)`,
  );
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

// ---------------------------------------------------------------------------------------------
// Per-module overrides (GPTQModel `dynamic` semantics: re.match on the full module name, first match wins)

/** The first override whose pattern re.matches `name`, or undefined. */
export function firstOverride(overrides: readonly ModuleOverride[], name: string): ModuleOverride | undefined {
  return overrides.find((o) => pyReMatch(o.pattern, name));
}

/** `base` with the fields an override gives replaced. */
export function applyOverride(base: QuantSettings, o: ModuleOverride | undefined): QuantSettings {
  if (!o) return base;
  return { ...base, bits: o.bits ?? base.bits, groupSize: o.groupSize ?? base.groupSize, sym: o.sym ?? base.sym };
}

/** The overrides with a later repeat of an earlier pattern dropped (it can never be the first match). */
export function distinctOverrides(overrides: readonly ModuleOverride[]): ModuleOverride[] {
  const seen = new Set<string>();
  return overrides.filter((o) => !seen.has(o.pattern) && (seen.add(o.pattern), true));
}

/** Does an override change any setting? */
export function overrideSetsAnything(o: ModuleOverride): boolean {
  return o.bits !== undefined || o.groupSize !== undefined || o.sym !== undefined;
}

/**
 * Why `overrides` cannot be written by `format` (whose configs hold `bits` per module), or null: a pattern
 * that is not a valid regular expression, a bit width not in `bits`, a group size that is neither −1 nor a
 * positive integer.
 */
export function overridesProblem(overrides: readonly ModuleOverride[], format: string, bits: readonly number[]): string | null {
  for (const o of overrides) {
    const what = `per-module override ${JSON.stringify(o.pattern)}`;
    try {
      new RegExp(o.pattern);
    } catch (e) {
      return `${what}: invalid regular expression: ${(e as Error).message}`;
    }
    if (o.bits !== undefined && !bits.includes(o.bits)) {
      return `${what}: ${format} cannot hold ${o.bits}-bit weights (it holds ${bits.join("/")}-bit)`;
    }
    if (o.groupSize !== undefined && o.groupSize !== -1 && !(Number.isInteger(o.groupSize) && o.groupSize > 0)) {
      return `${what}: group size ${o.groupSize} is not a positive integer or -1`;
    }
  }
  return null;
}

/** A zod error as one line: `path: message; ...` (error messages must fit on one line). */
export function zodOneLine(error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] }): string {
  return error.issues.map((i) => (i.path.length ? `${i.path.map(String).join(".")}: ${i.message}` : i.message)).join("; ");
}

export function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
