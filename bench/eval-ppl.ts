// eval-ppl throughput and where its time goes, next to the Backend's GEMM peak measured in the same run.
//
//   node --import tsx bench/eval-ppl.ts [--model DIR ...] [--text wikitext2] [--seqlen 512] [--windows 16]
//                                       [--reps 3] [--threads T] [--json]
//
// Default models: models/stories260K and ../shared/models/brown-llama (when present). Per model:
//   1. plain runs of evaluatePerplexity (the CLI's code path, unwrapped backend): tokens/s, best of --reps;
//   2. one instrumented run: the model's backend is swapped for a timing proxy that times every GEMM and
//      classifies it (B is a block Linear weight → "linear", the LM head → "lm_head", anything else →
//      "other"), times the Backend's block ops (norms, RoPE, attention, activations, residual adds) per op,
//      and the loop (batched as evaluatePerplexity batches it: evalBatching) is split into forward and
//      NLL (windowNll); nothing in src/ is changed;
//   3. the GEMM rate at each exact Linear shape (M = the batch's rows, N = out, K = in, B transposed, as
//      forward.ts's linear() calls it), best of several repetitions;
//   4. gemmPeakGflops (n = 512 and 1024), best of several calls, before and after the model runs.
// The machine is shared: every rate is the best of its repetitions, and "peak" is the best seen.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { resolveText } from "../src/calibration/texts.js";
import type { ActivationKind, AttentionShape, Backend, KvCache, RopeTable } from "../src/compute/backend.js";
import { gemmPeakGflops, getBackend, type CpuBackend } from "../src/compute/index.js";
import { evalBatching, evaluatePerplexity, pplTokens, windowNll } from "../src/eval/perplexity.js";
import { Model } from "../src/model/model.js";
import { loadTokenizer } from "../src/tokenizer/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

interface Args {
  models: string[];
  text: string;
  seqlen: number;
  windows: number;
  reps: number;
  threads?: number;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { models: [], text: "wikitext2", seqlen: 512, windows: 16, reps: 3, json: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === "--model") a.models.push(v());
    else if (k === "--text") a.text = v();
    else if (k === "--seqlen") a.seqlen = Number(v());
    else if (k === "--windows") a.windows = Number(v());
    else if (k === "--reps") a.reps = Number(v());
    else if (k === "--threads") a.threads = Number(v());
    else if (k === "--json") a.json = true;
    else if (k === "-h" || k === "--help") {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").slice(0, 16).join("\n"));
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  if (a.models.length === 0) {
    a.models.push(path.join(root, "models/stories260K"));
    const brown = path.resolve(root, "../shared/models/brown-llama");
    if (fs.existsSync(path.join(brown, "config.json"))) a.models.push(brown);
  }
  return a;
}

type GemmClass = "linear" | "lm_head" | "attention";

interface ClassStats {
  calls: number;
  seconds: number;
  flops: number;
}

/** A Backend that forwards everything and times gemm calls by class; per-shape stats for Linears. */
class TimingBackend implements Backend {
  readonly name: string;
  readonly stats: Record<GemmClass, ClassStats> = {
    linear: { calls: 0, seconds: 0, flops: 0 },
    lm_head: { calls: 0, seconds: 0, flops: 0 },
    attention: { calls: 0, seconds: 0, flops: 0 },
  };
  readonly shapes = new Map<string, ClassStats & { M: number; N: number; K: number; cls: GemmClass }>();
  constructor(private readonly inner: Backend, private readonly linearWeights: Set<Float32Array>, private readonly lmHead: Float32Array) {
    this.name = `timed(${inner.name})`;
  }
  setThreads(n: number): void {
    this.inner.setThreads(n);
  }
  getThreads(): number {
    return this.inner.getThreads();
  }
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: Float32Array, B: Float32Array, beta: number, C: Float32Array): void {
    const t0 = process.hrtime.bigint();
    this.inner.gemm(transA, transB, M, N, K, alpha, A, B, beta, C);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    const cls: GemmClass = B === this.lmHead ? "lm_head" : this.linearWeights.has(B) ? "linear" : "attention";
    const s = this.stats[cls];
    const flops = 2 * M * N * K;
    s.calls++;
    s.seconds += dt;
    s.flops += flops;
    if (cls !== "attention") {
      const key = `${cls}:${M}x${N}x${K}`;
      let sh = this.shapes.get(key);
      if (!sh) this.shapes.set(key, (sh = { M, N, K, cls, calls: 0, seconds: 0, flops: 0 }));
      sh.calls++;
      sh.seconds += dt;
      sh.flops += flops;
    }
  }
  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array, upperOnly?: boolean): void {
    this.inner.syrk(n, rows, alpha, X, beta, H, upperOnly);
  }
  symmetrize(H: Float32Array, n: number): void {
    this.inner.symmetrize(H, n);
  }
  cholesky(A: Float32Array, n: number, upper: boolean): boolean {
    return this.inner.cholesky(A, n, upper);
  }
  inverseCholesky(A: Float32Array, n: number): boolean {
    return this.inner.inverseCholesky(A, n);
  }
  // Block ops: timed per op.
  readonly ops = new Map<string, { calls: number; seconds: number }>();
  private time(op: string, fn: () => void): void {
    const t0 = process.hrtime.bigint();
    fn();
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    let s = this.ops.get(op);
    if (!s) this.ops.set(op, (s = { calls: 0, seconds: 0 }));
    s.calls++;
    s.seconds += dt;
  }
  get opsSeconds(): number {
    let t = 0;
    for (const s of this.ops.values()) t += s.seconds;
    return t;
  }
  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void {
    this.time("norm", () => this.inner.rmsNorm(x, rows, dim, w, eps, out));
  }
  layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void {
    this.time("norm", () => this.inner.layerNorm(x, rows, dim, w, b, eps, out));
  }
  rope(x: Float32Array, rows: number, T: number, nHeads: number, pos0: number, table: RopeTable): void {
    this.time("rope", () => this.inner.rope(x, rows, T, nHeads, pos0, table));
  }
  attention(q: Float32Array, k: Float32Array, v: Float32Array, shape: AttentionShape, cache: KvCache | undefined, out: Float32Array): void {
    this.time("attention", () => this.inner.attention(q, k, v, shape, cache, out));
  }
  activate(kind: ActivationKind, x: Float32Array): void {
    this.time("activation", () => this.inner.activate(kind, x));
  }
  activateMul(kind: ActivationKind, gate: Float32Array, up: Float32Array): void {
    this.time("activation", () => this.inner.activateMul(kind, gate, up));
  }
  add(a: Float32Array, b: Float32Array, out: Float32Array): void {
    this.time("residual add", () => this.inner.add(a, b, out));
  }
  rowLse(x: Float32Array, rows: number, vocab: number, max: Float32Array, sum: Float64Array, top: Int32Array): void {
    this.inner.rowLse!(x, rows, vocab, max, sum, top); // part of windowNll, timed there
  }
}

