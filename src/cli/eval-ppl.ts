// `quant4 eval-ppl`: perplexity of a checkpoint (fp or packed INT4) on a text, with an optional CI gate.

import fs from "node:fs";
import type { Command } from "commander";
import { z } from "zod";
import { resolveText, textEncodingSchema } from "../calibration/texts.js";
import { evaluatePerplexity, type PplResult } from "../eval/perplexity.js";
import { Model } from "../model/model.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { FileFormatError, UsageError } from "../util/errors.js";
import { progressEnabled, startProgress, type Progress } from "../util/progress.js";
import { action, resolveModelArg, deviceSchema, EXIT_GATE, intOpt, numOpt, parseOptions, printJson, setupBackend } from "./common.js";

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
});

/** A baseline is a number or a result JSON written by `eval-ppl --json`. */
export function readBaseline(spec: string): number {
  const n = Number(spec);
  if (Number.isFinite(n) && n > 0) return n;
  if (!fs.existsSync(spec)) throw new UsageError(`--baseline "${spec}" is neither a positive number nor an existing result file`);
  let obj: unknown;
  try {
    obj = JSON.parse(fs.readFileSync(spec, "utf8"));
  } catch (e) {
    throw new FileFormatError(spec, `not valid JSON: ${(e as Error).message}`);
  }
  const r = z.object({ ppl: z.number().positive() }).passthrough().safeParse(obj);
  if (!r.success) throw new FileFormatError(spec, `no positive number "ppl" (expected the output of quant4 eval-ppl --json)`);
  return r.data.ppl;
}

/** The gate verdict: null when it passes, else the one-line reason. */
export function gateVerdict(ppl: number, o: { baseline?: number; maxIncrease?: number; maxPpl?: number }): string | null {
  if (o.maxPpl !== undefined && ppl > o.maxPpl) return `perplexity ${ppl.toFixed(4)} exceeds --max-ppl ${o.maxPpl}`;
  if (o.baseline !== undefined && o.maxIncrease !== undefined) {
    const inc = (ppl / o.baseline - 1) * 100;
    if (inc > o.maxIncrease)
      return `perplexity ${ppl.toFixed(4)} is ${inc.toFixed(2)}% above the baseline ${o.baseline.toFixed(4)} (allowed: ${o.maxIncrease}%)`;
  }
  return null;
}

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
    .option("--threads <n>", "BLAS threads (default: all cores)")
    .addHelpText("after", `
Protocol: the text is tokenized once (BOS prepended when the model has one), cut into
non-overlapping windows of --seqlen tokens (tail dropped), and every next-token prediction in each
window is scored; ppl = exp(mean NLL). Exit codes: 0 ok, 1 gate failed, 2 error.

Examples:
  quant4 eval-ppl models/stories260K --text tinystories --seqlen 256
  quant4 eval-ppl base/ --json > base.json
  quant4 eval-ppl out/ --baseline base.json --max-increase 10`)
    .action(
      action(async (spec: string, raw: unknown) => {
        const o = parseOptions(optionsSchema, raw);
        const dir = await resolveModelArg(spec, { json: o.json });
        if (o.maxIncrease !== undefined && o.baseline === undefined) throw new UsageError("--max-increase needs --baseline");
        const baseline = o.baseline !== undefined ? readBaseline(o.baseline) : undefined;
        const backend = setupBackend(o.device, o.threads);
        const show = progressEnabled(o.json);
        const model = Model.load(dir, backend);
        const tok = await loadTokenizer(dir);
        const src = resolveText(o.text, o.textEncoding);
        const bosId = tok.bosId ?? model.arch.bosId;
        const addBos = model.arch.family !== "gpt2" && bosId !== null;
        const ids = tok.encode(src.text);
        const tokens = addBos ? [bosId!, ...ids] : ids;
        const seqlen = o.seqlen ?? Math.min(2048, model.arch.maxPositions);
        // The bar learns the window count from the evaluation itself (one place decides it).
        let bar = null as Progress | null; // assigned in the callback
        const t0 = performance.now();
        let res: PplResult;
        try {
          res = evaluatePerplexity(
            model,
            tokens,
            {
              seqlen,
              maxWindows: o.maxWindows,
              onWindow: (done, total, tokDone) => {
                bar ??= startProgress(show, "eval-ppl", total, "{bar} {value}/{total} windows | {tps} tok/s | ETA {eta_formatted}", { tps: 0 });
                bar.update(done, { tps: Math.round(tokDone / ((performance.now() - t0) / 1000)) });
              },
            },
            addBos,
          );
        } finally {
          bar?.stop();
        }
        const verdict = gateVerdict(res.ppl, { baseline, maxIncrease: o.maxIncrease, maxPpl: o.maxPpl });
        if (o.json) {
          printJson({ model: dir, text: src.name, ...res, baseline: baseline ?? null, gate: verdict === null ? "pass" : "fail", gateReason: verdict });
        } else {
          process.stdout.write(`perplexity ${res.ppl.toFixed(4)}  (${src.name}: ${res.protocol})\n`);
          process.stdout.write(`throughput ${Math.round(res.tokensPerSecond)} tokens/s over ${res.seconds.toFixed(1)} s\n`);
        }
        if (verdict) {
          process.stderr.write(`quant4: gate failed: ${verdict}\n`);
          process.exitCode = EXIT_GATE;
        }
      }),
    );
}
