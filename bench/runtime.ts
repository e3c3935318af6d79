// The INT4 runtime (issue 14) on Llama-2-7B layer shapes: decode and prefill from packed INT4 g128 weights
// against the fp16 source as quant4 runs it without the packed runtime (widened to fp32, sgemm), in one
// run, with this machine's memory-copy bandwidth measured alongside.
//
//   node --import tsx bench/runtime.ts [--blocks 4] [--prompt-len 128] [--gen 16] [--reps 2] [--threads T]
//                                      [--skip-kernels] [--skip-model] [--no-simd-compare] [--dir D] [--keep] [--json]
//
// 1. memcpy: best of 7 copies of a 256 MiB Float32Array (TypedArray.set = memcpy); "copy GB/s" counts the
//    bytes copied, "r+w GB/s" the bytes read plus written (the STREAM convention).
// 2. kernels, per Llama-2-7B Linear shape (q/k/v/o 4096×4096, gate/up 11008×4096, down 4096×11008):
//    - decode (batch 1): the packed INT4 g128 GEMV vs fp32 sgemm with M = 1 (how an fp16 checkpoint runs
//      today) and the fp16 GEMV, each over enough copies of the layer to stream from DRAM (> 4× L3), best
//      of several passes; achieved bandwidth = resident bytes of the weight / time; the INT4 GEMV at every
//      SIMD level the CPU has (AVX-512, AVX2), passes alternating between the levels;
//    - short prompts: the packed GEMV on 4 and 16 input rows in one pass over the weights (the kernel's
//      multi-row path) vs once per row (the path before it), ms per call, weights streamed from DRAM;
//    - prefill: packed GEMM (dequantized tiles + sgemm) vs fp32 sgemm at M = 128 and 512 rows, GFLOP/s.
// 3. model: a synthetic checkpoint with Llama-2-7B layer shapes (hidden 4096, intermediate 11008, 32 heads,
//    --blocks blocks, vocab 512 with models/stories260K's tokenizer, random fp16 weights; the generator of
//    bench/quantize.ts), quantized with `quant4 quantize --method rtn --scheme w4-g128` (gptq format), then
//    `quant4 bench <int4> --baseline <fp16> --reps R`: time to first token, prompt and decode tokens/s
//    (fastest of R runs), resident weights and peak RSS of each in its own process. Achieved decode bandwidth = weight bytes read per
//    token (every resident weight but the embedding table) / decode seconds per token. Where the CPU has
//    AVX-512, the INT4 model is also run with QUANT4_SIMD=avx2 (the kernels before AVX-512), after the
//    best level, and — the comparison that survives a shared machine — loaded into this process and
//    decoded with the SIMD level alternating token by token (avx512, avx2, avx512, …; 2·gen·reps tokens
//    after a 32-token prompt): min and median ms per token per level (--no-simd-compare skips both).
// Targets (issue 14): INT4 decode ≥ 3× faster per token than the fp16 source; ≥ 70% of the bandwidth
// limit (memcpy); peak RSS of the INT4 model ≤ ½ of the fp16 source's; prefill GEMM ≥ 80% of fp32 sgemm.

import { writeSynthetic7b } from "./synthetic.js";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { getBackend, type CpuBackend, type CpuLinearHandle, type SimdLevel } from "../src/compute/index.js";
import type { BenchResult } from "../src/cli/bench.js";
import { f32ToF16 } from "../src/io/dtype.js";
import { Model } from "../src/model/model.js";

const here = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(here), "..");

