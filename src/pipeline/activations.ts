// Calibration activations between blocks: nsamples × seqlen rows of `hidden` values, kept as fp32 or
// (halving memory) fp16, in memory or — when over the memory budget (--max-memory, by default derived
// from free memory: src/pipeline/memory.ts) — in a temp file in the work dir that is read and written
// one batch at a time. Batches are materialised as fp32 for the forward pass.

import fs from "node:fs";
import { f16ToF32, f32ToF16 } from "../io/dtype.js";
import { OutputError } from "../util/errors.js";

export type ActDtype = "fp32" | "fp16";

/** Largest single readSync (Node refuses lengths ≥ 2 GiB). */
const READ_CHUNK = 1 << 30;

/**
 * The two stores (a block's inputs and its outputs) are spilled when together they exceed the budget
 * (null = no budget: in memory). The CLI says so before the run from the same test.
 */
export function spillsActivations(p: { nsamples: number; seqlen: number; actDtype: ActDtype; maxMemoryBytes: number | null }, hidden: number): boolean {
  return p.maxMemoryBytes !== null && 2 * ActivationStore.bytesFor(p.nsamples, p.seqlen, hidden, p.actDtype) > p.maxMemoryBytes;
}

/** Bytes of the calibration passes' caches at their widest (residual + MLP hidden state, fp32: src/pipeline/passes.ts). */
export function passCacheBytes(p: { nsamples: number; seqlen: number }, hidden: number, intermediate: number): number {
  return ActivationStore.bytesFor(p.nsamples, p.seqlen, hidden + intermediate, "fp32");
}

/** Whether those caches spill: when they and the two activation stores exceed the budget. */
export function spillsPassCaches(p: { nsamples: number; seqlen: number; actDtype: ActDtype; maxMemoryBytes: number | null }, hidden: number, intermediate: number): boolean {
  return p.maxMemoryBytes !== null && 2 * ActivationStore.bytesFor(p.nsamples, p.seqlen, hidden, p.actDtype) + passCacheBytes(p, hidden, intermediate) > p.maxMemoryBytes;
}

/**
 * Refuse a spill that cannot fit on the work directory's file system, before the first block rather than
 * hours in (`statfs` injectable for tests).
 */
export function checkSpillSpace(dir: string, bytes: number, statfs: (d: string) => { bavail: number | bigint; bsize: number | bigint } = fs.statfsSync): void {
  let free: number;
  try {
    const st = statfs(dir);
    free = Number(st.bavail) * Number(st.bsize);
  } catch {
    return; // unknown: the writes themselves report ENOSPC
  }
  if (free < bytes)
    throw new OutputError(dir, `spilling the calibration activations needs ${(bytes / 2 ** 30).toFixed(2)} GiB but the file system has ${(free / 2 ** 30).toFixed(2)} GiB free; free space there, or use --act-dtype fp16 (half the size), fewer --nsamples, or --max-memory none to keep them in memory`);
}

export class ActivationStore {
  private readonly mem: Float32Array | Uint16Array | null;
  private readonly fd: number | null = null;
  private readonly elemBytes: number;

  /** `spillFile`: keep the values in this file instead of memory (created, removed by close()). */
  constructor(
    readonly samples: number,
    readonly seqlen: number,
    readonly hidden: number,
    readonly dtype: ActDtype,
    readonly spillFile: string | null = null,
  ) {
    const n = samples * seqlen * hidden;
    this.elemBytes = dtype === "fp32" ? 4 : 2;
    if (spillFile) {
      try {
        this.fd = fs.openSync(spillFile, "w+");
        fs.ftruncateSync(this.fd, n * this.elemBytes);
      } catch (e) {
        throw new OutputError(spillFile, `cannot create the activation spill file: ${(e as Error).message}`);
      }
      this.mem = null;
    } else {
      this.mem = dtype === "fp32" ? new Float32Array(n) : new Uint16Array(n);
    }
  }

  /** Bytes the values take (in memory or on disk). */
  get bytes(): number {
    return this.samples * this.seqlen * this.hidden * this.elemBytes;
  }

  static bytesFor(samples: number, seqlen: number, hidden: number, dtype: ActDtype): number {
    return samples * seqlen * hidden * (dtype === "fp32" ? 4 : 2);
  }

  private range(s0: number, s1: number): [number, number] {
    const per = this.seqlen * this.hidden;
    return [s0 * per, s1 * per];
  }

  /**
   * Samples [s0, s1) for reading only: a view of the store when it holds fp32 in memory (no copy, no
   * fresh pages), else what get() returns. The caller must not write to it.
   */
  read(s0: number, s1: number): Float32Array {
    if (this.mem instanceof Float32Array) {
      const [a, b] = this.range(s0, s1);
      return this.mem.subarray(a, b);
    }
    return this.get(s0, s1);
  }

  /** Samples [s0, s1) as one fp32 array [(s1−s0)·seqlen, hidden] (a copy: the caller may write to it). */
  get(s0: number, s1: number): Float32Array {
    const [a, b] = this.range(s0, s1);
    if (this.mem) return this.mem instanceof Float32Array ? this.mem.slice(a, b) : f16ToF32(this.mem.subarray(a, b));
    // Read straight into the array returned (no second copy of the batch).
    const out = this.dtype === "fp32" ? new Float32Array(b - a) : new Uint16Array(b - a);
    const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    for (let done = 0; done < bytes.length; ) {
      const n = fs.readSync(this.fd!, bytes, done, Math.min(bytes.length - done, READ_CHUNK), a * this.elemBytes + done);
      if (n === 0) throw new OutputError(this.spillFile!, "the activation spill file is shorter than written (removed or truncated while running?)");
      done += n;
    }
    return out instanceof Float32Array ? out : f16ToF32(out);
  }

  set(s0: number, x: Float32Array): void {
    const [a] = this.range(s0, s0);
    if (this.mem) {
      if (this.mem instanceof Float32Array) this.mem.set(x, a);
      else this.mem.set(f32ToF16(x), a);
      return;
    }
    const data = this.dtype === "fp32" ? x : f32ToF16(x);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    try {
      fs.writeSync(this.fd!, bytes, 0, bytes.length, a * this.elemBytes);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new OutputError(this.spillFile!, err.code === "ENOSPC" ? "out of disk space while spilling activations" : err.message);
    }
  }

  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      fs.rmSync(this.spillFile!, { force: true });
    }
  }
}
