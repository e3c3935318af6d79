// `quant4 eval-ppl`: perplexity of a checkpoint (fp or packed INT4) on a text, with an optional CI gate.

import crypto from "node:crypto";
import fs from "node:fs";
import type { Command } from "commander";
import { z } from "zod";
import { resolveText, textEncodingSchema } from "../calibration/texts.js";
import { evalBatching, evaluatePerplexity, pplProtocolSchema, pplTokens, windowCount, type PplProtocol, type PplResult } from "../eval/perplexity.js";
import { evalFlops, evaluatePerplexityParallel, evaluatorBytes, planEvaluators } from "../eval/parallel.js";

export type { PplProtocol };
import { Model } from "../model/model.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { FileFormatError, UsageError } from "../util/errors.js";
import { progressMode, startProgress, startStatus, type Progress } from "../util/progress.js";
import { action, resolveModelArg, writeStdout, deviceSchema, EXIT_GATE, intOpt, numOpt, parseOptions, printJson, setupBackend } from "./common.js";

const optionsSchema = z.object({
  text: z.string().default("wikitext2"),
  textEncoding: textEncodingSchema,
  seqlen: intOpt(2).optional(),
  maxWindows: intOpt(1).optional(),
  json: z.boolean().default(false),
  baseline: z.string().optional(),
  maxIncrease: numOpt().min(0).optional(),
  maxPpl: numOpt().positive().optional(),
  device: deviceSchema,
  threads: intOpt(1).optional(),
  dequantize: z.boolean().default(false),
  klBase: z.string().optional(),
  perWindow: z.boolean().default(false),
});

export function pplProtocol(textName: string, text: string, vocabSize: number, tokens: ArrayLike<number>, res: { seqlen: number; windows: number }, bos: boolean): PplProtocol {
  const stream = Int32Array.from(tokens);
  return {
    text: textName,
    textSha256: crypto.createHash("sha256").update(text, "utf8").digest("hex"),
    vocabSize,
    tokensSha256: crypto.createHash("sha256").update(new Uint8Array(stream.buffer)).digest("hex"),
    seqlen: res.seqlen,
    windows: res.windows,
    bos,
  };
}

export interface Baseline {
  ppl: number;
  /** Absent for a bare number (or an old result file): the comparison cannot be checked. */
  protocol: PplProtocol | null;
  source: string;
}

/** A baseline is a number or a result JSON written by `eval-ppl --json`. */
export function readBaseline(spec: string): Baseline {
  const n = Number(spec);
  if (Number.isFinite(n) && n > 0) return { ppl: n, protocol: null, source: spec };
  if (!fs.existsSync(spec)) throw new UsageError(`--baseline "${spec}" is neither a positive number nor an existing result file`);
  let obj: unknown;
  try {
    obj = JSON.parse(fs.readFileSync(spec, "utf8"));
  } catch (e) {
    throw new FileFormatError(spec, `not valid JSON: ${(e as Error).message}`);
  }
  const r = z.object({ ppl: z.number().positive() }).passthrough().safeParse(obj);
  if (!r.success) throw new FileFormatError(spec, `no positive number "ppl" (expected the output of quant4 eval-ppl --json)`);
  const p = pplProtocolSchema.safeParse((obj as Record<string, unknown>)["protocol"]);
  return { ppl: r.data.ppl, protocol: p.success ? p.data : null, source: spec };
}

/** How `got` differs from the baseline's protocol, one phrase per difference ([] = comparable). */
export function protocolDifferences(base: PplProtocol, got: PplProtocol): string[] {
  const d: string[] = [];
  if (base.textSha256 !== got.textSha256) d.push(`text "${base.text}" (sha256 ${base.textSha256.slice(0, 12)}) vs "${got.text}" (sha256 ${got.textSha256.slice(0, 12)})`);
  else if (base.vocabSize !== got.vocabSize || base.tokensSha256 !== got.tokensSha256)
    d.push(`tokenizer (vocab ${base.vocabSize} vs ${got.vocabSize}; the same text gives other token ids)`);
  if (base.seqlen !== got.seqlen) d.push(`seqlen ${base.seqlen} vs ${got.seqlen}`);
  if (base.windows !== got.windows) d.push(`windows ${base.windows} vs ${got.windows}`);
  if (base.bos !== got.bos) d.push(`BOS ${base.bos ? "prepended" : "not prepended"} vs ${got.bos ? "prepended" : "not prepended"}`);
  return d;
}

