// `quant4 sensitivity`: how much each Linear's output error drops with more bits. One run of the
// quantize pipeline (same options, same calibration, same propagation) with sensitivity probes: every
// quantized Linear is measured at its own width and at 4/8 bits, on the same working weights and
// Hessian. The run assembles no output (plan.dryOutput); its journal lives in a temp dir, removed after.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import type { QuantizePlan, QuantizeReport } from "../pipeline/quantize.js";
import { budgetLinears, errorCurves, probeWidths } from "../pipeline/budget.js";
import { InterruptedError } from "../util/errors.js";
import { progressMode, startStatus } from "../util/progress.js";
import { action, printJson, resolveModelArg, setupBackend, writeStdout } from "./common.js";
import { addMethodOptions, buildPlan, derivePlan, parseQuantOptions, runWithProgress, type Plan } from "./quantize.js";
import { METHODS } from "../pipeline/methods.js";

export interface SensitivityRow {
  name: string;
  shape: [number, number];
  params: number;
  /** The Linear's own width in this run. */
  bits: number;
  /** Relative output error ‖(W−Q)X‖²/‖WX‖² at each measured width, ascending. */
  errors: { bits: number; relError: number }[];
  /** (err_lower − err_higher) / (bits_higher − bits_lower) between consecutive measured widths. */
  reductionPerBit: { from: number; to: number; perBit: number }[];
}

export interface SensitivityTable {
  /** Every width measured (columns of the table). */
  widths: number[];
  rows: SensitivityRow[];
  /** Linears kept fp16 (not measured) and why. */
  skipped: { name: string; reason: string }[];
}

/** The table of a run with probes: one row per quantized Linear (pipeline order), skipped ones listed. */
export function sensitivityTable(plan: Pick<QuantizePlan, "src">, report: Pick<QuantizeReport, "layers">): SensitivityTable {
  const a = plan.src.arch;
  const shapes = new Map<string, [number, number]>();
  for (let b = 0; b < a.nLayers; b++) for (const l of a.linears) shapes.set(a.blockPrefix(b) + l.name, [l.out, l.in]);
  const curves = errorCurves(report.layers);
  const widths = new Set<number>();
  const rows: SensitivityRow[] = [];
  const skipped: { name: string; reason: string }[] = [];
  for (const l of report.layers) {
    if (l.status !== "quantized") {
      skipped.push({ name: l.name, reason: l.reason ?? "kept fp16" });
      continue;
    }
    const shape = shapes.get(l.name)!;
    const errors = [...(curves.get(l.name) ?? new Map<number, number>())].map(([bits, relError]) => ({ bits, relError })).sort((x, y) => x.bits - y.bits);
    for (const e of errors) widths.add(e.bits);
    const reductionPerBit = errors.slice(1).map((e, i) => ({ from: errors[i]!.bits, to: e.bits, perBit: (errors[i]!.relError - e.relError) / (e.bits - errors[i]!.bits) }));
    rows.push({ name: l.name, shape, params: shape[0] * shape[1], bits: l.bits ?? 0, errors, reductionPerBit });
  }
  return { widths: [...widths].sort((x, y) => x - y), rows, skipped };
}

const e3 = (x: number | undefined): string => (x === undefined ? "-" : x.toExponential(3));

/** The table for a terminal: Linear, shape, params, error per width, error reduction per extra bit. */
export function formatSensitivityTable(t: SensitivityTable): string {
  const pairs = t.widths.slice(1).map((w, i) => [t.widths[i]!, w] as const);
  const nameW = Math.max(6, ...t.rows.map((r) => r.name.length));
  const head = [
    "Linear".padEnd(nameW),
    "shape".padEnd(9),
    "params".padStart(8),
    ...t.widths.map((w) => `${w}-bit`.padStart(10)),
    ...pairs.map(([f, w]) => `Δ/bit ${f}→${w}`.padStart(12)),
  ].join("  ");
  const lines = [head];
  for (const r of t.rows) {
    const at = new Map(r.errors.map((e) => [e.bits, e.relError]));
    const red = new Map(r.reductionPerBit.map((x) => [`${x.from}→${x.to}`, x.perBit]));
    lines.push(
      [
        r.name.padEnd(nameW),
        `${r.shape[0]}×${r.shape[1]}`.padEnd(9),
        String(r.params).padStart(8),
        ...t.widths.map((w) => e3(at.get(w)).padStart(10)),
        ...pairs.map(([f, w]) => e3(red.get(`${f}→${w}`)).padStart(12)),
      ].join("  "),
    );
  }
  if (t.skipped.length > 0) {
    const reasons = [...new Set(t.skipped.map((s) => s.reason))];
    lines.push(`kept fp16 (not measured): ${t.skipped.length} Linears (${reasons.slice(0, 2).join("; ")}${reasons.length > 2 ? "; …" : ""})`);
  }
  return lines.join("\n") + "\n";
}

