// `quantize --target-bits` and the quality gate (`--gate-text`), on top of the one pipeline:
//
//   --target-bits: a sensitivity pass (the run's own pipeline with probes at 4/8 bits, nothing written,
//   work dir <out>.sensitivity.partial) → the budget (src/pipeline/budget.ts) → the run with one
//   exact-name rule per raised Linear before the user's rules → summary with the bits measured back.
//
//   the gate: the gate text is tokenized and the fp model evaluated once (eval-ppl's protocol and
//   functions); each attempt is its own pipeline run into <out>.gate-attempt-k (own work dir, lock and
//   journal, resumable), evaluated, and deleted unless it passes; a passing attempt gets the gate's
//   record in its config.json ("quant4.gate") and is renamed to <out>. The first attempt asks for probes
//   (unless a sensitivity pass already measured them), so the fallback needs no extra run: retry r
//   spends r/(retries+1) of the way from the first attempt's average code bits to every Linear at the
//   top of its ladder, on the Linears with the best error reduction per extra bit. One lock,
//   <out>.gate.partial/lock, keeps a second gated run off the same output for the whole time.

import fs from "node:fs";
import path from "node:path";
import { resolveText } from "../calibration/texts.js";
import type { Backend } from "../compute/backend.js";
import { evaluatePerplexity, pplTokens, windowCount, type PplResult } from "../eval/perplexity.js";
import { atomicWriteFile } from "../io/writer.js";
import { Model } from "../model/model.js";
import { averageBits, budgetLinears, budgetRules, chooseWidths, errorCurves, FP16_BITS, maxAverageBits, probeWidths, summarizeRaises, type BudgetLinear } from "../pipeline/budget.js";
import { Journal, settingsKeyOf } from "../pipeline/journal.js";
import { measureLinearBits, type LinearBits } from "../pipeline/linear-bits.js";
import { layerSettings, outputConfig, type QuantizeReport } from "../pipeline/quantize.js";
import type { ModuleRule } from "../pipeline/rules.js";
import { measureOutput, worstLayers } from "../pipeline/summary.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { ModelError, OutputError, UsageError } from "../util/errors.js";
import { startProgress, type Progress, type ProgressMode } from "../util/progress.js";
import { EXIT_GATE, printJson, writeStdout } from "./common.js";
import { gateVerdict, pplProtocol, type PplProtocol } from "./eval-ppl.js";
import { derivePlan, describePlan, formatPlan, formatSummary, runWithProgress, type Plan, type QuantizeCliOptions } from "./quantize.js";
import { runSensitivityPass } from "./sensitivity.js";
import { MANIFEST_FILE } from "../pipeline/manifest.js";
import { writeSingleManifest, type ManifestContext } from "./quantize-publish.js";

interface Ctx {
  modelDir: string;
  backend: Backend;
  mode: ProgressMode;
  /** Where the run came from, for each output's quant4-manifest.json. */
  manifest: ManifestContext;
}

/** The gate text, tokenized once with the source's tokenizer, and its protocol (eval-ppl's). */
interface GateText {
  tokens: number[];
  addBos: boolean;
  seqlen: number;
  maxWindows: number | undefined;
  protocol: PplProtocol;
}

export interface GateAttempt {
  attempt: number;
  /** Code bits per Linear weight measured from the attempt's files (fp16 Linears count 16). */
  codeBitsPerWeight: number;
  /** Everything the Linears store per weight (codes, scales, zeros, g_idx, outliers; fp16 weights). */
  storedBitsPerWeight: number;
  /** measureOutput's bits per quantized weight (the summary's "bits/weight"). */
  bitsPerQuantizedWeight: number | null;
  /** Linears above the run's own widths in this attempt. */
  raisedLinears: number;
  ppl: number | null;
  increasePercent: number | null;
  verdict: "pass" | "fail";
  reason: string;
  seconds: number;
}

const fmtBits = (x: number): string => x.toFixed(3);
const pct = (x: number | null): string => (x === null ? "-" : `${x >= 0 ? "+" : ""}${x.toFixed(2)}%`);

