// `quant4 report`: one self-contained HTML page (or a markdown summary for a pull-request comment) from
// quantize outputs (their quant4-manifest.json) or saved `quantize --json` results. This file owns the
// command: options, where each configuration's perplexity comes from (an --eval result, the run's own
// gate, or an evaluation it runs on the --baseline's protocol), the report's own gate, writing the
// file. Reading inputs: src/report/input.ts; the report's data: src/report/document.ts; drawing it:
// src/report/html.ts, src/report/markdown.ts, src/report/svg.ts.

import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { resolveText, textEncodingSchema } from "../calibration/texts.js";
import { evaluatePerplexity, pplTokens, windowCount } from "../eval/perplexity.js";
import { atomicWriteFile } from "../io/writer.js";
import { Model } from "../model/model.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { FileFormatError, UsageError } from "../util/errors.js";
import { progressMode, startStatus } from "../util/progress.js";
import { VERSION } from "../version.js";
import { buildDocument, gatePpl, type PplView } from "../report/document.js";
import { renderHtml } from "../report/html.js";
import { readEvalResult, readReportInput, type ReportInput, type ReportProtocol } from "../report/input.js";
import { renderMarkdown } from "../report/markdown.js";
import { action, deviceSchema, EXIT_GATE, fmtBytes, intOpt, numOpt, parseOptions, printJson, resolveModelArg, setupBackend, writeStdout } from "./common.js";
import { gateVerdict, pplProtocol, protocolDifferences, type PplProtocol } from "./eval-ppl.js";

const collect = (v: string, prev: string[]): string[] => [...prev, v];

const optionsSchema = z
  .object({
    baseline: z.string().optional(),
    eval: z.array(z.string()).default([]),
    output: z.string().optional(),
    format: z.enum(["html", "md"]).optional(),
    text: z.string().optional(),
    textEncoding: textEncodingSchema,
    seqlen: intOpt(2).optional(),
    maxWindows: intOpt(1).optional(),
    maxIncrease: numOpt().min(0).optional(),
    maxPpl: numOpt().positive().optional(),
    json: z.boolean().default(false),
    device: deviceSchema,
    threads: intOpt(1).optional(),
  })
  .strict();
type Options = z.infer<typeof optionsSchema>;

/** A perplexity with what it was measured on. */
interface Measured {
  ppl: number;
  protocol: ReportProtocol | null;
  /** e.g. `eval-ppl result base.json` or `quant4 report on tinystories (60 windows × 256 tokens)`. */
  source: string;
}

const describeProtocol = (p: ReportProtocol | null): string => (p ? `${p.text} (${p.windows} windows × ${p.seqlen} tokens)` : "an unrecorded protocol");

/** Perplexity of a local model directory with eval-ppl's protocol (and functions). */
function evaluateDir(dir: string, how: { text: string; seqlen?: number; maxWindows?: number; encoding: Options["textEncoding"] }, o: Options, say: (s: string) => void): Measured {
  const backend = setupBackend(o.device, o.threads);
  const model = Model.load(dir, backend);
  const tok = loadTokenizer(dir);
  const src = resolveText(how.text, how.encoding);
  const { tokens, addBos } = pplTokens(tok, model.arch, src.text);
  const seqlen = how.seqlen ?? Math.min(2048, model.arch.maxPositions);
  const windows = windowCount(model, tokens.length, seqlen, how.maxWindows);
  say(`evaluating ${dir} on ${src.name} (${windows} windows × ${seqlen} tokens)…`);
  const res = evaluatePerplexity(model, tokens, { seqlen, maxWindows: how.maxWindows }, addBos);
  if (!Number.isFinite(res.ppl)) throw new FileFormatError(dir, `perplexity is ${res.ppl} (non-finite logits): the model is broken`);
  const protocol: PplProtocol = pplProtocol(src.name, src.text, tok.vocabSize, tokens, { seqlen, windows: res.windows }, addBos);
  return { ppl: res.ppl, protocol, source: `quant4 report on ${describeProtocol(protocol)}` };
}

