// What `quantize` does to a finished output before it is moved into place: the summary object
// (`--json`'s, also the manifest's `summary`), the extra outputs of a recipe (converted from the
// quantized one: src/pipeline/convert.ts) and every output's quant4-manifest.json
// (src/pipeline/manifest.ts). Called from the pipeline's beforePublish hook, so the manifest is part of
// the atomic output; the converted outputs are moved into place first, each with its own manifest.

import fs from "node:fs";
import path from "node:path";
import type { FormatSpec } from "../../formats/types.js";
import { convertOutput } from "../pipeline/convert.js";
import {
  hashFiles,
  hashOutputDir,
  MANIFEST_FILE,
  MANIFEST_VERSION,
  writeManifest,
  type Manifest,
  type ManifestFile,
  type ManifestGate,
} from "../pipeline/manifest.js";
import { outputConfig, type QuantizeReport } from "../pipeline/quantize.js";
import type { LoadedRecipe } from "../pipeline/recipe.js";
import { measureOutput, worstLayers } from "../pipeline/summary.js";
import type { ModelSource } from "../model/model.js";
import { OutputError } from "../util/errors.js";
import { VERSION } from "../version.js";
import { describePlan, type Plan, type QuantizeCliOptions } from "./quantize.js";

/** What the manifest says about where the run came from. */
export interface ManifestContext {
  /** The model argument as given (directory or Hub id). */
  spec: string;
  modelDir: string;
  recipe: LoadedRecipe | null;
  options: QuantizeCliOptions;
}

/** A recipe output beyond the first: converted from the quantized one. */
export interface ExtraOutput {
  dir: string;
  format: FormatSpec;
}

export interface ConversionResult {
  dir: string;
  format: string;
  seconds: number;
  /** The --json object a run writing only this output would print. */
  summary: Record<string, unknown>;
}

/** The source checkpoint's weights and configs, hashed once per process. */
const sourceCache = new Map<string, Promise<ManifestFile[]>>();
function sourceFiles(src: ModelSource): Promise<ManifestFile[]> {
  let p = sourceCache.get(src.dir);
  if (!p) {
    const names = new Set(src.ckpt.files.map((f) => path.relative(src.dir, f).split(path.sep).join("/")));
    for (const extra of ["config.json", "model.safetensors.index.json"]) if (fs.existsSync(path.join(src.dir, extra))) names.add(extra);
    p = hashFiles(src.dir, [...names].sort());
    sourceCache.set(src.dir, p);
  }
  return p;
}

/** The summary object `quantize --json` prints (and the manifest embeds) for an output in `dir` (read from there). */
export function summaryOf(plan: Plan, dir: string, report: QuantizeReport, warnings: string[]): Record<string, unknown> {
  const measured = measureOutput(plan.src.ckpt.files, dir, plan.format, outputConfig(plan, report.skipped).quantization_config, plan.src.arch);
  return { ...describePlan(plan), report, output: measured, worstLayers: worstLayers(report.layers), warnings };
}

const posixRel = (from: string, to: string): string => path.relative(path.resolve(from), path.resolve(to)).split(path.sep).join("/") || ".";

/** Every output of the run as the manifest in `self` lists it (dirs relative to `self`). */
interface OutputRecord {
  dir: string;
  format: string;
  producedBy: "quantized" | "converted";
  files: ManifestFile[];
}

export async function manifestFor(
  ctx: ManifestContext,
  plan: Plan,
  self: string,
  outputs: readonly OutputRecord[],
  summary: Record<string, unknown>,
  extra: { gate?: ManifestGate | null; timing?: Manifest["timing"] } = {},
): Promise<Manifest> {
  const d = describePlan(plan);
  const hub = path.resolve(ctx.spec) !== path.resolve(ctx.modelDir) && !fs.existsSync(ctx.spec);
  return {
    manifestVersion: MANIFEST_VERSION,
    quant4Version: VERSION,
    createdAt: new Date().toISOString(),
    recipe: ctx.recipe ? { file: ctx.recipe.file, sha256: ctx.recipe.sha256, content: ctx.recipe.recipe } : null,
    options: { ...ctx.options, out: plan.outDir },
    source: { model: ctx.spec, dir: ctx.modelDir, hubId: hub ? ctx.spec : null, files: await sourceFiles(plan.src) },
    calibration: (d["calibration"] as Manifest["calibration"]) ?? null,
    outputs: outputs.map((o) => ({ dir: posixRel(self, o.dir), format: o.format, producedBy: o.producedBy, files: o.files })),
    summary,
    gate: extra.gate ?? null,
    timing: extra.timing ?? null,
  };
}