export interface GateOptions {
  baseline?: number;
  maxIncrease?: number;
  maxPpl?: number;
}

/** The gate's verdict: null when no gate is set; else pass/fail with a one-line explanation. */
export function gateVerdict(ppl: number, o: GateOptions): { pass: boolean; line: string } | null {
  const limits = o.maxPpl !== undefined || (o.baseline !== undefined && o.maxIncrease !== undefined);
  if (!limits) return null;
  // NaN compares false with everything: check it first so it can never slip through as a pass.
  if (!Number.isFinite(ppl)) return { pass: false, line: `perplexity is ${ppl} (not a finite number); a gate never passes a non-finite result` };
  const passed: string[] = [];
  if (o.maxPpl !== undefined) {
    if (ppl > o.maxPpl) return { pass: false, line: `perplexity ${ppl.toFixed(4)} exceeds --max-ppl ${o.maxPpl}` };
    passed.push(`perplexity ${ppl.toFixed(4)} ≤ ${o.maxPpl}`);
  }
  if (o.baseline !== undefined && o.maxIncrease !== undefined) {
    const inc = (ppl / o.baseline - 1) * 100;
    if (inc > o.maxIncrease)
      return { pass: false, line: `perplexity ${ppl.toFixed(4)} is ${inc.toFixed(2)}% above the baseline ${o.baseline.toFixed(4)} (allowed: ${o.maxIncrease}%)` };
    passed.push(`${inc >= 0 ? "+" : ""}${inc.toFixed(2)}% ≤ ${o.maxIncrease}% over the baseline ${o.baseline.toFixed(4)}`);
  }
  return { pass: true, line: passed.join("; ") };
}

/** " ± x" for a standard error, "" when there is none (one window). */
const pm = (e: number | null, f: (x: number) => string): string => (e === null ? "" : ` ± ${f(e)}`);

