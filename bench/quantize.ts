// Wall time, peak RSS and where the time goes in GPTQ, AWQ, AWQ+GPTQ or RTN (default: GPTQ 4-bit, group 128,
// sym) through the real pipeline (src/pipeline/quantize.ts runQuantize), with the Backend's GEMM peak
// measured in the same process.
//
//   node --import tsx bench/quantize.ts [--case brown|stories|7b|all] [--windows 32] [--7b-windows 8] [--blocks 1]
//                                       [--full] [--seqlen 512] [--threads T] [--calib c4] [--json] [--keep]
//                                       [--method gptq[,awq,awq-gptq,rtn]] [--bits 4] [--group-size 128]
//                                       [--asym] [--propagate auto|quantized|fp] [--format gptq] [--ts-columns]
//                                       [--max-memory <size>|none] [--act-dtype fp32|fp16]
//   node --import tsx bench/quantize.ts --print saved.json       (re-render a --json result)
//
// --max-memory / --act-dtype: as quantize's (a size spills the calibration activations to the work dir when
// both stores exceed it; default none = in memory, the bench's fixed setting). The RSS trace (current and
// peak RSS after each Linear and block) shows where in the block loop the peak is reached.
//
// --ts-columns runs GPTQ's per-column work in the TypeScript reference (algorithms/gptq.ts gptqColumnsTs)
// instead of the backend's native gptqColumns: same output, the time it took before native code.
//
// --method takes a comma-separated list: each method runs on each case (same calibration windows), and
// the wall time of every method is printed as a ratio to the first (e.g. --method gptq,awq: AWQ/GPTQ).
//
// Cases (default: brown and 7b; several with commas):
//   brown  ../shared/models/brown-llama (the largest shared model; skipped when absent), --windows windows
//   7b     a synthetic checkpoint with Llama-2-7B layer shapes (hidden 4096, intermediate 11008, 32 heads,
//          --blocks blocks, vocab 512, random fp16 weights), written to a temp dir with src/io/writer.ts,
//          with models/stories260K's tokenizer (vocab 512), --7b-windows windows. The default (8 windows,
//          1 block) runs in about 3.5 minutes on 2 cores; --full = 32 windows × 2 blocks (about 12 minutes
//          there before the passes resumed from cached stages; the forward is now one pass per block:
//          32·512 rows × 405 MFLOP ≈ 6.6 TFLOP of Linears plus the attention).
//   stories models/stories260K (a quick check; its 64/172-wide Linears need --group-size 32 or -1), --windows
// All windows are --seqlen tokens sampled from the bundled --calib text.
//
// Each case runs in a child process (so its peak RSS, process.resourceUsage().maxRSS, is the pipeline's).
// The child hands runQuantize a timing proxy of the CPU backend and follows the pipeline's events to split
// every block's wall time into:
//   forward   the block forward passes over the calibration set (one per true-sequential group, each
//             resuming from the previous group's cached stage up to its input, plus the pass that makes
//             the next block's inputs, resuming from the last one), without the Hessian updates
//   hessian   GptqHessian.addBatch = Backend.syrk (X^T X, both triangles written)
//   cholesky  Backend.inverseCholesky of the damped Hessian (potrf + trtri of the order-reversed matrix)
//   gptq      the rest of gptqQuantize: the column loop — its per-column work (Backend.gptqColumns, native)
//             and its lazy-batch GEMMs shown separately — transposes, dequantize
//   relerr    the pipeline's relative output error tr(ΔHΔᵀ)/tr(WHWᵀ) (two out×in×in GEMMs per Linear)
//   pack      format.pack of the quantized Linear
//   write     writing the block's journal file
// and, for AWQ methods (src/pipeline/awq.ts prepareAwqBlock, which runs before the block's first Linear):
//   awq-capture  the fp block forward over the AWQ sample (≤ AWQ_SCALE_TOKENS tokens) capturing the
//                Linears' inputs (and loading the block's weights); ends at that forward's last
//                down_proj-shaped GEMM (N = hidden, K = intermediate)
//   awq-scale    the scale searches (20 α per scale pair, each scored on the module's output) and the folds;
//                ends at the first GEMM shaped like the clipping search's (M = the clip sample's
//                tokens, K = a group width or a Linear's input width; attention is a block op, not a GEMM)
//   awq-clip     the clipping searches; ends when the pipeline first asks shouldStop (right after
//                prepareAwqBlock returns)
// For AWQ the "relerr" row also holds the two GEMMs of relErrorBefore (plain RTN's error, measured after
// packing) and the "pack" row its rounding. Without GPTQ (rtn, awq) the "gptq" row is the rounding.
// Rates: Hessian flops = rows·n·(n+1) per syrk; Cholesky step flops = n³ (potrf n³/3 + potri 2n³/3)
// + n³/3 (potrf) per Linear; GEMM flops = 2·M·N·K. The machine may be shared: peak = best seen.

