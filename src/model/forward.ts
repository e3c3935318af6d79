// The fp32 forward pass of one decoder block, written once against ArchSpec and the Backend. Used by
// generate/eval (with an optional KV cache) and by the quantize pipeline (with a hook that sees the
// input of every Linear, which is how calibration statistics are collected).

import type { Backend } from "../compute/backend.js";
import type { ArchSpec, NormSpec } from "./architectures.js";
import { RopeTables, activate, layerNorm, rmsNorm, softmaxRowsCausal } from "./ops.js";

/** A block's tensors keyed relative to its prefix ("self_attn.q_proj.weight"); Linear weights are fp32 [out, in]. */
export type BlockWeights = Map<string, Float32Array>;

export interface ForwardContext {
  arch: ArchSpec;
  backend: Backend;
  rope: RopeTables | null;
}

/** Per-layer K/V storage for incremental decoding of ONE sequence. */
export interface LayerCache {
  k: Float32Array; // [capacity, nKvHeads*headDim]
  v: Float32Array;
  capacity: number;
}

export interface BlockRunOptions {
  /** Absolute position of the first row of each sequence (non-zero only with a cache). */
  pos0?: number;
  cache?: LayerCache;
  /** Called with the input of each Linear (rows × in) just before it runs. */
  onLinearInput?: (linear: string, x: Float32Array, rows: number) => void;
}

export function createContext(arch: ArchSpec, backend: Backend, maxPositions = arch.maxPositions): ForwardContext {
  const rope = arch.positional.kind === "rope" ? new RopeTables(arch.headDim, maxPositions, arch.positional.rope) : null;
  return { arch, backend, rope };
}

function weight(w: BlockWeights, name: string): Float32Array {
  const t = w.get(name);
  if (!t) throw new Error(`internal: block weight "${name}" not loaded`);
  return t;
}

/** y[rows, out] = x[rows, in] · Wᵀ + b */
export function linear(backend: Backend, x: Float32Array, rows: number, W: Float32Array, out: number, inF: number, bias?: Float32Array): Float32Array {
  const y = new Float32Array(rows * out);
  if (bias) for (let r = 0; r < rows; r++) y.set(bias, r * out);
  backend.gemm(false, true, rows, out, inF, 1, x, W, bias ? 1 : 0, y);
  return y;
}

export function applyNorm(arch: ArchSpec, get: (name: string) => Float32Array | undefined, spec: NormSpec, x: Float32Array, rows: number): Float32Array {
  const out = new Float32Array(x.length);
  const w = get(spec.weight);
  if (!w) throw new Error(`internal: norm weight "${spec.weight}" not loaded`);
  if (arch.normKind === "rms") rmsNorm(x, rows, arch.hidden, w, arch.normEps, out);
  else layerNorm(x, rows, arch.hidden, w, spec.bias ? get(spec.bias) : undefined, arch.normEps, out);
  return out;
}

function runLinear(ctx: ForwardContext, w: BlockWeights, name: string, x: Float32Array, rows: number, opts: BlockRunOptions): Float32Array {
  const spec = ctx.arch.linears.find((l) => l.name === name)!;
  opts.onLinearInput?.(name, x, rows);
  return linear(ctx.backend, x, rows, weight(w, `${name}.weight`), spec.out, spec.in, spec.bias ? w.get(`${name}.bias`) : undefined);
}

/**
 * Causal self-attention for B sequences of T rows. q: [B*T, nH*d], k/v: [B*T, nKv*d] (RoPE already applied).
 * With a cache (B = 1), k/v are appended at pos0 and attention spans positions [0, pos0+T).
 */
