// Repacking a finished quantize output into another format (a recipe's second and later `outputs`:
// several formats from one calibration pass). Every packed Linear is read back through the source
// format's validating reader (unpack) and written with the target format's writer (pack): the integer
// codes, scales, zero points, g_idx and bias are the same numbers, so the result dequantizes to exactly
// the same weights. Everything else (embeddings, norms, fp16-kept Linears) is copied byte for byte;
// config.json, the format's sidecar files and the companion files are written as the pipeline writes
// them. One Linear in memory at a time. Whether the target format can hold the run is checked before
// quantizing (conversionProblem), so a refusal costs nothing.

import fs from "node:fs";
import path from "node:path";
import { Checkpoint } from "../io/checkpoint.js";
import { ShardedWriter, atomicWriteFile } from "../io/writer.js";
import type { FormatSpec } from "../../formats/types.js";
import { packedGetter } from "../model/model.js";
import { companionFiles, layerSettings, outputConfig, skipReason, type QuantizePlan } from "./quantize.js";
import { overridesOf } from "./rules.js";

/**
 * Why `to` cannot hold what the run writes in `plan.format` (null: it can): outliers, per-module
 * overrides, or a Linear the run quantizes that `to` cannot hold with the same settings.
 */
export function conversionProblem(plan: Pick<QuantizePlan, "src" | "format" | "settings" | "rules" | "outlierFraction">, to: FormatSpec): string | null {
  if ((plan.outlierFraction ?? 0) > 0 && !to.holdsOutliers) return `${to.name} cannot hold outliers (recipe.quantize.outliers needs format quant4)`;
  const overrides = overridesOf(plan.rules ?? []);
  if (overrides.length > 0) {
    const no = to.canHoldOverrides(overrides);
    if (no) return `${to.name} cannot hold the per-module overrides (${no})`;
  }
  const a = plan.src.arch;
  const other = { ...plan, format: to };
  for (let b = 0; b < a.nLayers; b++)
    for (const l of a.linears) {
      const name = a.blockPrefix(b) + l.name;
      const here = skipReason(plan, l, name);
      const there = skipReason(other, l, name);
      if (here === null && there !== null) return `${to.name} cannot hold ${name} [${l.out}×${l.in}] as ${plan.format.name} does (${there})`;
    }
  return null;
}

/**
 * Linears the run keeps fp16 that `to` could have held: the converted output keeps them fp16 too (it
 * has exactly the quantized output's weights), where a run of its own would have quantized them.
 */
export function keptFp16Holdable(plan: Pick<QuantizePlan, "src" | "format" | "settings" | "rules">, to: FormatSpec): string[] {
  const a = plan.src.arch;
  const other = { ...plan, format: to };
  const names: string[] = [];
  for (let b = 0; b < a.nLayers; b++)
    for (const l of a.linears) {
      const name = a.blockPrefix(b) + l.name;
      if (skipReason(plan, l, name) !== null && skipReason(other, l, name) === null) names.push(name);
    }
  return names;
}

/**
 * Write `toDir` (created; must not exist or be empty) in format `to` from the finished output `fromDir`
 * written in `plan.format`. `skipped` = the run's fp16-kept Linears (as in its config).
 */
export function convertOutput(plan: QuantizePlan, fromDir: string, to: FormatSpec, toDir: string, skipped: string[]): void {
  const a = plan.src.arch;
  const from = plan.format;
  const ckpt = Checkpoint.open(fromDir);
  const writer = new ShardedWriter(toDir, { maxShardBytes: plan.maxShardBytes });
  try {
    // The packed Linears and the tensors each one stores (codes, scales, zeros, g_idx, bias…).
    const shapes = new Map<string, { out: number; in: number }>();
    for (let b = 0; b < a.nLayers; b++)
      for (const l of a.linears) {
        const name = a.blockPrefix(b) + l.name;
        if (from.isQuantized(name, (n) => ckpt.has(n))) shapes.set(name, { out: l.out, in: l.in });
      }
    const owner = (tensor: string): string | null => {
      const i = tensor.lastIndexOf(".");
      return i > 0 && shapes.has(tensor.slice(0, i)) ? tensor.slice(0, i) : null;
    };
    const get = packedGetter(ckpt);
    const done = new Set<string>();
    for (const n of ckpt.names()) {
      const prefix = owner(n);
      if (prefix === null) {
        const info = ckpt.info(n);
        writer.add({ name: n, dtype: info.dtype, shape: info.shape, data: ckpt.readRaw(n) });
        continue;
      }
      if (done.has(prefix)) continue;
      done.add(prefix);
      const s = layerSettings(plan, prefix);
      if (!s) throw new Error(`${fromDir}: ${prefix} is packed but the run's rules skip it`);
      const layer = from.unpack(prefix, get, s, shapes.get(prefix)!);
      for (const t of to.pack(layer)) writer.add(t);
    }
    writer.finish({ format: "pt", quantizer: "quant4" });
  } catch (e) {
    writer.abort();
    throw e;
  } finally {
    ckpt.close();
  }
  const target = { ...plan, format: to };
  atomicWriteFile(path.join(toDir, "config.json"), JSON.stringify(outputConfig(target, skipped), null, 2) + "\n");
  for (const [name, content] of Object.entries(to.sidecarFiles(plan.settings, skipped, overridesOf(plan.rules ?? []))))
    atomicWriteFile(path.join(toDir, name), content);
  for (const f of companionFiles(plan.src.dir)) fs.copyFileSync(path.join(plan.src.dir, f), path.join(toDir, f));
}
