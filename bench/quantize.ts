// Wall time, peak RSS and where the time goes in GPTQ (4-bit, group 128, sym) through the real pipeline
// (src/pipeline/quantize.ts runQuantize), with the Backend's GEMM peak measured in the same process.
//
//   node --import tsx bench/quantize.ts [--case brown|7b|all] [--windows 32] [--7b-windows 8] [--blocks 1]
//                                       [--full] [--seqlen 512] [--threads T] [--calib c4] [--json] [--keep]
//   node --import tsx bench/quantize.ts --print saved.json       (re-render a --json result)
//
// Cases (default: both):
//   brown  ../shared/models/brown-llama (the largest shared model; skipped when absent), --windows windows
//   7b     a synthetic checkpoint with Llama-2-7B layer shapes (hidden 4096, intermediate 11008, 32 heads,
//          --blocks blocks, vocab 512, random fp16 weights), written to a temp dir with src/io/writer.ts,
//          with models/stories260K's tokenizer (vocab 512), --7b-windows windows. The default (8 windows,
//          1 block) runs in about 3.5 minutes on 2 cores; --full = 32 windows × 2 blocks (about 12 minutes
//          there: the forward passes alone are ≈ 2.4 × 32·512 rows × 405 MFLOP ≈ 16 TFLOP per block).
// All windows are --seqlen tokens sampled from the bundled --calib text.
//
// Each case runs in a child process (so its peak RSS, process.resourceUsage().maxRSS, is the pipeline's).
// The child hands runQuantize a timing proxy of the CPU backend and follows the pipeline's events to split
// every block's wall time into:
//   forward   the block forward passes over the calibration set (one per true-sequential group, up to its
//             input, plus the pass that makes the next block's inputs), without the Hessian updates
//   hessian   GptqHessian.addBatch = Backend.syrk (X^T X, both triangles written)
//   cholesky  Backend.choleskyInverse + Backend.cholesky of the damped Hessian (potrf, potri, potrf)
//   gptq      the rest of gptqQuantize: the column loop and its lazy-batch GEMMs (shown separately),
//             transposes, dequantize
//   relerr    the pipeline's relative output error tr(ΔHΔᵀ)/tr(WHWᵀ) (two out×in×in GEMMs per Linear)
//   pack      format.pack of the quantized Linear
//   write     writing the block's journal file
// Rates: Hessian flops = rows·n·(n+1) per syrk; Cholesky step flops = n³ (potrf n³/3 + potri 2n³/3)
// + n³/3 (potrf) per Linear; GEMM flops = 2·M·N·K. The machine may be shared: peak = best seen.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sampleWindows } from "../src/calibration/sampler.js";
import { resolveText } from "../src/calibration/texts.js";
import type { Backend } from "../src/compute/backend.js";
import { gemmPeakGflops, getBackend, type CpuBackend } from "../src/compute/index.js";
import { f32ToF16 } from "../src/io/dtype.js";
import { ShardedWriter, atomicWriteFile } from "../src/io/writer.js";
import { openModel } from "../src/model/model.js";
import { runQuantize, type QuantizePlan } from "../src/pipeline/quantize.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { getFormat } from "../formats/index.js";

const here = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(here), "..");

