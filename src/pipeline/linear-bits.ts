// Bits per Linear weight of a written checkpoint, over all of the model's Linears (the quantity
// `quantize --target-bits` budgets), measured from the output as a reader sees it:
//   - code bits: a packed Linear counts the width its config.json gives that module (GPTQ `dynamic`,
//     compressed-tensors config groups: the per-module bits a loader applies, and that the packed
//     tensors' shapes were written for); a Linear stored as a float tensor counts its dtype's bits (16);
//   - stored bits: every tensor the module stores except its bias (codes, scales, zeros, g_idx,
//     outliers; the float weight of an fp16 Linear), from the tensors' dtypes and shapes.

import fs from "node:fs";
import path from "node:path";
import { Checkpoint } from "../io/checkpoint.js";
import { DTYPE_SIZE } from "../io/types.js";
import type { FormatSpec } from "../../formats/types.js";
import type { ArchSpec } from "../model/architectures.js";

export interface LinearBitsEntry {
  name: string;
  params: number;
  /** Code width (16 for a Linear kept as fp16). */
  bits: number;
  /** Stored bits per weight of this Linear (all its tensors except the bias). */
  storedBits: number;
}

export interface LinearBits {
  /** Σ code bits · params / Σ params over every Linear. */
  codeBitsPerWeight: number;
  /** Σ stored bits / Σ params over every Linear. */
  storedBitsPerWeight: number;
  linears: LinearBitsEntry[];
}

export function measureLinearBits(outDir: string, format: FormatSpec, arch: ArchSpec): LinearBits {
  const qc = (JSON.parse(fs.readFileSync(path.join(outDir, "config.json"), "utf8")) as { quantization_config?: unknown }).quantization_config;
  const ckpt = Checkpoint.open(outDir);
  try {
    const bitsOf = (n: string): number => {
      const info = ckpt.info(n);
      return 8 * info.shape.reduce((x, y) => x * y, 1) * DTYPE_SIZE[info.dtype];
    };
    const names = ckpt.names();
    const linears: LinearBitsEntry[] = [];
    for (let b = 0; b < arch.nLayers; b++)
      for (const l of arch.linears) {
        const prefix = arch.blockPrefix(b) + l.name;
        const params = l.out * l.in;
        const settings = format.isQuantized(prefix, (n) => ckpt.has(n)) ? format.settingsFromConfig(qc, prefix) : null;
        if (settings) {
          let stored = 0;
          for (const n of names) if (n.startsWith(`${prefix}.`) && n !== `${prefix}.bias` && !n.slice(prefix.length + 1).includes(".")) stored += bitsOf(n);
          linears.push({ name: prefix, params, bits: settings.bits, storedBits: stored / params });
        } else {
          const w = bitsOf(`${prefix}.weight`);
          linears.push({ name: prefix, params, bits: w / params, storedBits: w / params });
        }
      }
    const total = linears.reduce((s, l) => s + l.params, 0);
    return {
      codeBitsPerWeight: linears.reduce((s, l) => s + l.bits * l.params, 0) / total,
      storedBitsPerWeight: linears.reduce((s, l) => s + l.storedBits * l.params, 0) / total,
      linears,
    };
  } finally {
    ckpt.close();
  }
}