function prepareGate(plan: Plan, o: QuantizeCliOptions, modelDir: string): GateText {
  const a = plan.src.arch;
  const text = resolveText(o.gateText!, "utf8");
  const tok = loadTokenizer(modelDir);
  const { tokens, addBos } = pplTokens(tok, a, text.text);
  const seqlen = o.gateSeqlen ?? Math.min(2048, a.maxPositions);
  let windows: number;
  try {
    windows = windowCount({ arch: a }, tokens.length, seqlen, o.gateMaxWindows);
  } catch (e) {
    if (e instanceof UsageError) throw new UsageError(`--gate-text ${text.name}: ${e.message.replaceAll("--seqlen", "--gate-seqlen")}`);
    throw e;
  }
  return { tokens, addBos, seqlen, maxWindows: o.gateMaxWindows, protocol: pplProtocol(text.name, text.text, tok.vocabSize, tokens, { seqlen, windows }, addBos) };
}

/** Perplexity of a checkpoint on the gate text. `tolerateNonFinite`: a model with NaN/Inf logits gives NaN (a failed attempt), not an error. */
function gatePerplexity(dir: string, g: GateText, ctx: Ctx, label: string, tolerateNonFinite: boolean): { result: PplResult | null; ppl: number; error: string | null } {
  const model = Model.load(dir, ctx.backend);
  let bar: Progress | null = null;
  try {
    const result = evaluatePerplexity(
      model,
      g.tokens,
      { seqlen: g.seqlen, maxWindows: g.maxWindows, onWindow: (done, total) => (bar ??= startProgress(ctx.mode, `gate: ${label} windows`, total)).update(done) },
      g.addBos,
    );
    return { result, ppl: result.ppl, error: null };
  } catch (e) {
    if (tolerateNonFinite && e instanceof ModelError && /non-finite/.test(e.message)) return { result: null, ppl: NaN, error: e.message };
    throw e;
  } finally {
    (bar as Progress | null)?.stop();
  }
}

/** Move a finished attempt into place as the output (the pipeline's own rules: no replacing without --overwrite). */
function moveIntoPlace(staging: string, outDir: string, overwrite: boolean): void {
  const out = path.resolve(outDir);
  try {
    if (overwrite && fs.existsSync(out)) fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.renameSync(staging, out);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST") throw new OutputError(outDir, `appeared while this run was writing it and is not empty; pass --overwrite to replace it`);
    throw new OutputError(outDir, `could not move the passing attempt ${staging} into place: ${(e as Error).message}`);
  }
}

function raisedDescription(lin: readonly BudgetLinear[], widths: ReadonlyMap<string, number>): string {
  const by = summarizeRaises(lin, widths);
  if (by.length === 0) return "no Linear raised";
  const n = by.reduce((s, x) => s + x.linears, 0);
  return `${n} Linear${n === 1 ? "" : "s"} raised (${by.map((x) => `${x.linears} to ${x.to === FP16_BITS ? "fp16" : `${x.to}-bit`}`).join(", ")})`;
}

function attemptsTable(attempts: readonly GateAttempt[]): string {
  const lines = [`  attempt  code bits  stored bits  perplexity   increase  verdict  raised`];
  for (const t of attempts)
    lines.push(
      `  ${String(t.attempt).padStart(7)}  ${fmtBits(t.codeBitsPerWeight).padStart(9)}  ${fmtBits(t.storedBitsPerWeight).padStart(11)}  ${(t.ppl === null || !Number.isFinite(t.ppl) ? String(t.ppl) : t.ppl.toFixed(4)).padStart(10)}  ${pct(t.increasePercent).padStart(9)}  ${t.verdict.padEnd(7)}  ${t.raisedLinears}`,
    );
  lines.push(`  (bits per Linear weight measured from each attempt's files, fp16 Linears counting 16; "stored" adds scales, zeros, g_idx)`);
  return lines.join("\n") + "\n";
}

