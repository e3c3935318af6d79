// Registry of on-disk quantized formats. Adding a format = adding one FormatSpec here; callers look a
// format up by name (CLI option) or by a checkpoint's quantization_config and never switch on names.

import { ModelError, UsageError } from "../src/util/errors.js";
import { awqFormat } from "./awq.js";
import { compressedTensorsFormat } from "./compressed-tensors.js";
import { isRecord } from "./common.js";
import { gptqFormat } from "./gptq.js";
import type { FormatSpec } from "./types.js";

export type { FormatSpec, LinearShape, ParamInfo, QuantizedLinear, QuantSettings, StoredTensor, TensorGetter } from "./types.js";
export { dequantize } from "./dequant.js";

// Order matters: the automatic format choice prefers the earlier format when two hold as many Linears.
export const FORMATS: readonly FormatSpec[] = [gptqFormat, compressedTensorsFormat, awqFormat];

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
