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
  /** Called with the input of each Linear (rows × in) just before it runs; x is a scratch buffer the next batch reuses (copy what you keep). */
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
 * Drop the context's scratch buffers (the next forward allocates them again). The quantize pipeline does
 * so between its forward passes and GPTQ (at 7B shapes this lowered the measured peak by ≈ 0.25 GiB).
 */
export function releaseScratch(ctx: ForwardContext): void {
  scratchOf.delete(ctx);
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

/**
 * The attention half up to the output projection's input, on the normed input h [B*T, hidden]: q/k/v,
 * RoPE and causal attention; returns the attention output [B*T, nHeads*headDim].
 */
function attentionCore(ctx: ForwardContext, w: BlockTensors, h: Float32Array, B: number, T: number, opts: BlockRunOptions): Float32Array {
  const { arch } = ctx;
  const rows = B * T;
  const pos0 = opts.pos0 ?? 0;
  const sc = scratch(ctx);
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
  const att = sc.get("att", rows * qDim);
  const shape = { B, T, nHeads: arch.nHeads, nKvHeads: arch.nKvHeads, headDim: arch.headDim, pos0 };
  ctx.backend.attention(q, k, v, shape, opts.cache, att);
  return att;
}

/** The MLP half up to the down projection's input, on the normed input h [rows, hidden]: returns [rows, intermediate]. */
function mlpHidden(ctx: ForwardContext, w: BlockTensors, h: Float32Array, rows: number, opts: BlockRunOptions): Float32Array {
  const { arch } = ctx;
  const sc = scratch(ctx);
  const m = arch.mlpLinears;
  const inter = arch.linears.find((l) => l.name === m.down)!.in;
  if (m.gate) {
    const gate = runLinear(ctx, w, m.gate, h, rows, opts, sc.get("gate", rows * inter));
    const up = runLinear(ctx, w, m.up, h, rows, opts, sc.get("up", rows * inter));
    ctx.backend.activateMul(arch.activation, gate, up);
    return gate;
  }
  const act = runLinear(ctx, w, m.up, h, rows, opts, sc.get("up", rows * inter));
  ctx.backend.activate(arch.activation, act);
  return act;
}

/**
 * The attention half of a block on its normed input h [B*T, hidden]: q/k/v, RoPE, causal attention and
 * the output projection; returns o [B*T, hidden] (a scratch view: copy it to keep it). No residual.
 */
export function attentionModule(ctx: ForwardContext, w: BlockTensors, h: Float32Array, B: number, T: number, opts: BlockRunOptions = {}): Float32Array {
  const att = attentionCore(ctx, w, h, B, T, opts);
  return runLinear(ctx, w, ctx.arch.attn.o, att, B * T, opts, scratch(ctx).get("o", B * T * ctx.arch.hidden));
}

/** The MLP half of a block on its normed input h [rows, hidden]; returns [rows, hidden] (a scratch view). No residual. */
export function mlpModule(ctx: ForwardContext, w: BlockTensors, h: Float32Array, rows: number, opts: BlockRunOptions = {}): Float32Array {
  const act = mlpHidden(ctx, w, h, rows, opts);
  return runLinear(ctx, w, ctx.arch.mlpLinears.down, act, rows, opts, scratch(ctx).get("down", rows * ctx.arch.hidden));
}

// ---------------------------------------------------------------------------------------------------
// The block forward as a sequence of stages. A stage is a point where Linear inputs appear; a
// BlockState holds what the rest of the forward needs there, so a calibration pass can stop at one
// group's input and the next pass resume from it (src/pipeline/passes.ts) instead of restarting at
// the block input. blockForward runs all stages; there is no other forward.

/** Stages in forward order: the inputs of q/k/v (or qkv), o, gate/up (or fc1), down, and the block output. */
export const Stage = { attnIn: 0, oIn: 1, mlpIn: 2, downIn: 3, out: 4 } as const;
export type Stage = (typeof Stage)[keyof typeof Stage];

export interface BlockState {
  stage: Stage;
  /** The residual stream: the block input up to oIn, input + attention from mlpIn, the block output at out. */
  residual: Float32Array;
  /** The input of the stage's Linears (null at out). A scratch view: consume it before the next forward call. */
  input: Float32Array | null;
}

/** The stage whose input Linear `name` reads. */
export function stageOfLinear(arch: ArchSpec, name: string): Stage {
  if (name === arch.attn.o) return Stage.oIn;
  if (name === arch.mlpLinears.down) return Stage.downIn;
  if (Object.values(arch.attn).includes(name)) return Stage.attnIn;
  if (name === arch.mlpLinears.up || name === arch.mlpLinears.gate) return Stage.mlpIn;
  throw new Error(`internal: "${name}" is not a Linear of the ${arch.modelType} block`);
}

/**
 * What a paused state must keep to be resumed (resumeState): which residual stream it holds (0 = the
 * block input, 1 = after attention, 2 = the block output) and the width of its Linears' input when that
 * is not a norm of the residual (0: the resume recomputes the norm, bit for bit).
 */
export function stageCarry(arch: ArchSpec, stage: Stage): { residual: 0 | 1 | 2; inputWidth: number } {
  switch (stage) {
    case Stage.attnIn: return { residual: 0, inputWidth: 0 };
    case Stage.oIn: return { residual: 0, inputWidth: arch.nHeads * arch.headDim };
    case Stage.mlpIn: return { residual: 1, inputWidth: 0 };
    case Stage.downIn: return { residual: 1, inputWidth: arch.linears.find((l) => l.name === arch.mlpLinears.down)!.in };
    default: return { residual: 2, inputWidth: 0 };
  }
}

/**
 * A state at `stage` from the residual and (when stageCarry says so) the input kept there; a norm input
 * is recomputed. For the block input x: resumeState(ctx, w, Stage.attnIn, x, null, rows).
 */
export function resumeState(ctx: ForwardContext, w: BlockTensors, stage: Stage, residual: Float32Array, input: Float32Array | null, rows: number, opts: BlockRunOptions = {}): BlockState {
  const { arch } = ctx;
  const norm = stage === Stage.attnIn ? arch.attnNorm : stage === Stage.mlpIn ? arch.mlpNorm : null;
  if (norm) input = applyNorm(ctx.backend, arch, (n) => denseTensor(w, n), norm, residual, rows, scratch(ctx).get(stage === Stage.attnIn ? "h1" : "h2", rows * arch.hidden));
  else if (stage !== Stage.out && !input) throw new Error(`internal: resuming stage ${stage} needs its Linears' input`);
  return { stage, residual, input: stage === Stage.out ? null : input };
}

/**
 * Run the block from state `s` up to stage `to` (s is consumed: the residual may be updated in place).
 * Each step is exactly the corresponding part of the full forward, so a resumed run computes the same
 * values as one from the block input.
 */
export function advanceBlock(ctx: ForwardContext, w: BlockTensors, s: BlockState, to: Stage, B: number, T: number, opts: BlockRunOptions = {}): BlockState {
  const { arch } = ctx;
  const rows = B * T;
  const sc = scratch(ctx);
  let { stage, residual, input } = s;
  while (stage < to) {
    switch (stage) {
      case Stage.attnIn:
        input = attentionCore(ctx, w, input!, B, T, opts);
        stage = Stage.oIn;
        break;
      case Stage.oIn: {
        const o = runLinear(ctx, w, arch.attn.o, input!, rows, opts, sc.get("o", rows * arch.hidden));
        const x2 = new Float32Array(rows * arch.hidden);
        ctx.backend.add(residual, o, x2);
        ({ residual, input } = resumeState(ctx, w, Stage.mlpIn, x2, null, rows, opts));
        stage = Stage.mlpIn;
        break;
      }
      case Stage.mlpIn:
        input = mlpHidden(ctx, w, input!, rows, opts);
        stage = Stage.downIn;
        break;
      default: {
        const down = runLinear(ctx, w, arch.mlpLinears.down, input!, rows, opts, sc.get("down", rows * arch.hidden));
        ctx.backend.add(residual, down, residual);
        input = null;
        stage = Stage.out;
      }
    }
  }
  return { stage, residual, input };
}

/**
 * Run one decoder block on x [B*T, hidden]; returns a new [B*T, hidden] array. Intermediates live in
 * the context's scratch buffers, the inputs handed to onLinearInput too (q/k/v, gate/up see one array).
 */
export function blockForward(ctx: ForwardContext, w: BlockTensors, x: Float32Array, B: number, T: number, opts: BlockRunOptions = {}): Float32Array {
  return advanceBlock(ctx, w, resumeState(ctx, w, Stage.attnIn, x, null, B * T, opts), Stage.out, B, T, opts).residual;
}