interface Args {
  blocks: number;
  promptLen: number;
  gen: number;
  reps: number;
  threads?: number;
  skipKernels: boolean;
  skipModel: boolean;
  simdCompare: boolean;
  dir?: string;
  keep: boolean;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { blocks: 4, promptLen: 128, gen: 16, reps: 2, skipKernels: false, skipModel: false, simdCompare: true, keep: false, json: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === "--blocks") a.blocks = Number(v());
    else if (k === "--prompt-len") a.promptLen = Number(v());
    else if (k === "--gen") a.gen = Number(v());
    else if (k === "--reps") a.reps = Number(v());
    else if (k === "--threads") a.threads = Number(v());
    else if (k === "--skip-kernels") a.skipKernels = true;
    else if (k === "--skip-model") a.skipModel = true;
    else if (k === "--no-simd-compare") a.simdCompare = false;
    else if (k === "--dir") a.dir = v();
    else if (k === "--keep") a.keep = true;
    else if (k === "--json") a.json = true;
    else if (k === "-h" || k === "--help") {
      console.log(fs.readFileSync(here, "utf8").split("\n").slice(0, 24).join("\n"));
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

const now = () => performance.now() / 1000;
const GB = 1e9;

// ---------------------------------------------------------------------------------------------
// 1. memcpy

function memcpyBandwidth(): { copyGBs: number; rwGBs: number } {
  const n = 64 << 20; // 256 MiB of fp32
  const a = new Float32Array(n).fill(1);
  const b = new Float32Array(n);
  let best = Infinity;
  for (let r = 0; r < 7; r++) {
    const t = now();
    b.set(a);
    best = Math.min(best, now() - t);
  }
  return { copyGBs: (4 * n) / best / GB, rwGBs: (8 * n) / best / GB };
}

// ---------------------------------------------------------------------------------------------
// 2. kernels

interface ShapeResult {
  shape: string;
  out: number;
  in: number;
  int4Bytes: number;
  gemvInt4Ms: number;
  gemvInt4GBs: number;
  /** The INT4 GEMV at each SIMD level (best first; the first is gemvInt4Ms), passes alternating. */
  gemvInt4ByLevel: Array<{ level: SimdLevel; ms: number; GBs: number }>;
  sgemvFp32Ms: number;
  sgemvFp32GBs: number;
  gemvF16Ms: number;
  gemvF16GBs: number;
  decodeSpeedup: number;
  shortPrompt: Array<{ rows: number; onePassMs: number; perRowMs: number; speedup: number }>;
  prefill: Array<{ rows: number; packedGflops: number; fp32Gflops: number; ratio: number }>;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Best seconds per call of f over `reps` passes of `calls` calls. */
function bestPerCall(calls: number, reps: number, f: (i: number) => void): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t = now();
    for (let i = 0; i < calls; i++) f(i);
    best = Math.min(best, (now() - t) / calls);
  }
  return best;
}

function kernelBench(be: CpuBackend): ShapeResult[] {
  const res: ShapeResult[] = [];
  const L3 = 32 << 20;
  for (const [name, out, inF] of [["q/k/v/o", 4096, 4096], ["gate/up", 11008, 4096], ["down", 4096, 11008]] as const) {
    const G = inF / 128;
    const r = lcg(out + inF);
    const codes = new Uint8Array(out * inF);
    for (let i = 0; i < codes.length; i++) codes[i] = (r() * 16) | 0;
    const scales = Float32Array.from({ length: out * G }, () => 0.001 + 0.01 * r());
    const zeros = new Uint8Array(out * G).fill(8);
    const first = be.packLinear({ outFeatures: out, inFeatures: inF, bits: 4, groupSize: 128, codes, scales, zeros });
    const copies = Math.max(2, Math.ceil((4 * L3) / first.bytes));
    const hs: CpuLinearHandle[] = [first];
    for (let c = 1; c < copies; c++) hs.push(be.packLinear({ outFeatures: out, inFeatures: inF, bits: 4, groupSize: 128, codes, scales, zeros }));
    const x1 = Float32Array.from({ length: inF }, () => r() * 2 - 1);
    const y1 = new Float32Array(out);
    for (const h of hs) h.linear(x1, 1, y1); // page in
    // The GEMV at every SIMD level (not scalar), one pass each in turn, best of 8 per level.
    const levels: SimdLevel[] = be.kernelInfo().simdLevels.filter((l) => l !== "scalar");
    const start = be.kernelInfo().simd;
    const bestByLevel = levels.map(() => Infinity);
    for (let pass = 0; pass < 8; pass++)
      levels.forEach((l, k) => {
        be.setSimd(l);
        bestByLevel[k] = Math.min(bestByLevel[k]!, bestPerCall(copies, 1, (i) => hs[i]!.linear(x1, 1, y1, undefined, "gemv")));
      });
    be.setSimd(start);
    const gemv = levels.length ? bestByLevel[levels.indexOf(start)] ?? bestByLevel[0]! : bestPerCall(copies, 8, (i) => hs[i]!.linear(x1, 1, y1, undefined, "gemv"));
    const gemvInt4ByLevel = levels.map((level, k) => ({ level, ms: 1000 * bestByLevel[k]!, GBs: first.bytes / bestByLevel[k]! / GB }));
    // short prompts: several rows in one pass over the weights vs the GEMV once per row
    const shortPrompt: ShapeResult["shortPrompt"] = [];
    for (const rows of [4, 16]) {
      const x = Float32Array.from({ length: rows * inF }, () => r() * 2 - 1);
      const y = new Float32Array(rows * out);
      const onePass = bestPerCall(copies, 4, (i) => hs[i]!.linear(x, rows, y, undefined, "gemv"));
      const perRow = bestPerCall(copies, 4, (i) => {
        for (let t = 0; t < rows; t++) hs[i]!.linear(x.subarray(t * inF, (t + 1) * inF), 1, y.subarray(t * out, (t + 1) * out), undefined, "gemv");
      });
      shortPrompt.push({ rows, onePassMs: 1000 * onePass, perRowMs: 1000 * perRow, speedup: perRow / onePass });
    }
    // fp32 (the fp16 source widened, as eval/generate run an fp checkpoint) and fp16 weights.
    const W = new Float32Array(out * inF);
    first.rows(0, out, W);
    const fpCopies = Math.max(2, Math.ceil((4 * L3) / W.byteLength));
    const Ws = [W, ...Array.from({ length: fpCopies - 1 }, () => W.slice())];
    const sgemv = bestPerCall(fpCopies, 5, (i) => be.gemm(false, true, 1, out, inF, 1, x1, Ws[i]!, 0, y1));
    const w16 = f32ToF16(W);
    const f16 = Array.from({ length: Math.max(2, Math.ceil((4 * L3) / w16.byteLength)) }, () => be.f16Linear(w16, out, inF));
    for (const h of f16) h.linear(x1, 1, y1);
    const gemvF16 = bestPerCall(f16.length, 5, (i) => f16[i]!.linear(x1, 1, y1, undefined, "gemv"));
    Ws.length = 1;
    f16.length = 0;
    // prefill
    const prefill: ShapeResult["prefill"] = [];
    for (const M of [128, 512]) {
      const x = Float32Array.from({ length: M * inF }, () => r() * 2 - 1);
      const y = new Float32Array(M * out);
      const flops = 2 * M * out * inF;
      first.linear(x, M, y, undefined, "gemm");
      be.gemm(false, true, M, out, inF, 1, x, W, 0, y);
      let tp = Infinity;
      let tf = Infinity;
      for (let k = 0; k < 3; k++) {
        tp = Math.min(tp, bestPerCall(1, 1, () => first.linear(x, M, y, undefined, "gemm")));
        tf = Math.min(tf, bestPerCall(1, 1, () => be.gemm(false, true, M, out, inF, 1, x, W, 0, y)));
      }
      prefill.push({ rows: M, packedGflops: flops / tp / GB, fp32Gflops: flops / tf / GB, ratio: tf / tp });
    }
    res.push({
      shape: `${name} ${out}×${inF}`,
      out,
      in: inF,
      int4Bytes: first.bytes,
      gemvInt4Ms: 1000 * gemv,
      gemvInt4GBs: first.bytes / gemv / GB,
      gemvInt4ByLevel,
      sgemvFp32Ms: 1000 * sgemv,
      sgemvFp32GBs: W.byteLength / sgemv / GB,
      gemvF16Ms: 1000 * gemvF16,
      gemvF16GBs: w16.byteLength / gemvF16 / GB,
      decodeSpeedup: sgemv / gemv,
      shortPrompt,
      prefill,
    });
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// 3. model: the synthetic 7B-shaped checkpoint (generator as in bench/quantize.ts)


function runQuant4(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(root, "bin/quant4.ts"), ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, QUANT4_PROGRESS: "off", ...env } });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`quant4 ${args.join(" ")} exited ${code}: ${err.trim().split("\n").pop()}`))));
  });
}