/** Best GFLOP/s of C[M×N] = A[M×K]·B[N×K]ᵀ (linear()'s call), over `reps` timed calls after a warm-up. */
function shapeGflops(be: Backend, M: number, N: number, K: number, reps: number): number {
  const A = new Float32Array(M * K);
  const B = new Float32Array(N * K);
  const C = new Float32Array(M * N);
  for (let i = 0; i < A.length; i++) A[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  for (let i = 0; i < B.length; i++) B[i] = ((i * 40503) % 1000) / 1000 - 0.5;
  be.gemm(false, true, M, N, K, 1, A, B, 0, C);
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    be.gemm(false, true, M, N, K, 1, A, B, 0, C);
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return (2 * M * N * K) / best / 1e9;
}

function peak(be: Backend, tries = 3): { n512: number; n1024: number } {
  let n512 = 0;
  let n1024 = 0;
  for (let t = 0; t < tries; t++) {
    n512 = Math.max(n512, gemmPeakGflops(be, 512, 5));
    n1024 = Math.max(n1024, gemmPeakGflops(be, 1024, 3));
  }
  return { n512, n1024 };
}

const args = parseArgs(process.argv.slice(2));
const be = getBackend("cpu");
if (args.threads !== undefined) be.setThreads(args.threads);
const log = (s: string) => {
  if (!args.json) console.log(s);
};
log(`# ${(be as CpuBackend).blasInfo}; threads=${be.getThreads()}; node ${process.version}`);
const peakBefore = peak(be);
log(`GEMM peak (gemmPeakGflops, best of 3 calls): n=512 ${peakBefore.n512.toFixed(1)} GFLOP/s, n=1024 ${peakBefore.n1024.toFixed(1)} GFLOP/s`);

const results: Record<string, unknown>[] = [];
for (const dir of args.models) {
  const model = Model.load(dir, be);
  const tok = loadTokenizer(dir);
  const src = resolveText(args.text);
  const { tokens, addBos } = pplTokens(tok, model.arch, src.text);
  const a = model.arch;
  const seqlen = Math.min(args.seqlen, a.maxPositions);
  const name = path.basename(dir);
  const batching = evalBatching(a, seqlen);
  log(`\n## ${name}: ${a.modelType} hidden ${a.hidden}, ${a.nLayers} blocks, ${a.nHeads}/${a.nKvHeads} heads × ${a.headDim}, vocab ${a.vocabSize}; ${args.text}, seqlen ${seqlen}, ${args.windows} windows` +
    ` (batched: ${batching.windowsPerBatch} windows per forward, ${batching.windowsPerHead} per LM-head call)`);

  // 1. plain runs (CLI path)
  evaluatePerplexity(model, tokens, { seqlen, maxWindows: 1 }, addBos); // warm-up (JIT, page faults)
  let best = 0;
  let ppl = NaN;
  const all: number[] = [];
  for (let r = 0; r < args.reps; r++) {
    const res = evaluatePerplexity(model, tokens, { seqlen, maxWindows: args.windows }, addBos);
    all.push(res.tokensPerSecond);
    best = Math.max(best, res.tokensPerSecond);
    ppl = res.ppl;
  }
  log(`tokens/s: ${best.toFixed(0)} (best of ${args.reps}: ${all.map((x) => x.toFixed(0)).join(", ")}); ppl ${ppl.toFixed(4)} over ${args.windows} windows`);

  // 2. instrumented run
  // (Packed Linears of a quantized model run on their own kernels, not through gemm: not timed here.)
  const weights = new Set<Float32Array>();
  for (const bw of model.blocks) for (const l of a.linears) {
    const t = bw.get(`${l.name}.weight`)!;
    if (t instanceof Float32Array) weights.add(t);
  }
  const lmHead = model.globals.lmHead;
  const timed = new TimingBackend(be, weights, lmHead instanceof Float32Array ? lmHead : new Float32Array(0));
  const ctx = model.ctx as { backend: Backend };
  ctx.backend = timed;
  // evaluatePerplexity's batching: the blocks on windowsPerBatch windows at once, the LM head and the
  // NLL on windowsPerHead at a time.
  const windows = Math.min(args.windows, Math.floor(tokens.length / seqlen));
  const { windowsPerBatch, windowsPerHead } = evalBatching(a, seqlen);
  let fwdS = 0;
  let nllS = 0;
  const t0 = process.hrtime.bigint();
  for (let w0 = 0; w0 < windows; w0 += windowsPerBatch) {
    const nb = Math.min(windowsPerBatch, windows - w0);
    const toks = Int32Array.from({ length: nb * seqlen }, (_, i) => tokens[w0 * seqlen + i]!);
    const t1 = process.hrtime.bigint();
    const hidden = model.hidden(toks, nb, seqlen);
    fwdS += Number(process.hrtime.bigint() - t1) / 1e9;
    for (let c0 = 0; c0 < nb; c0 += windowsPerHead) {
      const nc = Math.min(windowsPerHead, nb - c0);
      const t2 = process.hrtime.bigint();
      const logits = model.logits(hidden.subarray(c0 * seqlen * a.hidden, (c0 + nc) * seqlen * a.hidden), nc * seqlen);
      const t3 = process.hrtime.bigint();
      for (let j = 0; j < nc; j++) {
        const o = (c0 + j) * seqlen;
        windowNll(logits.subarray(j * seqlen * a.vocabSize, (j + 1) * seqlen * a.vocabSize), toks.subarray(o, o + seqlen), seqlen, a.vocabSize, be);
      }
      fwdS += Number(t3 - t2) / 1e9;
      nllS += Number(process.hrtime.bigint() - t3) / 1e9;
    }
  }
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  ctx.backend = be;
  const st = timed.stats;
  const pct = (s: number) => `${((100 * s) / wall).toFixed(1)}%`;
  const rate = (c: ClassStats) => c.flops / c.seconds / 1e9;
  const opsS = timed.opsSeconds;
  const other = fwdS - st.linear.seconds - st.lm_head.seconds - st.attention.seconds - opsS;
  log(`instrumented run: ${wall.toFixed(2)} s wall, ${((windows * seqlen) / wall).toFixed(0)} tokens/s`);
  log(`  block Linears GEMM  ${st.linear.seconds.toFixed(3)} s  ${pct(st.linear.seconds)}  ${rate(st.linear).toFixed(1)} GFLOP/s  (${st.linear.calls} calls)`);
  log(`  LM head GEMM        ${st.lm_head.seconds.toFixed(3)} s  ${pct(st.lm_head.seconds)}  ${rate(st.lm_head).toFixed(1)} GFLOP/s  (${st.lm_head.calls} calls)`);
  if (st.attention.calls > 0) log(`  other GEMMs         ${st.attention.seconds.toFixed(3)} s  ${pct(st.attention.seconds)}  ${rate(st.attention).toFixed(1)} GFLOP/s  (${st.attention.calls} calls)`);
  log(`  block ops           ${opsS.toFixed(3)} s  ${pct(opsS)}  (Backend: ${[...timed.ops].map(([k, o]) => `${k} ${o.seconds.toFixed(3)} s`).join(", ")})`);
  log(`  rest of forward     ${other.toFixed(3)} s  ${pct(other)}  (embedding, q/k/v split, allocation, JavaScript between calls)`);
  log(`  windowNll           ${nllS.toFixed(3)} s  ${pct(nllS)}  (log-sum-exp over the vocabulary: Backend.rowLse, native)`);

  // 3. GEMM rate at the exact Linear shapes
  const shapeRows: { cls: GemmClass; M: number; N: number; K: number; inRun: number; isolated: number; share: number }[] = [];
  for (const sh of [...timed.shapes.values()].sort((x, y) => y.seconds - x.seconds)) {
    shapeRows.push({ cls: sh.cls, M: sh.M, N: sh.N, K: sh.K, inRun: sh.flops / sh.seconds / 1e9, isolated: shapeGflops(be, sh.M, sh.N, sh.K, 10), share: sh.seconds / wall });
  }

  // 4. peak again (the machine is shared; keep the best seen)
  const peakAfter = peak(be);
  const pk = Math.max(peakBefore.n512, peakBefore.n1024, peakAfter.n512, peakAfter.n1024);
  const linAll = { seconds: st.linear.seconds + st.lm_head.seconds, flops: st.linear.flops + st.lm_head.flops };
  const linRate = linAll.flops / linAll.seconds / 1e9;
  log(`GEMM peak (this model's run, best of before/after, n=512/1024): ${pk.toFixed(1)} GFLOP/s`);
  log(`Linear layers (blocks + LM head): ${pct(linAll.seconds)} of wall time, ${linRate.toFixed(1)} GFLOP/s = ${((100 * linRate) / pk).toFixed(0)}% of peak` +
    ` (blocks only: ${rate(st.linear).toFixed(1)} GFLOP/s = ${((100 * rate(st.linear)) / pk).toFixed(0)}%)  [target ≥ 60%: ${linRate >= 0.6 * pk ? "met" : "NOT met"}]`);
  log(`  shape (M×N×K)       in run GFLOP/s   isolated best GFLOP/s   % of peak (isolated)   share of wall`);
  for (const r of shapeRows) {
    log(`  ${(r.cls === "lm_head" ? "lm_head " : "") + `${r.M}×${r.N}×${r.K}`}`.padEnd(24) + `${r.inRun.toFixed(1)}`.padStart(8) + `${r.isolated.toFixed(1)}`.padStart(22) + `${((100 * r.isolated) / pk).toFixed(0)}%`.padStart(20) + `${(100 * r.share).toFixed(1)}%`.padStart(18));
  }
  results.push({
    model: dir,
    text: args.text,
    seqlen,
    windows,
    ppl,
    tokensPerSecond: best,
    tokensPerSecondAll: all,
    instrumented: {
      wallSeconds: wall,
      forwardSeconds: fwdS,
      nllSeconds: nllS,
      gemm: st,
      blockOps: Object.fromEntries(timed.ops),
      otherForwardSeconds: other,
    },
    linear: { shareOfWall: linAll.seconds / wall, gflops: linRate, blockGflops: rate(st.linear), ratioToPeak: linRate / pk, targetMet: linRate >= 0.6 * pk },
    shapes: shapeRows,
    gemmPeakGflops: pk,
    peakBefore,
    peakAfter,
  });
}
if (args.json) {
  console.log(JSON.stringify({ blas: (be as CpuBackend).blasInfo, threads: be.getThreads(), peakBefore, results }, null, 2));
}