/** The sensitivity pass: the plan's run with probes and no output (its work dir is `<outDir>.partial`, removed at the end). */
export async function runSensitivityPass(plan: Plan, outDir: string, ctx: { backend: Parameters<typeof runWithProgress>[1]; json: boolean; mode: Parameters<typeof runWithProgress>[3]; resume?: boolean; quiet?: boolean }) {
  const probeBits = probeWidths(budgetLinears(plan));
  const p = derivePlan(plan, { outDir, probeBits, dryOutput: true, overwrite: false, resume: ctx.resume ?? false });
  // Inside quantize the pass's warnings would repeat the run's own: they are said once, by the run.
  const { report } = await runWithProgress(p, ctx.backend, ctx.json, ctx.mode, { warnings: !ctx.quiet });
  return { plan: p, report, probeBits };
}

export function registerSensitivity(program: Command): void {
  const cmd = program
    .command("sensitivity")
    .description("Per-Linear output error at the base bits and at 4/8 bits (one calibration pass of the quantize pipeline; nothing written)")
    .argument("<model-dir>", "fp16/bf16/fp32 Hugging Face model directory (or Hub id)");
  addMethodOptions(cmd, {
    calibHelp: "default: c4; RTN calibrates too, the errors are measured on the calibration inputs",
    work: "the temp work dir",
    json: "print the table as JSON on stdout",
  })
    .addHelpText("after", `
Runs the quantize pipeline once with the given options (same calibration windows, same propagation of
each quantized block's outputs to the next) and measures, for every Linear it quantizes, the relative
output error ‖(W−Q)X‖²/‖WX‖² on the calibration inputs at the base width and at 4 and 8 bits (8 only
above a 4-bit base), on the same working weights and Hessian. Δ/bit is the error reduction per extra
bit between two widths. Nothing is written: the run's block files go to a temp dir, removed after.
quantize --target-bits runs this pass first and spends its budget on the best Δ/bit per weight.

Examples:
  quant4 sensitivity models/stories260K --bits 3 --format gptq --group-size 32 --calib tinystories --nsamples 8 --seqlen 128
  quant4 sensitivity ./Llama-2-7b-hf --scheme w4-g128 --json > sens.json

Exit codes: 0 ok, 2 bad input or usage, 3 internal error, 130 interrupted.`)
    .action(
      action(async (spec: string, raw: Record<string, unknown>, c: Command) => {
        let { o, explicit } = parseQuantOptions(raw, c);
        if (o.calib === undefined && !METHODS[o.method].needsCalibration) o = { ...o, calib: "c4" };
        const modelDir = await resolveModelArg(spec, { json: o.json });
        const backend = setupBackend(o.device, o.threads);
        const mode = progressMode(o.json);
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-sensitivity-"));
        try {
          const outDir = path.join(tmp, "out");
          const status = startStatus(mode);
          status.set(`reading ${modelDir} and ${o.calib}…`);
          let plan: Plan;
          try {
            plan = buildPlan(modelDir, outDir, o, explicit);
          } finally {
            status.stop();
          }
          if (plan.formatWhy && !o.json) process.stderr.write(`quant4: ${plan.formatWhy}\n`);
          const t0 = performance.now();
          let report: QuantizeReport;
          let probeBits: number[];
          try {
            ({ report, probeBits } = await runSensitivityPass(plan, outDir, { backend, json: o.json, mode }));
          } catch (e) {
            if (e instanceof InterruptedError) throw new InterruptedError("interrupted; nothing was written (sensitivity runs are not resumable)");
            throw e;
          }
          const table = sensitivityTable(plan, report);
          const s = plan.settings;
          const seconds = (performance.now() - t0) / 1000;
          if (o.json) {
            printJson({
              model: modelDir,
              architecture: plan.src.arch.modelType,
              format: plan.format.name,
              scheme: plan.scheme,
              settings: s,
              calibration: { text: plan.calibName, nsamples: plan.nsamples, seqlen: plan.seqlen, seed: plan.seed },
              probeBits,
              widths: table.widths,
              linears: table.rows,
              skipped: table.skipped,
              seconds,
            });
          } else {
            writeStdout(
              `sensitivity of ${modelDir}: ${s.method} ${s.bits}-bit ${s.groupSize === -1 ? "per-row" : `g${s.groupSize}`} ${s.sym ? "sym" : "asym"} (${plan.format.name}), ` +
                `calibration ${plan.nsamples} × ${plan.seqlen} tokens of "${plan.calibName}", seed ${plan.seed}\n` +
                `relative output error ‖(W−Q)X‖²/‖WX‖² on the calibration inputs at each width; Δ/bit = error reduction per extra bit\n` +
                formatSensitivityTable(table) +
                `time ${seconds.toFixed(1)} s (one calibration pass)\n`,
            );
          }
        } finally {
          fs.rmSync(tmp, { recursive: true, force: true });
        }
      }),
    );
}