interface ModelResult {
  blocks: number;
  int4: BenchResult;
  fp16: BenchResult;
  /** Weight bytes read per decoded token (all resident weights but the embedding table). */
  int4BytesPerToken: number;
  fp16BytesPerToken: number;
  int4DecodeGBs: number;
  fp16DecodeGBs: number;
  /** The INT4 model again with QUANT4_SIMD=avx2 (where the CPU has AVX-512 and --no-simd-compare is not given). */
  int4Avx2?: BenchResult;
  int4Avx2DecodeGBs?: number;
  /** INT4 decode in this process, the SIMD level alternating token by token. */
  alternating?: Array<{ level: SimdLevel; tokens: number; minMs: number; medianMs: number }>;
}

/** Decode the INT4 model in this process with the SIMD level alternating per token. */
function alternatingDecode(be: CpuBackend, dir: string, levels: SimdLevel[], tokens: number): ModelResult["alternating"] {
  const m = Model.load(dir, be);
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37 + 5) % m.arch.vocabSize);
  const cache = m.newCache(prompt.length + tokens + 4);
  const start = be.kernelInfo().simd;
  let logits = m.forward(prompt, 1, prompt.length, { cache });
  const times = levels.map(() => [] as number[]);
  for (let i = 0, pos = prompt.length; i < tokens + 2; i++, pos++) {
    const k = i % levels.length;
    be.setSimd(levels[k]!);
    let next = 0;
    for (let v = 1; v < m.arch.vocabSize; v++) if (logits[v]! > logits[next]!) next = v;
    const t = now();
    logits = m.forward([next], 1, 1, { pos0: pos, cache });
    if (i >= 2) times[k]!.push(1000 * (now() - t)); // the first token per level warms up
  }
  be.setSimd(start);
  return levels.map((level, k) => {
    const s = [...times[k]!].sort((a, b) => a - b);
    return { level, tokens: s.length, minMs: s[0]!, medianMs: s[Math.floor(s.length / 2)]! };
  });
}

