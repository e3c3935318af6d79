// The fp32 forward pass of one decoder block, written once against ArchSpec and the Backend. Used by
// generate/eval (with an optional KV cache) and by the quantize pipeline (with a hook that sees the
// input of every Linear, which is how calibration statistics are collected). Every computation is a
// Backend call (Linears, norms, RoPE, attention, activations, residual adds): this file only sequences
// them and owns the scratch buffers.

import type { Backend, KvCache, LinearHandle } from "../compute/backend.js";
import type { ArchSpec, NormSpec } from "./architectures.js";
import { RopeTables } from "./ops.js";

/** A block's tensors keyed relative to its prefix ("self_attn.q_proj.weight"); Linear weights are fp32 [out, in]. */
export type BlockWeights = Map<string, Float32Array>;

/** A Linear weight as the forward pass runs it: dense fp32 [out, in], or a backend-resident handle (packed INT, fp16). */
export type Weight = Float32Array | LinearHandle;

/**
 * The tensors one forward call reads: the pipeline's BlockWeights (fp32, mutable) or an inference block
 * whose Linear weights are resident handles (Model.load of a packed checkpoint). Norms and biases are fp32.
 */
export type BlockTensors = ReadonlyMap<string, Weight>;

export interface ForwardContext {
  arch: ArchSpec;
  backend: Backend;
  rope: RopeTables | null;
}

/** Per-layer K/V storage for incremental decoding of ONE sequence: [capacity, nKvHeads*headDim] each. */
export type LayerCache = KvCache;

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

function weight(w: BlockTensors, name: string): Weight {
  const t = w.get(name);
  if (!t) throw new Error(`internal: block weight "${name}" not loaded`);
  return t;
}

/** A tensor that must be a dense fp32 array (norm weights, biases); undefined when absent. */
export function denseTensor(w: BlockTensors, name: string): Float32Array | undefined {
  const t = w.get(name);
  if (t === undefined || t instanceof Float32Array) return t;
  throw new Error(`internal: block tensor "${name}" is a ${t.kind} handle, expected an fp32 array`);
}

/**
 * Reusable scratch arrays of one context (one forward at a time), by role. get() returns an array of
 * exactly n elements (the Backend wants exact sizes), a view of a buffer that only ever grows.
 */
class Scratch {
  private readonly bufs = new Map<string, { base: Float32Array; view: Float32Array }>();
  get(role: string, n: number): Float32Array {
    let b = this.bufs.get(role);
    if (!b || b.base.length < n) {
      // Grow geometrically: with a KV cache the attention buffers grow by one row per token.
      const base = new Float32Array(b ? Math.max(n, 2 * b.base.length) : n);
      b = { base, view: base.length === n ? base : base.subarray(0, n) };
      this.bufs.set(role, b);
    } else if (b.view.length !== n) {
      b.view = b.base.length === n ? b.base : b.base.subarray(0, n);
    }
    return b.view;
  }
}

const scratchOf = new WeakMap<ForwardContext, Scratch>();
function scratch(ctx: ForwardContext): Scratch {
  let s = scratchOf.get(ctx);
  if (!s) scratchOf.set(ctx, (s = new Scratch()));
  return s;
}

/**
 * y[rows, out] = x[rows, in] · Wᵀ + b   (into `y` when given, else a new array). W is dense fp32 (a GEMM
 * on the backend) or a resident handle (its own kernels: packed GEMV/GEMM, fp16): the one place a
 * Linear's storage matters.
 */
export function linear(backend: Backend, x: Float32Array, rows: number, W: Weight, out: number, inF: number, bias?: Float32Array, y: Float32Array = new Float32Array(rows * out)): Float32Array {
  if (!(W instanceof Float32Array)) {
    if (W.out !== out || W.in !== inF) throw new Error(`internal: ${W.label} weight is [${W.out}, ${W.in}], expected [${out}, ${inF}]`);
    W.linear(x, rows, y, bias);
    return y;
  }
  if (bias) for (let r = 0; r < rows; r++) y.set(bias, r * out);
  backend.gemm(false, true, rows, out, inF, 1, x, W, bias ? 1 : 0, y);
  return y;
}