interface Args {
  cases: string[];
  windows: number;
  windows7b: number;
  seqlen: number;
  blocks: number;
  threads?: number;
  calib: string;
  json: boolean;
  keep: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { cases: ["brown", "7b"], windows: 32, windows7b: 8, seqlen: 512, blocks: 1, calib: "c4", json: false, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === "--case") {
      const c = v();
      a.cases = c === "all" ? ["brown", "7b"] : c.split(",");
    } else if (k === "--windows") a.windows = Number(v());
    else if (k === "--7b-windows") a.windows7b = Number(v());
    else if (k === "--full") {
      a.windows7b = 32;
      a.blocks = 2;
    }
    else if (k === "--seqlen") a.seqlen = Number(v());
    else if (k === "--blocks") a.blocks = Number(v());
    else if (k === "--threads") a.threads = Number(v());
    else if (k === "--calib") a.calib = v();
    else if (k === "--json") a.json = true;
    else if (k === "--keep") a.keep = true;
    else if (k === "-h" || k === "--help") {
      console.log(fs.readFileSync(here, "utf8").split("\n").slice(0, 32).join("\n"));
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// synthetic Llama-2-7B-shaped checkpoint

/** Deterministic N(0, std²)-ish values (sum of 4 uniforms, variance-matched); fast enough for 400M values. */
function randomF16(n: number, std: number, seed: number): Uint16Array {
  const x = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const k = std * Math.sqrt(3); // sum of 4 U(-1,1) has variance 4/3 → scale to std
  for (let i = 0; i < n; i++) {
    let u = 0;
    for (let j = 0; j < 4; j++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      u += (s >>> 0) / 2147483648 - 1;
    }
    x[i] = (u * k) / 2;
  }
  return f32ToF16(x);
}

function writeSynthetic7b(dir: string, blocks: number, seqlen: number): void {
  const hidden = 4096;
  const inter = 11008;
  const vocab = 512;
  fs.mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: blocks,
    num_attention_heads: 32,
    num_key_value_heads: 32,
    vocab_size: vocab,
    max_position_embeddings: Math.max(4096, seqlen),
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    hidden_act: "silu",
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float16",
    attention_bias: false,
    mlp_bias: false,
  };
  atomicWriteFile(path.join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  fs.copyFileSync(path.join(root, "models/stories260K/tokenizer.model"), path.join(dir, "tokenizer.model"));
  const w = new ShardedWriter(dir, { maxShardBytes: 64e9 });
  let seed = 1;
  const ones = (n: number) => f32ToF16(new Float32Array(n).fill(1));
  try {
    w.add({ name: "model.embed_tokens.weight", dtype: "F16", shape: [vocab, hidden], data: randomF16(vocab * hidden, 1, seed++) });
    for (let i = 0; i < blocks; i++) {
      const p = `model.layers.${i}.`;
      w.add({ name: p + "input_layernorm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
      w.add({ name: p + "post_attention_layernorm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
      for (const n of ["q_proj", "k_proj", "v_proj", "o_proj"])
        w.add({ name: `${p}self_attn.${n}.weight`, dtype: "F16", shape: [hidden, hidden], data: randomF16(hidden * hidden, 0.02, seed++) });
      for (const n of ["gate_proj", "up_proj"])
        w.add({ name: `${p}mlp.${n}.weight`, dtype: "F16", shape: [inter, hidden], data: randomF16(inter * hidden, 0.02, seed++) });
      w.add({ name: `${p}mlp.down_proj.weight`, dtype: "F16", shape: [hidden, inter], data: randomF16(hidden * inter, 0.02, seed++) });
    }
    w.add({ name: "model.norm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
    w.add({ name: "lm_head.weight", dtype: "F16", shape: [vocab, hidden], data: randomF16(vocab * hidden, 0.02, seed++) });
    w.finish({ format: "pt" });
  } catch (e) {
    w.abort();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// child: one instrumented pipeline run

type Phase = "forward" | "gptq" | "relerr" | "pack" | "write";
const PHASES: Phase[] = ["forward", "gptq", "relerr", "pack", "write"];

interface BlockTiming {
  block: number;
  seconds: number;
  phases: Record<Phase, number>;
  hessianSeconds: number;
  hessianFlops: number;
  choleskySeconds: number;
  choleskyFlops: number;
  lazyGemmSeconds: number;
  forwardGemmSeconds: number;
  forwardGemmFlops: number;
}

interface ChildResult {
  label: string;
  model: string;
  arch: { hidden: number; intermediate: number; blocks: number; heads: number; vocab: number };
  nsamples: number;
  seqlen: number;
  threads: number;
  blas: string;
  totalSeconds: number;
  blockSeconds: number[];
  blocks: BlockTiming[];
  peakRssBytes: number;
  reportPeakRssBytes: number;
  gemmPeak: { before: Record<string, number>; after: Record<string, number>; best: number };
  quantizedLinears: number;
  meanRelError: number;
}

function newBlock(block: number): BlockTiming {
  return {
    block, seconds: 0, phases: { forward: 0, gptq: 0, relerr: 0, pack: 0, write: 0 },
    hessianSeconds: 0, hessianFlops: 0, choleskySeconds: 0, choleskyFlops: 0, lazyGemmSeconds: 0, forwardGemmSeconds: 0, forwardGemmFlops: 0,
  };
}

const now = () => performance.now() / 1000;

/**
 * Times every Backend call and keeps a phase clock driven by the pipeline's events and its call pattern:
 * a forward phase ends at the end of its last forward call (gemm with B transposed, or attention's S·V,
 * or syrk) before GPTQ's first Cholesky; within a Linear, the first plain (no-transpose) gemm after GPTQ
 * starts the relative-error phase, the end of its last gemm starts packing; onLayerDone ends the Linear.
 */
class PhaseClock implements Backend {
  readonly name: string;
  cur!: BlockTiming;
  phase: Phase = "forward";
  private phaseStart = 0;
  private lastForwardEnd = 0;
  private relerrCalls = 0;
  constructor(private readonly inner: Backend) {
    this.name = `timed(${inner.name})`;
  }
  begin(b: BlockTiming, phase: Phase): void {
    const t = now();
    if (this.cur) this.switchTo(phase, t); // (the short gap since onBlockDone goes to the previous block)
    this.cur = b;
    this.phase = phase;
    this.phaseStart = t;
  }
  switchTo(phase: Phase, t: number): void {
    if (this.cur && t > this.phaseStart) this.cur.phases[this.phase] += t - this.phaseStart;
    this.phase = phase;
    this.phaseStart = t;
    this.relerrCalls = 0;
  }
  setThreads(n: number): void {
    this.inner.setThreads(n);
  }
  getThreads(): number {
    return this.inner.getThreads();
  }
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, B: Float32Array, beta: number, C: Float32Array): void {
    const t0 = now();
    // In the GPTQ phase a plain gemm is the pipeline's relative error (GPTQ's own are transA).
    if (this.phase === "gptq" && !transA) this.switchTo("relerr", t0);
    // After GPTQ of a group's last Linear the next block forward starts with a transB gemm.
    if (this.phase === "write" && !transA && transB) this.switchTo("forward", t0);
    this.inner.gemm(transA, transB, M, N, K, alpha, A, B, beta, C);
    const t1 = now();
    if (this.phase === "forward") {
      this.lastForwardEnd = t1;
      this.cur.forwardGemmSeconds += t1 - t0;
      this.cur.forwardGemmFlops += 2 * M * N * K;
    } else if (this.phase === "gptq" && transA) {
      this.cur.lazyGemmSeconds += t1 - t0;
    } else if (this.phase === "relerr" && ++this.relerrCalls === 2) {
      this.switchTo("pack", t1);
    }
  }
  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array): void {
    const t0 = now();
    this.inner.syrk(n, rows, alpha, X, beta, H);
    const t1 = now();
    this.cur.hessianSeconds += t1 - t0;
    this.cur.hessianFlops += rows * n * (n + 1);
    if (this.phase === "forward") this.lastForwardEnd = t1;
  }
  private enterGptq(): void {
    if (this.phase === "forward") this.switchTo("gptq", this.lastForwardEnd || now());
  }
  cholesky(A: Float32Array, n: number, upper: boolean): boolean {
    this.enterGptq();
    const t0 = now();
    const r = this.inner.cholesky(A, n, upper);
    this.cur.choleskySeconds += now() - t0;
    this.cur.choleskyFlops += (n * n * n) / 3;
    return r;
  }
  choleskyInverse(A: Float32Array, n: number): boolean {
    this.enterGptq();
    const t0 = now();
    const r = this.inner.choleskyInverse(A, n);
    this.cur.choleskySeconds += now() - t0;
    this.cur.choleskyFlops += n * n * n;
    return r;
  }
}

function peaks(be: Backend): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [n, reps] of [[512, 5], [1024, 3], [2048, 2]] as const) r[`n${n}`] = Math.max(gemmPeakGflops(be, n, reps), gemmPeakGflops(be, n, reps));
  return r;
}

async function runChild(spec: { label: string; model: string; nsamples: number; seqlen: number; calib: string; threads?: number }): Promise<ChildResult> {
  const be = getBackend("cpu");
  if (spec.threads !== undefined) be.setThreads(spec.threads);
  const before = peaks(be);
  const src = openModel(spec.model);
  const a = src.arch;
  const tok = loadTokenizer(spec.model);
  const text = resolveText(spec.calib);
  const windows = sampleWindows(tok.encode(text.text), spec.nsamples, spec.seqlen, 0, text.name);
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-bench-out-"));
  const plan: QuantizePlan = {
    src,
    format: getFormat("gptq"),
    settings: { method: "gptq", bits: 4, groupSize: 128, sym: true, actOrder: false, staticGroups: false, damp: 0.01, trueSequential: true },
    windows,
    calibrate: true,
    nsamples: spec.nsamples,
    seqlen: spec.seqlen,
    actDtype: "fp32",
    maxMemoryBytes: null,
    blockSize: 128,
    maxShardBytes: 4e9,
    outDir: path.join(outDir, "out"),
    settingsKey: `bench-${process.pid}`,
    resume: false,
  };
  const clock = new PhaseClock(be);
  const blocks: BlockTiming[] = [];
  // Which Linear closes its true-sequential group (then a forward starts; after the last group, the write).
  const groupEnd = new Map<string, "forward" | "write">();
  a.sequentialGroups.forEach((g, gi) => groupEnd.set(g[g.length - 1]!, gi === a.sequentialGroups.length - 1 ? "write" : "forward"));
  let report;
  try {
    report = await runQuantize(plan, clock, {
      onBlockStart: (i) => {
        const b = newBlock(i);
        blocks.push(b);
        clock.begin(b, "forward");
      },
      onLayerDone: (i, stat) => {
        const rel = stat.name.slice(a.blockPrefix(i).length);
        clock.switchTo(groupEnd.get(rel) ?? "gptq", now());
      },
      onBlockDone: (i, _n, seconds) => {
        clock.switchTo("forward", now());
        blocks[blocks.length - 1]!.seconds = seconds;
        process.stderr.write(`  [${spec.label}] block ${i + 1}/${a.nLayers}: ${seconds.toFixed(1)} s\n`);
      },
    });
  } finally {
    fs.rmSync(outDir, { recursive: true, force: true });
  }
  const after = peaks(be);
  const q = report.layers.filter((l) => l.status === "quantized");
  return {
    label: spec.label,
    model: spec.model,
    arch: { hidden: a.hidden, intermediate: a.intermediate, blocks: a.nLayers, heads: a.nHeads, vocab: a.vocabSize },
    nsamples: spec.nsamples,
    seqlen: spec.seqlen,
    threads: be.getThreads(),
    blas: (be as CpuBackend).blasInfo,
    totalSeconds: report.totalSeconds,
    blockSeconds: report.blockSeconds,
    blocks,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    reportPeakRssBytes: report.peakRssBytes,
    gemmPeak: { before, after, best: Math.max(...Object.values(before), ...Object.values(after)) },
    quantizedLinears: q.length,
    meanRelError: q.reduce((s, l) => s + (l.relError ?? 0), 0) / Math.max(1, q.length),
  };
}

// ---------------------------------------------------------------------------------------------
// parent

function spawnChild(spec: Parameters<typeof runChild>[0]): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, here, "--child", JSON.stringify(spec)], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`${spec.label}: child exited with ${code}`));
      const line = out.trim().split("\n").pop() ?? "";
      try {
        resolve(JSON.parse(line) as ChildResult);
      } catch {
        reject(new Error(`${spec.label}: no JSON result from the child:\n${out}`));
      }
    });
  });
}

