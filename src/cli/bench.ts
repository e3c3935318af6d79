// `quant4 bench`: inference speed and memory of a checkpoint (and, with --baseline, of its source, side by
// side): prompt tokens/s, decode tokens/s, time to first token, resident weight memory (RSS growth while
// loading, measured) and peak RSS. Each model is measured in a child process of its own (so RSS growth
// and peak RSS are that model's alone), which runs this command with a hidden --measure flag and prints
// one JSON record.

import { spawn } from "node:child_process";
import { Option, type Command } from "commander";
import { z } from "zod";
import { resolveText } from "../calibration/texts.js";
import type { CpuBackend } from "../compute/cpu.js";
import { argmax } from "../model/generate.js";
import { Model, type WeightMemory } from "../model/model.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { ModelError, UsageError } from "../util/errors.js";
import { action, deviceSchema, EXIT_INTERNAL, fmtBytes, intOpt, parseOptions, printJson, resolveModelArg, setupBackend, writeStdout } from "./common.js";

const optionsSchema = z.object({
  baseline: z.string().optional(),
  promptLen: intOpt(1).default(128),
  gen: intOpt(2).default(64),
  reps: intOpt(1).default(1),
  json: z.boolean().default(false),
  dequantize: z.boolean().default(false),
  device: deviceSchema,
  threads: intOpt(1).optional(),
  measure: z.boolean().default(false),
});
type Options = z.infer<typeof optionsSchema>;

/** One model's measurement (the child's JSON record). */
export interface BenchResult {
  model: string;
  /** "packed" when any Linear runs on the packed kernels, else "fp32". */
  runtime: "packed" | "fp32";
  /** Distinct Linear storages, e.g. ["int4 g128"] or ["fp32"]. */
  linears: string[];
  kernels: string;
  threads: number;
  promptTokens: number;
  genTokens: number;
  reps: number;
  loadSeconds: number;
  /** RSS after loading (and a full GC) minus RSS before. */
  residentWeightBytes: number;
  /** The bytes the loaded weights occupy, counted from the tensors. */
  weightMemory: WeightMemory;
  timeToFirstTokenSeconds: number;
  promptTokensPerSecond: number;
  decodeTokensPerSecond: number;
  decodeMsPerTokenMedian: number;
  peakRssBytes: number;
}

const now = () => performance.now() / 1000;

/** A full GC (the child runs with --expose-gc), then the C heap's free pages back to the OS. */
function gc(backend?: { name: string }): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) for (let i = 0; i < 3; i++) g();
  if (backend?.name === "cpu") (backend as CpuBackend).trimMemory();
}

/** Prompt ids: BOS (when the model has one), then a bundled story, repeated to length; ids only if no tokenizer. */
async function promptIds(dir: string, model: Model, n: number): Promise<number[]> {
  const V = model.arch.vocabSize;
  let ids: number[] = [];
  let bos: number | null = model.arch.bosId;
  try {
    const tok = await loadTokenizer(dir);
    bos = tok.bosId ?? bos;
    ids = tok.encode(resolveText("tinystories").text.slice(0, 8 * n + 64)).filter((t) => t >= 0 && t < V);
  } catch {
    /* no tokenizer: synthetic ids below */
  }
  if (ids.length === 0) ids = Array.from({ length: n }, (_, i) => (i * 7919 + 13) % V);
  const out = bos !== null && model.arch.family !== "gpt2" ? [bos] : [];
  for (let i = 0; out.length < n; i++) out.push(ids[i % ids.length]!);
  return out;
}

