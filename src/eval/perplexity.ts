// Perplexity with the GPTQ/AWQ papers' protocol: the whole text tokenized once (BOS prepended when the
// model has one), cut into non-overlapping windows of `seqlen` tokens (tail dropped), every next-token
// prediction inside each window scored, ppl = exp(mean NLL). The protocol is returned with the number.

import { z } from "zod";
import type { Backend } from "../compute/backend.js";
import type { ArchSpec } from "../model/architectures.js";
import type { Model } from "../model/model.js";
import { encodeCached, type Tokenizer } from "../tokenizer/index.js";
import { fastExp } from "../model/ops.js";
import { ModelError, UsageError } from "../util/errors.js";

/**
 * What makes two perplexities comparable: the same scored tokens (text and tokenizer, hashed together),
 * window length, window count and BOS handling. Stored with every result (eval-ppl --json, the gate,
 * the manifest); a baseline measured on another protocol is refused.
 */
export const pplProtocolSchema = z.object({
  text: z.string(),
  textSha256: z.string(),
  vocabSize: z.number(),
  /** sha256 of the text's whole token stream (int32 LE, BOS included): catches another tokenizer on the same text. */
  tokensSha256: z.string(),
  seqlen: z.number(),
  windows: z.number(),
  bos: z.boolean(),
});
export type PplProtocol = z.infer<typeof pplProtocolSchema>;

export interface PplOptions {
  seqlen: number;
  maxWindows?: number;
  /** Also run this model (the fp source) on every window and measure the evaluated model's divergence from it. */
  klBase?: Model;
  /** Rows per batched forward (internal; default EVAL_BATCH_ROWS; `seqlen` = one window at a time). */
  batchRows?: number;
  /** Also return every window's mean NLL (and the base's): PplResult.perWindow, for paired comparisons. */
  perWindow?: boolean;
  onWindow?: (done: number, total: number, tokensDone: number) => void;
}

export interface PplResult {
  ppl: number;
  meanNll: number;
  windows: number;
  seqlen: number;
  predictionsPerWindow: number;
  totalTokens: number;
  seconds: number;
  tokensPerSecond: number;
  protocol: string;
  /** With `klBase`: how far the evaluated model's next-token distributions are from the base's. */
  kl?: KlResult;
  /** With PplOptions.perWindow: each window's mean NLL, in window order (baseNll with `klBase`). */
  perWindow?: { nll: number[]; baseNll: number[] | null };
}

/**
 * Divergence from a base model on the same scored positions (llama.cpp's `perplexity --kl-divergence`):
 * KL(base ‖ model) per prediction in nats, and how often both models rank the same token first.
 * Unlike perplexity on out-of-domain text, which a small quantization error can move either way, KL
 * is zero only for the base itself and grows with every deviation, so it ranks quantizations reliably.
 */
export interface KlResult {
  /** Mean KL(base ‖ model) over every scored prediction, nats. */
  meanKl: number;
  /** Standard error of meanKl over windows (sd of the windows' means / √windows; null for one window). */
  meanKlStderr: number | null;
  /**
   * ln(ppl / base ppl) = mean over windows of (NLL − base NLL) on the same predictions (llama.cpp's
   * "Mean ln(PPL(Q)/PPL(base))"), with its standard error over windows (null for one window). Positions
   * in a window are correlated, so the error is taken over windows, not predictions.
   */
  lnPplRatio: number;
  lnPplRatioStderr: number | null;
  /** Median, 99th percentile and maximum of the per-prediction KL. */
  medianKl: number;
  p99Kl: number;
  maxKl: number;
  /** Share of predictions whose argmax token is the same in both models. */
  sameTop: number;
  /** The base model's perplexity on the same windows. */
  basePpl: number;
}

/** Per row of logits: log-sum-exp, and the argmax, or −1 when the row holds a NaN/±Inf. */
export interface RowStats {
  lse: Float64Array;
  top: Int32Array;
}

/** The reference for one row (Backend.rowLse gives the same bits): log-sum-exp, argmax (−1: non-finite row). */
function rowLse(logits: Float32Array, o: number, vocab: number): { lse: number; top: number } {
  let m = -Infinity;
  let top = 0;
  let finite = true;
  for (let j = 0; j < vocab; j++) {
    const v = logits[o + j]!;
    if (v > m) (m = v), (top = j);
    if (v - v !== 0) finite = false;
  }
  let s = 0;
  for (let j = 0; j < vocab; j++) s += fastExp(logits[o + j]! - m); // Math.exp to ~1 ulp, 2× faster
  return { lse: m + Math.log(s), top: finite ? top : -1 };
}