export function applyNorm(backend: Backend, arch: ArchSpec, get: (name: string) => Float32Array | undefined, spec: NormSpec, x: Float32Array, rows: number, out: Float32Array = new Float32Array(x.length)): Float32Array {
  const w = get(spec.weight);
  if (!w) throw new Error(`internal: norm weight "${spec.weight}" not loaded`);
  if (arch.normKind === "rms") backend.rmsNorm(x, rows, arch.hidden, w, arch.normEps, out);
  else backend.layerNorm(x, rows, arch.hidden, w, spec.bias ? get(spec.bias) : undefined, arch.normEps, out);
  return out;
}

/** Runs Linear `name` on x into y (a new array when y is omitted). */
function runLinear(ctx: ForwardContext, w: BlockTensors, name: string, x: Float32Array, rows: number, opts: BlockRunOptions, y?: Float32Array): Float32Array {
  const spec = ctx.arch.linears.find((l) => l.name === name)!;
  opts.onLinearInput?.(name, x, rows);
  return linear(ctx.backend, x, rows, weight(w, `${name}.weight`), spec.out, spec.in, spec.bias ? denseTensor(w, `${name}.bias`) : undefined, y ?? new Float32Array(rows * spec.out));
}

/** Buffers of one block run: fresh arrays where a hook may keep them, scratch otherwise. */
function inputBuffer(ctx: ForwardContext, opts: BlockRunOptions): (role: string, n: number) => Float32Array {
  const sc = scratch(ctx);
  return opts.onLinearInput !== undefined ? (_role, n) => new Float32Array(n) : (role, n) => sc.get(role, n);
}

/**
 * The attention half of a block on its normed input h [B*T, hidden]: q/k/v, RoPE, causal attention and
 * the output projection; returns o [B*T, hidden] (a scratch view: copy it to keep it). No residual.
 */
export function attentionModule(ctx: ForwardContext, w: BlockTensors, h: Float32Array, B: number, T: number, opts: BlockRunOptions = {}): Float32Array {
  const { arch } = ctx;
  const rows = B * T;
  const pos0 = opts.pos0 ?? 0;
  const sc = scratch(ctx);
  const input = inputBuffer(ctx, opts);
  const hd = arch.hidden;
  const qDim = arch.nHeads * arch.headDim;
  const kvDim = arch.nKvHeads * arch.headDim;
  let q: Float32Array, k: Float32Array, v: Float32Array;
  if ("qkv" in arch.attn) {
    const qkv = runLinear(ctx, w, arch.attn.qkv, h, rows, opts, sc.get("qkv", rows * 3 * hd));
    q = sc.get("q", rows * hd);
    k = sc.get("k", rows * hd);
    v = sc.get("v", rows * hd);
    for (let r = 0; r < rows; r++) {
      const o = r * 3 * hd;
      const d = r * hd;
      for (let i = 0; i < hd; i++) {
        q[d + i] = qkv[o + i]!;
        k[d + i] = qkv[o + hd + i]!;
        v[d + i] = qkv[o + 2 * hd + i]!;
      }
    }
  } else {
    q = runLinear(ctx, w, arch.attn.q, h, rows, opts, sc.get("q", rows * qDim));
    k = runLinear(ctx, w, arch.attn.k, h, rows, opts, sc.get("k", rows * kvDim));
    v = runLinear(ctx, w, arch.attn.v, h, rows, opts, sc.get("v", rows * kvDim));
  }
  if (ctx.rope) {
    ctx.backend.rope(q, rows, T, arch.nHeads, pos0, ctx.rope);
    ctx.backend.rope(k, rows, T, arch.nKvHeads, pos0, ctx.rope);
  }
  const att = input("att", rows * qDim);
  const shape = { B, T, nHeads: arch.nHeads, nKvHeads: arch.nKvHeads, headDim: arch.headDim, pos0 };
  ctx.backend.attention(q, k, v, shape, opts.cache, att);
  return runLinear(ctx, w, arch.attn.o, att, rows, opts, sc.get("o", rows * hd));
}