/** Same text, tokens, seqlen, windows and BOS (a missing protocol cannot be checked: accepted). */
const sameProtocol = (a: ReportProtocol | null, b: ReportProtocol | null): boolean => !a || !b || protocolDifferences(a, b).length === 0;

/** The output directory an input names (for matching --eval results and evaluating), absolute. */
function inputDirs(inp: ReportInput): string[] {
  const d = [inp.dir, inp.summary.out, inp.summary.report["outDir"] as string | undefined].filter((x): x is string => typeof x === "string");
  return [...new Set(d.map((x) => path.resolve(x)))];
}

export function registerReport(program: Command): void {
  program
    .command("report")
    .description("Write a self-contained HTML report (or a markdown summary) of quantize outputs: sizes, bits per weight, perplexity and gate, per-layer error heat map")
    .argument("<inputs...>", "quantize output directories (read: their quant4-manifest.json), manifests, or saved quantize --json results; several = one configuration each")
    .option("-o, --output <file>", "write the report here (default: standard output); .md selects --format md")
    .option("--format <html|md>", "html: one self-contained page (inline styles, script and SVG charts); md: a summary for a pull-request comment (default: from -o, else html)")
    .option("--baseline <dir|result.json>", "the source's perplexity: an eval-ppl --json result, or a model directory to evaluate; each output is then evaluated on the same protocol unless an --eval result or its own gate already measured it")
    .option("--eval <result.json>", "an eval-ppl --json result of an output (matched to the input by its model path; with one input, taken as its); repeatable", collect, [])
    .option("--text <name|file>", "text for the evaluations the report runs itself (default: the run's gate text, else wikitext2; with a --baseline result: its text)")
    .option("--text-encoding <utf8|latin1|utf16le>", "encoding of a --text file", "utf8")
    .option("--seqlen <n>", "window length of those evaluations (default: the gate's or the baseline result's, else min(2048, context))")
    .option("--max-windows <k>", "score only the first k windows in those evaluations")
    .option("--max-increase <percent>", "gate: a configuration more than this above the baseline perplexity fails (shown in the report; exit 1)")
    .option("--max-ppl <x>", "gate: a configuration above this perplexity fails (shown in the report; exit 1)")
    .option("--json", "print what was written (file, format, bytes, each configuration's perplexity and verdict) as JSON on stdout; needs -o", false)
    .option("--device <cpu|cuda>", "compute device for evaluations", "cpu")
    .option("--threads <n>", "BLAS and kernel threads for evaluations (default: all cores)")
    .addHelpText("after", `
Inputs: a quantize output directory (its quant4-manifest.json), a quant4-manifest.json file, or the
output of \`quantize --json\` saved to a file. Perplexity, per configuration, in this order: an --eval
result; the run's own gate (quantize --gate-text), when on the --baseline's protocol or without one;
else, with --baseline, the report evaluates the output directory on the baseline's protocol. A result
file measured on another protocol than the baseline is refused (exit 2). The HTML page needs no
network: styles, a small script and the SVG charts are inline.

Examples:
  quant4 report out/s260k -o report.html
  quant4 report out/s260k --format md > comment.md                  # for a pull-request comment
  quant4 eval-ppl models/stories260K --text tinystories --seqlen 256 --json > base.json
  quant4 report out/s260k-g32 out/s260k-perrow --baseline base.json --max-increase 10 -o report.html
  quant4 quantize models/stories260K out/x --json > x.json && quant4 report x.json -o x.html

Exit codes: 0 written (and every --max-increase/--max-ppl gate passed), 1 written, but a configuration
failed the report's gate, 2 bad input or usage (one line naming the file), 3 internal error.`)
    .action(
      action(async (args: string[], raw: Record<string, unknown>) => {
        const o = parseOptions(optionsSchema, raw);
        if (process.env["QUANT4_TEST_INTERNAL_ERROR"] === "report") throw new TypeError("test hook: simulated internal error"); // tests of exit 3
        const format = o.format ?? (o.output && /\.(md|markdown)$/i.test(o.output) ? "md" : "html");
        if (o.json && o.output === undefined) throw new UsageError("--json needs -o <file> (without it the report itself goes to standard output)");
        if (o.maxIncrease !== undefined && o.baseline === undefined) throw new UsageError("--max-increase needs --baseline");
        if (o.output !== undefined) {
          const parent = path.dirname(path.resolve(o.output));
          if (!fs.existsSync(parent)) throw new UsageError(`-o ${o.output}: the directory ${parent} does not exist`);
          if (fs.existsSync(o.output) && fs.statSync(o.output).isDirectory()) throw new UsageError(`-o ${o.output} is a directory; give a file name (e.g. ${path.join(o.output, "report.html")})`);
        }
        // Everything is read and validated before any evaluation runs.
        const inputs = args.map(readReportInput);
        const evals = o.eval.map((f) => ({ file: f, r: readEvalResult(f, "--eval") }));
        const mode = progressMode(o.json);
        const status = startStatus(mode);
        const say = (s: string): void => status.set(s);
        try {
          let baseline: Measured | null = null;
          if (o.baseline !== undefined) {
            const spec = o.baseline;
            if (fs.existsSync(spec) && fs.statSync(spec).isFile()) {
              const r = readEvalResult(spec, "--baseline");
              baseline = { ppl: r.ppl, protocol: r.protocol ?? null, source: `eval-ppl result ${spec}` };
            } else {
              const dir = await resolveModelArg(spec, { json: o.json });
              const g = inputs.find((i) => i.summary.gate?.protocol)?.summary.gate;
              const text = o.text ?? g?.protocol?.text ?? "wikitext2";
              const seqlen = o.seqlen ?? (g && (o.text === undefined || o.text === g.protocol!.text) ? g.protocol!.seqlen : undefined);
              const maxWindows = o.maxWindows ?? (g && text === g.protocol!.text && seqlen === g.protocol!.seqlen ? g.protocol!.windows : undefined);
              baseline = evaluateDir(dir, { text, seqlen, maxWindows, encoding: o.textEncoding }, o, say);
              baseline.source = `the source ${spec}, ${baseline.source}`;
            }
          }
          // Where each configuration's perplexity comes from.
          const unmatched = new Set(evals.map((e) => e.file));
          const ppls: (PplView | null)[] = [];
          for (const inp of inputs) {
            const dirs = inputDirs(inp);
            let e = evals.find((x) => x.r.model !== undefined && dirs.includes(path.resolve(x.r.model)));
            if (!e && inputs.length === 1 && evals.length === 1) e = evals[0];
            let m: Measured | null = null;
            if (e) {
              unmatched.delete(e.file);
              if (baseline && !sameProtocol(baseline.protocol, e.r.protocol ?? null))
                throw new UsageError(`--eval ${e.file} was measured on another protocol than --baseline (${protocolDifferences(baseline.protocol!, e.r.protocol!).join("; ")}); evaluate both with the same --text, --seqlen and --max-windows`);
              m = { ppl: e.r.ppl, protocol: e.r.protocol ?? null, source: `eval-ppl result ${e.file}` };
            }
            const gate = gatePpl(inp);
            const gateProtocol = (inp.summary.gate?.protocol as ReportProtocol | undefined) ?? null;
            let view: PplView | null = null;
            if (m) {
              // eval-ppl's own gate (--baseline/--max-increase/--max-ppl when it ran) is the verdict unless the report sets limits.
              const g = e!.r["gate"];
              const verdict = g === "pass" || g === "fail" ? { pass: g === "pass", line: String(e!.r["gateReason"] ?? g) } : null;
              const own = e!.r["baseline"];
              view = { ppl: m.ppl, baseline: baseline?.ppl ?? (typeof own === "number" ? own : null), increasePercent: null, source: m.source, verdict };
            }
            else if (gate && (!baseline || sameProtocol(baseline.protocol, gateProtocol)))
              view = { ...gate, baseline: baseline?.ppl ?? gate.baseline, increasePercent: null };
            else if (baseline) {
              const dir = dirs.find((d) => fs.existsSync(path.join(d, "config.json")));
              if (!dir)
                throw new UsageError(`${inp.arg}: no perplexity for it on the --baseline's protocol and no output directory to evaluate (${dirs.length ? `${dirs.join(", ")} not found` : "the result names none"}); pass --eval <eval-ppl --json result of the output>`);
              const p = baseline.protocol;
              const r = p
                ? evaluateDir(dir, { text: p.text, seqlen: p.seqlen, maxWindows: p.windows, encoding: o.textEncoding }, o, say)
                : evaluateDir(dir, { text: o.text ?? "wikitext2", seqlen: o.seqlen, maxWindows: o.maxWindows, encoding: o.textEncoding }, o, say);
              if (p && r.protocol && protocolDifferences(p, r.protocol).length > 0)
                throw new UsageError(`${inp.arg} cannot be evaluated on the --baseline's protocol (${protocolDifferences(p, r.protocol).join("; ")}); the output's tokenizer or text differs`);
              view = { ppl: r.ppl, baseline: baseline.ppl, increasePercent: null, source: r.source, verdict: null };
            }
            if ((o.maxIncrease !== undefined || o.maxPpl !== undefined) && view?.ppl == null)
              throw new UsageError(`${inp.arg}: no perplexity to gate (${o.maxIncrease !== undefined ? "--max-increase" : "--max-ppl"}); pass --baseline <model-dir> to evaluate it, or --eval <eval-ppl --json result>`);
            if (view && view.ppl !== null && view.baseline !== null) view.increasePercent = (view.ppl / view.baseline - 1) * 100;
            // The report's own gate replaces the run's verdict when limits are given.
            if (view && view.ppl !== null && (o.maxIncrease !== undefined || o.maxPpl !== undefined))
              view.verdict = gateVerdict(view.ppl, { baseline: view.baseline ?? undefined, maxIncrease: o.maxIncrease, maxPpl: o.maxPpl });
            ppls.push(view);
          }
          if (unmatched.size > 0)
            throw new UsageError(`--eval ${[...unmatched][0]} matches no input (its "model" is not one of the inputs' output directories); evaluate the output directory you report on`);
          status.stop();
          const doc = buildDocument(inputs, ppls, { quant4Version: VERSION, baseline: baseline ? { ppl: baseline.ppl, source: baseline.source } : null });
          const text = format === "md" ? renderMarkdown(doc) : renderHtml(doc);
          if (o.output !== undefined) {
            atomicWriteFile(o.output, text);
            if (!o.json) process.stderr.write(`quant4: wrote ${o.output} (${format}, ${fmtBytes(Buffer.byteLength(text))}, ${doc.configs.length} configuration${doc.configs.length === 1 ? "" : "s"})\n`);
          } else writeStdout(text);
          if (o.json)
            printJson({
              output: o.output,
              format,
              bytes: Buffer.byteLength(text),
              baseline: doc.baseline,
              configurations: doc.configs.map((c) => ({
                label: c.label,
                input: c.arg,
                format: c.format,
                outputBytes: c.outputBytes,
                bitsPerQuantizedWeight: c.bitsPerQuantizedWeight,
                meanRelError: c.meanRelError,
                ppl: c.ppl?.ppl ?? null,
                baselinePpl: c.ppl?.baseline ?? null,
                increasePercent: c.ppl?.increasePercent ?? null,
                pplSource: c.ppl?.source ?? null,
                gate: c.ppl?.verdict ? (c.ppl.verdict.pass ? "pass" : "fail") : null,
                gateReason: c.ppl?.verdict?.line ?? null,
              })),
            });
          const failed = doc.configs.filter((c) => c.ppl?.verdict && !c.ppl.verdict.pass);
          for (const c of doc.configs.filter((x) => x.ppl?.verdict && (o.maxIncrease !== undefined || o.maxPpl !== undefined)))
            process.stderr.write(`quant4: gate ${c.ppl!.verdict!.pass ? "pass" : "failed"}: ${c.label}: ${c.ppl!.verdict!.line}\n`);
          if (failed.length > 0 && (o.maxIncrease !== undefined || o.maxPpl !== undefined)) process.exitCode = EXIT_GATE;
        } finally {
          status.stop();
        }
      }),
    );
}
