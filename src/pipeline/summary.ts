// What a quantize run produced, measured from the written files (not from the settings): size before
// and after, bits per quantized weight (codes, scales, zeros, g_idx as stored, per the format's own
// tensors), bits per parameter of the whole checkpoint, and the worst layers.

import fs from "node:fs";
import { Checkpoint } from "../io/checkpoint.js";
import { DTYPE_SIZE } from "../io/types.js";
import type { FormatSpec } from "../../formats/types.js";
import type { ArchSpec } from "../model/architectures.js";
import type { LayerStat } from "./journal.js";

export interface OutputMeasure {
  sourceBytes: number;
  outputBytes: number;
  /** Weights of the quantized Linears (Σ out×in). */
  quantizedWeights: number;
  /** Bits the quantized Linears take on disk per weight (their packed tensors, bias excluded). */
  bitsPerQuantizedWeight: number | null;
  /** Parameters of the model (fp count: a packed Linear counts out×in). */
  parameters: number;
  /** Output safetensors bits per parameter (everything: embeddings, norms, fp16-kept Linears too). */
  bitsPerParameter: number;
}

const sizeOf = (files: string[]): number => files.reduce((s, f) => s + fs.statSync(f).size, 0);

/** Measure an output directory written in `format` for a model of architecture `arch`. */
export function measureOutput(sourceFiles: string[], outDir: string, format: FormatSpec, quantConfig: unknown, arch: ArchSpec): OutputMeasure {
  const ckpt = Checkpoint.open(outDir);
  try {
    let packedBits = 0;
    let quantizedWeights = 0;
    const packed = new Set<string>();
    for (let b = 0; b < arch.nLayers; b++)
      for (const l of arch.linears) {
        const prefix = arch.blockPrefix(b) + l.name;
        if (!format.isQuantized(prefix, (n) => ckpt.has(n))) continue;
        if (!format.settingsFromConfig(quantConfig, prefix)) continue;
        // Everything the module stores except its bias: codes, scales, zeros, g_idx, shape, outliers.
        for (const n of ckpt.names()) {
          if (!n.startsWith(`${prefix}.`) || n === `${prefix}.bias` || n.slice(prefix.length + 1).includes(".")) continue;
          const info = ckpt.info(n);
          packedBits += 8 * info.shape.reduce((x, y) => x * y, 1) * DTYPE_SIZE[info.dtype];
          packed.add(n);
        }
        quantizedWeights += l.out * l.in;
      }
    let parameters = quantizedWeights;
    for (const n of ckpt.names()) if (!packed.has(n)) parameters += ckpt.info(n).shape.reduce((x, y) => x * y, 1);
    const outputBytes = sizeOf(ckpt.files);
    return {
      sourceBytes: sizeOf(sourceFiles),
      outputBytes,
      quantizedWeights,
      bitsPerQuantizedWeight: quantizedWeights > 0 ? packedBits / quantizedWeights : null,
      parameters,
      bitsPerParameter: (8 * outputBytes) / parameters,
    };
  } finally {
    ckpt.close();
  }
}

/** The `n` quantized layers with the highest relative output error (those measured), worst first. */
export function worstLayers(layers: readonly LayerStat[], n = 5): LayerStat[] {
  return layers
    .filter((l) => l.status === "quantized" && l.relError !== null)
    .sort((a, b) => b.relError! - a.relError!)
    .slice(0, n);
}
