// `quant4 quantize`: options → plan (validated, printable with --dry-run) → the pipeline → summary.

import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { resolveText, textEncodingSchema, type TextSource } from "../calibration/texts.js";
import { sampleWindows } from "../calibration/sampler.js";
import { VERSION } from "../version.js";
import { formatNames, getFormat, type FormatSpec } from "../../formats/index.js";
import { chooseFormat, getScheme, SCHEMES, schemeNames } from "../pipeline/schemes.js";
import { METHOD_NAMES, METHODS, type MethodName } from "../pipeline/methods.js";
import { AWQ_SCALE_TOKENS } from "../pipeline/awq.js";
import { overridesOf, parseDynamic, parseSkip, type ModuleRule } from "../pipeline/rules.js";
import { openModel } from "../model/model.js";
import { runQuantize, skipReason, type QuantizePlan, type QuantizeReport } from "../pipeline/quantize.js";
import { ActivationStore, passCacheBytes, spillsActivations, spillsPassCaches } from "../pipeline/activations.js";
import { BUDGET_FRACTION, blockWorkingSetBytes, defaultActivationBudget, readMemoryFacts, type MemoryFacts } from "../pipeline/memory.js";
import { Journal } from "../pipeline/journal.js";
import type { OutputMeasure } from "../pipeline/summary.js";
import { conversionProblem, keptFp16Holdable } from "../pipeline/convert.js";
import { MANIFEST_FILE } from "../pipeline/manifest.js";
import { loadRecipe, recipeKeyOf, recipeOptions, recipeOutputs, type LoadedRecipe } from "../pipeline/recipe.js";
import { publishOutputs, type ExtraOutput, type ManifestContext } from "./quantize-publish.js";
import type { LayerStat } from "../pipeline/journal.js";
import { settingsKeyOf } from "../pipeline/journal.js";
import { encodeCached, loadTokenizer } from "../tokenizer/index.js";
import { OutputError, UsageError } from "../util/errors.js";
import { progressMode, restoreCursor, startDualProgress, startStatus, type ProgressMode } from "../util/progress.js";
import type { Backend } from "../compute/backend.js";
import { action, EXIT_INTERRUPTED, writeStdout, resolveModelArg, deviceSchema, fmtBytes, intOpt, numOpt, parseOptions, printJson, setupBackend } from "./common.js";

/**
 * What feeds block i+1 during calibration. Measured (README "AWQ"): AWQ and AWQ+GPTQ do better on both
 * shared models when later blocks see the fp outputs, as llm-awq does; GPTQ's own error-aware
 * propagation (the quantized outputs) stays the default for GPTQ and RTN.
 */
function propagationOf(o: { propagate: "auto" | "quantized" | "fp"; method: MethodName }): "quantized" | "fp" {
  if (o.propagate !== "auto") return o.propagate;
  return METHODS[o.method].awq ? "fp" : "quantized";
}

/** commander collector for repeatable options. */
const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** "4GB", "500MB", "1.5GiB", "123" (bytes). */
export function parseSize(s: string, flag = "--max-shard-size"): number {
  const m = /^\s*([\d.]+)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$/i.exec(s);
  if (!m) throw new UsageError(`${flag} "${s}" is not a size (examples: 4GB, 500MB, 2GiB)`);
  const unit = (m[2] ?? "b").toLowerCase();
  const mult: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };
  const v = Number(m[1]) * mult[unit]!;
  if (!(v >= 1024)) throw new UsageError(`${flag} "${s}" is too small (minimum 1KiB)`);
  return Math.floor(v);
}

/**
 * The activation budget from --max-memory: a size (0 = always spill); none/inf = in memory whatever their size; absent or
 * auto = derived from the memory available (src/pipeline/memory.ts). QUANT4_AVAILABLE_MEMORY=<size>
 * replaces the detected available memory (tests, or a machine shared with other jobs).
 */
export function resolveMaxMemory(v: string | undefined, workingSetBytes: number, facts: () => MemoryFacts = memoryFacts): { bytes: number | null; why: string } {
  const s = v?.trim().toLowerCase();
  if (s === "none" || s === "inf" || s === "infinity") return { bytes: null, why: `--max-memory ${s}` };
  if (s === undefined || s === "auto") return defaultActivationBudget(facts(), workingSetBytes);
  if (s === "0") return { bytes: 0, why: "--max-memory 0: always spill" };
  return { bytes: parseSize(v!, "--max-memory"), why: "--max-memory" };
}

function memoryFacts(): MemoryFacts {
  const o = process.env["QUANT4_AVAILABLE_MEMORY"];
  if (o === undefined || o === "") return readMemoryFacts();
  const b = parseSize(o, "QUANT4_AVAILABLE_MEMORY");
  return { freeBytes: b, totalBytes: b, cgroup: null };
}

/**
 * What the run does with its calibration activations when they exceed the budget, said on stderr before
 * it starts (with --json too: it decides where gigabytes go); null when they stay in memory.
 */
export function spillNotice(plan: Pick<Plan, "src" | "calibrate" | "nsamples" | "seqlen" | "actDtype" | "maxMemoryBytes" | "memoryBudget" | "outDir">): string | null {
  const h = plan.src.arch.hidden;
  if (!plan.calibrate) return null;
  // The calibration passes' caches spill under the same budget: with the stores, or alone when only the two together exceed it.
  const caches = passCacheBytes(plan, h, plan.src.arch.intermediate);
  if (!spillsActivations(plan, h)) {
    if (!spillsPassCaches(plan, h, plan.src.arch.intermediate)) return null;
    return `the calibration passes' caches (${fmtBytes(caches)}) do not fit the memory budget of ${fmtBytes(plan.maxMemoryBytes!)} (${plan.memoryBudget}) beside the activations: ` +
      `spilling them to ${path.join(Journal.workDirFor(plan.outDir), "stage-*.bin")} (same results, more disk I/O); --max-memory none keeps them in memory`;
  }
  const one = ActivationStore.bytesFor(plan.nsamples, plan.seqlen, h, plan.actDtype);
  const half = ActivationStore.bytesFor(plan.nsamples, plan.seqlen, h, "fp16");
  const fp16Fits = plan.actDtype === "fp32" && 2 * half <= plan.maxMemoryBytes!;
  return (
    `calibration activations (2 × ${fmtBytes(one)} ${plan.actDtype}, ${plan.nsamples} × ${plan.seqlen} tokens) exceed the memory budget of ${fmtBytes(plan.maxMemoryBytes!)} ` +
    `(${plan.memoryBudget}): spilling them to ${path.join(Journal.workDirFor(plan.outDir), "activations-{a,b}.bin")}, one batch at a time (same results, more disk I/O); ` +
    (fp16Fits ? `--act-dtype fp16 would keep them in memory (2 × ${fmtBytes(half)}); ` : "") +
    `the calibration passes' caches (${fmtBytes(caches)}) spill beside them (stage-*.bin); --max-memory none keeps all of it in memory regardless`
  );
}

