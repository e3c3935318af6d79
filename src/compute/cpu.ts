// CPU Backend: the native addon (native/src/quant4_native.cc) over OpenBLAS (Linux) or
// Accelerate (macOS). The addon validates every size and throws; those errors are rethrown here
// as BackendError so the CLI reports them like every other quant4 error.

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { BackendError } from "../util/errors.js";
import type { Backend } from "./backend.js";

/** The raw addon surface (native/src/quant4_native.cc). */
export interface NativeAddon {
  sgemm(
    transA: boolean, transB: boolean, M: number, N: number, K: number,
    alpha: number, A: Float32Array, B: Float32Array, beta: number, C: Float32Array,
  ): void;
  ssyrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array): void;
  spotrf(A: Float32Array, n: number, upper: boolean): boolean;
  spotri(A: Float32Array, n: number): boolean;
  setThreads(n: number): void;
  getThreads(): number;
  blasInfo(): string;
}

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

  syrk(n: number, rows: number, alpha: number, X: Float32Array, beta: number, H: Float32Array): void {
    call(() => this.addon.ssyrk(n, rows, alpha, X, beta, H));
  }

  cholesky(A: Float32Array, n: number, upper: boolean): boolean {
    return call(() => this.addon.spotrf(A, n, upper));
  }

  choleskyInverse(A: Float32Array, n: number): boolean {
    return call(() => this.addon.spotri(A, n));
  }
}
