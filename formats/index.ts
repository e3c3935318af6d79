// Registry of on-disk quantized formats. Adding a format = adding one FormatSpec here; callers look a
// format up by name (CLI option) or by a checkpoint's quantization_config and never switch on names.

import { ModelError, UsageError } from "../src/util/errors.js";
import { awqFormat } from "./awq.js";
import { compressedTensorsFormat } from "./compressed-tensors.js";
import { applyOverride, firstOverride, isRecord } from "./common.js";
import { gptqFormat } from "./gptq.js";
import { quant4Format } from "./quant4.js";
import type { FormatSpec, ModuleOverride, QuantSettings } from "./types.js";

export type {
  FormatSpec,
  LinearShape,
  ModuleOverride,
  OutlierCSR,
  ParamInfo,
  QuantizedLinear,
  QuantSettings,
  StoredTensor,
  TensorGetter,
} from "./types.js";
export { dequantize } from "./dequant.js";
export { applyOverride, firstOverride } from "./common.js";

// Order matters: the automatic format choice prefers the earlier format when two hold as many Linears.
// quant4 is last (and holds exactly what gptq holds), so the automatic choice never prefers it.
export const FORMATS: readonly FormatSpec[] = [gptqFormat, compressedTensorsFormat, awqFormat, quant4Format];

export function formatNames(): string[] {
  return FORMATS.map((f) => f.name);
}

/** The format called `name`; UsageError listing the known names otherwise. */
export function getFormat(name: string): FormatSpec {
  const f = FORMATS.find((x) => x.name === name);
  if (!f) throw new UsageError(`unknown format "${name}"; supported formats: ${formatNames().join(", ")}`);
  return f;
}

/** The format a config.json `quantization_config` belongs to; ModelError naming the quant_method otherwise. */
export function detectFormat(quantizationConfig: unknown): FormatSpec {
  if (!isRecord(quantizationConfig)) throw new ModelError("quantization_config is not a JSON object");
  const f = FORMATS.find((x) => x.detect(quantizationConfig));
  if (f) return f;
  const method = quantizationConfig.quant_method;
  const what = method === undefined ? "has no quant_method" : `has quant_method ${JSON.stringify(method)}`;
  throw new ModelError(`quantization_config ${what}, which quant4 cannot read; supported: ${formatNames().join(", ")}`);
}

/**
 * Settings of module `name` under per-module overrides: the first override whose pattern re.matches the
 * name (GPTQModel `dynamic` semantics) replaces the fields it gives; `base` when none matches.
 */
export function settingsForModule(base: QuantSettings, overrides: readonly ModuleOverride[], name: string): QuantSettings {
  return applyOverride(base, firstOverride(overrides, name));
}