/**
 * Options shared by `quantize` and `sensitivity` (method, scheme, calibration, format…): declared once
 * here, as schema fields (methodOptionFields) and as commander options (addMethodOptions).
 */
const methodOptionFields = {
  method: z.enum(METHOD_NAMES as [MethodName, ...MethodName[]]).default("gptq"),
  propagate: z.enum(["auto", "quantized", "fp"]).default("auto"),
  outliers: numOpt().min(0).max(0.2).default(0),
  dynamic: z.array(z.string()).default([]),
  skip: z.array(z.string()).default([]),
  scheme: z.string().optional(),
  bits: z.coerce.number().int().refine((b) => [2, 3, 4, 8].includes(b), "must be 2, 3, 4 or 8").optional(),
  groupSize: z.coerce.number().int().refine((g) => g === -1 || g >= 1, "must be -1 (per row) or a positive integer").optional(),
  sym: z.boolean().optional(),
  actOrder: z.boolean().default(false),
  staticGroups: z.boolean().default(false),
  damp: numOpt().positive().max(1).default(0.01),
  blockSize: intOpt(1).default(128),
  awqTokens: intOpt(1).optional(),
  calib: z.string().optional(),
  textEncoding: textEncodingSchema,
  nsamples: intOpt(1).default(128),
  seqlen: intOpt(2).optional(),
  seed: intOpt(0).default(0),
  format: z.string().default("auto"),
  actDtype: z.enum(["fp32", "fp16"]).default("fp32"),
  maxMemory: z.string().optional(),
  json: z.boolean().default(false),
  device: deviceSchema,
  threads: intOpt(1).optional(),
};

const optionsSchema = z
  .object({
    ...methodOptionFields,
    maxShardSize: z.string().default("4GB"),
    resume: z.boolean().default(false),
    overwrite: z.boolean().default(false),
    dryRun: z.boolean().default(false),
    targetBits: numOpt().min(2).max(16).optional(),
    gateText: z.string().optional(),
    gateSeqlen: intOpt(2).optional(),
    gateMaxWindows: intOpt(1).optional(),
    gateMaxIncrease: numOpt().min(0).optional(),
    gateRetries: intOpt(0).default(3),
    recipe: z.string().optional(),
  })
  .strict();
export type QuantizeCliOptions = z.infer<typeof optionsSchema>;

function fileFingerprint(files: string[]): string[] {
  return files.map((f) => `${path.basename(f)}:${fs.statSync(f).size}:${fs.statSync(f).mtimeMs}`);
}