/** The measurement itself (in the child process). */
async function measure(dir: string, o: Options): Promise<BenchResult> {
  const backend = setupBackend(o.device, o.threads);
  const warm = new Float32Array(64 * 64);
  backend.gemm(false, true, 64, 64, 64, 1, warm, warm, 0, new Float32Array(64 * 64)); // BLAS threads up
  gc(backend);
  const rss0 = process.memoryUsage().rss;
  const t0 = now();
  const model = Model.load(dir, backend, undefined, { dequantize: o.dequantize });
  const loadSeconds = now() - t0;
  gc(backend);
  const residentWeightBytes = process.memoryUsage().rss - rss0;
  const ctx = model.arch.maxPositions;
  if (o.promptLen + o.gen > ctx) throw new UsageError(`--prompt-len ${o.promptLen} + --gen ${o.gen} exceeds the model's context of ${ctx} tokens`);
  const prompt = await promptIds(dir, model, o.promptLen);
  const V = model.arch.vocabSize;

  // Warm-up: thread pools, page faults, scratch buffers.
  {
    const cache = model.newCache(Math.min(ctx, 16));
    model.forward(prompt.slice(0, Math.min(8, prompt.length)), 1, Math.min(8, prompt.length), { cache });
    for (let p = Math.min(8, prompt.length); p < Math.min(ctx, 11); p++) model.forward([prompt[0]!], 1, 1, { pos0: p, cache });
  }

  // --reps runs: the fastest prefill and the fastest decode run (by total time) are reported.
  let ttft = Infinity;
  let times: number[] = [];
  for (let rep = 0; rep < o.reps; rep++) {
    const cache = model.newCache(o.promptLen + o.gen);
    const tp = now();
    let logits = model.forward(prompt, 1, prompt.length, { cache });
    let next = argmax(logits, (prompt.length - 1) * V, V);
    ttft = Math.min(ttft, now() - tp);
    const t: number[] = [];
    for (let i = 1; i < o.gen; i++) {
      const ts = now();
      logits = model.forward([next], 1, 1, { pos0: prompt.length + i - 1, cache });
      next = argmax(logits, 0, V); // EOS does not stop the bench: every run decodes --gen tokens
      t.push(now() - ts);
    }
    const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
    if (rep === 0 || sum(t) < sum(times)) times = t;
  }
  const decodeSeconds = times.reduce((a, b) => a + b, 0);
  const sorted = [...times].sort((a, b) => a - b);
  const wm = model.weightMemory();
  const labels = new Set<string>();
  const linearKeys = new Set(model.arch.linears.map((l) => `${l.name}.weight`));
  for (const b of model.blocks) for (const [k, t] of b) if (linearKeys.has(k)) labels.add(t instanceof Float32Array ? "fp32" : t.label.replace(/ \+\d+ outliers/, " +outliers"));
  const ki = backend.name === "cpu" ? (backend as CpuBackend).kernelInfo() : null;
  return {
    model: dir,
    runtime: wm.packedLinears > 0 ? "packed" : "fp32",
    linears: [...labels].sort(),
    kernels: ki ? `${ki.simd}, ${ki.threads} kernel threads` : backend.name,
    threads: backend.getThreads(),
    promptTokens: prompt.length,
    genTokens: o.gen,
    reps: o.reps,
    loadSeconds,
    residentWeightBytes,
    weightMemory: wm,
    timeToFirstTokenSeconds: ttft,
    promptTokensPerSecond: prompt.length / ttft,
    decodeTokensPerSecond: times.length / decodeSeconds,
    decodeMsPerTokenMedian: 1000 * sorted[Math.floor(sorted.length / 2)]!,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
}

/** Runs the measurement of `dir` in a fresh process (this CLI with --measure and --expose-gc). */
function measureInChild(dir: string, o: Options): Promise<BenchResult> {
  const args = [...process.execArgv, "--expose-gc", process.argv[1]!, "bench", dir, "--measure", "--prompt-len", String(o.promptLen), "--gen", String(o.gen), "--reps", String(o.reps), "--device", o.device];
  if (o.threads !== undefined) args.push("--threads", String(o.threads));
  if (o.dequantize) args.push("--dequantize");
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) {
        // The child's own one-line error ("quant4: error: …") says what went wrong.
        const line = (err.trim().split("\n").pop() ?? `exit ${code}`).replace(/^quant4: (error: |internal error: )?/, "");
        // An internal error (exit 3) stays one; anything else is the child's one-line error about the model.
        reject(code === EXIT_INTERNAL ? new Error(`measuring ${dir}: ${line}`) : new ModelError(`measuring ${dir}: ${line}`));
        return;
      }
      try {
        resolve(JSON.parse(out) as BenchResult);
      } catch {
        reject(new Error(`bench child for ${dir} printed no result`));
      }
    });
  });
}

