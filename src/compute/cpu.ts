// CPU Backend: the native addon (native/src/quant4_native.cc) over OpenBLAS (Linux) or
// Accelerate (macOS). The addon validates every size and throws; those errors are rethrown here
// as BackendError so the CLI reports them like every other quant4 error.

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { BackendError } from "../util/errors.js";
import { useNativeF16Decoder } from "../io/dtype.js";
import type { ActivationKind, AttentionShape, Backend, GptqColumnsJob, KvCache, LinearHandle, PackableLinear, RopeTable } from "./backend.js";

/** The raw addon surface (native/src/quant4_native.cc). */
export interface NativeAddon {
  sgemm(
    transA: boolean, transB: boolean, M: number, N: number, K: number,
    alpha: number, A: Float32Array, B: Float32Array, beta: number, C: Float32Array,
  ): void;
  ssyrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array, upperOnly?: boolean): void;
  symmetrize(H: Float32Array, n: number): void;
  f16ToF32(src: Uint16Array, dst: Float32Array): boolean;
  spotrf(A: Float32Array, n: number, upper: boolean): boolean;
  inverseCholesky(A: Float32Array, n: number): boolean;
  setThreads(n: number): void;
  getThreads(): number;
  blasInfo(): string;
  // Packed runtime weights (native/src/qkernels.h). A handle is an opaque External owning native memory.
  qpack(
    out: number, inF: number, bits: number, groupSize: number, codes: Uint8Array, scales: Float32Array, zeros: Uint8Array,
    gIdx: Int32Array | null, olPtr: Int32Array | null, olIdx: Int32Array | null, olVal: Float32Array | null,
  ): NativeWeight;
  qpackF16(out: number, inF: number, w: Uint16Array): NativeWeight;
  qlinear(h: NativeWeight, x: Float32Array, rows: number, y: Float32Array, bias: Float32Array | null, mode: number): void;
  qdequant(h: NativeWeight, r0: number, r1: number, dst: Float32Array): void;
  qbytes(h: NativeWeight): number;
  kernelInfo(): KernelInfo;
  setSimd(on: boolean | SimdLevel): boolean | SimdLevel;
  trimMemory(): boolean;
  // Block ops (native/src/blockops.h).
  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void;
  layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | null, eps: number, out: Float32Array): void;
  rope(x: Float32Array, rows: number, T: number, nHeads: number, headDim: number, pos0: number, cos: Float32Array, sin: Float32Array): void;
  attention(
    q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, nHeads: number, nKvHeads: number, headDim: number, pos0: number,
    kCache: Float32Array | null, vCache: Float32Array | null, out: Float32Array,
  ): void;
  activate(kind: number, x: Float32Array): void;
  activateMul(kind: number, gate: Float32Array, up: Float32Array): void;
  add(a: Float32Array, b: Float32Array, out: Float32Array): void;
  rowLse(x: Float32Array, rows: number, vocab: number, max: Float32Array, sum: Float64Array, top: Int32Array): void;
  /** The block ops' float64 e^x (the TypeScript reference's fastExp, bit for bit). */
  fastExp(x: number): number;
  /** AWQ's candidate rounding and output error (native/src/gptqloop.cc). */
  rtnFakeQuant(W: Float32Array, out: number, inF: number, bits: number, groupSize: number, sym: boolean, s: Float32Array | null, Y: Float32Array): number;
  sumSquaredDiff(a: Float32Array, b: Float32Array): number;
  columnSumSquaredDiff(a: Float32Array, b: Float32Array, rows: number, cols: number, acc: Float64Array): void;
  /** GPTQ's column loop over one sub-block (native/src/gptqloop.cc). */
  gptqColumns(
    Wt: Float32Array, U: Float32Array, qt: Uint8Array, err: Float32Array, sT: Float32Array, zT: Uint8Array,
    ot: Uint8Array | null, vt: Float32Array | null, perm: Int32Array | null, n: number, out: number, bits: number,
    sym: boolean, groupSize: number, staticGroups: boolean, tau: number, state: Float64Array, i1: number, s1: number, s2: number,
  ): number;
}

const ACTIVATION: Record<ActivationKind, number> = { silu: 0, relu: 1, gelu_new: 2, gelu: 3 };

/** An addon-owned weight (napi External). */
export type NativeWeight = { readonly __nativeWeight: unique symbol };

/**
 * SIMD level of the packed kernels and block ops: "avx512" (AVX-512 F/DQ/BW/VL for the 2- and 4-bit GEMV
 * and for attention, SiLU and the row log-sum-exp, which give the AVX2 kernels' bits; AVX2 for the rest),
 * "avx2" (AVX2/FMA/F16C) or "scalar" (portable).
 */
export type SimdLevel = "avx512" | "avx2" | "scalar";

export interface KernelInfo {
  /**
   * Kernels in use: the highest level the CPU has, or QUANT4_SIMD=avx512|avx2|scalar (capped at the CPU's),
   * or "scalar" with QUANT4_NO_SIMD=1.
   */
  simd: SimdLevel;
  /** AVX2 (or more) available. */
  simdAvailable: boolean;
  /** The levels this CPU can run, best first (always ends with "scalar"). */
  simdLevels: SimdLevel[];
  /** Threads of the packed kernels' pool (set with setThreads, like the BLAS threads). */
  threads: number;
}