/** `a` is `b` or a directory above it. */
function isSameOrAncestor(a: string, b: string): boolean {
  const rel = path.relative(a, b);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

/**
 * Refuse output locations that cannot be written or whose replacement would destroy the input, before
 * anything is written: the output (or the nearest existing folder above it) must be a directory, and it
 * must not be, or contain, the model directory (--overwrite removes the old output).
 */
export function checkOutputLocation(modelDir: string, outDir: string, overwrite: boolean): void {
  const real = (p: string): string => {
    try {
      return fs.realpathSync(p);
    } catch {
      return p; // does not exist (yet)
    }
  };
  const out = path.resolve(outDir);
  const model = real(path.resolve(modelDir));
  if (isSameOrAncestor(out, model) || isSameOrAncestor(real(out), model))
    throw new UsageError(`the output directory ${outDir} must not be the model directory or contain it`);
  if (fs.existsSync(out)) {
    if (!fs.statSync(out).isDirectory()) throw new OutputError(outDir, "exists and is not a directory");
    if (fs.readdirSync(out).length > 0 && !overwrite) throw new UsageError(`${outDir} exists and is not empty; pass --overwrite to replace it`);
  }
  // The output and its <out>.partial work dir are created next to it: the nearest existing folder above must take them.
  let parent = path.dirname(out);
  while (!fs.existsSync(parent) && path.dirname(parent) !== parent) parent = path.dirname(parent);
  if (!fs.statSync(parent).isDirectory()) throw new OutputError(outDir, `cannot create it: ${parent} is not a directory`);
  try {
    fs.accessSync(parent, fs.constants.W_OK);
  } catch {
    throw new OutputError(outDir, `cannot create it: ${parent} is not writable (permission denied)`);
  }
}

/** Options only GPTQ uses: given with --method rtn they are a mistake, not something to ignore. */
const GPTQ_ONLY = ["actOrder", "staticGroups", "damp", "blockSize"] as const;
const flag = (k: string): string => `--${k.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}`;

/** Conflicting flags are errors; `explicit` holds the options the user typed. */
export function checkConflicts(o: QuantizeCliOptions, explicit: ReadonlySet<string>): void {
  if (!METHODS[o.method].gptq)
    for (const k of GPTQ_ONLY)
      if (explicit.has(k)) throw new UsageError(`${flag(k)} applies to --method gptq or awq-gptq only (${o.method} rounds each weight to the nearest grid point)`);
  if (!METHODS[o.method].awq && explicit.has("awqTokens")) throw new UsageError(`--awq-tokens applies to --method awq or awq-gptq only`);
  if (o.staticGroups && (o.groupSize ?? (o.scheme ? getScheme(o.scheme).groupSize : undefined)) === -1)
    throw new UsageError("--static-groups needs a --group-size (it has no effect per row)");
}

/** Bits, group size, symmetry and format from --scheme, explicit flags (which win) and the automatic choice. */
export function resolveScheme(
  o: QuantizeCliOptions,
  linears: readonly { out: number; in: number }[],
  accept?: (f: FormatSpec) => string | null,
): { bits: number; groupSize: number; sym: boolean; format: FormatSpec; formatWhy: string | null; scheme: string } {
  const base = o.scheme !== undefined ? getScheme(o.scheme) : undefined;
  const bits = o.bits ?? base?.bits ?? 4;
  const sym = o.sym ?? base?.sym ?? true;
  const fixedGroup = o.groupSize ?? base?.groupSize;
  const auto = o.format === "auto";
  const choice = chooseFormat(linears, { bits, sym, actOrder: o.actOrder }, { format: auto ? undefined : o.format, groupSize: fixedGroup, accept });
  if (choice.held === 0) {
    const settings = { bits, sym, actOrder: o.actOrder, groupSize: choice.groupSize };
    const reasons = [...new Set(linears.map((l) => choice.format.canHold(l, settings)))].slice(0, 3).join("; ");
    throw new UsageError(
      `${auto ? "no output format" : `format ${o.format}`} cannot hold any Linear of this model with ${bits}-bit weights${fixedGroup !== undefined ? `, group size ${fixedGroup}` : ""} (${reasons}); ` +
        `try another --group-size (-1 = per row, or a divisor of the layer widths)${auto ? "" : ", another --format"} or another --bits`,
    );
  }
  // Said only when quant4 chose something (the format, the group size, or both).
  const chose = auto || fixedGroup === undefined;
  const scheme = o.scheme ?? `w${bits}-${choice.groupSize === -1 ? "perrow" : `g${choice.groupSize}`}${sym ? "" : "-asym"}`;
  return { bits, groupSize: choice.groupSize, sym, format: choice.format, formatWhy: chose ? `automatic choice: ${choice.why}` : null, scheme };
}

/** Build and validate everything the run needs; nothing is written. */
export function buildPlan(
  modelDir: string,
  outDir: string,
  o: QuantizeCliOptions,
  explicit: ReadonlySet<string> = new Set(),
): QuantizePlan & { calibName: string | null; calibTokens: number; seed: number; formatWhy: string | null; scheme: string; memoryBudget: string } {
  checkConflicts(o, explicit);
  if (o.format !== "auto") getFormat(o.format); // an unknown name fails before the model is opened
  const src = openModel(modelDir);
  if (src.quant) throw new UsageError(`${modelDir} is already quantized (${src.quant.format.name}); quantize an fp16/bf16/fp32 checkpoint`);
  checkOutputLocation(modelDir, outDir, o.overwrite);
  const rules = [...o.skip.map(parseSkip), ...o.dynamic.map(parseDynamic)];
  const overrides = overridesOf(rules);
  const accept = (f: FormatSpec): string | null =>
    o.outliers > 0 && !f.holdsOutliers ? `cannot hold outliers (--outliers needs --format quant4)` : overrides.length > 0 ? f.canHoldOverrides(overrides) : null;
  const r = resolveScheme(o, Array.from({ length: src.arch.nLayers }, () => src.arch.linears).flat(), accept);
  const format = r.format;
  const seqlen = o.seqlen ?? Math.min(2048, src.arch.maxPositions);
  if (seqlen > src.arch.maxPositions) throw new UsageError(`--seqlen ${seqlen} exceeds the model's context of ${src.arch.maxPositions}`);
  // RTN needs no activations: it calibrates only when asked to (--calib), to measure output errors.
  // Outliers are chosen by activation saliency, so they need calibration too.
  const calibrate = METHODS[o.method].needsCalibration || o.calib !== undefined || o.outliers > 0;
  let windows: Int32Array = new Int32Array(0);
  let text: TextSource | null = null;
  let calibTokens = 0;
  if (calibrate) {
    const tok = loadTokenizer(modelDir);
    text = resolveText(o.calib ?? "c4", o.textEncoding);
    const ids = encodeCached(tok, text.text);
    calibTokens = ids.length;
    windows = sampleWindows(ids, o.nsamples, seqlen, o.seed, text.name);
  }
  const settings = {
    method: o.method,
    bits: r.bits,
    groupSize: r.groupSize,
    sym: r.sym,
    actOrder: o.actOrder,
    staticGroups: o.staticGroups,
    damp: o.damp,
    trueSequential: true,
  };
  // What defines the run for --resume, stored flat in the journal so a refusal names what differs.
  // BLAS results depend on the thread count, so a bit-identical resume needs the same one: part of it.
  const threads = o.threads ?? os.availableParallelism();
  const awqTokens = o.awqTokens ?? AWQ_SCALE_TOKENS;
  const sha = (b: string | Uint8Array) => crypto.createHash("sha256").update(b).digest("hex").slice(0, 16);
  const runSettings = {
    model: fileFingerprint(src.ckpt.files).join(", "),
    method: o.method, bits: r.bits, groupSize: r.groupSize, sym: r.sym, actOrder: o.actOrder, staticGroups: o.staticGroups, damp: o.damp,
    format: format.name, seqlen, nsamples: calibrate ? o.nsamples : 0, seed: o.seed, blockSize: o.blockSize, actDtype: o.actDtype, threads, propagate: propagationOf(o),
    outliers: o.outliers, rules: JSON.stringify(rules),
    // Only AWQ runs record it, so other runs' keys (and journals from before the option) are unchanged.
    ...(METHODS[o.method].awq ? { awqTokens } : {}),
    calib: text ? `sha256 ${sha(text.text)}` : "none",
    calibWindows: sha(new Uint8Array(windows.buffer, windows.byteOffset, windows.byteLength)),
  };
  const key = settingsKeyOf(runSettings);
  // Not part of the settings key: where activations live does not change results.
  const budget = calibrate
    ? resolveMaxMemory(o.maxMemory, blockWorkingSetBytes(src.arch, seqlen, METHODS[o.method].awq))
    : { bytes: null, why: "no calibration" };
  return {
    src,
    format,
    settings,
    windows,
    calibrate,
    nsamples: calibrate ? o.nsamples : 0,
    seqlen,
    actDtype: o.actDtype,
    blockSize: o.blockSize,
    maxShardBytes: parseSize(o.maxShardSize),
    maxMemoryBytes: budget.bytes,
    memoryBudget: budget.why,
    outDir,
    settingsKey: key,
    runSettings,
    resume: o.resume,
    overwrite: o.overwrite,
    propagate: propagationOf(o),
    awqTokens,
    rules,
    outlierFraction: o.outliers,
    calibName: text?.name ?? null,
    calibTokens,
    seed: o.seed,
    formatWhy: r.formatWhy,
    scheme: r.scheme,
    provenance: {
      version: VERSION,
      method: o.method,
      scheme: r.scheme,
      calibration: text ? { text: text.name, sha256: crypto.createHash("sha256").update(text.text, "utf8").digest("hex"), nsamples: o.nsamples, seqlen, seed: o.seed } : null,
    },
  };
}

export function describePlan(plan: ReturnType<typeof buildPlan>): Record<string, unknown> {
  const a = plan.src.arch;
  // Block 0's Linears as the example; the counts cover every block (--dynamic/--skip may differ per block).
  const layers = a.linears.map((l) => {
    const reason = skipReason(plan, l, a.blockPrefix(0) + l.name);
    return { name: l.name, shape: [l.out, l.in], quantized: reason === null, reason };
  });
  let quantizedLinears = 0;
  for (let b = 0; b < a.nLayers; b++) for (const l of a.linears) if (skipReason(plan, l, a.blockPrefix(b) + l.name) === null) quantizedLinears++;
  const actBytes = plan.nsamples * plan.seqlen * a.hidden * (plan.actDtype === "fp32" ? 4 : 2);
  const maxIn = Math.max(...a.linears.map((l) => l.in));
  const blockParams = a.linears.reduce((s, l) => s + l.out * l.in, 0);
  return {
    model: plan.src.dir,
    architecture: a.modelType,
    blocks: a.nLayers,
    out: plan.outDir,
    format: plan.format.name,
    formatChoice: plan.formatWhy,
    scheme: plan.scheme,
    settings: plan.settings,
    calibration: plan.calibrate
      ? { text: plan.calibName, sha256: plan.provenance?.calibration?.sha256 ?? null, tokens: plan.calibTokens, nsamples: plan.nsamples, seqlen: plan.seqlen, seed: plan.seed }
      : null,
    linearsPerBlock: layers,
    quantizedLinears,
    skippedLinears: a.nLayers * a.linears.length - quantizedLinears,
    rules: plan.rules ?? [],
    outlierFraction: plan.outlierFraction ?? 0,
    memoryEstimateBytes: {
      activations: 2 * actBytes,
      blockWeights: blockParams * 4,
      hessian: maxIn * maxIn * 4 * 2,
      blockWorkingSet: blockWorkingSetBytes(a, plan.seqlen, METHODS[plan.settings.method].awq),
    },
    activationBudgetBytes: plan.maxMemoryBytes,
    activationBudget: plan.memoryBudget,
    activationsSpilled: plan.calibrate && spillsActivations(plan, a.hidden),
  };
}

/** The dry-run plan for a terminal: one line per fact, one per Linear of a block. */
export function formatPlan(plan: ReturnType<typeof buildPlan>, d: ReturnType<typeof describePlan>): string {
  const a = plan.src.arch;
  const s = plan.settings;
  const mem = d["memoryEstimateBytes"] as Record<string, number>;
  const lines = [
    "plan (dry run, nothing written):",
    `  model        ${plan.src.dir} (${a.modelType}, ${a.nLayers} blocks, hidden ${a.hidden})`,
    `  output       ${plan.outDir} (${plan.format.name})`,
    `  method       ${s.method} ${s.bits}-bit, group size ${s.groupSize}, ${s.sym ? "symmetric" : "asymmetric"}` +
      `${s.actOrder ? ", act-order" : ""}${s.staticGroups ? ", static groups" : ""}${s.method === "gptq" ? `, damp ${s.damp}` : ""}`,
    plan.calibrate
      ? `  calibration  ${plan.nsamples} × ${plan.seqlen} tokens from "${plan.calibName}" (${plan.calibTokens} tokens), seed ${plan.seed}`
      : `  calibration  none (RTN rounds the weights directly; --calib would measure output errors)`,
    `  linears      ${d["quantizedLinears"]} quantized, ${d["skippedLinears"]} kept fp16`,
  ];
  for (const l of d["linearsPerBlock"] as { name: string; shape: number[]; reason: string | null }[])
    lines.push(`    ${l.name.padEnd(20)} [${l.shape.join("×")}]  ${l.reason === null ? "quantized" : `fp16: ${l.reason}`}`);
  lines.push(
    `  memory       activations ${fmtBytes(mem["activations"]!)} ${plan.actDtype}` +
      `${spillsActivations(plan, a.hidden) ? ` (spilled to disk: over the budget of ${fmtBytes(plan.maxMemoryBytes!)})` : ""}, ` +
      `per-block working set ≈ ${fmtBytes(mem["blockWorkingSet"]!)} (block weights ${fmtBytes(mem["blockWeights"]!)}, Hessians ${fmtBytes(mem["hessian"]!)})`,
    `  budget       ${plan.maxMemoryBytes === null ? "none (activations in memory)" : fmtBytes(plan.maxMemoryBytes)}: ${plan.memoryBudget}`,
  );
  return lines.join("\n") + "\n";
}

/**
 * The options `quantize` and `sensitivity` share (one declaration; parsed by the same schema). `calibHelp`
 * says how the command calibrates by default; `work` names where --max-memory spills.
 */
export function addMethodOptions(cmd: Command, text: { calibHelp: string; work: string; json: string }): Command {
  return cmd
    .option("--method <name>", `quantization algorithm: ${METHOD_NAMES.map((m) => `${m} (${METHODS[m].description})`).join("; ")}`, "gptq")
    .option("--scheme <name>", `named bits/group/symmetry setting: ${schemeNames().join(", ")} (see quantize --help); explicit flags override it`)
    .option("--bits <n>", "bits per weight: 2, 3, 4 or 8 (formats: gptq 2/3/4/8, compressed-tensors 4/8) (default: 4)")
    .option("--group-size <n>", "weights per scale along the input dim; -1 = one group per row (default: the largest of 128/64/32/per-row that holds the most Linears)")
    .option("--sym", "symmetric quantization (zero point fixed at 2^(bits-1)); the default")
    .option("--asym", "asymmetric min-max quantization")
    .option("--act-order", "GPTQ: process columns by decreasing Hessian diagonal (desc_act)", false)
    .option("--static-groups", "GPTQ: compute group scales up front from the unquantized weights", false)
    .option("--damp <fraction>", "GPTQ: dampening added to the Hessian diagonal, as a fraction of its mean", "0.01")
    .option("--block-size <n>", "GPTQ: lazy-batch block of columns", "128")
    .option("--awq-tokens <n>", `AWQ: calibration tokens the scale search runs on, at most (the first whole windows; default ${AWQ_SCALE_TOKENS}); more costs time in proportion`)
    .option("--outliers <fraction>", "keep this fraction of each Linear's most salient weights exactly in fp16 (e.g. 0.005); needs --format quant4 (auto picks it)", "0")
    .option("--dynamic <rule>", "per-module override, GPTQModel syntax: '[+:]<regex>=bits:8,group:64,sym:false' or '-:<regex>' (skip); regex re.match-ed on full module names; repeatable, first match wins", collect, [])
    .option("--skip <regex>", "keep matching modules fp16 (same as --dynamic '-:<regex>'); repeatable", collect, [])
    .option("--propagate <auto|quantized|fp>", "what feeds the next block during calibration: the quantized block's outputs (as GPTQ) or the fp block's (as llm-awq); auto = fp for AWQ methods (measured better on stories260K and brown-llama, README), quantized otherwise; with fp, --method awq runs no quantized pass (its per-Linear errors are measured on the fp block's inputs)", "auto")
    .option("--calib <name|file>", `calibration text: c4, wikitext2-valid, tinystories (bundled) or a .txt/.jsonl file (${text.calibHelp})`)
    .option("--text-encoding <utf8|latin1|utf16le>", "encoding of a --calib file (invalid UTF-8 or NUL bytes are refused; latin1 reads any bytes)", "utf8")
    .option("--nsamples <n>", "number of calibration windows", "128")
    .option("--seqlen <n>", "tokens per calibration window (default: min(2048, model context))")
    .option("--seed <n>", "seed of the window sampler", "0")
    .option("--format <name>", `output format: auto, ${formatNames().join(", ")} (auto: the one that holds the most Linears, said in the output)`, "auto")
    .option("--act-dtype <fp32|fp16>", "storage of calibration activations between blocks: fp16 halves their memory and disk traffic (results differ slightly: inputs rounded to fp16); use it when fp32 activations do not fit in memory and spilling is slow", "fp32")
    .option("--max-memory <size|auto|none>", `budget for calibration activations (both stores, 2 × nsamples × seqlen × hidden × 4 bytes in fp32); above it they are spilled to temp files in ${text.work} (same results). Default: ${Math.round(100 * BUDGET_FRACTION)}% of the available memory (free, or the cgroup limit) less the per-block working set; none keeps them in memory`)
    .option("--json", text.json, false)
    .option("--device <cpu|cuda>", "compute device", "cpu")
    .option("--threads <n>", "BLAS threads (default: all cores)");
}

/**
 * Parse a command's raw options (--sym/--asym folded into `sym`); `explicit` = the options typed on the
 * command line, and those a recipe set (`recipeKeys`).
 */
export function parseQuantOptions(raw: Record<string, unknown>, cmd: Command, recipeKeys: ReadonlySet<string> = new Set()): { o: QuantizeCliOptions; explicit: Set<string> } {
  const { asym, sym, ...rest } = raw;
  if (asym && sym) throw new UsageError("--sym and --asym contradict each other; give one");
  const o = parseOptions(optionsSchema, { ...rest, sym: asym ? false : sym ? true : undefined });
  // What the user typed (not commander defaults): explicit flags win over schemes, and conflict checks apply to them.
  const explicit = new Set([...Object.keys(raw).filter((k) => cmd.getOptionValueSource(k) === "cli"), ...recipeKeys]);
  return { o, explicit };
}

/**
 * The command line merged with a --recipe: every recipe key becomes the option it names unless that
 * option was typed on the command line (commander's value source "cli"); positional arguments win over
 * the recipe's model and out. Without --recipe, the arguments as given (both required).
 */
export function resolveRecipeArgs(
  specArg: string | undefined,
  outArg: string | undefined,
  raw: Record<string, unknown>,
  cmd: Command,
): { raw: Record<string, unknown>; spec: string; outputs: { dir: string; format: string | null }[]; recipe: LoadedRecipe | null; recipeKeys: Set<string> } {
  const file = raw["recipe"] as string | undefined;
  const recipe = file !== undefined ? loadRecipe(file) : null;
  const fromCli = (k: string): boolean => cmd.getOptionValueSource(k) === "cli";
  const merged = { ...raw };
  const recipeKeys = new Set<string>();
  if (recipe) {
    for (const [k, v] of Object.entries(recipeOptions(recipe.recipe))) {
      if (k === "sym") {
        if (fromCli("sym") || fromCli("asym")) continue;
        merged["sym"] = v === true ? true : undefined;
        merged["asym"] = v === false ? true : undefined;
      } else if (fromCli(k)) continue;
      else merged[k] = v;
      recipeKeys.add(k);
    }
  }
  const spec = specArg ?? recipe?.recipe.model;
  if (spec === undefined) throw new UsageError(`missing required argument 'model-dir'${recipe ? ` (${recipe.file} has no model key)` : ""}`);
  let outputs = recipe ? recipeOutputs(recipe.recipe) : [];
  if (outArg !== undefined) {
    if (outputs.length > 1)
      throw new UsageError(`${recipe!.file}: recipe.outputs lists ${outputs.length} output directories; give them in the recipe only, not as <out-dir> on the command line`);
    outputs = [{ dir: outArg, format: outputs[0]?.format ?? null }];
  }
  if (outputs.length === 0) throw new UsageError(`missing required argument 'out-dir'${recipe ? ` (${recipe.file} has neither out nor outputs)` : ""}`);
  if (outputs.length > 1 && fromCli("format"))
    throw new UsageError(`--format conflicts with ${recipe!.file}: recipe.outputs names a format for each of its ${outputs.length} outputs`);
  if (outputs.length > 1) merged["format"] = outputs[0]!.format;
  return { raw: merged, spec, outputs, recipe, recipeKeys };
}

/**
 * A recipe's outputs after the first: converted from the quantized one, so each format must hold exactly
 * what the first one holds (same Linears, bits, group size, symmetry, outliers, overrides).
 */
function checkExtraOutputs(plan: Plan, outs: readonly { dir: string; format: string | null }[], recipe: LoadedRecipe | null, modelDir: string, overwrite: boolean, json: boolean): ExtraOutput[] {
  const dirs = new Set([path.resolve(plan.outDir)]);
  return outs.map((x, i) => {
    const key = `${recipe?.file ?? "recipe"}: recipe.outputs[${i + 1}]`;
    if (x.format === null || x.format === "auto") throw new UsageError(`${key}.format: name the format of every output (auto chooses for one output only)`);
    const format = getFormat(x.format);
    if (dirs.has(path.resolve(x.dir))) throw new UsageError(`${key}.dir: ${x.dir} is already an output of this recipe`);
    dirs.add(path.resolve(x.dir));
    const no = conversionProblem(plan, format);
    if (no)
      throw new UsageError(
        `${key}: ${format.name} cannot share the calibration pass of ${plan.format.name} (${plan.settings.bits}-bit, ${plan.settings.groupSize === -1 ? "per row" : `group ${plan.settings.groupSize}`}, ${plan.settings.sym ? "sym" : "asym"}): ${no}; run it as a recipe of its own`,
      );
    checkOutputLocation(modelDir, x.dir, overwrite);
    const kept = keptFp16Holdable(plan, format);
    if (kept.length > 0 && !json)
      process.stderr.write(
        `quant4: note: ${x.dir} (${format.name}) keeps fp16 the ${kept.length} Linear${kept.length === 1 ? "" : "s"} ${plan.format.name} cannot hold (e.g. ${kept[0]}): converted outputs have exactly the quantized output's weights\n`,
      );
    return { dir: x.dir, format };
  });
}

export function registerQuantize(program: Command): void {
  const cmd = program
    .command("quantize")
    .description("Quantize every decoder Linear to INT4 (RTN, GPTQ, AWQ or AWQ+GPTQ) and write a packed checkpoint engines load")
    .argument("[model-dir]", "fp16/bf16/fp32 Hugging Face model directory or Hub id (required unless the --recipe names one)")
    .argument("[out-dir]", "output directory (written atomically; an interrupted run leaves <out-dir>.partial/ for --resume; required unless the --recipe names it)");
  addMethodOptions(cmd, {
    calibHelp: "default: c4 for GPTQ/AWQ; RTN calibrates only when given, to measure output errors, or for --target-bits/--gate-text, on c4",
    work: "<out-dir>.partial/",
    json: "print a JSON summary (per-layer error, time, peak memory) on stdout",
  })
    .option("--max-shard-size <size>", "split the output into shards of at most this size", "4GB")
    .option("--resume", "continue an interrupted run from its last finished block", false)
    .option("--overwrite", "replace a non-empty output directory", false)
    .option("--dry-run", "validate everything and print the plan; write nothing", false)
    .option("--target-bits <avg>", "mixed precision: raise the Linears whose extra bits lower the output error most (to 4, then 8 bits, or fp16 where the format cannot hold 8) until the average code bits per Linear weight reaches <avg> (fp16 counts 16); costs one extra calibration pass (a sensitivity run)")
    .option("--gate-text <name|file>", "quality gate: after quantizing, compare perplexity with the fp model on this text (bundled name or file); too high ⇒ raise the most sensitive Linears and quantize again")
    .option("--gate-max-increase <percent>", "gate: largest allowed perplexity increase over the fp model, in percent (needed with --gate-text)")
    .option("--gate-seqlen <n>", "gate: window length in tokens (default: min(2048, model context), as eval-ppl)")
    .option("--gate-max-windows <k>", "gate: score only the first k windows (default: the whole text)")
    .option("--gate-retries <n>", "gate: attempts after the first, each with more Linears raised", "3")
    .option("--recipe <file>", "every setting from a .json/.yaml recipe (quant4 recipe init writes one); flags given here override its keys; its outputs list gives several formats from one calibration pass")
    .addHelpText("after", () => `
Schemes (--scheme; explicit --bits/--group-size/--sym/--asym override their parts):
${Object.entries(SCHEMES).map(([n, sc]) => `  ${n.padEnd(15)} ${sc.bits}-bit, ${sc.groupSize === -1 ? "per row" : `group ${sc.groupSize}`}, ${sc.sym ? "sym" : "asym"}: ${sc.use}`).join("\n")}
Without --scheme and --group-size, quant4 uses 4-bit symmetric weights with the largest group size
(128, 64, 32, per row) at which an output format holds the most Linears; --format auto (the default)
picks that format and says why. Layers the chosen format cannot hold stay fp16 (listed as skipped).

Mixed precision and the quality gate (README "Sensitivity, --target-bits, the gate"):
  --target-bits <avg> first runs a sensitivity pass (the same pipeline, one extra calibration pass,
  nothing written) measuring each Linear's output error at --bits and at 4/8 bits, then raises the
  Linears with the best error reduction per extra bit until the average code bits per Linear weight
  (fp16 = 16) reaches <avg>; the raises are exact-name --dynamic rules written into the config.
  --gate-text evaluates the fp model (once) and each quantized attempt with eval-ppl's protocol; over
  --gate-max-increase, the most sensitive remaining Linears are raised and every block is quantized
  again (up to --gate-retries). Attempts are built in <out-dir>.gate-attempt-k/; only a passing one
  becomes <out-dir>, and its config.json records the gate under "quant4". A gate that never passes
  writes nothing and exits 1.

Recipes (--recipe; README "Recipes"): a JSON or YAML file with every setting (quant4 recipe init
writes a commented one). Flags typed on the command line override its keys. Its outputs list, e.g.
[{dir: out/gptq, format: gptq}, {dir: out/ct, format: compressed-tensors}], quantizes once and
converts the quantized layers to the other formats (exact). Every output gets quant4-manifest.json
(file hashes, options, results); quant4 verify <out-dir> checks it.

Examples:
  quant4 quantize models/stories260K out/s260k                 # GPTQ, automatic scheme and format
  quant4 quantize --recipe recipe.yaml                         # everything from the recipe
  quant4 quantize --recipe recipe.yaml --nsamples 32 --seed 1  # the recipe with two keys overridden
  quant4 quantize models/stories260K out/s260k-rtn --method rtn --scheme w4-perrow-asym
  quant4 quantize ./Llama-2-7b-hf out/llama2-7b-w4 --scheme w4-g128 --format gptq --nsamples 128 --seqlen 2048
  quant4 quantize ./Llama-2-7b-hf out/llama2-7b-w4 --resume    # after an interruption (Ctrl-C, crash)
  quant4 quantize ./Llama-2-7b-hf out/llama2-7b-mix --scheme w3-g128 --format gptq --target-bits 3.5
  quant4 quantize ./Llama-2-7b-hf out/llama2-7b-w4 --gate-text wikitext2 --gate-max-increase 5

Exit codes: 0 ok, 1 the quality gate failed (nothing written), 2 bad input or usage, 3 internal error,
130 interrupted (finished blocks are kept in <out-dir>.partial/; --resume continues).`)
    .action(
      action(async (specArg: string | undefined, outArg: string | undefined, raw0: Record<string, unknown>, cmd: Command) => {
        const r = resolveRecipeArgs(specArg, outArg, raw0, cmd);
        try {
          await quantizeAction(r, cmd);
        } catch (e) {
          throw r.recipe && e instanceof UsageError ? new UsageError(withRecipeKeys(e.message, r.recipeKeys, r.recipe.file)) : e;
        }
      }),
    );
}

/** A message naming options a recipe set (`--act-order`) says where: `(recipe.quantize.actOrder in r.yaml)`. */
function withRecipeKeys(message: string, recipeKeys: ReadonlySet<string>, file: string): string {
  const set = [...new Set(message.match(/--[a-z][a-z-]*/g) ?? [])]
    .map((f) => f.slice(2).replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase()))
    .filter((k) => recipeKeys.has(k) || (k === "asym" && recipeKeys.has("sym")));
  if (set.length === 0) return message;
  return `${message} (set by ${set.map((k) => `recipe.${recipeKeyOf(k === "asym" ? "sym" : k)}`).join(", ")} in ${file})`;
}

