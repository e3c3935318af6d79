// AWQ's per-block preparation in the pipeline: capture the inputs of the block's Linears on a bounded
// sample of calibration windows (fp block), search one scale vector per ArchSpec scale pair by scoring
// candidates on the real module output (attention half, MLP half, or the Linears alone), fold the
// winners exactly into the working block (producer ÷ s, consumers' input columns × s), then search
// each Linear's clipping on its (scaled) input and clamp the weights. The searches themselves are the
// pure functions of algorithms/awq.ts; quantization happens afterwards in the pipeline's usual loop.

import type { Backend } from "../compute/backend.js";
import { divideOutputRows, meanAbsPerChannel, scaleInputColumns, scaledFakeQuant, searchClip, searchScale, sumSquaredDiff } from "../../algorithms/awq.js";
import type { QuantOptions } from "../../algorithms/quantizer.js";
import type { ArchSpec, LinearSpec, ScalePair } from "../model/architectures.js";
import { attentionModule, blockForward, linear, mlpModule, type BlockWeights, type ForwardContext } from "../model/forward.js";
import type { ActivationStore } from "./activations.js";
import { batchWindows } from "./passes.js";

/**
 * Calibration tokens (whole windows) the scale search runs on by default, at most; --awq-tokens. 8,192:
 * over 5 calibration seeds on brown-llama (bench/awq-tokens.sh, README) it matched 16,384 in mean KL
 * from the source at 4 bits and did better at 3 bits, at about half the search time. llm-awq searches
 * on all of its 128×512 calibration tokens.
 */
export const AWQ_SCALE_TOKENS = 8192;
/** Tokens the clipping search samples from a Linear's input (llm-awq n_sample_token). */
export const AWQ_CLIP_TOKENS = 512;

export interface AwqLinearInfo {
  alpha?: number;
  clipShrink?: number;
  /** Scales folded into this Linear's input columns (to map its Hessian back for the "before" error). */
  scales?: Float32Array;
}

/** What AWQ's searches read from the fp block: the input of `names` over the first `windows` calibration windows. */
export interface AwqCapture {
  windows: number;
  names: Set<string>;
}

/** The scale pairs searched and the Linears clipped (those of them with a quantized Linear). */
function awqTargets(a: ArchSpec, quantized: (l: LinearSpec) => boolean, clip: boolean): { pairs: ScalePair[]; clipped: LinearSpec[] } {
  const spec = new Map(a.linears.map((l) => [l.name, l]));
  const pairs = a.scalePairs.filter((p) => p.linears.some((n) => quantized(spec.get(n)!)));
  const noClip = new Set("qkv" in a.attn ? [] : [a.attn.q, a.attn.k]);
  const clipped = clip ? a.linears.filter((l) => quantized(l) && !noClip.has(l.name)) : [];
  return { pairs, clipped };
}

/** The capture AWQ needs for a block: every Linear whose input a search reads (a pair's Linears share one). */
export function awqCapture(
  a: ArchSpec, samples: number, seqlen: number, quantized: (l: LinearSpec) => boolean, clip = true, tokens = AWQ_SCALE_TOKENS,
): AwqCapture {
  const { pairs, clipped } = awqTargets(a, quantized, clip);
  return {
    windows: Math.max(1, Math.min(samples, Math.floor(tokens / seqlen))),
    names: new Set<string>([...pairs.map((p) => p.linears[0]!), ...clipped.map((l) => l.name)]),
  };
}

/**
 * Collects a capture from fp block forwards over batches of whole windows: `hook(s0, s1)` is the
 * blockForward onLinearInput hook for the batch of windows [s0, s1) (undefined past the sample).
 */
export function awqCollector(a: ArchSpec, cap: AwqCapture, seqlen: number): { inputs: Map<string, Float32Array>; hook: (s0: number, s1: number) => ((n: string, x: Float32Array, rows: number) => void) | undefined } {
  const dims = new Map(a.linears.map((l) => [l.name, l.in]));
  const inputs = new Map<string, Float32Array>();
  for (const n of cap.names) inputs.set(n, new Float32Array(cap.windows * seqlen * dims.get(n)!));
  const hook = (s0: number, s1: number) => {
    if (s0 >= cap.windows) return undefined;
    const n1 = Math.min(s1, cap.windows) - s0; // windows of this batch inside the sample
    return (n: string, x: Float32Array): void => {
      const dst = inputs.get(n);
      const d = dims.get(n)!;
      if (dst) dst.set(x.subarray(0, n1 * seqlen * d), s0 * seqlen * d);
    };
  };
  return { inputs, hook };
}