/** RowStats of the first `rows` rows of logits [·, vocab]: on the backend when it has rowLse (same bits). */
export function rowsLse(logits: Float32Array, rows: number, vocab: number, backend?: Pick<Backend, "rowLse">): RowStats {
  const lse = new Float64Array(rows);
  const top = new Int32Array(rows);
  if (backend?.rowLse && rows > 0) {
    const max = new Float32Array(rows);
    backend.rowLse(logits.subarray(0, rows * vocab), rows, vocab, max, lse, top);
    for (let r = 0; r < rows; r++) lse[r] = max[r]! + Math.log(lse[r]!); // Math.log's bits, as the reference
    return { lse, top };
  }
  for (let r = 0; r < rows; r++) {
    const q = rowLse(logits, r * vocab, vocab);
    lse[r] = q.lse;
    top[r] = q.top;
  }
  return { lse, top };
}

/** First row in [r0, r1) holding a NaN/±Inf, or −1. */
function firstBadRow(st: RowStats, r0: number, r1: number): number {
  for (let r = r0; r < r1; r++) if (st.top[r]! < 0) return r;
  return -1;
}

/** Mean NLL of one window: logits rows [T, vocab], their stats from row r0 of `st`. */
function nllOf(logits: Float32Array, st: RowStats, r0: number, tokens: ArrayLike<number>, T: number, vocab: number): number {
  let sum = 0;
  for (let t = 0; t < T - 1; t++) sum += st.lse[r0 + t]! - logits[t * vocab + tokens[t + 1]!]!;
  return sum / (T - 1);
}

/** KL of one window (see windowKl); q/b: the stats of logits/baseLogits from row r0. */
function klOf(logits: Float32Array, baseLogits: Float32Array, q: RowStats, b: RowStats, r0: number, tokens: ArrayLike<number>, T: number, vocab: number, kl: Float64Array): { baseNllSum: number; sameTop: number } {
  let baseNllSum = 0;
  let sameTop = 0;
  for (let t = 0; t < T - 1; t++) {
    const o = t * vocab;
    const qLse = q.lse[r0 + t]!;
    const bLse = b.lse[r0 + t]!;
    let d = 0;
    for (let j = 0; j < vocab; j++) {
      const lb = baseLogits[o + j]! - bLse;
      d += Math.exp(lb) * (lb - (logits[o + j]! - qLse));
    }
    kl[t] = Math.max(0, d); // ≥ 0 in exact arithmetic; rounding can leave −1e-9
    baseNllSum += bLse - baseLogits[o + tokens[t + 1]!]!;
    if (q.top[r0 + t] === b.top[r0 + t]) sameTop++;
  }
  return { baseNllSum, sameTop };
}

/**
 * Per-prediction KL(base ‖ model) of one window into `kl` (T−1 values), the base's NLL sum and the
 * count of equal argmaxes.
 */
export function windowKl(logits: Float32Array, baseLogits: Float32Array, tokens: ArrayLike<number>, T: number, vocab: number, kl: Float64Array, backend?: Pick<Backend, "rowLse">): { baseNllSum: number; sameTop: number } {
  return klOf(logits, baseLogits, rowsLse(logits, T - 1, vocab, backend), rowsLse(baseLogits, T - 1, vocab, backend), 0, tokens, T, vocab, kl);
}

/** Mean NLL of predicting tokens[t+1] from logits row t, for t in [0, T-1). Rows are [T, vocab]. */
export function windowNll(logits: Float32Array, tokens: ArrayLike<number>, T: number, vocab: number, backend?: Pick<Backend, "rowLse">): number {
  return nllOf(logits, rowsLse(logits, T - 1, vocab, backend), 0, tokens, T, vocab);
}

/** Index of the first NaN/±Inf in `x`, or −1. */
export function firstNonFinite(x: Float32Array): number {
  for (let i = 0; i < x.length; i++) if (x[i]! - x[i]! !== 0) return i;
  return -1;
}

/** The error for a model whose forward pass produced NaN/Inf (no perplexity is reported for it). */
export function nonFinite(model: Model, where: string): ModelError {
  return new ModelError(
    `${model.src.dir}: the model produced non-finite logits in ${where}; its weights or activations overflow or hold NaN, so no perplexity is reported`,
  );
}