/** The quantize command once the command line and the recipe are merged. */
async function quantizeAction(r: ReturnType<typeof resolveRecipeArgs>, cmd: Command): Promise<void> {
  const { raw, spec, outputs, recipe } = r;
  const outDir = outputs[0]!.dir;
  let { o, explicit } = parseQuantOptions(raw, cmd, r.recipeKeys);
  const gate = o.gateText !== undefined;
  const tuned = gate || o.targetBits !== undefined;
  checkTunedOptions(o, explicit);
  if (outputs.length > 1 && tuned)
    throw new UsageError(
      `${recipe!.file}: recipe.outputs lists ${outputs.length} outputs, which share one calibration pass only without ${gate ? "the gate (gate / --gate-text)" : "--target-bits"}; give one output, or run the recipe once per output`,
    );
  // The sensitivity measurements need calibration inputs: RTN then calibrates too (on c4 unless --calib).
  if (tuned && o.calib === undefined && !METHODS[o.method].needsCalibration) o = { ...o, calib: "c4" };
  const modelDir = await resolveModelArg(spec, { json: o.json });
  const backend = setupBackend(o.device, o.threads);
  const mode = progressMode(o.json);
  const status = startStatus(mode);
  status.set(`reading ${modelDir} and ${o.calib ?? "the calibration text"}…`);
  let plan: ReturnType<typeof buildPlan>;
  let extras: ExtraOutput[];
  try {
    plan = buildPlan(modelDir, outDir, o, explicit);
    extras = checkExtraOutputs(plan, outputs.slice(1), recipe, modelDir, o.overwrite, o.json);
  } finally {
    status.stop();
  }
  const manifestCtx: ManifestContext = { spec, modelDir, recipe, options: o };
  if (plan.formatWhy && !o.json) process.stderr.write(`quant4: ${plan.formatWhy}\n`);
  if (tuned) {
    // --target-bits and the gate: src/cli/quantize-tuned.ts (loaded only for them).
    const { quantizeTuned } = await import("./quantize-tuned.js");
    await quantizeTuned(plan, o, { modelDir, backend, mode, manifest: manifestCtx });
    return;
  }
  if (o.dryRun) {
    const d = describePlan(plan);
    const also = extras.map((x) => ({ out: x.dir, format: x.format.name, producedBy: "converted" }));
    if (o.json) printJson({ dryRun: true, ...d, ...(extras.length > 0 ? { outputs: also } : {}) });
    else writeStdout(formatPlan(plan, d) + extras.map((x) => `  also        ${x.dir} (${x.format.name}, converted from the quantized layers)\n`).join(""));
    return;
  }
  const say = (m: string): void => {
    if (!o.json) process.stderr.write(`quant4: ${m}\n`);
  };
  let published: Awaited<ReturnType<typeof publishOutputs>> | null = null;
  await runWithProgress(plan, backend, o.json, mode, {}, {
    extraFiles: [MANIFEST_FILE],
    run: async (staging, report, warnings) => {
      published = await publishOutputs(manifestCtx, plan, staging, report, warnings, extras, say);
    },
  });
  const p = published as Awaited<ReturnType<typeof publishOutputs>> | null;
  if (!p) throw new Error("the pipeline finished without publishing its output");
  if (o.json) {
    printJson(extras.length === 0 ? p.summary : { ...p.summary, outputs: p.conversions.map((c) => ({ out: c.dir, format: c.format, seconds: c.seconds, output: c.summary["output"] })), timing: p.timing });
  } else {
    const s = p.summary as { report: QuantizeReport; output: OutputMeasure; worstLayers: LayerStat[] };
    let text = formatSummary(plan, s.report, s.output, s.worstLayers);
    for (const c of p.conversions) {
      const m = c.summary["output"] as OutputMeasure;
      text += `wrote ${c.dir} (${c.format}, converted from ${plan.format.name}: same codes, scales and zeros) ${fmtBytes(m.outputBytes)}, ${m.bitsPerQuantizedWeight === null ? "-" : m.bitsPerQuantizedWeight.toFixed(3)} bits per quantized weight\n`;
    }
    if (p.conversions.length > 0)
      text += `  timing       quantize ${p.timing.quantizeSeconds.toFixed(1)} s (one calibration pass); ${p.conversions.map((c) => `conversion to ${c.format} ${c.seconds.toFixed(1)} s`).join(", ")}\n`;
    writeStdout(text);
  }
}

