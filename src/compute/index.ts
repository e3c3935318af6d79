// Entry point of the compute layer: pick a Backend by device name, and measure its GEMM rate.

import { BackendError } from "../util/errors.js";
import type { Backend } from "./backend.js";
import { CpuBackend } from "./cpu.js";

export type { ActivationKind, AttentionShape, Backend, KvCache, LinearHandle, PackableLinear, RopeTable } from "./backend.js";
export { CpuBackend, CpuLinearHandle, type KernelInfo, type KernelPath, type SimdLevel } from "./cpu.js";

export type Device = "cpu" | "cuda";

let cpuBackend: Backend | undefined;

/** The Backend for a device (a cached singleton). "cuda" is not available in this build. */
export function getBackend(device: Device = "cpu"): Backend {
  switch (device) {
    case "cpu":
      cpuBackend ??= new CpuBackend();
      return cpuBackend;
    case "cuda":
      throw new BackendError("CUDA backend not available in this build");
    default:
      throw new BackendError(`unknown device "${String(device)}" (expected "cpu" or "cuda")`);
  }
}

/**
 * Peak single-precision GEMM rate of a backend in GFLOP/s: one warm-up, then `reps` timed
 * C = A·B multiplies of n×n×n (2n³ flops each); returns the best (fastest) repetition.
 */
export function gemmPeakGflops(backend: Backend, n = 512, reps = 5): number {
  if (!Number.isInteger(n) || n < 1) throw new BackendError(`gemmPeakGflops: n must be a positive integer, got ${n}`);
  if (!Number.isInteger(reps) || reps < 1) throw new BackendError(`gemmPeakGflops: reps must be a positive integer, got ${reps}`);
  const A = new Float32Array(n * n);
  const B = new Float32Array(n * n);
  const C = new Float32Array(n * n);
  // Deterministic, well-scaled data (values in [-1, 1)); content doesn't affect BLAS speed.
  let s = 0x9e3779b9;
  for (let i = 0; i < A.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    A[i] = s / 2 ** 31 - 1;
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    B[i] = s / 2 ** 31 - 1;
  }
  backend.gemm(false, false, n, n, n, 1, A, B, 0, C); // warm-up (thread pool start, page faults)
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    backend.gemm(false, false, n, n, n, 1, A, B, 0, C);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (dt < best) best = dt;
  }
  return (2 * n * n * n) / Math.max(best, 1e-9) / 1e9;
}