/**
 * How many windows the protocol scores for `nTokens` tokens: whole windows of `seqlen` (tail dropped),
 * at most `maxWindows`. Refuses a seqlen the model cannot take or a text shorter than one window.
 */
export function windowCount(model: Pick<Model, "arch">, nTokens: number, seqlen: number, maxWindows?: number): number {
  if (!Number.isInteger(seqlen) || seqlen < 2) throw new UsageError(`--seqlen must be an integer ≥ 2 (got ${seqlen})`);
  if (seqlen > model.arch.maxPositions)
    throw new UsageError(`--seqlen ${seqlen} exceeds the model's context of ${model.arch.maxPositions} tokens`);
  const windows = Math.floor(nTokens / seqlen);
  if (windows === 0) throw new UsageError(`the text has ${nTokens} tokens, fewer than one window of --seqlen ${seqlen}`);
  return maxWindows !== undefined ? Math.min(windows, maxWindows) : windows;
}

/**
 * The protocol's token stream of a text: its ids (through the token cache, src/tokenizer/cache.ts) with
 * BOS prepended once when the model has one (GPT-2-style models have none).
 */
export function pplTokens(tok: Tokenizer, arch: Pick<ArchSpec, "family" | "bosId">, text: string): { tokens: number[]; addBos: boolean; bosId: number | null } {
  const bosId = tok.bosId ?? arch.bosId;
  const addBos = arch.family !== "gpt2" && bosId !== null;
  const ids = encodeCached(tok, text);
  return { tokens: addBos ? [bosId!, ...ids] : ids, addBos, bosId };
}

export function protocolLine(r: Pick<PplResult, "windows" | "seqlen" | "predictionsPerWindow" | "totalTokens">, bos: boolean): string {
  return `${r.windows} non-overlapping windows × ${r.predictionsPerWindow} predictions (seqlen ${r.seqlen}, ${r.totalTokens} tokens${bos ? ", BOS prepended once" : ""}, tail dropped; GPTQ-paper protocol)`;
}

/**
 * Rows one batched forward through the blocks takes (whole windows, at least one): every Linear then
 * runs as one GEMM over several windows, which keeps BLAS threads busy between the JavaScript steps.
 */
export const EVAL_BATCH_ROWS = 2048;
/** Bound on a batch's block activations (rows × ~(8·hidden + 3·intermediate) fp32) for wide models. */
const EVAL_ACTIVATION_BYTES = 512 * 2 ** 20;
/** Bound on the logits held at once (rows × vocab fp32): the LM head runs on this many windows at a time. */
export const EVAL_LOGITS_BYTES = 32 * 2 ** 20;

/** Windows per batched forward and per LM-head call, for `batchRows` rows at most (see EVAL_BATCH_ROWS). */
export function evalBatching(arch: Model["arch"], seqlen: number, batchRows = EVAL_BATCH_ROWS): { windowsPerBatch: number; windowsPerHead: number } {
  const inter = Math.max(0, ...arch.linears.map((l) => Math.max(l.in, l.out)));
  const rowBytes = 4 * (8 * arch.hidden + 3 * inter);
  const rows = Math.min(batchRows, Math.floor(EVAL_ACTIVATION_BYTES / rowBytes));
  const windowsPerBatch = Math.max(1, Math.floor(rows / seqlen));
  const windowsPerHead = Math.max(1, Math.min(windowsPerBatch, Math.floor(EVAL_LOGITS_BYTES / (4 * arch.vocabSize * seqlen))));
  return { windowsPerBatch, windowsPerHead };
}

/**
 * What the protocol sums, kept per window so that any evaluator can score any window (src/eval/parallel.ts
 * runs several over disjoint windows): each window's mean NLL and, with a KL base, its per-prediction KL,
 * the base's NLL sum and the count of equal argmaxes. combineWindows sums them in window order, as one
 * evaluator always did. On SharedArrayBuffers when `shared` (evaluator threads write them in place).
 */
export interface WindowResults {
  windows: number;
  seqlen: number;
  nll: Float64Array;
  /** windows × (seqlen − 1) */
  kl: Float64Array | null;
  baseNllSum: Float64Array | null;
  sameTop: Int32Array | null;
}

export function newWindowResults(windows: number, seqlen: number, withKl: boolean, shared = false): WindowResults {
  const f64 = (n: number) => new Float64Array(shared ? new SharedArrayBuffer(8 * n) : new ArrayBuffer(8 * n));
  return {
    windows,
    seqlen,
    nll: f64(windows),
    kl: withKl ? f64(windows * (seqlen - 1)) : null,
    baseNllSum: withKl ? f64(windows) : null,
    sameTop: withKl ? new Int32Array(shared ? new SharedArrayBuffer(4 * windows) : new ArrayBuffer(4 * windows)) : null,
  };
}