/** Gate and budget flags need each other as documented; refused one line each (exit 2). */
function checkTunedOptions(o: QuantizeCliOptions, explicit: ReadonlySet<string>): void {
  const gateOnly = (["gateSeqlen", "gateMaxWindows", "gateMaxIncrease", "gateRetries"] as const).filter((k) => explicit.has(k));
  if (o.gateText === undefined && gateOnly.length > 0) throw new UsageError(`${flag(gateOnly[0]!)} needs --gate-text`);
  if (o.gateText !== undefined && o.gateMaxIncrease === undefined)
    throw new UsageError("--gate-text needs --gate-max-increase <percent> (the largest perplexity increase over the fp model that passes)");
  if (o.targetBits !== undefined && o.bits !== undefined && o.targetBits < o.bits)
    throw new UsageError(`--target-bits ${o.targetBits} is below --bits ${o.bits}: the budget only raises Linears above the base width`);
}

export type Plan = ReturnType<typeof buildPlan>;

/**
 * The same run with other per-module rules, output, probes or flags: the settings that define the run
 * for --resume (the rules among them) are rehashed, nothing else is recomputed (no second tokenization).
 */
export function derivePlan(
  plan: Plan,
  change: { outDir?: string; rules?: ModuleRule[]; probeBits?: number[]; dryOutput?: boolean; overwrite?: boolean; resume?: boolean },
): Plan {
  const rules = change.rules ?? plan.rules ?? [];
  const runSettings = { ...plan.runSettings!, rules: JSON.stringify(rules) };
  return { ...plan, ...change, rules, runSettings, settingsKey: settingsKeyOf(runSettings) };
}