const gb = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

function printResult(r: ChildResult, log: (s: string) => void): void {
  const pk = r.gemmPeak.best;
  log(`\n## ${r.label}: hidden ${r.arch.hidden}, intermediate ${r.arch.intermediate}, ${r.arch.blocks} blocks, ${r.arch.heads} heads, vocab ${r.arch.vocab}; ` +
    `GPTQ 4-bit g128 sym, ${r.nsamples} windows × ${r.seqlen}, threads ${r.threads}`);
  log(`wall ${r.totalSeconds.toFixed(1)} s (pipeline total), ${(r.blockSeconds.reduce((s, x) => s + x, 0) / r.blockSeconds.length).toFixed(1)} s per block ` +
    `[${r.blockSeconds.map((s) => s.toFixed(1)).join(", ")}], peak RSS ${gb(r.peakRssBytes)}; ${r.quantizedLinears} Linears, mean rel. error ${r.meanRelError.toExponential(2)}`);
  log(`GEMM peak in this process (gemmPeakGflops, best of n=512/1024/2048 before and after): ${pk.toFixed(1)} GFLOP/s ` +
    `(before ${Object.entries(r.gemmPeak.before).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")}; after ${Object.entries(r.gemmPeak.after).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")})`);
  const sum = (f: (b: BlockTiming) => number) => r.blocks.reduce((s, b) => s + f(b), 0);
  const n = r.blocks.length;
  const tot = sum((b) => b.seconds);
  const fwd = sum((b) => b.phases.forward) - sum((b) => b.hessianSeconds);
  const rows: [string, number, string][] = [
    ["forward (excl. Hessian)", fwd, `GEMMs ${(sum((b) => b.forwardGemmFlops) / sum((b) => b.forwardGemmSeconds) / 1e9).toFixed(1)} GFLOP/s, ${((100 * sum((b) => b.forwardGemmSeconds)) / Math.max(fwd, 1e-9)).toFixed(0)}% of forward in GEMMs`],
    ["Hessian (syrk)", sum((b) => b.hessianSeconds), `${(sum((b) => b.hessianFlops) / sum((b) => b.hessianSeconds) / 1e9).toFixed(1)} GFLOP/s = ${((100 * sum((b) => b.hessianFlops) / sum((b) => b.hessianSeconds) / 1e9) / pk).toFixed(0)}% of peak`],
    ["GPTQ: Cholesky", sum((b) => b.choleskySeconds), `${(sum((b) => b.choleskyFlops) / sum((b) => b.choleskySeconds) / 1e9).toFixed(1)} GFLOP/s = ${((100 * sum((b) => b.choleskyFlops) / sum((b) => b.choleskySeconds) / 1e9) / pk).toFixed(0)}% of peak`],
    ["GPTQ: column loop etc.", sum((b) => b.phases.gptq) - sum((b) => b.choleskySeconds), `of which lazy-batch GEMMs ${sum((b) => b.lazyGemmSeconds).toFixed(2)} s`],
    ["relative error metric", sum((b) => b.phases.relerr), "2 GEMMs out×in×in per Linear"],
    ["packing", sum((b) => b.phases.pack), "format.pack"],
    ["journal write", sum((b) => b.phases.write), ""],
  ];
  const accounted = rows.reduce((s, x) => s + x[1], 0);
  rows.push(["unaccounted", tot - accounted, ""]);
  log(`  per block (mean of ${n})            seconds    share`);
  for (const [name, s, note] of rows) log(`  ${name.padEnd(26)} ${(s / n).toFixed(2).padStart(9)}  ${((100 * s) / tot).toFixed(1).padStart(5)}%  ${note}`);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--child") {
    const r = await runChild(JSON.parse(argv[1]!) as Parameters<typeof runChild>[0]);
    process.stdout.write(JSON.stringify(r) + "\n");
    return;
  }
  if (argv[0] === "--print") {
    // Re-render a saved --json result.
    const saved = JSON.parse(fs.readFileSync(argv[1]!, "utf8")) as ChildResult[];
    if (saved[0]) console.log(`# ${saved[0].blas}`);
    for (const r of saved) printResult(r, console.log);
    return;
  }
  const args = parseArgs(argv);
  const log = (s: string) => {
    if (!args.json) console.log(s);
  };
  const results: ChildResult[] = [];
  for (const c of args.cases) {
    if (c === "brown") {
      const dir = path.resolve(root, "../shared/models/brown-llama");
      if (!fs.existsSync(path.join(dir, "config.json"))) {
        log(`(skipping brown: ${dir} not found)`);
        continue;
      }
      process.stderr.write(`running brown-llama: ${args.windows} × ${args.seqlen}\n`);
      results.push(await spawnChild({ label: "brown-llama", model: dir, nsamples: args.windows, seqlen: args.seqlen, calib: args.calib, threads: args.threads }));
    } else if (c === "7b") {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-bench-7b-"));
      try {
        const t0 = now();
        writeSynthetic7b(dir, args.blocks, args.seqlen);
        process.stderr.write(`synthetic 7B-shape checkpoint (${args.blocks} blocks) written to ${dir} in ${(now() - t0).toFixed(1)} s; running: ${args.windows7b} × ${args.seqlen}\n`);
        results.push(await spawnChild({ label: "synthetic Llama-2-7B shapes", model: dir, nsamples: args.windows7b, seqlen: args.seqlen, calib: args.calib, threads: args.threads }));
      } finally {
        if (!args.keep) fs.rmSync(dir, { recursive: true, force: true });
        else log(`(kept ${dir})`);
      }
    } else throw new Error(`unknown case "${c}" (brown, 7b, all)`);
  }
  if (args.json) console.log(JSON.stringify(results, null, 2));
  else {
    if (results[0]) log(`# ${results[0].blas}; node ${process.version}`);
    for (const r of results) printResult(r, log);
  }
}

await main();