/**
 * The evaluation loop's body: scores the windows of a range, batch by batch (evalBatching), into a
 * WindowResults. The one code path for every evaluator: evaluatePerplexity runs it on all windows, the
 * evaluator threads of src/eval/parallel.ts on the batches they claim. A window's numbers do not depend
 * on which windows share its batch (test/eval-batching.test.ts), so neither do they on the evaluator.
 */
export class WindowScorer {
  readonly windows: number;
  readonly windowsPerBatch: number;
  private readonly windowsPerHead: number;
  private readonly batchTokens: Int32Array;
  private readonly logitsBuf: Float32Array;
  private readonly baseBuf: Float32Array | null;

  constructor(
    private readonly model: Model,
    private readonly tokens: ArrayLike<number>,
    private readonly seqlen: number,
    windows: number,
    private readonly base?: Model,
    batchRows?: number,
  ) {
    this.windows = windows;
    const V = model.arch.vocabSize;
    ({ windowsPerBatch: this.windowsPerBatch, windowsPerHead: this.windowsPerHead } = evalBatching(model.arch, seqlen, batchRows));
    this.batchTokens = new Int32Array(Math.min(this.windowsPerBatch, windows) * seqlen);
    const headRows = Math.min(this.windowsPerHead, windows) * seqlen;
    // The LM head writes into these, reused across chunks (rows × vocab fp32 each, EVAL_LOGITS_BYTES at most).
    this.logitsBuf = new Float32Array(headRows * V);
    this.baseBuf = base ? new Float32Array(headRows * V) : null;
  }

  /**
   * Scores windows [w0, w1) into `res` (batches of windowsPerBatch from w0), calling onWindow(w) after each
   * window in order. Throws the ModelError naming the first window whose logits are not finite.
   */
  score(w0: number, w1: number, res: WindowResults, onWindow?: (w: number) => void): void {
    const { model, base, seqlen, tokens, windows, windowsPerHead } = this;
    const V = model.arch.vocabSize;
    const hd = model.arch.hidden;
    for (let b0 = w0; b0 < w1; b0 += this.windowsPerBatch) {
      const nb = Math.min(this.windowsPerBatch, w1 - b0);
      const toks = this.batchTokens.subarray(0, nb * seqlen);
      for (let i = 0; i < nb * seqlen; i++) toks[i] = tokens[b0 * seqlen + i]!;
      const hidden = model.hidden(toks, nb, seqlen);
      const baseHidden = base?.hidden(toks, nb, seqlen);
      for (let c0 = 0; c0 < nb; c0 += windowsPerHead) {
        const nc = Math.min(windowsPerHead, nb - c0);
        const rows = nc * seqlen;
        const logitsAll = model.logits(hidden.subarray(c0 * seqlen * hd, (c0 + nc) * seqlen * hd), rows, this.logitsBuf.subarray(0, rows * V));
        const st = rowsLse(logitsAll, rows, V, model.ctx.backend);
        const baseAll = base?.logits(baseHidden!.subarray(c0 * seqlen * base.arch.hidden, (c0 + nc) * seqlen * base.arch.hidden), rows, this.baseBuf!.subarray(0, rows * V));
        const bst = base ? rowsLse(baseAll!, rows, V, base.ctx.backend) : null;
        for (let j = 0; j < nc; j++) {
          const w = b0 + c0 + j;
          const r0 = j * seqlen;
          const win = toks.subarray((c0 + j) * seqlen, (c0 + j + 1) * seqlen);
          const logits = logitsAll.subarray(r0 * V, (r0 + seqlen) * V);
          const nll = nllOf(logits, st, r0, win, seqlen, V);
          if (firstBadRow(st, r0, r0 + seqlen) >= 0 || !Number.isFinite(nll)) {
            const bad = firstNonFinite(logits);
            const where = bad >= 0 ? `: logit ${logits[bad]} at position ${Math.floor(bad / V)}, token id ${bad % V}` : `: mean NLL ${nll}`;
            throw nonFinite(model, `window ${w + 1} of ${windows} (tokens ${w * seqlen}..${(w + 1) * seqlen - 1})${where}`);
          }
          res.nll[w] = nll;
          if (base) {
            if (firstBadRow(bst!, r0, r0 + seqlen) >= 0) throw nonFinite(base, `window ${w + 1} of ${windows}`);
            const bl = baseAll!.subarray(r0 * V, (r0 + seqlen) * V);
            const k = klOf(logits, bl, st, bst!, r0, win, seqlen, V, res.kl!.subarray(w * (seqlen - 1), (w + 1) * (seqlen - 1)));
            res.baseNllSum![w] = k.baseNllSum;
            res.sameTop![w] = k.sameTop;
          }
          onWindow?.(w);
        }
      }
    }
  }
}