export async function quantizeTuned(plan0: Plan, o: QuantizeCliOptions, ctx: Ctx): Promise<void> {
  const tStart = performance.now();
  const a = plan0.src.arch;
  const out = path.resolve(plan0.outDir);
  const say = (m: string): void => {
    if (!o.json) process.stderr.write(`quant4: ${m}\n`);
  };
  const lin0 = budgetLinears(plan0);
  const start = averageBits(lin0);
  const top = maxAverageBits(lin0);
  const kept = lin0.filter((l) => l.bits === FP16_BITS).length;
  const startWhy = `${plan0.settings.bits}-bit base${kept > 0 ? `; ${kept} of ${lin0.length} Linears kept fp16 count 16` : ""}`;
  if (o.targetBits !== undefined && o.targetBits < start - 1e-9)
    throw new UsageError(
      `--target-bits ${o.targetBits} is below the ${fmtBits(start)} code bits per Linear weight the run starts from (${startWhy}); give a target from ${fmtBits(start)} to ${fmtBits(top)}`,
    );
  if (top <= start && o.targetBits !== undefined)
    throw new UsageError(`--target-bits: no Linear of this run can be raised (every quantized Linear is already at 8 bits, or none is quantized)`);
  const gate = o.gateText !== undefined ? prepareGate(plan0, o, ctx.modelDir) : null;
  // An interrupted sensitivity pass or attempt needs --resume: said now, not after the fp evaluation.
  if (!o.resume && !o.dryRun) {
    const parent = path.dirname(out);
    const base = path.basename(out);
    const left = fs.existsSync(parent)
      ? fs.readdirSync(parent).filter((f) => f.startsWith(`${base}.`) && (gate ? /^\.(sensitivity|gate-attempt-\d+)\.partial$/ : /^\.(sensitivity\.)?partial$/).test(f.slice(base.length)))
      : [];
    if (left.length > 0)
      throw new UsageError(`an interrupted run exists at ${path.join(parent, left[0]!)}; rerun with --resume to continue it, or delete that directory to start over`);
  }
  const targetInfo = o.targetBits !== undefined ? { target: o.targetBits, startBits: start, maxBits: top } : null;
  const gateInfo = gate ? { protocol: gate.protocol, maxIncreasePercent: o.gateMaxIncrease!, retries: o.gateRetries } : null;

  if (o.dryRun) {
    const d = describePlan(plan0);
    if (o.json) {
      printJson({ dryRun: true, ...d, targetBits: targetInfo, gate: gateInfo });
      return;
    }
    let text = formatPlan(plan0, d);
    if (targetInfo)
      text += `  target bits  ${targetInfo.target} code bits per Linear weight (the run starts at ${fmtBits(start)}: ${startWhy}; at most ${fmtBits(top)}), chosen by a sensitivity pass (one extra calibration pass)\n`;
    if (gate)
      text += `  gate         ${gate.protocol.text}: ${gate.protocol.windows} windows × ${gate.protocol.seqlen} tokens, at most +${o.gateMaxIncrease}% over the fp perplexity, up to ${o.gateRetries} retries\n`;
    writeStdout(text);
    return;
  }
  if (targetInfo && o.targetBits! > top + 1e-9) say(`--target-bits ${o.targetBits}: the most this run can spend is ${fmtBits(top)} (every Linear at the top of its ladder)`);

  const errOf = (curves: Map<string, Map<number, number>>) => (name: string, bits: number) => curves.get(name)?.get(bits);
  const base = { groupSize: plan0.settings.groupSize, sym: plan0.settings.sym };
  /** The user's rules behind one exact-name rule per Linear whose width differs from the run's. */
  const rulesFor = (widths: ReadonlyMap<string, number>): ModuleRule[] => [
    ...budgetRules(
      lin0.filter((l) => widths.get(l.name) !== l.bits).map((l) => ({ name: l.name, bits: widths.get(l.name)!, current: layerSettings(plan0, l.name)! })),
      base,
    ),
    ...(plan0.rules ?? []),
  ];
  const raisesOf = (widths: ReadonlyMap<string, number>) =>
    lin0.filter((l) => widths.get(l.name) !== l.bits).map((l) => ({ name: l.name, from: l.bits, to: widths.get(l.name)! }));

  // --target-bits: the sensitivity pass and the budget.
  let curves: Map<string, Map<number, number>> | null = null;
  let widths = new Map(lin0.map((l) => [l.name, l.bits]));
  let sensitivitySeconds: number | null = null;
  if (o.targetBits !== undefined) {
    say(`--target-bits ${o.targetBits}: sensitivity pass (one extra calibration pass; each Linear measured at ${[plan0.settings.bits, ...probeWidths(lin0)].join("/")} bits; nothing written)`);
    const t0 = performance.now();
    const { report } = await runSensitivityPass(plan0, `${out}.sensitivity`, { backend: ctx.backend, json: o.json, mode: ctx.mode, resume: o.resume, quiet: true });
    sensitivitySeconds = (performance.now() - t0) / 1000;
    curves = errorCurves(report.layers);
    const b = chooseWidths(lin0, errOf(curves), o.targetBits);
    widths = b.widths;
    say(`--target-bits ${o.targetBits}: ${raisedDescription(lin0, widths)}; code bits per Linear weight ${fmtBits(start)} → ${fmtBits(b.bits)}`);
  }
  const targetSection = (lb: LinearBits) =>
    targetInfo && {
      ...targetInfo,
      plannedBits: averageBits(lin0, widths),
      measured: { codeBitsPerWeight: lb.codeBitsPerWeight, storedBitsPerWeight: lb.storedBitsPerWeight },
      byWidth: summarizeRaises(lin0, widths),
      raised: raisesOf(widths),
      sensitivitySeconds,
    };
  const targetLine = (lb: LinearBits): string =>
    targetInfo
      ? `  target bits  ${targetInfo.target} requested, from ${fmtBits(start)} (${startWhy}): ${raisedDescription(lin0, widths)}; ` +
        `measured from the files ${fmtBits(lb.codeBitsPerWeight)} code bits per Linear weight (${fmtBits(lb.storedBitsPerWeight)} with scales, zeros, g_idx); sensitivity pass ${sensitivitySeconds!.toFixed(1)} s\n`
      : "";

  if (!gate) {
    const plan = derivePlan(plan0, { rules: rulesFor(widths) });
    let result: { summary: Record<string, unknown>; text: string } | null = null;
    // The summary is measured from the staged output, and the manifest written into it, before it is moved into place.
    await runWithProgress(plan, ctx.backend, o.json, ctx.mode, {}, {
      extraFiles: [MANIFEST_FILE],
      run: async (staging, report, warnings) => {
        const measured = measureOutput(plan.src.ckpt.files, staging, plan.format, outputConfig(plan, report.skipped).quantization_config, a);
        const lb = measureLinearBits(staging, plan.format, a);
        const worst = worstLayers(report.layers);
        const summary = { ...describePlan(plan), report, output: measured, linearBits: omitPerLinear(lb), worstLayers: worst, warnings, targetBits: targetSection(lb) };
        await writeSingleManifest(ctx.manifest, plan, staging, summary, null, report.totalSeconds);
        result = { summary, text: formatSummary(plan, report, measured, worst) + targetLine(lb) };
      },
    });
    const done = result as { summary: Record<string, unknown>; text: string } | null;
    if (!done) throw new Error("the pipeline finished without publishing its output");
    if (o.json) printJson(done.summary);
    else writeStdout(done.text);
    return;
  }

  // The gate. One lock for the whole gated run (attempts have their own, as every pipeline run).
  const gateSettings = {
    ...plan0.runSettings!,
    targetBits: o.targetBits ?? "none",
    gate: JSON.stringify({ tokens: gate.protocol.tokensSha256, seqlen: gate.seqlen, windows: gate.protocol.windows, maxIncrease: o.gateMaxIncrease, retries: o.gateRetries }),
  };
  const lock = Journal.open(`${out}.gate`, settingsKeyOf(gateSettings), o.resume, gateSettings);
  const staged = new Set<string>();
  try {
    const p = gate.protocol;
    say(`gate: evaluating the fp model on ${p.text} (${p.windows} windows × ${p.seqlen} tokens), once for every attempt`);
    const fp = gatePerplexity(ctx.modelDir, gate, ctx, "fp", false);
    const fpPpl = fp.ppl;
    say(`gate: fp perplexity ${fpPpl.toFixed(4)}; limit +${o.gateMaxIncrease}%`);
    const maxAttempts = o.gateRetries + 1;
    const attempts: GateAttempt[] = [];
    let firstBits = averageBits(lin0, widths);
    let lastLine = "";
    for (let k = 1; k <= maxAttempts; k++) {
      const staging = `${out}.gate-attempt-${k}`;
      // A finished attempt left by an interrupted gated run is replaced (under this run's lock).
      const plan = derivePlan(plan0, { outDir: staging, rules: rulesFor(widths), probeBits: curves ? undefined : probeWidths(lin0), overwrite: true });
      say(`gate attempt ${k}/${maxAttempts}: quantizing (${fmtBits(averageBits(lin0, widths))} code bits per Linear weight; ${raisedDescription(lin0, widths)})`);
      const t0 = performance.now();
      const { report, warnings } = await runWithProgress(plan, ctx.backend, o.json, ctx.mode, { warnings: k === 1 });
      staged.add(staging);
      if (!curves) {
        curves = errorCurves(report.layers);
        firstBits = averageBits(lin0, widths);
      }
      const measured = measureOutput(plan.src.ckpt.files, staging, plan.format, outputConfig(plan, report.skipped).quantization_config, a);
      const lb = measureLinearBits(staging, plan.format, a);
      const r = gatePerplexity(staging, gate, ctx, `attempt ${k}`, true);
      const verdict = gateVerdict(r.ppl, { baseline: fpPpl, maxIncrease: o.gateMaxIncrease })!;
      const inc = Number.isFinite(r.ppl) ? (r.ppl / fpPpl - 1) * 100 : null;
      const attempt: GateAttempt = {
        attempt: k,
        codeBitsPerWeight: lb.codeBitsPerWeight,
        storedBitsPerWeight: lb.storedBitsPerWeight,
        bitsPerQuantizedWeight: measured.bitsPerQuantizedWeight,
        raisedLinears: raisesOf(widths).length,
        ppl: Number.isFinite(r.ppl) ? r.ppl : null,
        increasePercent: inc,
        verdict: verdict.pass ? "pass" : "fail",
        reason: r.error ?? verdict.line,
        seconds: (performance.now() - t0) / 1000,
      };
      attempts.push(attempt);
      lastLine = verdict.line;
      // The verdicts are said on stderr with --json too (as eval-ppl's gate).
      process.stderr.write(
        `quant4: gate attempt ${k}/${maxAttempts}: ${fmtBits(lb.codeBitsPerWeight)} code bits per Linear weight (${fmtBits(lb.storedBitsPerWeight)} stored), ` +
          `perplexity ${Number.isFinite(r.ppl) ? r.ppl.toFixed(4) : String(r.ppl)} vs fp ${fpPpl.toFixed(4)}: ${verdict.pass ? "pass" : "fail"} (${verdict.line})\n`,
      );
      if (verdict.pass) {
        const record = {
          text: p.text,
          protocol: p,
          protocolDescription: r.result!.protocol,
          fpPpl,
          ppl: r.ppl,
          increasePercent: inc,
          maxIncreasePercent: o.gateMaxIncrease,
          attempt: k,
          retries: o.gateRetries,
          attempts: attempts.map((t) => ({ attempt: t.attempt, codeBitsPerWeight: t.codeBitsPerWeight, ppl: t.ppl, increasePercent: t.increasePercent, verdict: t.verdict })),
        };
        const cfgFile = path.join(staging, "config.json");
        const cfg = JSON.parse(fs.readFileSync(cfgFile, "utf8")) as Record<string, unknown>;
        cfg["quant4"] = { ...((cfg["quant4"] as Record<string, unknown> | undefined) ?? {}), gate: record };
        atomicWriteFile(cfgFile, JSON.stringify(cfg, null, 2) + "\n");
        const final = derivePlan(plan, { outDir: plan0.outDir });
        const finalReport: QuantizeReport = { ...report, outDir: plan0.outDir, files: [...report.files, MANIFEST_FILE].sort() };
        // Measured from the passing attempt, and its manifest written into it, before it becomes the output.
        const m = measureOutput(plan.src.ckpt.files, staging, plan.format, outputConfig(plan, report.skipped).quantization_config, a);
        const worst = worstLayers(report.layers);
        const gateResult = { passed: true, ...record, attempts };
        const summary = { ...describePlan(final), report: finalReport, output: m, linearBits: omitPerLinear(lb), worstLayers: worst, warnings, targetBits: targetSection(lb), gate: gateResult };
        await writeSingleManifest(ctx.manifest, final, staging, summary, { ...gateResult, maxIncreasePercent: o.gateMaxIncrease! }, (performance.now() - tStart) / 1000);
        lock.assertLocked(); // only the holder publishes the output
        moveIntoPlace(staging, plan0.outDir, o.overwrite);
        staged.delete(staging);
        if (o.json) {
          printJson(summary);
        } else {
          writeStdout(
            formatSummary(final, finalReport, m, worst) +
              targetLine(lb) +
              `  gate         pass on attempt ${k} of up to ${maxAttempts}: perplexity ${r.ppl.toFixed(4)} vs fp ${fpPpl.toFixed(4)} (${pct(inc)}, limit +${o.gateMaxIncrease}%); ` +
              `${((performance.now() - tStart) / 1000).toFixed(1)} s in all\n` +
              `  gate text    ${p.text}, ${r.result!.protocol}\n` +
              attemptsTable(attempts),
          );
        }
        return;
      }
      fs.rmSync(staging, { recursive: true, force: true });
      staged.delete(staging);
      if (k === maxAttempts) break;
      // The fallback: retry k spends k/(retries+1) of the way from the first attempt's bits to the top.
      const target = firstBits + ((top - firstBits) * k) / maxAttempts;
      const now = lin0.map((l) => ({ ...l, bits: widths.get(l.name)!, ladder: l.ladder.filter((w) => w > widths.get(l.name)!) }));
      const b = chooseWidths(now, errOf(curves), target);
      if (b.raises.length === 0) {
        say(`gate: no Linear left to raise within ${fmtBits(target)} code bits per Linear weight; stopping after ${k} attempt${k === 1 ? "" : "s"}`);
        break;
      }
      widths = b.widths;
    }
    // Failed: nothing is written.
    process.exitCode = EXIT_GATE;
    if (o.json) {
      printJson({ ...describePlan(plan0), out: plan0.outDir, written: false, targetBits: targetInfo, gate: { passed: false, text: p.text, protocol: p, fpPpl, maxIncreasePercent: o.gateMaxIncrease, retries: o.gateRetries, attempts } });
    } else {
      writeStdout(
        `gate failed: no attempt within +${o.gateMaxIncrease}% of the fp perplexity ${fpPpl.toFixed(4)}; nothing written\n` +
          `  gate text    ${p.text}, ${fp.result!.protocol}\n` +
          attemptsTable(attempts),
      );
    }
    process.stderr.write(`quant4: gate failed: ${lastLine}; ${attempts.length} attempt${attempts.length === 1 ? "" : "s"}, nothing written to ${plan0.outDir}\n`);
  } finally {
    for (const d of staged) fs.rmSync(d, { recursive: true, force: true });
    lock.remove();
  }
}

/** The per-Linear list is long; --json gives the averages (the plan's raises list who went where). */
function omitPerLinear(lb: LinearBits): Omit<LinearBits, "linears"> {
  const { linears: _omit, ...rest } = lb;
  return rest;
}