/** The capture's inputs from the fp block's own forward over the sample (whole windows, bounded batches). */
function captureInputs(ctx: ForwardContext, w: BlockWeights, acts: ActivationStore, cap: AwqCapture): Map<string, Float32Array> {
  const T = acts.seqlen;
  const { inputs, hook } = awqCollector(ctx.arch, cap, T);
  const B = batchWindows(T, cap.windows);
  for (let s0 = 0; s0 < cap.windows; s0 += B) {
    const s1 = Math.min(cap.windows, s0 + B);
    blockForward(ctx, w, acts.get(s0, s1), s1 - s0, T, { onLinearInput: hook(s0, s1)! });
  }
  return inputs;
}

/** Mean squared difference of two equal-length arrays (float64 sum in a fixed order). */
function mse(backend: Backend, a: Float32Array, b: Float32Array): number {
  return sumSquaredDiff(a, b, backend) / Math.max(1, a.length);
}

/** Σ_o D_o·G·D_oᵀ for D = Q − W [out, inF]: the squared output error of Q over the rows whose Gram matrix is G. */
function gramError(backend: Backend, W: Float32Array, Q: Float32Array, G: Float32Array, out: number, inF: number): number {
  const D = new Float32Array(W.length);
  for (let i = 0; i < D.length; i++) D[i] = Q[i]! - W[i]!;
  const DG = new Float32Array(W.length);
  backend.gemm(false, false, out, inF, inF, 1, D, G, 0, DG);
  let e = 0;
  for (let i = 0; i < D.length; i++) e += D[i]! * DG[i]!;
  return e;
}

/**
 * The outputs a pair is scored on (the attention or MLP half's, or each of its Linears'), for its captured
 * input X (nWin windows of T rows), with weights `w`; into `into` when given (one set of buffers for every
 * candidate of a pair).
 */
function moduleOutput(ctx: ForwardContext, w: BlockWeights, pair: ScalePair, X: Float32Array, nWin: number, T: number, into?: Float32Array[]): Float32Array[] {
  const a = ctx.arch;
  const hd = a.hidden;
  const rows = nWin * T;
  if (pair.scoreOn === "linears") {
    return pair.linears.map((n, k) => {
      const l = a.linears.find((x) => x.name === n)!;
      return linear(ctx.backend, X, rows, w.get(`${n}.weight`)!, l.out, l.in, l.bias ? w.get(`${n}.bias`) : undefined, into?.[k]);
    });
  }
  // The halves work on whole windows (attention is causal within a window); batches bound the memory.
  const y = into?.[0] ?? new Float32Array(rows * hd);
  const B = batchWindows(T, nWin);
  for (let s0 = 0; s0 < nWin; s0 += B) {
    const s1 = Math.min(nWin, s0 + B);
    const x = X.subarray(s0 * T * hd, s1 * T * hd);
    const o = pair.scoreOn === "attn" ? attentionModule(ctx, w, x, s1 - s0, T) : mlpModule(ctx, w, x, (s1 - s0) * T);
    y.set(o, s0 * T * hd);
  }
  return [y];
}

/**
 * AWQ on the working block `w` (in place): scale search and folding for every pair with at least one
 * quantized Linear, then clipping of every quantized Linear except those producing q and k (their
 * error passes through the q·k product, which the per-Linear score cannot see; llm-awq skips them too).
 */
