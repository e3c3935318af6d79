// The one interface every on-disk quantized-weight format implements (ggml type-traits style):
// nothing outside formats/ switches on a format name; it asks the FormatSpec found in the registry.

import type { DType, StoredTensor as IoStoredTensor, TensorToWrite } from "../src/io/types.js";

/** One quantized Linear layer in a format-neutral, unpacked form. */
export interface QuantizedLinear {
  /** Module prefix, e.g. "model.layers.0.self_attn.q_proj". */
  name: string;
  outFeatures: number;
  inFeatures: number;
  /** 2 | 3 | 4 | 8 (each format says which it holds). */
  bits: number;
  /** −1 = one group per row. */
  groupSize: number;
  sym: boolean;
  /** [out*in] row-major (PyTorch [out, in] layout), unsigned in [0, 2^bits − 1]. */
  codes: Uint8Array;
  /** [out*nGroups] row-major (out, group). */
  scales: Float32Array;
  /** [out*nGroups] unsigned zero points in [0, 2^bits − 1]; symmetric layers use 2^(bits−1). */
  zeros: Uint8Array;
  /** [in] group of each input channel (act-order); absent ⇒ floor(i / groupSize). */
  gIdx?: Int32Array;
  /** [out] */
  bias?: Float32Array;
  /**
   * Weights kept exactly (outlier retention), CSR by output row; each value replaces the dequantized
   * weight at (row, indices[k]). Values are fp16-exact. Only formats with `holdsOutliers` store them.
   */
  outliers?: OutlierCSR;
}

/**
 * Outlier weights of one [out, in] Linear in CSR form by output row: row r holds indices[indptr[r] ..
 * indptr[r+1]) (input columns, strictly increasing within a row) and their values. indptr runs from 0 to
 * nnz without decreasing; values are finite and exactly representable in float16.
 */
export interface OutlierCSR {
  /** [out+1] */
  indptr: Int32Array;
  /** [nnz] input column */
  indices: Int32Array;
  /** [nnz] */
  values: Float32Array;
}

/**
 * A per-module override of the quantization settings, GPTQModel `dynamic` style: `pattern` is a Python
 * regex applied with re.match (anchored at the start only) to the full module name, e.g.
 * "model.layers.0.mlp.down_proj". In an ordered list the first matching override wins; a field left out
 * keeps the base setting.
 */
export interface ModuleOverride {
  pattern: string;
  bits?: number;
  groupSize?: number;
  sym?: boolean;
}

/** How a layer is (to be) quantized. `damp`, `trueSequential`, `staticGroups`, `method` are recorded in configs only. */
export interface QuantSettings {
  bits: number;
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  damp?: number;
  trueSequential?: boolean;
  staticGroups?: boolean;
  method?: string;
}

export interface LinearShape {
  out: number;
  in: number;
}

/** Declaration of one stored tensor (compressed-tensors `compression_param_info` idea). */
export interface ParamInfo {
  name: string;
  dtype: DType;
  /** A dimension of −1 depends on the data (the number of outlier weights), known only when written or read. */
  shape: number[];
  /** Written only for some layers (quant4's outlier tensors: only for a Linear with outliers). */
  optional?: boolean;
}

/**
 * A stored tensor as a getter hands it to unpack. `file` (the safetensors file it lives in), when the
 * getter knows it, is named in every error unpack raises about the tensor.
 */
export interface StoredTensor extends IoStoredTensor {
  file?: string;
}

export type TensorGetter = (name: string) => StoredTensor | undefined;

export interface FormatSpec {
  /** "gptq" | "compressed-tensors" | "awq" | "quant4" */
  readonly name: string;
  /**
   * Can the format store outlier weights (QuantizedLinear.outliers)? Only quant4. pack() of a layer with
   * outliers in a format without them throws a ModelError naming the layer and `--format quant4`.
   */
  readonly holdsOutliers: boolean;
  /** null = the format can hold this layer; otherwise the reason (the layer then stays fp16 and is listed as skipped). */
  canHold(shape: LinearShape, s: QuantSettings): string | null;
  /**
   * The tensors that replace `<prefix>.weight`, declared once and checked on read and write.
   * The optional bias is not listed: it is always `<prefix>.bias`, F16 [out] when written.
   */
  paramInfo(prefix: string, shape: LinearShape, s: QuantSettings): ParamInfo[];
  /** Full tensor names "<prefix>.qweight" etc. (bias as "<prefix>.bias"). */
  pack(layer: QuantizedLinear): TensorToWrite[];
  /**
   * Reads a packed Linear and validates it against paramInfo and the settings: presence, dtypes, shapes,
   * finite scales, g_idx range, zero points and g_idx agreeing with the config; `shape`, when given, must
   * match what the tensors say. Errors are ModelErrors `<file>: tensor "<name>" <problem>` (the file
   * when the getter says it). The layer returned dequantizes to finite weights.
   */
  unpack(prefix: string, get: TensorGetter, s: QuantSettings, shape?: LinearShape): QuantizedLinear;
  /** Does the checkpoint hold this module packed in this format? */
  isQuantized(prefix: string, has: (name: string) => boolean): boolean;
  /**
   * null = the format's config can describe these per-module overrides (and their bit widths and group
   * sizes); otherwise the reason, one line (awq: none at all; compressed-tensors: 4/8 bits; gptq and
   * quant4: 2/3/4/8 bits). Checks the list only: whether a given Linear can hold its overridden settings
   * is canHold(shape, settings). quantizationConfig/sidecarFiles throw this reason as a UsageError.
   */
  canHoldOverrides(overrides: readonly ModuleOverride[]): string | null;
  /**
   * Goes into config.json "quantization_config". `skipped` = module prefixes left in fp16; `overrides` =
   * per-module settings, first match wins (gptq/quant4: `dynamic` "+:" entries after the "-:" skips;
   * compressed-tensors: one config group each before group_0; awq: refused unless empty).
   */
  quantizationConfig(s: QuantSettings, skipped: string[], overrides?: readonly ModuleOverride[]): Record<string, unknown>;
  /** Extra files beside config.json, e.g. {"quantize_config.json": "..."}; {} if none. */
  sidecarFiles(s: QuantSettings, skipped: string[], overrides?: readonly ModuleOverride[]): Record<string, string>;
  /**
   * Does a config.json quantization_config belong to this format? A config that is this format's but of
   * a version it cannot read throws a ModelError saying so (quant4), rather than answering false.
   */
  detect(quantizationConfig: unknown): boolean;
  /** Settings for a module (or the global ones without `prefix`); null ⇒ this module is not quantized. */
  settingsFromConfig(quantizationConfig: unknown, prefix?: string): QuantSettings | null;
}