export function registerEvalPpl(program: Command): void {
  program
    .command("eval-ppl")
    .description("Perplexity of a model (fp16/bf16/fp32 or packed INT4) on a text, GPTQ-paper protocol; optional CI gate")
    .argument("<model-dir>", "Hugging Face model directory (config.json + *.safetensors + tokenizer)")
    .option("--text <name|file>", "bundled text (wikitext2, wikitext2-valid, c4, tinystories) or a .txt/.jsonl file", "wikitext2")
    .option("--text-encoding <utf8|latin1|utf16le>", "encoding of a --text file (invalid UTF-8 or NUL bytes are refused; latin1 reads any bytes)", "utf8")
    .option("--seqlen <n>", "window length in tokens (default: min(2048, model context))")
    .option("--max-windows <k>", "score only the first k windows (quick checks)")
    .option("--json", "print the result as JSON on stdout (no progress bar)", false)
    .option("--baseline <ppl|result.json>", "baseline perplexity, or a result file from eval-ppl --json")
    .option("--max-increase <percent>", "gate: fail (exit 1) when perplexity exceeds the baseline by more than this")
    .option("--max-ppl <x>", "gate: fail (exit 1) when perplexity exceeds x")
    .option("--device <cpu|cuda>", "compute device", "cpu")
    .option("--threads <n>", "threads (default: all cores): n one-thread evaluators over disjoint windows when n copies of the model fit in memory (see Threads below), else one evaluator with n BLAS/kernel threads")
    .option("--kl-base <model-dir>", "also run this model (the fp source) on the same windows and report KL(base ‖ model) per prediction and how often both pick the same top token")
    .option("--per-window", "with --json: also each window's mean NLL (and the --kl-base model's), to compare two results window by window", false)
    .option("--dequantize", "run a packed checkpoint dequantized to fp32 (the pre-runtime path) instead of on the packed kernels", false)
    .addHelpText("after", `
Protocol: the text is tokenized once (BOS prepended when the model has one), cut into
non-overlapping windows of --seqlen tokens (tail dropped), and every next-token prediction in each
window is scored; ppl = exp(mean NLL). --json records this protocol (text and token hashes,
seqlen, windows, BOS); a --baseline result file measured on another protocol is refused, and a
bare-number baseline is accepted with a warning. A gate never passes a non-finite perplexity.
--kl-base measures fidelity rather than quality: perplexity on text unlike the model's training
data can move either way with a small quantization error, KL from the source model only grows
(llama.cpp's --kl-divergence); it costs a second forward pass per window. It also reports
ln(ppl / base ppl) on the same predictions; both come with a standard error over windows (positions
within a window are correlated), so a difference between two models smaller than about twice their
errors is noise. --per-window (with --json) adds each window's mean NLL for paired comparisons.
Threads: with --threads n ≥ 2 (or n cores by default), n evaluators, each with its own copy of the
model and one BLAS/kernel thread, score disjoint batches of windows side by side (a small model's GEMMs
are too short to keep several BLAS threads busy); the numbers are the same, bit for bit, as with
--threads 1. One evaluator runs on n BLAS/kernel threads instead when the n − 1 extra copies do not fit
in 75% of the available memory (free memory or the cgroup limit), or when the evaluation is too short
to repay starting them (under ~1 s of work per evaluator); QUANT4_EVAL_WORKERS=0 forces one evaluator,
QUANT4_EVAL_WORKERS=k asks for k. --json says which (evaluators, evaluatorPlan).
Token cache: a text's token ids are kept after the first run (~/.cache/quant4/tokens, or
$XDG_CACHE_HOME/quant4/tokens, or $QUANT4_CACHE_DIR/tokens), keyed by the text and the tokenizer's
files; QUANT4_NO_CACHE=1 turns it off.
Exit codes: 0 ok (gate passed), 1 gate failed, 2 error, 3 internal error.

Examples:
  quant4 eval-ppl models/stories260K --text tinystories --seqlen 256
  quant4 eval-ppl base/ --json > base.json
  quant4 eval-ppl out/ --baseline base.json --max-increase 10
  quant4 eval-ppl out/ --kl-base models/stories260K --text tinystories --seqlen 256`)
    .action(
      action(async (spec: string, raw: unknown) => {
        const o = parseOptions(optionsSchema, raw);
        const dir = await resolveModelArg(spec, { json: o.json });
        if (o.maxIncrease !== undefined && o.baseline === undefined) throw new UsageError("--max-increase needs --baseline");
        const baseline = o.baseline !== undefined ? readBaseline(o.baseline) : undefined;
        const backend = setupBackend(o.device, o.threads);
        const mode = progressMode(o.json);
        const status = startStatus(mode);
        status.set(`loading ${dir}…`);
        const model = Model.load(dir, backend, undefined, { dequantize: o.dequantize });
        const tok = await loadTokenizer(dir);
        let klBase: Model | undefined;
        let baseDir: string | undefined;
        if (o.klBase !== undefined) {
          baseDir = await resolveModelArg(o.klBase, { json: o.json });
          status.set(`loading ${baseDir}…`);
          klBase = Model.load(baseDir, backend, undefined, { dequantize: o.dequantize });
          if (klBase.arch.vocabSize !== model.arch.vocabSize)
            throw new UsageError(`--kl-base ${baseDir} has a vocabulary of ${klBase.arch.vocabSize} tokens, ${dir} ${model.arch.vocabSize}: KL needs the same vocabulary`);
          const baseTok = await loadTokenizer(baseDir);
          const probe = "The quick brown fox, 1234 — naïve café.";
          if (baseTok.encode(probe).join() !== tok.encode(probe).join())
            throw new UsageError(`--kl-base ${baseDir} tokenizes text differently from ${dir}: KL needs the same tokenizer`);
        }
        status.set(`tokenizing ${o.text}…`);
        const src = resolveText(o.text, o.textEncoding);
        const { tokens, addBos } = pplTokens(tok, model.arch, src.text);
        status.stop();
        const seqlen = o.seqlen ?? Math.min(2048, model.arch.maxPositions);
        // A baseline measured on another protocol is refused before the evaluation, not after it.
        const windows = windowCount(model, tokens.length, seqlen, o.maxWindows);
        const protocol = pplProtocol(src.name, src.text, tok.vocabSize, tokens, { seqlen, windows }, addBos);
        if (baseline?.protocol) {
          const diff = protocolDifferences(baseline.protocol, protocol);
          if (diff.length > 0)
            throw new UsageError(
              `--baseline ${baseline.source} was measured on another protocol (${diff.join("; ")}); measure both with the same --text, --seqlen and --max-windows`,
            );
        } else if (baseline && !o.json) {
          process.stderr.write(`quant4: warning: --baseline ${baseline.source} has no protocol record, so whether it was measured on the same text, tokenizer, seqlen and windows cannot be checked; pass an eval-ppl --json result instead\n`);
        }
        // The bar learns the window count from the evaluation itself (one place decides it).
        let bar = null as Progress | null; // assigned in the callback
        const t0 = performance.now();
        // --threads n: n one-thread evaluators side by side when n copies of the model fit (src/eval/parallel.ts).
        const threads = backend.getThreads();
        const batches = Math.ceil(windows / evalBatching(model.arch, seqlen).windowsPerBatch);
        const plan =
          o.device === "cpu"
            ? planEvaluators({ threads, perEvaluatorBytes: evaluatorBytes(model, klBase, seqlen), batches, flops: evalFlops(model, klBase, seqlen, windows) })
            : { evaluators: 1, why: `--device ${o.device}` };
        if (o.perWindow && !o.json) throw new UsageError("--per-window needs --json (it adds per-window arrays to the JSON result)");
        const pplOpts = {
          seqlen,
          perWindow: o.perWindow,
          maxWindows: o.maxWindows,
          klBase,
          onWindow: (done: number, total: number, tokDone: number) => {
            bar ??= startProgress(mode, "eval-ppl windows", total, "{bar} {value}/{total} windows | {tps} tok/s | ETA {eta_formatted}", { tps: 0 }, (p) => `${p["tps"]} tok/s`);
            bar.update(done, { tps: Math.round(tokDone / ((performance.now() - t0) / 1000)) });
          },
        };
        let res: PplResult;
        try {
          res =
            plan.evaluators > 1
              ? await evaluatePerplexityParallel(model, tokens, pplOpts, addBos, { evaluators: plan.evaluators, spec: { modelDir: dir, klBaseDir: baseDir, dequantize: o.dequantize }, backend })
              : evaluatePerplexity(model, tokens, pplOpts, addBos);
        } finally {
          bar?.stop();
        }
        const verdict = gateVerdict(res.ppl, { baseline: baseline?.ppl, maxIncrease: o.maxIncrease, maxPpl: o.maxPpl });
        if (o.json) {
          printJson({
            model: dir,
            text: src.name,
            ...res,
            protocol,
            protocolDescription: res.protocol,
            klBase: klBase ? klBase.src.dir : null,
            evaluators: plan.evaluators,
            evaluatorPlan: plan.why,
            baseline: baseline?.ppl ?? null,
            gate: verdict === null ? null : verdict.pass ? "pass" : "fail",
            gateReason: verdict?.line ?? null,
          });
        } else {
          writeStdout(`perplexity ${res.ppl.toFixed(4)}  (${src.name}: ${res.protocol})\n`);
          if (res.kl) {
            const k = res.kl;
            writeStdout(
              `KL(base ‖ model) mean ${k.meanKl.toExponential(4)}${pm(k.meanKlStderr, (x) => x.toExponential(1))} nats (median ${k.medianKl.toExponential(3)}, p99 ${k.p99Kl.toExponential(3)}, max ${k.maxKl.toExponential(3)}); same top token ${(100 * k.sameTop).toFixed(2)}%; base perplexity ${k.basePpl.toFixed(4)}\n` +
                `ln(ppl / base ppl) ${k.lnPplRatio.toFixed(5)}${pm(k.lnPplRatioStderr, (x) => x.toFixed(5))} (± one standard error over windows)\n`,
            );
          }
          writeStdout(`throughput ${Math.round(res.tokensPerSecond)} tokens/s over ${res.seconds.toFixed(1)} s${plan.evaluators > 1 ? ` (${plan.evaluators} evaluators)` : ""}\n`);
        }
        if (verdict) process.stderr.write(`quant4: gate ${verdict.pass ? "pass" : "failed"}: ${verdict.line}\n`);
        if (verdict && !verdict.pass) process.exitCode = EXIT_GATE;
      }),
    );
}