import { writeSynthetic7b } from "./synthetic.js";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sampleWindows } from "../src/calibration/sampler.js";
import { resolveText } from "../src/calibration/texts.js";
import { gptqColumnsTs } from "../algorithms/gptq.js";
import type { ActivationKind, AttentionShape, Backend, GptqColumnsJob, KvCache, RopeTable } from "../src/compute/backend.js";
import { gemmPeakGflops, getBackend, type CpuBackend } from "../src/compute/index.js";
import { openModel } from "../src/model/model.js";
import { AWQ_CLIP_TOKENS, AWQ_SCALE_TOKENS } from "../src/pipeline/awq.js";
import { METHODS } from "../src/pipeline/methods.js";
import { runQuantize, skipReason, type QuantizePlan } from "../src/pipeline/quantize.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { spillsActivations } from "../src/pipeline/activations.js";
import { parseSize } from "../src/cli/quantize.js";
import { getFormat } from "../formats/index.js";

const here = fileURLToPath(import.meta.url);
const root = path.resolve(path.dirname(here), "..");

type Method = QuantizePlan["settings"]["method"];

interface Args {
  cases: string[];
  methods: Method[];
  bits: number;
  groupSize: number;
  sym: boolean;
  propagate: "auto" | "quantized" | "fp";
  format: string;
  windows: number;
  windows7b: number;
  seqlen: number;
  blocks: number;
  threads?: number;
  calib: string;
  json: boolean;
  keep: boolean;
  tsColumns: boolean;
  maxMemory: number | null;
  actDtype: "fp32" | "fp16";
}