/** Mean and standard error of the mean (null below two values). */
function meanStderr(v: ArrayLike<number>): { mean: number; stderr: number | null } {
  const n = v.length;
  let m = 0;
  for (let i = 0; i < n; i++) m += v[i]!;
  m /= n;
  if (n < 2) return { mean: m, stderr: null };
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (v[i]! - m) ** 2;
  return { mean: m, stderr: Math.sqrt(ss / (n - 1) / n) };
}

/**
 * The result from every window's numbers: the NLLs (and the base's NLL sums) summed in window order, as
 * the evaluation loop always summed them, so the bits do not depend on which evaluator scored what.
 */
export function combineWindows(model: Model, res: WindowResults, totalTokens: number, seconds: number, bos: boolean, perWindow = false): PplResult {
  const { windows, seqlen } = res;
  let total = 0;
  for (let w = 0; w < windows; w++) total += res.nll[w]!;
  const meanNll = total / windows;
  if (!Number.isFinite(meanNll)) throw nonFinite(model, `the mean NLL over ${windows} windows (${meanNll})`);
  const r = {
    ppl: Math.exp(meanNll),
    meanNll,
    windows,
    seqlen,
    predictionsPerWindow: seqlen - 1,
    totalTokens,
    seconds,
    tokensPerSecond: (windows * seqlen) / seconds,
  };
  let kl: KlResult | undefined;
  const kls = res.kl;
  if (kls) {
    let baseNll = 0;
    let sameTop = 0;
    for (let w = 0; w < windows; w++) {
      baseNll += res.baseNllSum![w]!;
      sameTop += res.sameTop![w]!;
    }
    const n = kls.length;
    const meanKl = kls.reduce((a, b) => a + b, 0) / n;
    const sorted = Float64Array.from(kls).sort();
    const P = seqlen - 1;
    const winKl = Float64Array.from({ length: windows }, (_, w) => {
      let s = 0;
      for (let t = 0; t < P; t++) s += kls[w * P + t]!;
      return s / P;
    });
    const ratio = meanStderr(Float64Array.from({ length: windows }, (_, w) => res.nll[w]! - res.baseNllSum![w]! / P));
    kl = {
      meanKl,
      meanKlStderr: meanStderr(winKl).stderr,
      lnPplRatio: ratio.mean,
      lnPplRatioStderr: ratio.stderr,
      medianKl: sorted[Math.floor((n - 1) / 2)]!,
      p99Kl: sorted[Math.min(n - 1, Math.floor(0.99 * n))]!,
      maxKl: sorted[n - 1]!,
      sameTop: sameTop / n,
      basePpl: Math.exp(baseNll / n),
    };
  }
  const pw = perWindow ? { perWindow: { nll: Array.from(res.nll), baseNll: res.baseNllSum ? Array.from(res.baseNllSum, (x) => x / (seqlen - 1)) : null } } : {};
  return { ...r, protocol: protocolLine(r, bos), ...(kl ? { kl } : {}), ...pw };
}

export function evaluatePerplexity(model: Model, tokens: ArrayLike<number>, opts: PplOptions, bos: boolean): PplResult {
  const { seqlen } = opts;
  const windows = windowCount(model, tokens.length, seqlen, opts.maxWindows);
  const t0 = performance.now();
  // Batching changes which rows share a GEMM, not what any row computes: the per-window NLLs, and their
  // sum in window order, are those of one window at a time (a test).
  const scorer = new WindowScorer(model, tokens, seqlen, windows, opts.klBase, opts.batchRows);
  const res = newWindowResults(windows, seqlen, opts.klBase !== undefined);
  scorer.score(0, windows, res, opts.onWindow && ((w) => opts.onWindow!(w + 1, windows, (w + 1) * seqlen)));
  return combineWindows(model, res, tokens.length, (performance.now() - t0) / 1000, bos, opts.perWindow);
}