/** The MLP half of a block on its normed input h [rows, hidden]; returns [rows, hidden] (a scratch view). No residual. */
export function mlpModule(ctx: ForwardContext, w: BlockTensors, h: Float32Array, rows: number, opts: BlockRunOptions = {}): Float32Array {
  const { arch } = ctx;
  const sc = scratch(ctx);
  const input = inputBuffer(ctx, opts);
  const m = arch.mlpLinears;
  const inter = arch.linears.find((l) => l.name === m.down)!.in;
  let act: Float32Array;
  if (m.gate) {
    const gate = runLinear(ctx, w, m.gate, h, rows, opts, input("gate", rows * inter));
    const up = runLinear(ctx, w, m.up, h, rows, opts, sc.get("up", rows * inter));
    ctx.backend.activateMul(arch.activation, gate, up);
    act = gate;
  } else {
    act = runLinear(ctx, w, m.up, h, rows, opts, input("up", rows * inter));
    ctx.backend.activate(arch.activation, act);
  }
  return runLinear(ctx, w, m.down, act, rows, opts, sc.get("down", rows * arch.hidden));
}

/** Is Linear `name` in the attention half (else the MLP half)? */
export function inAttention(arch: ArchSpec, name: string): boolean {
  return Object.values(arch.attn).includes(name);
}

/**
 * Run one decoder block on x [B*T, hidden]; returns a new [B*T, hidden] array. Intermediates live in
 * the context's scratch buffers, except the inputs handed to onLinearInput, which are always fresh
 * arrays (a hook may keep them, or tell inputs apart by identity).
 */
export function blockForward(ctx: ForwardContext, w: BlockTensors, x: Float32Array, B: number, T: number, opts: BlockRunOptions = {}): Float32Array {
  const { arch } = ctx;
  const rows = B * T;
  const get = (n: string) => denseTensor(w, n);
  const input = inputBuffer(ctx, opts);
  const be = ctx.backend;
  const h1 = applyNorm(be, arch, get, arch.attnNorm, x, rows, input("h1", rows * arch.hidden));
  const o = attentionModule(ctx, w, h1, B, T, opts);
  const x2 = new Float32Array(rows * arch.hidden);
  be.add(x, o, x2);
  const h2 = applyNorm(be, arch, get, arch.mlpNorm, x2, rows, input("h2", rows * arch.hidden));
  const down = mlpModule(ctx, w, h2, rows, opts);
  be.add(x2, down, x2);
  return x2;
}

/**
 * The input of Linear `name` for x [B*T, hidden], running no more of the block than that needs: the
 * first Linears of each half see a norm's output; the later ones run their half (whose last Linear is
 * the only work past the wanted input). Returns a fresh array.
 */
export function linearInput(ctx: ForwardContext, w: BlockTensors, x: Float32Array, B: number, T: number, name: string): Float32Array {
  const { arch } = ctx;
  const rows = B * T;
  const get = (n: string) => denseTensor(w, n);
  let seen: Float32Array | null = null;
  const hook = { onLinearInput: (n: string, inp: Float32Array) => void (n === name && seen === null && (seen = inp)) };
  const be = ctx.backend;
  const h1 = applyNorm(be, arch, get, arch.attnNorm, x, rows);
  if (inAttention(arch, name)) {
    if (name !== arch.attn.o) return h1;
    attentionModule(ctx, w, h1, B, T, hook);
    return seen!;
  }
  const o = attentionModule(ctx, w, h1, B, T);
  const x2 = new Float32Array(rows * arch.hidden);
  be.add(x, o, x2);
  const h2 = applyNorm(be, arch, get, arch.mlpNorm, x2, rows);
  if (name !== arch.mlpLinears.down) return h2;
  mlpModule(ctx, w, h2, rows, hook);
  return seen!;
}