export function prepareAwqBlock(
  ctx: ForwardContext,
  backend: Backend,
  w: BlockWeights,
  acts: ActivationStore,
  optsOf: (l: LinearSpec) => QuantOptions,
  quantized: (l: LinearSpec) => boolean,
  /** clip: run the clipping search; tokens: the scale search's sample bound (default AWQ_SCALE_TOKENS). */
  steps: { clip: boolean; tokens?: number } = { clip: true },
  /** The capture (awqCapture, same `quantized` and clip step) when a forward of the fp block already made it; emptied on return. */
  captured?: Map<string, Float32Array>,
): Map<string, AwqLinearInfo> {
  const a: ArchSpec = ctx.arch;
  const T = acts.seqlen;
  const cap = awqCapture(a, acts.samples, T, quantized, steps.clip, steps.tokens);
  const nWin = cap.windows;
  const spec = new Map(a.linears.map((l) => [l.name, l]));
  const info = new Map<string, AwqLinearInfo>(a.linears.map((l) => [l.name, {}]));
  const { pairs, clipped } = awqTargets(a, quantized, steps.clip);
  const inputs = captured ?? captureInputs(ctx, w, acts, cap);
  const inputOf = (n: string): Float32Array => inputs.get(n) ?? inputs.get(pairs.find((p) => p.linears.includes(n))!.linears[0]!)!;

  // 1. Search every pair on the unmodified block (llm-awq: all searches first, then all folds).
  const chosen: { pair: ScalePair; scales: Float32Array }[] = [];
  for (const pair of pairs) {
    const X = inputOf(pair.linears[0]!);
    const inF = spec.get(pair.linears[0]!)!.in;
    const xMean = meanAbsPerChannel(X, nWin * T, inF);
    const candidate = (n: string, s: Float32Array): Float32Array | null => {
      const l = spec.get(n)!;
      return quantized(l) ? scaledFakeQuant(w.get(`${n}.weight`)!, l.out, l.in, s, optsOf(l), backend) : null;
    };
    let score: (s: Float32Array) => number;
    const rows = nWin * T;
    if (pair.scoreOn === "linears" && rows >= inF) {
      // A Linear's output error is linear in its weight error D: ‖X·Dᵀ‖² = Σ_o D_o·(XᵀX)·D_oᵀ. One Gram
      // matrix per pair replaces a GEMM over every sampled token per candidate (in² · out vs tokens · in · out),
      // when there are at least as many tokens as input features (else the Linears run on the tokens, below).
      const G = new Float32Array(inF * inF);
      backend.syrk(inF, rows, 1, X, 0, G);
      score = (s) => {
        let acc = 0;
        for (const n of pair.linears) {
          const q = candidate(n, s);
          if (q) acc += gramError(backend, w.get(`${n}.weight`)!, q, G, spec.get(n)!.out, inF) / (rows * spec.get(n)!.out);
        }
        return acc / pair.linears.length;
      };
    } else {
      const ref = moduleOutput(ctx, w, pair, X, nWin, T);
      const got = ref.map((y) => new Float32Array(y.length));
      score = (s) => {
        const cand: BlockWeights = new Map(w);
        for (const n of pair.linears) {
          const q = candidate(n, s);
          if (q) cand.set(`${n}.weight`, q);
        }
        const outs = moduleOutput(ctx, cand, pair, X, nWin, T, got);
        return outs.reduce((acc, y, k) => acc + mse(backend, ref[k]!, y), 0) / outs.length;
      };
    }
    const r = searchScale(xMean, score);
    chosen.push({ pair, scales: r.scales });
    for (const n of pair.linears) info.get(n)!.alpha = r.alpha;
  }

  // 2. Fold (exact): the producer ÷ s, the consumers' input columns × s; captured inputs ÷ s to match.
  for (const { pair, scales } of chosen) {
    if (pair.prev.kind === "norm") {
      const nw = w.get(pair.prev.norm.weight)!;
      const nb = pair.prev.norm.bias ? w.get(pair.prev.norm.bias) : undefined;
      divideOutputRows(nw, nw.length, 1, scales, nb);
    } else {
      const p = spec.get(pair.prev.name)!;
      divideOutputRows(w.get(`${p.name}.weight`)!, p.out, p.in, scales, p.bias ? w.get(`${p.name}.bias`) : undefined);
    }
    for (const n of pair.linears) {
      const l = spec.get(n)!;
      scaleInputColumns(w.get(`${n}.weight`)!, l.out, l.in, scales);
      info.get(n)!.scales = scales;
    }
    const X = inputOf(pair.linears[0]!);
    const inF = scales.length;
    for (let r = 0; r < X.length / inF; r++) for (let c = 0; c < inF; c++) X[r * inF + c] = X[r * inF + c]! / scales[c]!;
  }

  // 3. Clip each Linear on an evenly strided sample of its (scaled) input.
  for (const l of clipped) {
    const X = inputOf(l.name);
    const rows = X.length / l.in;
    const stride = Math.max(1, Math.floor(rows / AWQ_CLIP_TOKENS));
    const n = Math.ceil(rows / stride);
    const sample = new Float32Array(n * l.in);
    for (let t = 0; t < n; t++) sample.set(X.subarray(t * stride * l.in, (t * stride + 1) * l.in), t * l.in);
    const r = searchClip(backend, w.get(`${l.name}.weight`)!, l.out, l.in, sample, n, optsOf(l));
    w.set(`${l.name}.weight`, r.clipped);
    info.get(l.name)!.clipShrink = r.meanShrink;
  }
  inputs.clear(); // the capture is this function's (also one handed in): not held through the quantization
  return info;
}
