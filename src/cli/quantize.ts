// `quant4 quantize`: options → plan (validated, printable with --dry-run) → the pipeline → summary.

import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { resolveText, textEncodingSchema } from "../calibration/texts.js";
import { sampleWindows } from "../calibration/sampler.js";
import { formatNames, getFormat } from "../../formats/index.js";
import { openModel } from "../model/model.js";
import { runQuantize, skipReason, type QuantizePlan, type QuantizeReport } from "../pipeline/quantize.js";
import { settingsKeyOf } from "../pipeline/journal.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { OutputError, UsageError } from "../util/errors.js";
import { progressEnabled, startDualProgress } from "../util/progress.js";
import { action, resolveModelArg, deviceSchema, fmtBytes, intOpt, numOpt, parseOptions, printJson, setupBackend } from "./common.js";

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

const optionsSchema = z
  .object({
    method: z.enum(["rtn", "gptq"]).default("gptq"),
    bits: z.coerce.number().int().refine((b) => [2, 3, 4, 8].includes(b), "must be 2, 3, 4 or 8").default(4),
    groupSize: z.coerce.number().int().refine((g) => g === -1 || g >= 1, "must be -1 (per row) or a positive integer").default(128),
    sym: z.boolean().default(true),
    actOrder: z.boolean().default(false),
    staticGroups: z.boolean().default(false),
    damp: numOpt().positive().max(1).default(0.01),
    blockSize: intOpt(1).default(128),
    calib: z.string().default("c4"),
    textEncoding: textEncodingSchema,
    nsamples: intOpt(1).default(128),
    seqlen: intOpt(2).optional(),
    seed: intOpt(0).default(0),
    format: z.string().default("gptq"),
    actDtype: z.enum(["fp32", "fp16"]).default("fp32"),
    maxShardSize: z.string().default("4GB"),
    maxMemory: z.string().optional(),
    resume: z.boolean().default(false),
    overwrite: z.boolean().default(false),
    json: z.boolean().default(false),
    dryRun: z.boolean().default(false),
    device: deviceSchema,
    threads: intOpt(1).optional(),
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
function checkOutputLocation(modelDir: string, outDir: string, overwrite: boolean): void {
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

/** Build and validate everything the run needs; nothing is written. */
export function buildPlan(
  modelDir: string,
  outDir: string,
  o: QuantizeCliOptions,
): QuantizePlan & { calibName: string; calibTokens: number; seed: number } {
  const format = getFormat(o.format);
  const src = openModel(modelDir);
  if (src.quant) throw new UsageError(`${modelDir} is already quantized (${src.quant.format.name}); quantize an fp16/bf16/fp32 checkpoint`);
  checkOutputLocation(modelDir, outDir, o.overwrite);
  const seqlen = o.seqlen ?? Math.min(2048, src.arch.maxPositions);
  if (seqlen > src.arch.maxPositions) throw new UsageError(`--seqlen ${seqlen} exceeds the model's context of ${src.arch.maxPositions}`);
  if (o.staticGroups && o.groupSize === -1) throw new UsageError("--static-groups needs a --group-size (it has no effect per row)");
  const tok = loadTokenizer(modelDir);
  const text = resolveText(o.calib, o.textEncoding);
  const ids = tok.encode(text.text);
  const windows = sampleWindows(ids, o.nsamples, seqlen, o.seed, text.name);
  const settings = {
    method: o.method,
    bits: o.bits,
    groupSize: o.groupSize,
    sym: o.sym,
    actOrder: o.actOrder,
    staticGroups: o.staticGroups,
    damp: o.damp,
    trueSequential: true,
  };
  const held = src.arch.linears.filter((l) => format.canHold({ out: l.out, in: l.in }, settings) === null);
  if (held.length === 0) {
    const reasons = [...new Set(src.arch.linears.map((l) => format.canHold({ out: l.out, in: l.in }, settings)))].join("; ");
    throw new UsageError(
      `format ${format.name} cannot hold any Linear of this model with bits ${o.bits}, group size ${o.groupSize} (${reasons}); ` +
        `try another --group-size (e.g. -1 or a divisor of the layer widths) or --format ${formatNames().filter((f) => f !== format.name).join("/")}`,
    );
  }
  // What defines the run for --resume, stored flat in the journal so a refusal names what differs.
  // BLAS results depend on the thread count, so a bit-identical resume needs the same one: part of it.
  const threads = o.threads ?? os.availableParallelism();
  const sha = (b: string | Uint8Array) => crypto.createHash("sha256").update(b).digest("hex").slice(0, 16);
  const runSettings = {
    model: fileFingerprint(src.ckpt.files).join(", "),
    method: o.method, bits: o.bits, groupSize: o.groupSize, sym: o.sym, actOrder: o.actOrder, staticGroups: o.staticGroups, damp: o.damp,
    format: format.name, seqlen, nsamples: o.nsamples, seed: o.seed, blockSize: o.blockSize, actDtype: o.actDtype, threads,
    calib: `sha256 ${sha(text.text)}`,
    calibWindows: sha(new Uint8Array(windows.buffer, windows.byteOffset, windows.byteLength)),
  };
  const key = settingsKeyOf(runSettings);
  return {
    src,
    format,
    settings,
    windows,
    nsamples: o.nsamples,
    seqlen,
    actDtype: o.actDtype,
    blockSize: o.blockSize,
    maxShardBytes: parseSize(o.maxShardSize),
    maxMemoryBytes: o.maxMemory !== undefined ? parseSize(o.maxMemory, "--max-memory") : null,
    outDir,
    settingsKey: key,
    runSettings,
    resume: o.resume,
    overwrite: o.overwrite,
    calibName: text.name,
    calibTokens: ids.length,
    seed: o.seed,
  };
}

export function describePlan(plan: ReturnType<typeof buildPlan>): Record<string, unknown> {
  const a = plan.src.arch;
  const layers = a.linears.map((l) => {
    const reason = skipReason(plan, l);
    return { name: l.name, shape: [l.out, l.in], quantized: reason === null, reason };
  });
  const actBytes = plan.nsamples * plan.seqlen * a.hidden * (plan.actDtype === "fp32" ? 4 : 2);
  const maxIn = Math.max(...a.linears.map((l) => l.in));
  const blockParams = a.linears.reduce((s, l) => s + l.out * l.in, 0);
  return {
    model: plan.src.dir,
    architecture: a.modelType,
    blocks: a.nLayers,
    out: plan.outDir,
    format: plan.format.name,
    settings: plan.settings,
    calibration: { text: plan.calibName, tokens: plan.calibTokens, nsamples: plan.nsamples, seqlen: plan.seqlen, seed: plan.seed },
    linearsPerBlock: layers,
    quantizedLinears: layers.filter((l) => l.quantized).length * a.nLayers,
    skippedLinears: layers.filter((l) => !l.quantized).length * a.nLayers,
    memoryEstimateBytes: { activations: 2 * actBytes, blockWeights: blockParams * 4, hessian: maxIn * maxIn * 4 * 2 },
  };
}

/** The dry-run plan for a terminal: one line per fact, one per Linear of a block. */
function formatPlan(plan: ReturnType<typeof buildPlan>, d: ReturnType<typeof describePlan>): string {
  const a = plan.src.arch;
  const s = plan.settings;
  const mem = d["memoryEstimateBytes"] as Record<string, number>;
  const lines = [
    "plan (dry run, nothing written):",
    `  model        ${plan.src.dir} (${a.modelType}, ${a.nLayers} blocks, hidden ${a.hidden})`,
    `  output       ${plan.outDir} (${plan.format.name})`,
    `  method       ${s.method} ${s.bits}-bit, group size ${s.groupSize}, ${s.sym ? "symmetric" : "asymmetric"}` +
      `${s.actOrder ? ", act-order" : ""}${s.staticGroups ? ", static groups" : ""}${s.method === "gptq" ? `, damp ${s.damp}` : ""}`,
    `  calibration  ${plan.nsamples} × ${plan.seqlen} tokens from "${plan.calibName}" (${plan.calibTokens} tokens), seed ${plan.seed}`,
    `  linears      ${d["quantizedLinears"]} quantized, ${d["skippedLinears"]} kept fp16`,
  ];
  for (const l of d["linearsPerBlock"] as { name: string; shape: number[]; reason: string | null }[])
    lines.push(`    ${l.name.padEnd(20)} [${l.shape.join("×")}]  ${l.reason === null ? "quantized" : `fp16: ${l.reason}`}`);
  lines.push(
    `  memory       activations ${fmtBytes(mem["activations"]!)}${plan.maxMemoryBytes !== null && mem["activations"]! > plan.maxMemoryBytes ? " (spilled to disk)" : ""}, ` +
      `block weights ${fmtBytes(mem["blockWeights"]!)}, Hessians ${fmtBytes(mem["hessian"]!)}`,
  );
  return lines.join("\n") + "\n";
}

export function registerQuantize(program: Command): void {
  program
    .command("quantize")
    .description("Quantize every decoder Linear to INT4 (RTN or GPTQ) and write a packed checkpoint engines load")
    .argument("<model-dir>", "fp16/bf16/fp32 Hugging Face model directory")
    .argument("<out-dir>", "output directory (written atomically; an interrupted run leaves <out-dir>.partial/ for --resume)")
    .option("--method <rtn|gptq>", "quantization algorithm", "gptq")
    .option("--bits <n>", "bits per weight: 2, 3, 4 or 8 (formats: gptq 2/3/4/8, compressed-tensors 4/8)", "4")
    .option("--group-size <n>", "weights per scale along the input dim; -1 = one group per row", "128")
    .option("--sym", "symmetric quantization (zero point fixed at 2^(bits-1)); the default", true)
    .option("--asym", "asymmetric min-max quantization")
    .option("--act-order", "GPTQ: process columns by decreasing Hessian diagonal (desc_act)", false)
    .option("--static-groups", "GPTQ: compute group scales up front from the unquantized weights", false)
    .option("--damp <fraction>", "GPTQ: dampening added to the Hessian diagonal, as a fraction of its mean", "0.01")
    .option("--block-size <n>", "GPTQ: lazy-batch block of columns", "128")
    .option("--calib <name|file>", "calibration text: c4, wikitext2-valid, tinystories (bundled) or a .txt/.jsonl file", "c4")
    .option("--text-encoding <utf8|latin1|utf16le>", "encoding of a --calib file (invalid UTF-8 or NUL bytes are refused; latin1 reads any bytes)", "utf8")
    .option("--nsamples <n>", "number of calibration windows", "128")
    .option("--seqlen <n>", "tokens per calibration window (default: min(2048, model context))")
    .option("--seed <n>", "seed of the window sampler", "0")
    .option("--format <name>", `output format: ${formatNames().join(", ")}`, "gptq")
    .option("--act-dtype <fp32|fp16>", "storage of calibration activations between blocks (fp16 halves memory)", "fp32")
    .option("--max-memory <size>", "budget for calibration activations; above it they are spilled to a temp file in <out-dir>.partial/ (default: keep in memory)")
    .option("--max-shard-size <size>", "split the output into shards of at most this size", "4GB")
    .option("--resume", "continue an interrupted run from its last finished block", false)
    .option("--overwrite", "replace a non-empty output directory", false)
    .option("--dry-run", "validate everything and print the plan; write nothing", false)
    .option("--json", "print a JSON summary (per-layer error, time, peak memory) on stdout", false)
    .option("--device <cpu|cuda>", "compute device", "cpu")
    .option("--threads <n>", "BLAS threads (default: all cores)")
    .addHelpText("after", `
Examples:
  quant4 quantize models/stories260K out/s260k-rtn --method rtn --group-size -1 --asym --format compressed-tensors
  quant4 quantize ../brown-llama out/brown-gptq --method gptq --bits 4 --group-size 128 --calib c4 --nsamples 128 --seqlen 512
  quant4 quantize ../brown-llama out/brown-gptq --resume          # after an interruption

Layers the chosen format cannot hold (e.g. an input width not divisible by the group size) stay in
fp16 and are listed in the config's skip list, with a warning.`)
    .action(
      action(async (spec: string, outDir: string, raw: Record<string, unknown>) => {
        const { asym, ...rest } = raw;
        const o = parseOptions(optionsSchema, { ...rest, sym: asym ? false : true });
        const modelDir = await resolveModelArg(spec, { json: o.json });
        const backend = setupBackend(o.device, o.threads);
        const plan = buildPlan(modelDir, outDir, o);
        if (o.dryRun) {
          const d = describePlan(plan);
          if (o.json) printJson({ dryRun: true, ...d });
          else {
            process.stdout.write(formatPlan(plan, d));
          }
          return;
        }
        const show = progressEnabled(o.json);
        const a = plan.src.arch;
        const bars = startDualProgress(show, "blocks", a.nLayers);
        let inner = bars.inner("layers", a.linears.length);
        const warnings: string[] = [];
        let report: QuantizeReport;
        try {
          report = runQuantize(plan, backend, {
            onBlockStart: (i) => {
              inner = bars.inner(`block ${i}`, a.linears.length);
            },
            onLayerDone: (_i, stat, done) => inner.update(done, { info: stat.name }),
            onBlockDone: (i) => bars.outer.update(i + 1),
            onWarning: (m) => warnings.push(m),
            onResume: (k, n) => {
              if (!o.json) process.stderr.write(`quant4: resuming at block ${k}/${n} (blocks before it are reused from the interrupted run)\n`);
            },
            afterBlockJournaled: (i) => {
              // Test hook: simulate a crash (kill -9) right after block i is journaled.
              if (process.env["QUANT4_KILL_AFTER_BLOCK"] === String(i)) process.kill(process.pid, "SIGKILL");
            },
          });
        } finally {
          bars.stop();
        }
        const uniqueWarnings = [...new Set(warnings.map((w) => w.replace(/\.layers\.\d+\./, ".layers.*.")))];
        if (!o.json) for (const w of uniqueWarnings) process.stderr.write(`quant4: warning: ${w}\n`);
        const q = report.layers.filter((l) => l.status === "quantized");
        const meanErr = q.reduce((s, l) => s + (l.relError ?? 0), 0) / Math.max(1, q.length);
        if (o.json) {
          printJson({ ...describePlan(plan), report, warnings: uniqueWarnings });
        } else {
          process.stdout.write(
            `wrote ${outDir} (${plan.format.name}, ${o.method} ${o.bits}-bit g${o.groupSize} ${o.sym ? "sym" : "asym"}${o.actOrder ? " act-order" : ""}): ` +
              `${q.length} linears quantized, ${report.skipped.length} kept fp16, mean relative output error ${meanErr.toExponential(3)}, ` +
              `${report.totalSeconds.toFixed(1)} s, peak RSS ${fmtBytes(report.peakRssBytes)}` +
              (report.resumedFromBlock ? ` (resumed at block ${report.resumedFromBlock})` : "") +
              "\n",
          );
        }
      }),
    );
}