function parseArgs(argv: string[]): Args {
  const a: Args = { cases: ["brown", "7b"], methods: ["gptq"], bits: 4, groupSize: 128, sym: true, propagate: "auto", format: "gptq", windows: 32, windows7b: 8, seqlen: 512, blocks: 1, calib: "c4", json: false, keep: false, tsColumns: false, maxMemory: null, actDtype: "fp32" };
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
    else if (k === "--method") a.methods = v().split(",") as Method[];
    else if (k === "--bits") a.bits = Number(v());
    else if (k === "--group-size") a.groupSize = Number(v());
    else if (k === "--asym") a.sym = false;
    else if (k === "--format") a.format = v();
    else if (k === "--propagate") {
      const p = v();
      if (p !== "auto" && p !== "quantized" && p !== "fp") throw new Error(`--propagate auto|quantized|fp, not ${p}`);
      a.propagate = p;
    }
    else if (k === "--keep") a.keep = true;
    else if (k === "--max-memory") {
      const m = v();
      a.maxMemory = m === "none" ? null : parseSize(m, "--max-memory");
    } else if (k === "--act-dtype") {
      const d = v();
      if (d !== "fp32" && d !== "fp16") throw new Error(`--act-dtype fp32|fp16, not ${d}`);
      a.actDtype = d;
    }
    else if (k === "--ts-columns") a.tsColumns = true;
    else if (k === "-h" || k === "--help") {
      console.log(fs.readFileSync(here, "utf8").split("\n").slice(0, 50).join("\n"));
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  for (const m of a.methods) if (!(m in METHODS)) throw new Error(`unknown method "${m}" (${Object.keys(METHODS).join(", ")})`);
  return a;
}

// ---------------------------------------------------------------------------------------------
// synthetic Llama-2-7B-shaped checkpoint


// ---------------------------------------------------------------------------------------------
// child: one instrumented pipeline run

type Phase = "forward" | "gptq" | "relerr" | "pack" | "write" | "awq-capture" | "awq-scale" | "awq-clip";

interface BlockTiming {
  block: number;
  seconds: number;
  phases: Record<Phase, number>;
  hessianSeconds: number;
  hessianFlops: number;
  /** Of hessianSeconds, the syrks inside the AWQ fp pass (AWQ alone with fp propagation); absent in older results. */
  captureHessianSeconds?: number;
  choleskySeconds: number;
  choleskyFlops: number;
  lazyGemmSeconds: number;
  /** Backend.gptqColumns (the per-column work of GPTQ's loop); absent in older results. */
  columnsSeconds?: number;
  forwardGemmSeconds: number;
  forwardGemmFlops: number;
  /** GEMMs inside AWQ's scale search (module outputs of the candidates); absent in older results. */
  awqScaleGemmSeconds?: number;
  awqScaleGemmFlops?: number;
}

interface ChildResult {
  label: string;
  model: string;
  /** (absent in results saved before --method existed: GPTQ 4-bit g128 sym) */
  method?: Method;
  settings?: string;
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
  /** Memory after each Linear and block (absent in older results): current RSS and peak so far. */
  rssTrace?: { at: string; rss: number; maxRss: number }[];
  maxMemory?: number | null;
  actDtype?: string;
  spilled?: boolean;
  gemmPeak: { before: Record<string, number>; after: Record<string, number>; best: number };
  quantizedLinears: number;
  meanRelError: number;
  /** 2·Σ out·in over a block's Linears: the GEMM flops of one forward per calibration row (absent in older results). */
  linearFlopsPerRow?: number;
}

function newBlock(block: number): BlockTiming {
  return {
    block, seconds: 0, phases: { forward: 0, gptq: 0, relerr: 0, pack: 0, write: 0, "awq-capture": 0, "awq-scale": 0, "awq-clip": 0 },
    hessianSeconds: 0, hessianFlops: 0, captureHessianSeconds: 0, choleskySeconds: 0, choleskyFlops: 0, lazyGemmSeconds: 0, columnsSeconds: 0, forwardGemmSeconds: 0, forwardGemmFlops: 0, awqScaleGemmSeconds: 0, awqScaleGemmFlops: 0,
  };
}

const now = () => performance.now() / 1000;

/** Shapes that tell AWQ's preparation phases apart (see the header); null for methods without AWQ. */
interface AwqShapes {
  /** Batches of the capture forward = down_proj-shaped GEMMs (N = hidden, K = intermediate) that end it. */
  captureBatches: number;
  hidden: number;
  intermediate: number;
  /** M of the clipping search's GEMMs (the sampled tokens). */
  clipTokens: number;
  /** K of the clipping search's GEMMs (the group width, or the input widths per row). */
  clipWidths: Set<number>;
  /** N of the clipping search's GEMMs (the Linears' output widths). */
  linearOuts: Set<number>;
}

/**
 * Times every Backend call and keeps a phase clock driven by the pipeline's events and its call pattern:
 * a forward phase ends at the end of its last forward call (gemm with B transposed, a block op,
 * or syrk) before GPTQ's first Cholesky or, without GPTQ, before the relative error's first GEMM; a plain
 * (no-transpose) gemm whose B is a Hessian the pipeline accumulated (syrk's output) starts the
 * relative-error phase, the end of its second gemm starts packing; onLayerDone ends the Linear. For AWQ,
 * the block starts in awq-capture, and the shapes in AwqShapes move it to awq-scale and awq-clip; the
 * first shouldStop of the block (right after prepareAwqBlock) returns it to forward.
 */
class PhaseClock implements Backend {
  readonly name: string;
  cur!: BlockTiming;
  phase: Phase = "forward";
  private phaseStart = 0;
  private lastForwardEnd = 0;
  private relerrCalls = 0;
  private readonly hessians = new WeakSet<Float32Array>();
  private downSeen = 0;
  private awqPending = false;
  constructor(private readonly inner: Backend, private readonly awq: AwqShapes | null, private readonly tsColumns = false) {
    this.name = `timed(${inner.name})`;
  }
  begin(b: BlockTiming): void {
    const t = now();
    const phase: Phase = this.awq ? "awq-capture" : "forward";
    if (this.cur) this.switchTo(phase, t); // (the short gap since onBlockDone goes to the previous block)
    this.cur = b;
    this.phase = phase;
    this.phaseStart = t;
    this.downSeen = 0;
    this.awqPending = this.awq !== null;
  }
  /** The pipeline asked shouldStop: the first time in an AWQ block, prepareAwqBlock has just returned. */
  stopAsked(): void {
    if (!this.awqPending) return;
    this.awqPending = false;
    this.switchTo("forward", now());
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
    const aw = this.awq;
    const relerr = !transA && !transB && this.hessians.has(B);
    if (this.phase === "awq-scale" && aw && !transA && transB && M === aw.clipTokens && aw.clipWidths.has(K) && aw.linearOuts.has(N))
      this.switchTo("awq-clip", t0);
    // The pipeline's relative error: after GPTQ, or (no GPTQ) right after the group's forward, whose end
    // starts the rounding.
    else if (relerr && this.phase === "forward") {
      // (No forward since AWQ's preparation when its fp pass made the Hessians: rounding from there.)
      this.switchTo("gptq", Math.max(this.lastForwardEnd, this.phaseStart));
      this.switchTo("relerr", t0);
    } else if (relerr && this.phase === "gptq") this.switchTo("relerr", t0);
    // AWQ's relErrorBefore (after packing): a plain gemm on a rescaled copy of the Hessian.
    else if (this.phase === "pack" && !transA && !transB) this.switchTo("relerr", t0);
    // After the group's last Linear the next block forward starts with a transB gemm.
    else if (this.phase === "write" && !transA && transB) this.switchTo("forward", t0);
    this.inner.gemm(transA, transB, M, N, K, alpha, A, B, beta, C);
    const t1 = now();
    if (this.phase === "forward") {
      this.lastForwardEnd = t1;
      this.cur.forwardGemmSeconds += t1 - t0;
      this.cur.forwardGemmFlops += 2 * M * N * K;
    } else if (this.phase === "gptq" && transA) {
      this.cur.lazyGemmSeconds += t1 - t0;
    } else if (this.phase === "awq-scale") {
      this.cur.awqScaleGemmSeconds! += t1 - t0;
      this.cur.awqScaleGemmFlops! += 2 * M * N * K;
    } else if (this.phase === "relerr" && ++this.relerrCalls === 2) {
      this.switchTo("pack", t1);
    } else if (this.phase === "awq-capture" && aw && transB && N === aw.hidden && K === aw.intermediate && ++this.downSeen === aw.captureBatches) {
      this.switchTo("awq-scale", t1);
    }
  }
  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array, upperOnly?: boolean): void {
    const t0 = now();
    this.inner.syrk(n, rows, alpha, X, beta, H, upperOnly);
    const t1 = now();
    if (this.phase === "awq-scale") {
      // AWQ's Gram matrix of a Linear-scored pair: part of the scale search.
      this.cur.awqScaleGemmSeconds! += t1 - t0;
      this.cur.awqScaleGemmFlops! += rows * n * (n + 1);
      return;
    }
    this.hessians.add(H);
    this.cur.hessianSeconds += t1 - t0;
    this.cur.hessianFlops += rows * n * (n + 1);
    if (this.phase === "awq-capture") this.cur.captureHessianSeconds! += t1 - t0;
    if (this.phase === "forward") this.lastForwardEnd = t1;
  }
  /** The Hessian's one mirror before it is read (GptqHessian.H): Hessian time. */
  symmetrize(H: Float32Array, n: number): void {
    const t0 = now();
    this.inner.symmetrize(H, n);
    const t1 = now();
    this.cur.hessianSeconds += t1 - t0;
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
  inverseCholesky(A: Float32Array, n: number): boolean {
    this.enterGptq();
    const t0 = now();
    const r = this.inner.inverseCholesky(A, n);
    this.cur.choleskySeconds += now() - t0;
    this.cur.choleskyFlops += (2 * n * n * n) / 3; // potrf + trtri
    return r;
  }
  gptqColumns(job: GptqColumnsJob, i1: number, s1: number, s2: number): number {
    const t0 = now();
    let rc = 0;
    if (this.inner.gptqColumns && !this.tsColumns) rc = this.inner.gptqColumns(job, i1, s1, s2);
    else gptqColumnsTs(job, i1, s1, s2);
    this.cur.columnsSeconds! += now() - t0;
    return rc;
  }
  fakeQuant(W: Float32Array, out: number, inF: number, o: { bits: number; groupSize: number; sym: boolean }, s: Float32Array | null, dst: Float32Array): number {
    return this.inner.fakeQuant!(W, out, inF, o, s, dst);
  }
  sumSquaredDiff(a: Float32Array, b: Float32Array): number {
    return this.inner.sumSquaredDiff!(a, b);
  }
  // The block ops (norms, RoPE, attention, activations, residual adds) are forward work.
  private op(fn: () => void): void {
    fn();
    if (this.phase === "forward") this.lastForwardEnd = now();
  }
  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void {
    this.op(() => this.inner.rmsNorm(x, rows, dim, w, eps, out));
  }
  layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void {
    this.op(() => this.inner.layerNorm(x, rows, dim, w, b, eps, out));
  }
  rope(x: Float32Array, rows: number, T: number, nHeads: number, pos0: number, table: RopeTable): void {
    this.op(() => this.inner.rope(x, rows, T, nHeads, pos0, table));
  }
  attention(q: Float32Array, k: Float32Array, v: Float32Array, shape: AttentionShape, cache: KvCache | undefined, out: Float32Array): void {
    this.op(() => this.inner.attention(q, k, v, shape, cache, out));
  }
  activate(kind: ActivationKind, x: Float32Array): void {
    this.op(() => this.inner.activate(kind, x));
  }
  activateMul(kind: ActivationKind, gate: Float32Array, up: Float32Array): void {
    this.op(() => this.inner.activateMul(kind, gate, up));
  }
  add(a: Float32Array, b: Float32Array, out: Float32Array): void {
    this.op(() => this.inner.add(a, b, out));
  }
}

function peaks(be: Backend): Record<string, number> {
  const r: Record<string, number> = {};
  for (const [n, reps] of [[512, 5], [1024, 3], [2048, 2]] as const) r[`n${n}`] = Math.max(gemmPeakGflops(be, n, reps), gemmPeakGflops(be, n, reps));
  return r;
}

interface ChildSpec {
  tsColumns?: boolean;
  label: string;
  model: string;
  nsamples: number;
  seqlen: number;
  calib: string;
  threads?: number;
  method: Method;
  bits: number;
  groupSize: number;
  sym: boolean;
  propagate: "quantized" | "fp";
  format: string;
  maxMemory?: number | null;
  actDtype?: "fp32" | "fp16";
}

/** The settings in words, e.g. "awq 4-bit g128 sym, gptq format". */
function settingsText(s: Pick<ChildSpec, "method" | "bits" | "groupSize" | "sym" | "format" | "tsColumns"> & { propagate: string }): string {
  return `${s.method} ${s.bits}-bit ${s.groupSize === -1 ? "per row" : `g${s.groupSize}`} ${s.sym ? "sym" : "asym"}, ${s.format} format` +
    `, ${s.propagate} propagation${s.tsColumns ? ", TypeScript column loop (--ts-columns)" : ""}`;
}

async function runChild(spec: ChildSpec): Promise<ChildResult> {
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
    format: getFormat(spec.format),
    settings: { method: spec.method, bits: spec.bits, groupSize: spec.groupSize, sym: spec.sym, actOrder: false, staticGroups: false, damp: 0.01, trueSequential: true },
    propagate: spec.propagate,
    windows,
    calibrate: true,
    nsamples: spec.nsamples,
    seqlen: spec.seqlen,
    actDtype: spec.actDtype ?? "fp32",
    maxMemoryBytes: spec.maxMemory ?? null,
    blockSize: 128,
    maxShardBytes: 4e9,
    outDir: path.join(outDir, "out"),
    settingsKey: `bench-${process.pid}`,
    resume: false,
  };
  let awq: AwqShapes | null = null;
  if (METHODS[spec.method].awq) {
    // As src/pipeline/awq.ts: the scale search's windows, the capture's batches, the clip sample.
    const T = spec.seqlen;
    const nWin = Math.max(1, Math.min(spec.nsamples, Math.floor(AWQ_SCALE_TOKENS / T)));
    const B = Math.max(1, Math.min(nWin, Math.floor(2048 / T)));
    const rows = nWin * T;
    const stride = Math.max(1, Math.floor(rows / AWQ_CLIP_TOKENS));
    const quantized = a.linears.filter((l) => skipReason(plan, l, a.blockPrefix(0) + l.name) === null);
    // With fp propagation the capture rides on the fp pass over every window (the next block's inputs).
    const fpPass = spec.propagate === "fp";
    const Ball = Math.max(1, Math.min(spec.nsamples, Math.floor(2048 / T)));
    awq = {
      captureBatches: fpPass ? Math.ceil(spec.nsamples / Ball) : Math.ceil(nWin / B),
      hidden: a.hidden,
      intermediate: a.intermediate,
      clipTokens: Math.ceil(rows / stride),
      clipWidths: new Set(spec.groupSize === -1 ? quantized.map((l) => l.in) : [spec.groupSize]),
      linearOuts: new Set(quantized.map((l) => l.out)),
    };
  }
  const clock = new PhaseClock(be, awq, spec.tsColumns === true);
  const blocks: BlockTiming[] = [];
  // Which Linear closes its true-sequential group (then a forward starts; after the last group, the write).
  const groupEnd = new Map<string, "forward" | "write">();
  a.sequentialGroups.forEach((g, gi) => groupEnd.set(g[g.length - 1]!, gi === a.sequentialGroups.length - 1 ? "write" : "forward"));
  const rssTrace: NonNullable<ChildResult["rssTrace"]> = [];
  const mark = (at: string) => rssTrace.push({ at, rss: process.memoryUsage().rss, maxRss: process.resourceUsage().maxRSS * 1024 });
  let report;
  try {
    report = await runQuantize(plan, clock, {
      onBlockStart: (i) => {
        mark(`block ${i} start`);
        const b = newBlock(i);
        blocks.push(b);
        clock.begin(b);
      },
      shouldStop: () => {
        clock.stopAsked();
        return false;
      },
      onLayerDone: (i, stat) => {
        const rel = stat.name.slice(a.blockPrefix(i).length);
        mark(`block ${i} ${rel}`);
        clock.switchTo(groupEnd.get(rel) ?? "gptq", now());
      },
      onBlockDone: (i, _n, seconds) => {
        clock.switchTo("forward", now());
        blocks[blocks.length - 1]!.seconds = seconds;
        mark(`block ${i} done`);
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
    method: spec.method,
    settings: settingsText(spec),
    arch: { hidden: a.hidden, intermediate: a.intermediate, blocks: a.nLayers, heads: a.nHeads, vocab: a.vocabSize },
    linearFlopsPerRow: 2 * a.linears.reduce((s, l) => s + l.out * l.in, 0),
    nsamples: spec.nsamples,
    seqlen: spec.seqlen,
    threads: be.getThreads(),
    blas: (be as CpuBackend).blasInfo,
    totalSeconds: report.totalSeconds,
    blockSeconds: report.blockSeconds,
    blocks,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    reportPeakRssBytes: report.peakRssBytes,
    rssTrace,
    maxMemory: plan.maxMemoryBytes,
    actDtype: plan.actDtype,
    spilled: spillsActivations(plan, a.hidden),
    gemmPeak: { before, after, best: Math.max(...Object.values(before), ...Object.values(after)) },
    quantizedLinears: q.length,
    meanRelError: q.reduce((s, l) => s + (l.relError ?? 0), 0) / Math.max(1, q.length),
  };
}

// ---------------------------------------------------------------------------------------------
// parent

function spawnChild(spec: ChildSpec): Promise<ChildResult> {
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
    `${r.settings ?? "gptq 4-bit g128 sym, gptq format"}, ${r.nsamples} windows × ${r.seqlen}, threads ${r.threads}`);
  log(`wall ${r.totalSeconds.toFixed(1)} s (pipeline total), ${(r.blockSeconds.reduce((s, x) => s + x, 0) / r.blockSeconds.length).toFixed(1)} s per block ` +
    `[${r.blockSeconds.map((s) => s.toFixed(1)).join(", ")}], peak RSS ${gb(r.peakRssBytes)}; ${r.quantizedLinears} Linears, mean rel. error ${r.meanRelError.toExponential(2)}`);
  if (r.actDtype !== undefined)
    log(`activations: ${r.actDtype}, --max-memory ${r.maxMemory == null ? "none" : gb(r.maxMemory)}: ${r.spilled ? "spilled to the work dir" : "in memory"}`);
  if (r.rssTrace?.length)
    log(`RSS trace (current / peak so far, GiB): ${r.rssTrace.map((t) => `${t.at} ${(t.rss / 2 ** 30).toFixed(2)}/${(t.maxRss / 2 ** 30).toFixed(2)}`).join("; ")}`);
  log(`GEMM peak in this process (gemmPeakGflops, best of n=512/1024/2048 before and after): ${pk.toFixed(1)} GFLOP/s ` +
    `(before ${Object.entries(r.gemmPeak.before).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")}; after ${Object.entries(r.gemmPeak.after).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")})`);
  const sum = (f: (b: BlockTiming) => number) => r.blocks.reduce((s, b) => s + f(b), 0);
  const n = r.blocks.length;
  const b0 = r.blocks[0] ?? newBlock(0);
  const tot = sum((b) => b.seconds);
  const capH = sum((b) => b.captureHessianSeconds ?? 0);
  const fwd = sum((b) => b.phases.forward) - (sum((b) => b.hessianSeconds) - capH);
  const awqRows: [string, number, string][] = [
    (r.settings ?? "").includes("fp propagation")
      ? ["AWQ: fp pass + capture", sum((b) => b.phases["awq-capture"] ?? 0) - capH, "the fp block over every window (the next block's inputs), capturing the AWQ sample on the way (+ loading the block)" +
        (capH > 0 ? "; AWQ alone: the Hessians too (their syrks in the Hessian row), no quantized pass" : "")]
      : ["AWQ: capture inputs", sum((b) => b.phases["awq-capture"] ?? 0), "fp block forward over the AWQ sample (+ loading the block)"],
    ["AWQ: scale search + fold", sum((b) => b.phases["awq-scale"] ?? 0), "20 α per scale pair, each scored on the module output" +
      (sum((b) => b.awqScaleGemmSeconds ?? 0) > 0 ? `; GEMMs ${sum((b) => b.awqScaleGemmSeconds ?? 0).toFixed(1)} s at ${(sum((b) => b.awqScaleGemmFlops ?? 0) / sum((b) => b.awqScaleGemmSeconds ?? 0) / 1e9).toFixed(1)} GFLOP/s (${((100 * sum((b) => b.awqScaleGemmSeconds ?? 0)) / Math.max(1e-9, sum((b) => b.phases["awq-scale"] ?? 0))).toFixed(0)}% of it)` : "")],
    ["AWQ: clip search", sum((b) => b.phases["awq-clip"] ?? 0), "20 shrinks (≤ 45%) per Linear, 512 sampled tokens"],
  ];
  const awqTotal = awqRows.reduce((s, x) => s + x[1], 0);
  const rows: [string, number, string][] = [
    ...(awqTotal > 0 ? awqRows : []),
    ["forward (excl. Hessian)", fwd, `GEMMs ${(sum((b) => b.forwardGemmFlops) / sum((b) => b.forwardGemmSeconds) / 1e9).toFixed(1)} GFLOP/s, ${((100 * sum((b) => b.forwardGemmSeconds)) / Math.max(fwd, 1e-9)).toFixed(0)}% of forward in GEMMs`],
    ["Hessian (syrk)", sum((b) => b.hessianSeconds), `${(sum((b) => b.hessianFlops) / sum((b) => b.hessianSeconds) / 1e9).toFixed(1)} GFLOP/s = ${((100 * sum((b) => b.hessianFlops) / sum((b) => b.hessianSeconds) / 1e9) / pk).toFixed(0)}% of peak`],
    ...(sum((b) => b.choleskySeconds) > 0 ? [["GPTQ: Cholesky", sum((b) => b.choleskySeconds), `${(sum((b) => b.choleskyFlops) / sum((b) => b.choleskySeconds) / 1e9).toFixed(1)} GFLOP/s = ${((100 * sum((b) => b.choleskyFlops) / sum((b) => b.choleskySeconds) / 1e9) / pk).toFixed(0)}% of peak`] as [string, number, string]] : []),
    [r.method === "rtn" || r.method === "awq" ? "rounding (RTN)" : "GPTQ: column loop etc.", sum((b) => b.phases.gptq) - sum((b) => b.choleskySeconds), sum((b) => b.choleskySeconds) > 0 ? `of which lazy-batch GEMMs ${(sum((b) => b.lazyGemmSeconds) / n).toFixed(2)} s` + (b0.columnsSeconds !== undefined ? `, per-column work (gptqColumns) ${(sum((b) => b.columnsSeconds ?? 0) / n).toFixed(2)} s` : "") : "quantizeRtn + dequantize"],
    ["relative error metric", sum((b) => b.phases.relerr), awqTotal > 0 ? "2 GEMMs out×in×in per Linear, + 2 for relErrorBefore" : "2 GEMMs out×in×in per Linear"],
    ["packing", sum((b) => b.phases.pack), awqTotal > 0 ? "format.pack + relErrorBefore's rounding" : "format.pack"],
    ["journal write", sum((b) => b.phases.write), ""],
  ];
  // The forward's Linear GEMM flops over the whole forward time (norms, attention, activations, copies
  // included), against the peak; and how many full forwards' worth of Linear GEMMs a block ran.
  const fwdFlops = sum((b) => b.forwardGemmFlops);
  const forwards = r.linearFlopsPerRow ? ` = ${(fwdFlops / n / (r.linearFlopsPerRow * r.nsamples * r.seqlen)).toFixed(2)} forwards' Linears per block` : "";
  const fwdRate = fwdFlops / Math.max(fwd, 1e-9) / 1e9;
  rows[rows.findIndex((x) => x[0].startsWith("forward"))]![2] += `; whole forward ${fwdRate.toFixed(1)} GFLOP/s = ${((100 * fwdRate) / pk).toFixed(0)}% of peak${forwards}`;
  const accounted = rows.reduce((s, x) => s + x[1], 0);
  rows.push(["unaccounted", tot - accounted, ""]);
  log(`  per block (mean of ${n})            seconds    share`);
  for (const [name, s, note] of rows) log(`  ${name.padEnd(26)} ${(s / n).toFixed(2).padStart(9)}  ${((100 * s) / tot).toFixed(1).padStart(5)}%  ${note}`);
  if (awqTotal > 0) log(`  AWQ preparation (capture + scale + clip) ${(awqTotal / n).toFixed(2)} s per block = ${((100 * awqTotal) / tot).toFixed(1)}% of the block time`);
}

/** Wall time of every method as a ratio to the first one run on the same case. */
function printRatios(results: ChildResult[], log: (s: string) => void): void {
  const byCase = new Map<string, ChildResult[]>();
  for (const r of results) byCase.set(r.label, [...(byCase.get(r.label) ?? []), r]);
  for (const [label, rs] of byCase) {
    if (rs.length < 2) continue;
    const base = rs[0]!;
    log(`\n${label}, wall time vs ${base.settings}: ` +
      rs.slice(1).map((r) => `${r.settings} ${r.totalSeconds.toFixed(1)} s / ${base.totalSeconds.toFixed(1)} s = ${(r.totalSeconds / base.totalSeconds).toFixed(2)}×`).join("; "));
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === "--child") {
    const r = await runChild(JSON.parse(argv[1]!) as ChildSpec);
    process.stdout.write(JSON.stringify(r) + "\n");
    return;
  }
  if (argv[0] === "--print") {
    // Re-render a saved --json result.
    const saved = JSON.parse(fs.readFileSync(argv[1]!, "utf8")) as ChildResult[];
    if (saved[0]) console.log(`# ${saved[0].blas}`);
    for (const r of saved) printResult(r, console.log);
    printRatios(saved, console.log);
    return;
  }
  const args = parseArgs(argv);
  const log = (s: string) => {
    if (!args.json) console.log(s);
  };
  const results: ChildResult[] = [];
  const common = (method: Method) => ({
    method, seqlen: args.seqlen, calib: args.calib, threads: args.threads, tsColumns: args.tsColumns,
    bits: args.bits, groupSize: args.groupSize, sym: args.sym, format: args.format, maxMemory: args.maxMemory, actDtype: args.actDtype,
    // As the CLI's --propagate auto: fp for AWQ methods, quantized otherwise.
    propagate: args.propagate !== "auto" ? args.propagate : METHODS[method].awq ? ("fp" as const) : ("quantized" as const),
  });
  for (const c of args.cases) {
    if (c === "brown") {
      const dir = path.resolve(root, "../shared/models/brown-llama");
      if (!fs.existsSync(path.join(dir, "config.json"))) {
        log(`(skipping brown: ${dir} not found)`);
        continue;
      }
      for (const m of args.methods) {
        process.stderr.write(`running brown-llama, ${settingsText(common(m))}: ${args.windows} × ${args.seqlen}\n`);
        results.push(await spawnChild({ ...common(m), label: "brown-llama", model: dir, nsamples: args.windows }));
      }
    } else if (c === "stories") {
      for (const m of args.methods) {
        process.stderr.write(`running stories260K, ${settingsText(common(m))}: ${args.windows} × ${args.seqlen}\n`);
        results.push(await spawnChild({ ...common(m), label: "stories260K", model: path.join(root, "models/stories260K"), nsamples: args.windows }));
      }
    } else if (c === "7b") {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-bench-7b-"));
      try {
        const t0 = now();
        writeSynthetic7b(dir, args.blocks, args.seqlen);
        process.stderr.write(`synthetic 7B-shape checkpoint (${args.blocks} blocks) written to ${dir} in ${(now() - t0).toFixed(1)} s; running: ${args.windows7b} × ${args.seqlen}\n`);
        for (const m of args.methods) {
          process.stderr.write(`  ${settingsText(common(m))}\n`);
          results.push(await spawnChild({ ...common(m), label: "synthetic Llama-2-7B shapes", model: dir, nsamples: args.windows7b }));
        }
      } finally {
        if (!args.keep) fs.rmSync(dir, { recursive: true, force: true });
        else log(`(kept ${dir})`);
      }
    } else throw new Error(`unknown case "${c}" (brown, stories, 7b, all)`);
  }
  if (args.json) console.log(JSON.stringify(results, null, 2));
  else {
    if (results[0]) log(`# ${results[0].blas}; node ${process.version}`);
    for (const r of results) printResult(r, log);
    printRatios(results, log);
  }
}

await main();
