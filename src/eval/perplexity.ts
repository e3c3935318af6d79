// Perplexity with the GPTQ/AWQ papers' protocol: the whole text tokenized once (BOS prepended when the
// model has one), cut into non-overlapping windows of `seqlen` tokens (tail dropped), every next-token
// prediction inside each window scored, ppl = exp(mean NLL). The protocol is returned with the number.

import type { Model } from "../model/model.js";
import { fastExp } from "../model/ops.js";
import { ModelError, UsageError } from "../util/errors.js";

export interface PplOptions {
  seqlen: number;
  maxWindows?: number;
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
}

/** Mean NLL of predicting tokens[t+1] from logits row t, for t in [0, T-1). Rows are [T, vocab]. */
export function windowNll(logits: Float32Array, tokens: ArrayLike<number>, T: number, vocab: number): number {
  let sum = 0;
  for (let t = 0; t < T - 1; t++) {
    const o = t * vocab;
    let m = -Infinity;
    for (let j = 0; j < vocab; j++) if (logits[o + j]! > m) m = logits[o + j]!;
    let s = 0;
    for (let j = 0; j < vocab; j++) s += fastExp(logits[o + j]! - m); // Math.exp to ~1 ulp, 2× faster
    sum += m + Math.log(s) - logits[o + tokens[t + 1]!]!;
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
  return { ...r, protocol: protocolLine(r, bos) };
}