function fmtRate(x: number): string {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** The side-by-side table (model, baseline, ratio). */
export function benchTable(m: BenchResult, b?: BenchResult): string {
  const rows: Array<[string, (r: BenchResult) => string, ((a: BenchResult, c: BenchResult) => string) | null]> = [
    ["linears", (r) => r.linears.join(", "), null],
    ["kernels", (r) => `${r.kernels}, ${r.threads} BLAS threads`, null],
    ["resident weights (RSS growth)", (r) => fmtBytes(Math.max(0, r.residentWeightBytes)), (a, c) => `${(a.residentWeightBytes / c.residentWeightBytes).toFixed(2)}×`],
    ["weight bytes (counted)", (r) => fmtBytes(r.weightMemory.total), (a, c) => `${(a.weightMemory.total / c.weightMemory.total).toFixed(2)}×`],
    ["peak RSS", (r) => fmtBytes(r.peakRssBytes), (a, c) => `${(a.peakRssBytes / c.peakRssBytes).toFixed(2)}×`],
    ["load", (r) => `${r.loadSeconds.toFixed(2)} s`, null],
    [`time to first token`, (r) => `${(1000 * r.timeToFirstTokenSeconds).toFixed(1)} ms (${r.promptTokens}-token prompt)`, (a, c) => `${(c.timeToFirstTokenSeconds / a.timeToFirstTokenSeconds).toFixed(2)}× faster`],
    ["prompt tokens/s", (r) => fmtRate(r.promptTokensPerSecond), (a, c) => `${(a.promptTokensPerSecond / c.promptTokensPerSecond).toFixed(2)}×`],
    ["decode tokens/s", (r) => `${fmtRate(r.decodeTokensPerSecond)} (${r.genTokens - 1} tokens${r.reps > 1 ? `, best of ${r.reps}` : ""})`, (a, c) => `${(a.decodeTokensPerSecond / c.decodeTokensPerSecond).toFixed(2)}×`],
    ["decode ms/token (median)", (r) => r.decodeMsPerTokenMedian.toFixed(2), (a, c) => `${(c.decodeMsPerTokenMedian / a.decodeMsPerTokenMedian).toFixed(2)}× faster`],
  ];
  const head = b ? ["", "model", "baseline", "model vs baseline"] : ["", "model"];
  const body = rows.map(([name, f, ratio]) => (b ? [name, f(m), f(b), ratio ? ratio(m, b) : ""] : [name, f(m)]));
  const table = [head, ["model dir", m.model, ...(b ? [b.model, ""] : [])], ...body];
  const widths = head.map((_, j) => Math.max(...table.map((r) => r[j]!.length)));
  return table.map((r) => r.map((c, j) => c.padEnd(widths[j]!)).join("  ").trimEnd()).join("\n") + "\n";
}

export function registerBench(program: Command): void {
  program
    .command("bench")
    .description("Inference speed and memory: prompt and decode tokens/s, time to first token, resident weights (vs --baseline)")
    .argument("<model-dir>", "model directory (packed INT4 or fp)")
    .option("--baseline <dir>", "also measure this model (e.g. the fp16 source of a quantized one) and compare")
    .option("--prompt-len <n>", "prompt tokens (prefill)", "128")
    .option("--gen <n>", "tokens to generate (decode; EOS does not stop it)", "64")
    .option("--reps <n>", "prefill + decode runs per model; the fastest prefill and decode run are reported", "1")
    .option("--json", "print the measurements as JSON", false)
    .option("--dequantize", "run packed checkpoints dequantized to fp32 (the pre-runtime path)", false)
    .option("--device <cpu|cuda>", "compute device", "cpu")
    .option("--threads <n>", "BLAS and kernel threads (default: all cores)")
    .addOption(new Option("--measure", "internal: measure in this process and print one JSON record").hideHelp())
    .addHelpText("after", `
Each model is loaded in a process of its own: "resident weights" is that process's RSS growth while
loading (after a full GC and returning freed C heap pages), "peak RSS" its maximum over loading,
prefill and decoding. The prompt is a bundled story (tinystories) tokenized by the model's tokenizer,
repeated to --prompt-len; a warm-up runs first. Time to first token = the prefill of the prompt with
the KV cache, plus the first argmax.

Examples:
  quant4 bench out/stories260K-gptq --baseline models/stories260K
  quant4 bench out/llama-int4 --baseline llama-fp16/ --prompt-len 256 --gen 32 --json`)
    .action(
      action(async (spec: string, raw: unknown) => {
        const o = parseOptions(optionsSchema, raw);
        const dir = await resolveModelArg(spec, { json: o.json || o.measure });
        if (o.measure) {
          writeStdout(JSON.stringify(await measure(dir, o)) + "\n");
          return;
        }
        const baseDir = o.baseline !== undefined ? await resolveModelArg(o.baseline, { json: o.json }) : undefined;
        if (!o.json) process.stderr.write(`quant4: measuring ${dir}…\n`);
        const m = await measureInChild(dir, o);
        let b: BenchResult | undefined;
        if (baseDir !== undefined) {
          if (!o.json) process.stderr.write(`quant4: measuring ${baseDir}…\n`);
          b = await measureInChild(baseDir, o);
        }
        if (o.json) printJson(b ? { model: m, baseline: b } : { model: m });
        else writeStdout(benchTable(m, b));
      }),
    );
}
