// What `quant4 report` reads, validated with zod: an output directory (its quant4-manifest.json), a
// saved manifest, or a saved `quantize --json` result (the object the manifest embeds as `summary`).
// Also the shape of an `eval-ppl --json` result (baselines and evaluations). Every problem is a
// FileFormatError naming the file and, for a schema mismatch, the key. This module owns reading and
// validating inputs; what the report shows of them is src/report/document.ts.

import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { MANIFEST_FILE, manifestSchema, type Manifest } from "../pipeline/manifest.js";
import { pplProtocolSchema, type PplProtocol } from "../eval/perplexity.js";
import { FileFormatError } from "../util/errors.js";

const layerSchema = z
  .object({
    name: z.string().min(1),
    status: z.enum(["quantized", "skipped"]),
    reason: z.string().optional(),
    relError: z.number().nullable(),
    seconds: z.number(),
    bits: z.number().optional(),
  })
  .passthrough();
export type SummaryLayer = z.infer<typeof layerSchema>;

const protocolSchema = pplProtocolSchema;
export type ReportProtocol = PplProtocol;

/** `quantize --gate-text` record (in the --json result and the manifest). */
const gateSchema = z
  .object({
    passed: z.boolean(),
    text: z.string(),
    protocol: protocolSchema.optional(),
    protocolDescription: z.string().optional(),
    fpPpl: z.number().nullable(),
    ppl: z.number().nullable().optional(),
    increasePercent: z.number().nullable().optional(),
    maxIncreasePercent: z.number(),
    attempt: z.number().optional(),
  })
  .passthrough();
export type ReportGate = z.infer<typeof gateSchema>;

/** The object `quantize --json` prints after a run (fields the report uses; others are kept). */
export const summarySchema = z
  .object({
    model: z.string(),
    architecture: z.string(),
    blocks: z.number().int().nonnegative(),
    out: z.string().optional(),
    format: z.string(),
    scheme: z.string(),
    settings: z.object({ method: z.string(), bits: z.number(), groupSize: z.number(), sym: z.boolean(), actOrder: z.boolean().optional() }).passthrough(),
    calibration: z
      .object({ text: z.string().nullable(), tokens: z.number().optional(), nsamples: z.number(), seqlen: z.number(), seed: z.number() })
      .passthrough()
      .nullable(),
    report: z.object({ layers: z.array(layerSchema).min(1), totalSeconds: z.number(), peakRssBytes: z.number().optional() }).passthrough(),
    output: z
      .object({
        sourceBytes: z.number().nonnegative(),
        outputBytes: z.number().positive(),
        bitsPerQuantizedWeight: z.number().nullable(),
        bitsPerParameter: z.number(),
        parameters: z.number().optional(),
      })
      .passthrough(),
    warnings: z.array(z.string()).default([]),
    gate: gateSchema.optional(),
  })
  .passthrough();
export type Summary = z.infer<typeof summarySchema>;

/** An `eval-ppl --json` result. */
export const evalResultSchema = z
  .object({ model: z.string().optional(), text: z.string().optional(), ppl: z.number().positive(), protocol: protocolSchema.optional(), protocolDescription: z.string().optional() })
  .passthrough();
export type EvalResult = z.infer<typeof evalResultSchema>;

/** One configuration to report: where it came from, its summary, and the manifest when there is one. */
export interface ReportInput {
  /** The argument as given. */
  arg: string;
  /** The file actually read (the manifest inside a directory). */
  file: string;
  /** The output directory when known (the argument itself, or the summary's `out`/`report.outDir` if it exists). */
  dir: string | null;
  summary: Summary;
  manifest: Manifest | null;
}

function keyOf(issue: z.ZodError["issues"][number], prefix: string): string {
  const key = issue.path.map(String).join(".");
  return key ? `${prefix}.${key}` : prefix;
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FileFormatError(file, code === "ENOENT" ? "no such file or directory" : `cannot read it: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FileFormatError(file, `not valid JSON (${(e as Error).message})`);
  }
}

function parseSummary(file: string, obj: unknown, prefix: string): Summary {
  const r = summarySchema.safeParse(obj);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new FileFormatError(file, `not a quant4 manifest or quantize --json result: ${keyOf(i, prefix)}: ${i.message}`);
  }
  return r.data;
}

function fromManifest(arg: string, file: string, obj: unknown, dir: string | null): ReportInput {
  const r = manifestSchema.safeParse(obj);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new FileFormatError(file, `not a quant4 manifest: ${keyOf(i, "manifest")}: ${i.message}`);
  }
  const summary = parseSummary(file, r.data.summary, "manifest.summary");
  // The manifest's gate record is the authoritative one (a recipe's gate may live there only).
  if (r.data.gate && !summary.gate) {
    const g = gateSchema.safeParse(r.data.gate);
    if (g.success) summary.gate = g.data;
  }
  return { arg, file, dir, summary, manifest: r.data };
}

/** Read one report argument: an output directory (with its manifest) or a JSON file (manifest or quantize --json). */
export function readReportInput(arg: string): ReportInput {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(arg);
  } catch {
    throw new FileFormatError(arg, "no such file or directory (expected a quantize output directory, a quant4-manifest.json or a saved quantize --json result)");
  }
  if (stat.isDirectory()) {
    const file = path.join(arg, MANIFEST_FILE);
    if (!fs.existsSync(file))
      throw new FileFormatError(file, `not found: ${arg} has no quant4 manifest (not a quantize output, or written before manifests); pass a saved quantize --json result instead`);
    return fromManifest(arg, file, readJson(file), arg);
  }
  const obj = readJson(arg);
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw new FileFormatError(arg, "expected a JSON object (a quant4 manifest or a quantize --json result)");
  const o = obj as Record<string, unknown>;
  if ("manifestVersion" in o) {
    const dir = path.dirname(arg);
    return fromManifest(arg, arg, obj, path.basename(arg) === MANIFEST_FILE ? dir : null);
  }
  if (o["dryRun"] === true) throw new FileFormatError(arg, "is a quantize --dry-run plan: nothing was quantized, so there is nothing to report");
  if (o["written"] === false) throw new FileFormatError(arg, "is the result of a quantize run whose gate failed: nothing was written, so there is nothing to report");
  if ("ppl" in o && !("report" in o)) throw new FileFormatError(arg, "is an eval-ppl --json result, not a quantize result; pass it as --baseline (the source) or --eval (an output)");
  const summary = parseSummary(arg, obj, "result");
  const out = summary.out ?? (summary.report["outDir"] as string | undefined);
  const dir = out !== undefined && fs.existsSync(path.join(out, "config.json")) ? out : null;
  return { arg, file: arg, dir, summary, manifest: null };
}

/** Read an `eval-ppl --json` result file (for --baseline / --eval). */
export function readEvalResult(file: string, flag: string): EvalResult {
  const obj = readJson(file);
  const r = evalResultSchema.safeParse(obj);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new FileFormatError(file, `${flag}: not an eval-ppl --json result: ${keyOf(i, "result")}: ${i.message}`);
  }
  return r.data;
}