/** Every resident weight but the embedding table (one row of it is read per token). */
function bytesPerToken(r: BenchResult, embedBytes: number): number {
  return r.weightMemory.total - embedBytes;
}

async function modelBench(a: Args, be: CpuBackend, simdLevels: SimdLevel[], log: (s: string) => void): Promise<ModelResult> {
  const base = a.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "quant4-runtime-"));
  const fp = path.join(base, "fp16");
  const q = path.join(base, "int4-g128");
  try {
    if (!fs.existsSync(path.join(fp, "config.json"))) {
      const t = now();
      writeSynthetic7b(fp, a.blocks);
      log(`synthetic 7B-shape checkpoint, ${a.blocks} blocks: ${fp} (${(now() - t).toFixed(0)} s)`);
    }
    if (!fs.existsSync(path.join(q, "config.json"))) {
      const t = now();
      await runQuant4(["quantize", fp, q, "--method", "rtn", "--scheme", "w4-g128", "--format", "gptq", ...(a.threads ? ["--threads", String(a.threads)] : [])]);
      log(`quantized (RTN, 4-bit g128 sym, gptq format): ${q} (${(now() - t).toFixed(0)} s)`);
    }
    const t = now();
    const common = ["--prompt-len", String(a.promptLen), "--gen", String(a.gen), "--reps", String(a.reps), "--json", ...(a.threads ? ["--threads", String(a.threads)] : [])];
    const out = await runQuant4(["bench", q, "--baseline", fp, ...common]);
    log(`quant4 bench: ${(now() - t).toFixed(0)} s`);
    const r = JSON.parse(out) as { model: BenchResult; baseline: BenchResult };
    let int4Avx2: BenchResult | undefined;
    if (a.simdCompare && simdLevels[0] === "avx512") {
      const t2 = now();
      int4Avx2 = (JSON.parse(await runQuant4(["bench", q, ...common], { QUANT4_SIMD: "avx2" })) as { model: BenchResult }).model;
      log(`quant4 bench (QUANT4_SIMD=avx2): ${(now() - t2).toFixed(0)} s`);
    }
    let alternating: ModelResult["alternating"];
    if (a.simdCompare && simdLevels[0] === "avx512") {
      const t3 = now();
      alternating = alternatingDecode(be, q, ["avx512", "avx2"], 2 * a.gen * a.reps);
      log(`decode with the SIMD level alternating per token: ${(now() - t3).toFixed(0)} s`);
    }
    const hidden = 4096;
    const vocab = 512;
    const i4 = bytesPerToken(r.model, vocab * hidden * 2); // embeddings stay fp16 in the packed runtime
    const f = bytesPerToken(r.baseline, vocab * hidden * 4);
    return {
      blocks: a.blocks,
      int4: r.model,
      fp16: r.baseline,
      int4BytesPerToken: i4,
      fp16BytesPerToken: f,
      int4DecodeGBs: (i4 * r.model.decodeTokensPerSecond) / GB,
      fp16DecodeGBs: (f * r.baseline.decodeTokensPerSecond) / GB,
      ...(int4Avx2 ? { int4Avx2, int4Avx2DecodeGBs: (i4 * int4Avx2.decodeTokensPerSecond) / GB } : {}),
      ...(alternating ? { alternating } : {}),
    };
  } finally {
    if (!a.keep && !a.dir) fs.rmSync(base, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------

function table(rows: string[][]): string {
  const w = rows[0]!.map((_, j) => Math.max(...rows.map((r) => r[j]!.length)));
  return rows.map((r, i) => "| " + r.map((c, j) => c.padEnd(w[j]!)).join(" | ") + " |" + (i === 0 ? "\n|" + w.map((n) => "-".repeat(n + 2)).join("|") + "|" : "")).join("\n");
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const be = getBackend("cpu") as CpuBackend;
  if (a.threads) be.setThreads(a.threads);
  const log = (s: string) => process.stderr.write(s + "\n");
  const ki = be.kernelInfo();
  const env = { cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? "?", blas: be.blasInfo, kernels: `${ki.simd}, ${ki.threads} threads`, blasThreads: be.getThreads(), loadavg: os.loadavg() };
  const mem = memcpyBandwidth();
  log(`memcpy: ${mem.copyGBs.toFixed(1)} GB/s copied (${mem.rwGBs.toFixed(1)} GB/s read+write)`);
  const kernels = a.skipKernels ? [] : kernelBench(be);
  const model = a.skipModel ? null : await modelBench(a, be, ki.simdLevels, log);
  const mem2 = memcpyBandwidth();
  const copy = Math.max(mem.copyGBs, mem2.copyGBs);
  const rw = Math.max(mem.rwGBs, mem2.rwGBs);
  if (a.json) {
    console.log(JSON.stringify({ env, memcpy: { copyGBs: copy, rwGBs: rw }, kernels, model }, null, 2));
    return;
  }
  const p = (x: number, d = 1) => x.toFixed(d);
  console.log(`\n${env.cpus} CPUs (${env.cpu}), load average ${env.loadavg.map((x) => x.toFixed(1)).join(" ")}; ${env.blas}; kernels ${env.kernels}, BLAS ${env.blasThreads} threads`);
  console.log(`memcpy (best of 2×7 × 256 MiB): ${p(copy)} GB/s copied = ${p(rw)} GB/s read+write\n`);
  if (kernels.length) {
    console.log("Decode (batch 1), per Linear, weights streamed from DRAM:\n");
    console.log(table([
      ["shape", `INT4 g128 GEMV (${ki.simd})`, "fp32 sgemm M=1 (today)", "fp16 GEMV", "INT4 vs fp32"],
      ...kernels.map((k) => [k.shape, `${p(k.gemvInt4Ms, 2)} ms, ${p(k.gemvInt4GBs)} GB/s`, `${p(k.sgemvFp32Ms, 2)} ms, ${p(k.sgemvFp32GBs)} GB/s`, `${p(k.gemvF16Ms, 2)} ms, ${p(k.gemvF16GBs)} GB/s`, `${p(k.decodeSpeedup, 2)}×`]),
    ]));
    const lv = kernels[0]!.gemvInt4ByLevel;
    if (lv.length > 1) {
      console.log(`\nThe INT4 GEMV per SIMD level (passes alternating), weights from DRAM, % of memcpy's copy rate:\n`);
      console.log(table([
        ["shape", ...lv.map((l) => l.level), `${lv[0]!.level} vs ${lv[lv.length - 1]!.level}`],
        ...kernels.map((k) => [k.shape, ...k.gemvInt4ByLevel.map((l) => `${p(l.ms, 2)} ms, ${p(l.GBs)} GB/s (${p((100 * l.GBs) / copy, 0)}%)`), `${p(k.gemvInt4ByLevel[k.gemvInt4ByLevel.length - 1]!.ms / k.gemvInt4ByLevel[0]!.ms, 2)}×`]),
      ]));
    }
    console.log("\nShort prompts: INT4 GEMV on several input rows, one pass over the weights vs once per row, ms per Linear:\n");
    console.log(table([
      ["shape", "rows", "one pass", "once per row", "speed-up"],
      ...kernels.flatMap((k) => k.shortPrompt.map((s) => [k.shape, String(s.rows), p(s.onePassMs, 2), p(s.perRowMs, 2), `${p(s.speedup, 2)}×`])),
    ]));
    console.log("\nPrefill GEMM (dequantized tiles + sgemm vs fp32 sgemm), GFLOP/s:\n");
    console.log(table([
      ["shape", "rows", "INT4 packed", "fp32 sgemm", "ratio"],
      ...kernels.flatMap((k) => k.prefill.map((f) => [k.shape, String(f.rows), p(f.packedGflops), p(f.fp32Gflops), `${p(100 * f.ratio, 0)}%`])),
    ]));
  }
  if (model) {
    const { int4: i, fp16: f } = model;
    const mib = (b: number) => `${p(b / 2 ** 20, 0)} MiB`;
    console.log(`\nSynthetic Llama-2-7B shapes, ${model.blocks} blocks (vocab 512), quant4 bench --prompt-len ${i.promptTokens} --gen ${i.genTokens} --reps ${i.reps}:\n`);
    console.log(table([
      ["", "INT4 g128 (packed runtime)", "fp16 source (fp32 today)", "ratio"],
      ["decode ms/token (median)", p(i.decodeMsPerTokenMedian, 1), p(f.decodeMsPerTokenMedian, 1), `${p(f.decodeMsPerTokenMedian / i.decodeMsPerTokenMedian, 2)}× faster`],
      ["decode tokens/s", p(i.decodeTokensPerSecond, 2), p(f.decodeTokensPerSecond, 2), `${p(i.decodeTokensPerSecond / f.decodeTokensPerSecond, 2)}×`],
      ["weight bytes read per token", mib(model.int4BytesPerToken), mib(model.fp16BytesPerToken), `${p(model.int4BytesPerToken / model.fp16BytesPerToken, 3)}×`],
      ["achieved weight bandwidth", `${p(model.int4DecodeGBs)} GB/s = ${p((100 * model.int4DecodeGBs) / copy, 0)}% of copy, ${p((100 * model.int4DecodeGBs) / rw, 0)}% of r+w`, `${p(model.fp16DecodeGBs)} GB/s`, ""],
      ...(model.int4Avx2
        ? [[`INT4 with QUANT4_SIMD=avx2: decode ms/token, bandwidth`, `${p(model.int4Avx2.decodeMsPerTokenMedian, 1)} ms, ${p(model.int4Avx2DecodeGBs!)} GB/s = ${p((100 * model.int4Avx2DecodeGBs!) / copy, 0)}% of copy`, "", `${ki.simd} ${p(model.int4Avx2.decodeMsPerTokenMedian / i.decodeMsPerTokenMedian, 2)}× faster`]]
        : []),
      ["time to first token", `${p(1000 * i.timeToFirstTokenSeconds, 0)} ms`, `${p(1000 * f.timeToFirstTokenSeconds, 0)} ms`, `${p(f.timeToFirstTokenSeconds / i.timeToFirstTokenSeconds, 2)}× faster`],
      ["prompt tokens/s", p(i.promptTokensPerSecond, 1), p(f.promptTokensPerSecond, 1), `${p(i.promptTokensPerSecond / f.promptTokensPerSecond, 2)}×`],
      ["resident weights (RSS growth)", mib(i.residentWeightBytes), mib(f.residentWeightBytes), `${p(i.residentWeightBytes / f.residentWeightBytes, 3)}×`],
      ["peak RSS", mib(i.peakRssBytes), mib(f.peakRssBytes), `${p(i.peakRssBytes / f.peakRssBytes, 3)}×`],
    ]));
  }
  if (model?.alternating) {
    const alt = model.alternating;
    const gbs = (ms: number) => model.int4BytesPerToken / (ms / 1000) / GB;
    console.log(`\nINT4 decode in one process, SIMD level alternating token by token (${alt[0]!.tokens} tokens each), ms/token and weight bandwidth (% of memcpy's copy rate):\n`);
    console.log(table([
      ["level", "min", "median"],
      ...alt.map((l) => [l.level, `${p(l.minMs, 1)} ms, ${p(gbs(l.minMs))} GB/s (${p((100 * gbs(l.minMs)) / copy, 0)}%)`, `${p(l.medianMs, 1)} ms, ${p(gbs(l.medianMs))} GB/s (${p((100 * gbs(l.medianMs)) / copy, 0)}%)`]),
      [`${alt[0]!.level} vs ${alt[alt.length - 1]!.level}`, `${p(alt[alt.length - 1]!.minMs / alt[0]!.minMs, 2)}× faster`, `${p(alt[alt.length - 1]!.medianMs / alt[0]!.medianMs, 2)}× faster`],
    ]));
  }
  console.log("\nTargets (issue 14):");
  if (model) {
    const s = model.fp16.decodeMsPerTokenMedian / model.int4.decodeMsPerTokenMedian;
    console.log(`  decode ≥ 3× faster than the fp16 source: ${s.toFixed(2)}× ${s >= 3 ? "MET" : "NOT MET"}`);
    const bw = model.int4DecodeGBs / copy;
    console.log(`  ≥ 70% of the bandwidth limit: ${(100 * bw).toFixed(0)}% of memcpy's copy rate (${((100 * model.int4DecodeGBs) / rw).toFixed(0)}% of its read+write rate) ${bw >= 0.7 ? "MET (copy rate)" : "NOT MET"}`);
    const rss = model.int4.peakRssBytes / model.fp16.peakRssBytes;
    console.log(`  peak RSS ≤ ½ of the fp16 source's: ${rss.toFixed(3)}× ${rss <= 0.5 ? "MET" : "NOT MET"}`);
  }
  if (kernels.length) {
    const worst = Math.min(...kernels.flatMap((k) => k.prefill.map((f) => f.ratio)));
    console.log(`  prefill GEMM ≥ 80% of fp32 sgemm: worst shape ${(100 * worst).toFixed(0)}% ${worst >= 0.8 ? "MET" : "NOT MET"}`);
  }
}

await main();