/** Which kernel a packed linear() runs: auto = GEMV for a few rows, dequantized tiles + sgemm above. */
export type KernelPath = "auto" | "gemv" | "gemm";
const KERNEL_MODE: Record<KernelPath, number> = { auto: 0, gemv: 1, gemm: 2 };

const ADDON_REL = path.join("native", "build", "Release", "quant4_native.node");

/**
 * Finds native/build/Release/quant4_native.node by walking up from this module: works from
 * src/compute (tsx, vitest) and from dist/src/compute (compiled), stopping at the quant4 package root.
 */
export function nativeAddonPath(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  let packageRoot: string | undefined;
  for (;;) {
    const candidate = path.join(dir, ADDON_REL);
    if (existsSync(candidate)) return candidate;
    if (packageRoot === undefined && isQuant4Root(dir)) packageRoot = dir;
    const parent = path.dirname(dir);
    if (parent === dir || packageRoot !== undefined) break;
    dir = parent;
  }
  // Not built: report where it was expected.
  return path.join(packageRoot ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", ".."), ADDON_REL);
}

function isQuant4Root(dir: string): boolean {
  try {
    const pkg = JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as { name?: unknown };
    return pkg.name === "quant4";
  } catch {
    return false;
  }
}

let cachedAddon: NativeAddon | undefined;

/** Loads (once) the native addon; throws BackendError with a fix-it hint when it is missing or broken. */
export function loadNativeAddon(): NativeAddon {
  if (cachedAddon) return cachedAddon;
  const file = nativeAddonPath();
  if (!existsSync(file)) {
    throw new BackendError(
      `native compute addon not found at ${file}; build it with \`npm run build:native\` (or reinstall with \`npm ci\`)`,
    );
  }
  try {
    cachedAddon = createRequire(import.meta.url)(file) as NativeAddon;
    const addon = cachedAddon;
    useNativeF16Decoder((src, dst) => addon.f16ToF32(src, dst));
  } catch (err) {
    throw new BackendError(
      `native compute addon at ${file} failed to load (${errMessage(err)}); rebuild it with \`npm run build:native\``,
    );
  }
  return cachedAddon;
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Runs an addon call, turning its argument errors into BackendError. */
function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof BackendError) throw err;
    throw new BackendError(errMessage(err));
  }
}

/** A Linear weight held by the native addon in its runtime layout (native/src/qkernels.h). */
export class CpuLinearHandle implements LinearHandle {
  readonly in: number;
  constructor(
    private readonly addon: NativeAddon,
    private readonly native: NativeWeight,
    readonly kind: "packed" | "f16",
    readonly out: number,
    inF: number,
    readonly bytes: number,
    readonly label: string,
  ) {
    this.in = inF;
  }

  linear(x: Float32Array, rows: number, y: Float32Array, bias?: Float32Array, path: KernelPath = "auto"): void {
    call(() => this.addon.qlinear(this.native, x, rows, y, bias ?? null, KERNEL_MODE[path]));
  }

  rows(r0: number, r1: number, dst: Float32Array): void {
    call(() => this.addon.qdequant(this.native, r0, r1, dst));
  }
}

function packedLabel(q: PackableLinear): string {
  const nnz = q.outliers ? q.outliers.indptr[q.outFeatures]! : 0;
  return `int${q.bits} ${q.groupSize > 0 ? `g${q.groupSize}` : "per-row"}${q.gIdx ? " act-order" : ""}${nnz > 0 ? ` +${nnz} outliers` : ""}`;
}

export class CpuBackend implements Backend {
  readonly name = "cpu";
  private readonly addon: NativeAddon;

  constructor(addon: NativeAddon = loadNativeAddon()) {
    this.addon = addon;
  }

  /** Build/config string of the linked BLAS, e.g. "OpenBLAS 0.3.21 ... core=Haswell". */
  get blasInfo(): string {
    return this.addon.blasInfo();
  }

  setThreads(n: number): void {
    call(() => this.addon.setThreads(n));
  }

  getThreads(): number {
    return this.addon.getThreads();
  }