/** Move a converted output into place (no replacing a non-empty directory without --overwrite). */
function moveIntoPlace(staging: string, outDir: string, overwrite: boolean): void {
  try {
    if (overwrite && fs.existsSync(outDir)) fs.rmSync(outDir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(path.resolve(outDir)), { recursive: true });
    fs.renameSync(staging, outDir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST") throw new OutputError(outDir, `appeared while this run was writing it and is not empty; pass --overwrite to replace it`);
    throw new OutputError(outDir, `could not move the converted output ${staging} into place: ${(e as Error).message}`);
  }
}

/**
 * The pipeline's beforePublish for `quantize`: converts the extra outputs from the staged quantized
 * output, writes every manifest, moves the converted outputs into place. Returns the primary summary,
 * the conversions and the timing.
 */
export async function publishOutputs(
  ctx: ManifestContext,
  plan: Plan,
  staging: string,
  report: QuantizeReport,
  warnings: string[],
  extras: readonly ExtraOutput[],
  say: (m: string) => void,
): Promise<{ summary: Record<string, unknown>; conversions: ConversionResult[]; timing: NonNullable<Manifest["timing"]> }> {
  const summary = summaryOf(plan, staging, report, warnings);
  const conversions: (ConversionResult & { staging: string; plan: Plan })[] = [];
  for (const x of extras) {
    const tmp = `${path.resolve(x.dir)}.convert.partial`;
    fs.rmSync(tmp, { recursive: true, force: true });
    say(`converting to ${x.format.name}: ${x.dir} (from the quantized layers; no second calibration pass)`);
    const t0 = performance.now();
    convertOutput(plan, staging, x.format, tmp, report.skipped);
    const seconds = (performance.now() - t0) / 1000;
    const p2: Plan = { ...plan, format: x.format, outDir: x.dir, formatWhy: null };
    const files = [...fs.readdirSync(tmp), MANIFEST_FILE].sort();
    conversions.push({ dir: x.dir, format: x.format.name, seconds, summary: summaryOf(p2, tmp, { ...report, outDir: x.dir, files }, warnings), staging: tmp, plan: p2 });
  }
  const quantizeSeconds = report.totalSeconds;
  const convSeconds = conversions.reduce((s, c) => s + c.seconds, 0);
  const timing = {
    quantizeSeconds,
    conversions: conversions.map((c) => ({ format: c.format, dir: c.dir, seconds: c.seconds })),
    totalSeconds: quantizeSeconds + convSeconds,
  };
  const records: OutputRecord[] = [{ dir: plan.outDir, format: plan.format.name, producedBy: "quantized", files: await hashOutputDir(staging) }];
  for (const c of conversions) records.push({ dir: c.dir, format: c.format, producedBy: "converted", files: await hashOutputDir(c.staging) });
  try {
    for (const c of conversions) {
      writeManifest(c.staging, await manifestFor(ctx, c.plan, c.dir, records, c.summary, { timing }));
      moveIntoPlace(c.staging, c.dir, ctx.options.overwrite);
    }
  } finally {
    for (const c of conversions) fs.rmSync(c.staging, { recursive: true, force: true });
  }
  writeManifest(staging, await manifestFor(ctx, plan, plan.outDir, records, summary, { timing }));
  return { summary, conversions: conversions.map(({ staging: _s, plan: _p, ...c }) => c), timing };
}

/** The manifest of a single output already complete in `dir` (the gate's passing attempt), written into it. */
export async function writeSingleManifest(ctx: ManifestContext, plan: Plan, dir: string, summary: Record<string, unknown>, gate: ManifestGate | null, quantizeSeconds: number): Promise<void> {
  const records: OutputRecord[] = [{ dir: plan.outDir, format: plan.format.name, producedBy: "quantized", files: await hashOutputDir(dir) }];
  // `records[0].dir` is the final directory: the manifest lists its own output as ".".
  writeManifest(dir, await manifestFor(ctx, plan, plan.outDir, records, summary, { gate, timing: { quantizeSeconds, conversions: [], totalSeconds: quantizeSeconds } }));
}