/**
 * One pipeline run with the progress bars, Ctrl-C handling (stop between Linears, keep finished blocks
 * for --resume; a second Ctrl-C exits at once) and the warnings collected (one per module kind).
 */
export async function runWithProgress(
  plan: Plan,
  backend: Backend,
  json: boolean,
  mode: ProgressMode,
  say: { warnings?: boolean } = {},
  /** Called with the staged output before it is moved into place (the manifest, conversions: quantize-publish.ts). */
  publish?: { extraFiles: string[]; run(staging: string, report: QuantizeReport, warnings: string[]): Promise<void> },
): Promise<{ report: QuantizeReport; warnings: string[] }> {
  const a = plan.src.arch;
  const bars = startDualProgress(mode, "blocks", a.nLayers);
  let inner = bars.inner("layers", a.linears.length);
  const warnings: string[] = [];
  let interrupted = false;
  const onSigint = (): void => {
    if (interrupted) {
      bars.stop();
      restoreCursor();
      process.stderr.write("\nquant4: interrupted again; exiting now (finished blocks are kept for --resume)\n");
      process.exit(EXIT_INTERRUPTED);
    }
    interrupted = true;
  };
  process.on("SIGINT", onSigint);
  const unique = (): string[] => [...new Set(warnings.map((w) => w.replace(/\.layers\.\d+\./, ".layers.*.")))];
  const spill = spillNotice(plan);
  if (spill && say.warnings !== false) process.stderr.write(`quant4: ${spill}\n`);
  let report: QuantizeReport;
  try {
    report = await runQuantize(plan, backend, {
      onBlockStart: (i) => {
        inner = bars.inner(`block ${i}`, a.linears.length);
      },
      onLayerDone: (_i, stat, done) => inner.update(done, { info: stat.name }),
      onBlockDone: (i) => bars.outer.update(i + 1),
      onWarning: (m) => warnings.push(m),
      onResume: (k, n) => {
        if (!json) process.stderr.write(`quant4: resuming at block ${k}/${n} (blocks before it are reused from the interrupted run)\n`);
      },
      afterBlockJournaled: (i) => {
        // Test hooks: simulate a crash (kill -9) or a Ctrl-C right after block i is journaled.
        if (process.env["QUANT4_KILL_AFTER_BLOCK"] === String(i)) process.kill(process.pid, "SIGKILL");
        if (process.env["QUANT4_SIGINT_AFTER_BLOCK"] === String(i)) process.kill(process.pid, "SIGINT");
      },
      shouldStop: () => interrupted,
      ...(publish
        ? {
            beforePublish: {
              extraFiles: publish.extraFiles,
              run: async (staging: string, r: QuantizeReport) => {
                bars.stop();
                await publish.run(staging, r, unique());
              },
            },
          }
        : {}),
    });
  } finally {
    process.off("SIGINT", onSigint);
    bars.stop();
    restoreCursor();
  }
  const uniqueWarnings = unique();
  if (!json && say.warnings !== false) for (const w of uniqueWarnings) process.stderr.write(`quant4: warning: ${w}\n`);
  return { report, warnings: uniqueWarnings };
}