function attention(ctx: ForwardContext, q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, pos0: number, cache?: LayerCache): Float32Array {
  const { nHeads, nKvHeads, headDim: d } = ctx.arch;
  const qDim = nHeads * d;
  const kvDim = nKvHeads * d;
  const groupSize = nHeads / nKvHeads;
  const out = new Float32Array(B * T * qDim);
  const L = pos0 + T;
  const Qh = new Float32Array(T * d);
  const Kh = new Float32Array(L * d);
  const Vh = new Float32Array(L * d);
  const S = new Float32Array(T * L);
  const Oh = new Float32Array(T * d);
  const scale = 1 / Math.sqrt(d);
  for (let b = 0; b < B; b++) {
    let kSrc = k, vSrc = v, kRow0 = b * T;
    if (cache) {
      if (B !== 1) throw new Error("internal: KV cache needs a single sequence");
      if (L > cache.capacity) throw new Error(`internal: KV cache capacity ${cache.capacity} exceeded`);
      cache.k.set(k.subarray(0, T * kvDim), pos0 * kvDim);
      cache.v.set(v.subarray(0, T * kvDim), pos0 * kvDim);
      kSrc = cache.k;
      vSrc = cache.v;
      kRow0 = 0;
    }
    for (let kh = 0; kh < nKvHeads; kh++) {
      for (let j = 0; j < L; j++) {
        const src = (kRow0 + j) * kvDim + kh * d;
        Kh.set(kSrc.subarray(src, src + d), j * d);
        Vh.set(vSrc.subarray(src, src + d), j * d);
      }
      for (let g = 0; g < groupSize; g++) {
        const h = kh * groupSize + g;
        for (let t = 0; t < T; t++) {
          const src = (b * T + t) * qDim + h * d;
          Qh.set(q.subarray(src, src + d), t * d);
        }
        ctx.backend.gemm(false, true, T, L, d, scale, Qh, Kh, 0, S);
        softmaxRowsCausal(S, T, L, (r) => pos0 + r + 1);
        ctx.backend.gemm(false, false, T, d, L, 1, S, Vh, 0, Oh);
        for (let t = 0; t < T; t++) out.set(Oh.subarray(t * d, t * d + d), (b * T + t) * qDim + h * d);
      }
    }
  }
  return out;
}

/** Run one decoder block on x [B*T, hidden]; returns a new [B*T, hidden] array. */
export function blockForward(ctx: ForwardContext, w: BlockWeights, x: Float32Array, B: number, T: number, opts: BlockRunOptions = {}): Float32Array {
  const { arch } = ctx;
  const rows = B * T;
  const pos0 = opts.pos0 ?? 0;
  const get = (n: string) => w.get(n);

  const h1 = applyNorm(arch, get, arch.attnNorm, x, rows);
  let q: Float32Array, k: Float32Array, v: Float32Array;
  if ("qkv" in arch.attn) {
    const qkv = runLinear(ctx, w, arch.attn.qkv, h1, rows, opts);
    const hd = arch.hidden;
    q = new Float32Array(rows * hd);
    k = new Float32Array(rows * hd);
    v = new Float32Array(rows * hd);
    for (let r = 0; r < rows; r++) {
      const o = r * 3 * hd;
      q.set(qkv.subarray(o, o + hd), r * hd);
      k.set(qkv.subarray(o + hd, o + 2 * hd), r * hd);
      v.set(qkv.subarray(o + 2 * hd, o + 3 * hd), r * hd);
    }
  } else {
    q = runLinear(ctx, w, arch.attn.q, h1, rows, opts);
    k = runLinear(ctx, w, arch.attn.k, h1, rows, opts);
    v = runLinear(ctx, w, arch.attn.v, h1, rows, opts);
  }
  if (ctx.rope) {
    ctx.rope.apply(q, rows, T, arch.nHeads, pos0);
    ctx.rope.apply(k, rows, T, arch.nKvHeads, pos0);
  }
  const att = attention(ctx, q, k, v, B, T, pos0, opts.cache);
  const o = runLinear(ctx, w, arch.attn.o, att, rows, opts);
  const x2 = new Float32Array(rows * arch.hidden);
  for (let i = 0; i < x2.length; i++) x2[i] = x[i]! + o[i]!;

  const h2 = applyNorm(arch, get, arch.mlpNorm, x2, rows);
  const m = arch.mlpLinears;
  let act: Float32Array;
  if (m.gate) {
    const gate = runLinear(ctx, w, m.gate, h2, rows, opts);
    const up = runLinear(ctx, w, m.up, h2, rows, opts);
    activate(arch.activation, gate);
    for (let i = 0; i < gate.length; i++) gate[i] = gate[i]! * up[i]!;
    act = gate;
  } else {
    act = runLinear(ctx, w, m.up, h2, rows, opts);
    activate(arch.activation, act);
  }
  const down = runLinear(ctx, w, m.down, act, rows, opts);
  for (let i = 0; i < x2.length; i++) x2[i] = x2[i]! + down[i]!;
  return x2;
}