  gemm(
    transA: boolean, transB: boolean,
    M: number, N: number, K: number,
    alpha: number, A: Float32Array, B: Float32Array,
    beta: number, C: Float32Array,
  ): void {
    call(() => this.addon.sgemm(transA, transB, M, N, K, alpha, A, B, beta, C));
  }

  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array, upperOnly = false): void {
    call(() => this.addon.ssyrk(n, rows, alpha, X, beta, H, upperOnly));
  }

  symmetrize(H: Float32Array, n: number): void {
    call(() => this.addon.symmetrize(H, n));
  }

  cholesky(A: Float32Array, n: number, upper: boolean): boolean {
    return call(() => this.addon.spotrf(A, n, upper));
  }

  inverseCholesky(A: Float32Array, n: number): boolean {
    return call(() => this.addon.inverseCholesky(A, n));
  }

  packLinear(q: PackableLinear): CpuLinearHandle {
    const ol = q.outliers;
    const h = call(() =>
      this.addon.qpack(q.outFeatures, q.inFeatures, q.bits, q.groupSize, q.codes, q.scales, q.zeros, q.gIdx ?? null, ol?.indptr ?? null, ol?.indices ?? null, ol?.values ?? null),
    );
    return new CpuLinearHandle(this.addon, h, "packed", q.outFeatures, q.inFeatures, this.addon.qbytes(h), packedLabel(q));
  }

  f16Linear(w: Uint16Array, out: number, inF: number): CpuLinearHandle {
    const h = call(() => this.addon.qpackF16(out, inF, w));
    return new CpuLinearHandle(this.addon, h, "f16", out, inF, this.addon.qbytes(h), "fp16");
  }

  rmsNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, eps: number, out: Float32Array): void {
    call(() => this.addon.rmsNorm(x, rows, dim, w, eps, out));
  }

  layerNorm(x: Float32Array, rows: number, dim: number, w: Float32Array, b: Float32Array | undefined, eps: number, out: Float32Array): void {
    call(() => this.addon.layerNorm(x, rows, dim, w, b ?? null, eps, out));
  }

  rope(x: Float32Array, rows: number, T: number, nHeads: number, pos0: number, table: RopeTable): void {
    call(() => this.addon.rope(x, rows, T, nHeads, table.headDim, pos0, table.cos, table.sin));
  }

  attention(q: Float32Array, k: Float32Array, v: Float32Array, s: AttentionShape, cache: KvCache | undefined, out: Float32Array): void {
    if (cache && cache.k.length !== cache.capacity * s.nKvHeads * s.headDim)
      throw new BackendError(`attention: KV cache of capacity ${cache.capacity} has ${cache.k.length} elements, expected ${cache.capacity * s.nKvHeads * s.headDim}`);
    call(() => this.addon.attention(q, k, v, s.B, s.T, s.nHeads, s.nKvHeads, s.headDim, s.pos0, cache?.k ?? null, cache?.v ?? null, out));
  }

  activate(kind: ActivationKind, x: Float32Array): void {
    call(() => this.addon.activate(ACTIVATION[kind], x));
  }

  activateMul(kind: ActivationKind, gate: Float32Array, up: Float32Array): void {
    call(() => this.addon.activateMul(ACTIVATION[kind], gate, up));
  }

  add(a: Float32Array, b: Float32Array, out: Float32Array): void {
    call(() => this.addon.add(a, b, out));
  }

  rowLse(x: Float32Array, rows: number, vocab: number, max: Float32Array, sum: Float64Array, top: Int32Array): void {
    call(() => this.addon.rowLse(x, rows, vocab, max, sum, top));
  }

  gptqColumns(j: GptqColumnsJob, i1: number, s1: number, s2: number): number {
    return call(() =>
      this.addon.gptqColumns(j.Wt, j.U, j.qt, j.err, j.sT, j.zT, j.ot, j.vt, j.perm, j.n, j.out, j.bits, j.sym, j.groupSize, j.staticGroups, j.tau, j.state, i1, s1, s2),
    );
  }

  fakeQuant(W: Float32Array, out: number, inF: number, o: { bits: number; groupSize: number; sym: boolean }, s: Float32Array | null, dst: Float32Array): number {
    return call(() => this.addon.rtnFakeQuant(W, out, inF, o.bits, o.groupSize, o.sym, s, dst));
  }

  sumSquaredDiff(a: Float32Array, b: Float32Array): number {
    return call(() => this.addon.sumSquaredDiff(a, b));
  }

  columnSumSquaredDiff(a: Float32Array, b: Float32Array, rows: number, cols: number, acc: Float64Array): void {
    call(() => this.addon.columnSumSquaredDiff(a, b, rows, cols, acc));
  }

  /** The block ops' float64 e^x (equal to src/model/ops.ts fastExp bit for bit; for tests). */
  nativeExp(x: number): number {
    return this.addon.fastExp(x);
  }

  /** The packed kernels in use (SIMD level, pool threads). */
  kernelInfo(): KernelInfo {
    return this.addon.kernelInfo();
  }

  /**
   * setSimd(true): the best SIMD kernels the CPU has; setSimd(false): the portable scalar ones; returns
   * whether AVX2 (or more) is now in use. setSimd(level): that level, capped at the CPU's; returns the
   * level now in use. QUANT4_SIMD / QUANT4_NO_SIMD=1 in the environment set the starting level. For tests
   * and benches.
   */
  setSimd(on: boolean): boolean;
  setSimd(level: SimdLevel): SimdLevel;
  setSimd(v: boolean | SimdLevel): boolean | SimdLevel {
    return this.addon.setSimd(v);
  }

  /** Hand the C heap's free pages back to the OS (glibc malloc_trim; a no-op elsewhere). For RSS measurements. */
  trimMemory(): void {
    this.addon.trimMemory();
  }
}
