// Perplexity with the GPTQ/AWQ papers' protocol: the whole text tokenized once (BOS prepended when the
// model has one), cut into non-overlapping windows of `seqlen` tokens (tail dropped), every next-token
// prediction inside each window scored, ppl = exp(mean NLL). The protocol is returned with the number.

import { z } from "zod";
import type { Model } from "../model/model.js";
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
  /** Median, 99th percentile and maximum of the per-prediction KL. */
  medianKl: number;
  p99Kl: number;
  maxKl: number;
  /** Share of predictions whose argmax token is the same in both models. */
  sameTop: number;
  /** The base model's perplexity on the same windows. */
  basePpl: number;
}

/** Log-sum-exp of row `o..o+vocab` and its argmax. */
function rowLse(logits: Float32Array, o: number, vocab: number): { lse: number; top: number } {
  let m = -Infinity;
  let top = 0;
  for (let j = 0; j < vocab; j++) if (logits[o + j]! > m) (m = logits[o + j]!), (top = j);
  let s = 0;
  for (let j = 0; j < vocab; j++) s += fastExp(logits[o + j]! - m); // Math.exp to ~1 ulp, 2× faster
  return { lse: m + Math.log(s), top };
}

/**
 * Per-prediction KL(base ‖ model) of one window into `kl` (T−1 values), the base's NLL sum and the
 * count of equal argmaxes.
 */
export function windowKl(logits: Float32Array, baseLogits: Float32Array, tokens: ArrayLike<number>, T: number, vocab: number, kl: Float64Array): { baseNllSum: number; sameTop: number } {
  let baseNllSum = 0;
  let sameTop = 0;
  for (let t = 0; t < T - 1; t++) {
    const o = t * vocab;
    const q = rowLse(logits, o, vocab);
    const b = rowLse(baseLogits, o, vocab);
    let d = 0;
    for (let j = 0; j < vocab; j++) {
      const lb = baseLogits[o + j]! - b.lse;
      d += Math.exp(lb) * (lb - (logits[o + j]! - q.lse));
    }
    kl[t] = Math.max(0, d); // ≥ 0 in exact arithmetic; rounding can leave −1e-9
    baseNllSum += b.lse - baseLogits[o + tokens[t + 1]!]!;
    if (q.top === b.top) sameTop++;
  }
  return { baseNllSum, sameTop };
}

/** Mean NLL of predicting tokens[t+1] from logits row t, for t in [0, T-1). Rows are [T, vocab]. */
export function windowNll(logits: Float32Array, tokens: ArrayLike<number>, T: number, vocab: number): number {
  let sum = 0;
  for (let t = 0; t < T - 1; t++) {
    const o = t * vocab;
    sum += rowLse(logits, o, vocab).lse - logits[o + tokens[t + 1]!]!;
  }
  return sum / (T - 1);
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

export function protocolLine(r: Pick<PplResult, "windows" | "seqlen" | "predictionsPerWindow" | "totalTokens">, bos: boolean): string {
  return `${r.windows} non-overlapping windows × ${r.predictionsPerWindow} predictions (seqlen ${r.seqlen}, ${r.totalTokens} tokens${bos ? ", BOS prepended once" : ""}, tail dropped; GPTQ-paper protocol)`;
}

export function evaluatePerplexity(model: Model, tokens: ArrayLike<number>, opts: PplOptions, bos: boolean): PplResult {
  const { seqlen } = opts;
  const windows = windowCount(model, tokens.length, seqlen, opts.maxWindows);
  const t0 = performance.now();
  let total = 0;
  const win = new Int32Array(seqlen);
  const base = opts.klBase;
  const kls = base ? new Float64Array(windows * (seqlen - 1)) : null;
  let baseNll = 0;
  let sameTop = 0;
  for (let w = 0; w < windows; w++) {
    for (let i = 0; i < seqlen; i++) win[i] = tokens[w * seqlen + i]!;
    const logits = model.forward(win, 1, seqlen);
    const nll = windowNll(logits, win, seqlen, model.arch.vocabSize);
    const bad = firstNonFinite(logits);
    if (bad >= 0 || !Number.isFinite(nll)) {
      const where = bad >= 0 ? `: logit ${logits[bad]} at position ${Math.floor(bad / model.arch.vocabSize)}, token id ${bad % model.arch.vocabSize}` : `: mean NLL ${nll}`;
      throw nonFinite(model, `window ${w + 1} of ${windows} (tokens ${w * seqlen}..${(w + 1) * seqlen - 1})${where}`);
    }
    total += nll;
    if (base) {
      const bl = base.forward(win, 1, seqlen);
      if (firstNonFinite(bl) >= 0) throw nonFinite(base, `window ${w + 1} of ${windows}`);
      const k = windowKl(logits, bl, win, seqlen, model.arch.vocabSize, kls!.subarray(w * (seqlen - 1), (w + 1) * (seqlen - 1)));
      baseNll += k.baseNllSum;
      sameTop += k.sameTop;
    }
    opts.onWindow?.(w + 1, windows, (w + 1) * seqlen);
  }
  const seconds = (performance.now() - t0) / 1000;
  const meanNll = total / windows;
  if (!Number.isFinite(meanNll)) throw nonFinite(model, `the mean NLL over ${windows} windows (${meanNll})`);
  const r = {
    ppl: Math.exp(meanNll),
    meanNll,
    windows,
    seqlen,
    predictionsPerWindow: seqlen - 1,
    totalTokens: tokens.length,
    seconds,
    tokensPerSecond: (windows * seqlen) / seconds,
  };
  let kl: KlResult | undefined;
  if (kls) {
    const n = kls.length;
    const meanKl = kls.reduce((a, b) => a + b, 0) / n;
    const sorted = Float64Array.from(kls).sort();
    kl = {
      meanKl,
      medianKl: sorted[Math.floor((n - 1) / 2)]!,
      p99Kl: sorted[Math.min(n - 1, Math.floor(0.99 * n))]!,
      maxKl: sorted[n - 1]!,
      sameTop: sameTop / n,
      basePpl: Math.exp(baseNll / n),
    };
  }
  return { ...r, protocol: protocolLine(r, bos), ...(kl ? { kl } : {}) };
}