/** The human summary after a run: what was written, how big, how good, how long. */
export function formatSummary(plan: ReturnType<typeof buildPlan>, report: QuantizeReport, m: OutputMeasure, worst: LayerStat[]): string {
  const s = plan.settings;
  const q = report.layers.filter((l) => l.status === "quantized");
  const lines = [
    `wrote ${plan.outDir} (${plan.format.name}, ${s.method} ${s.bits}-bit ${s.groupSize === -1 ? "per-row" : `g${s.groupSize}`} ${s.sym ? "sym" : "asym"}${s.actOrder ? " act-order" : ""})` +
      (report.resumedFromBlock ? ` (resumed at block ${report.resumedFromBlock})` : ""),
    `  linears      ${q.length} quantized, ${report.skipped.length} kept fp16`,
    `  size         ${fmtBytes(m.sourceBytes)} → ${fmtBytes(m.outputBytes)} (${(m.sourceBytes / m.outputBytes).toFixed(2)}× smaller)`,
    `  bits/weight  ${m.bitsPerQuantizedWeight === null ? "-" : m.bitsPerQuantizedWeight.toFixed(3)} per quantized weight (codes, scales, zeros, g_idx as written); ` +
      `${m.bitsPerParameter.toFixed(2)} per parameter overall`,
  ];
  if (worst.length > 0) {
    const meanErr = q.reduce((a, l) => a + (l.relError ?? 0), 0) / Math.max(1, q.length);
    lines.push(`  output error mean ${meanErr.toExponential(3)} (relative, ‖(W−Q)X‖²/‖WX‖² on the calibration inputs); highest:`);
    for (const l of worst) lines.push(`    ${l.relError!.toExponential(3)}  ${l.name}`);
  } else {
    lines.push(`  output error not measured (RTN without calibration; pass --calib to measure it)`);
  }
  lines.push(`  time         ${report.totalSeconds.toFixed(1)} s, peak RSS ${fmtBytes(report.peakRssBytes)}`);
  return lines.join("\n") + "\n";
}
