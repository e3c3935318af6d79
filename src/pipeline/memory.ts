// The default memory budget for calibration activations (used when --max-memory is not given): a
// fraction of the memory available to this process — free memory, or less when a cgroup (container)
// limit leaves less — minus what one block needs besides the activations. Above the budget the
// activations are spilled to the work directory (src/pipeline/activations.ts).

import fs from "node:fs";
import os from "node:os";
import type { ArchSpec } from "../model/architectures.js";
import { fmtBytes } from "../util/format.js";

/** What the budget is derived from (read by readMemoryFacts; plain numbers so tests can pass their own). */
export interface MemoryFacts {
  /** os.freemem(): MemAvailable on Linux (reclaimable page cache counts as free). */
  freeBytes: number;
  totalBytes: number;
  /** The cgroup's limit ("max" = none) and what it has in use (without reclaimable page cache); null outside one. */
  cgroup: { limit: number | "max"; usage: number | null } | null;
}

/** Share of the available memory the activations plus one block's working set may take. */
export const BUDGET_FRACTION = 0.75;

/** cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything ≥ 2^60 is none. */
const V1_UNLIMITED = 2 ** 60;

/** Memory this process can still take: free memory, capped by the cgroup limit less its usage. */
export function availableMemory(f: MemoryFacts): { bytes: number; source: string } {
  const free = Math.min(f.freeBytes, f.totalBytes);
  if (f.cgroup && f.cgroup.limit !== "max" && f.cgroup.limit < V1_UNLIMITED) {
    const left = Math.max(0, f.cgroup.limit - (f.cgroup.usage ?? 0));
    if (left < free) return { bytes: left, source: `cgroup limit ${gib(f.cgroup.limit)}${f.cgroup.usage ? ` less ${gib(f.cgroup.usage)} in use` : ""}` };
  }
  return { bytes: free, source: `free memory of ${gib(f.totalBytes)}` };
}

/** The budget: BUDGET_FRACTION of the available memory less one block's working set (≥ 0), and why, in words. */
export function defaultActivationBudget(f: MemoryFacts, workingSetBytes: number): { bytes: number; why: string } {
  const avail = availableMemory(f);
  const bytes = Math.max(0, Math.floor(BUDGET_FRACTION * avail.bytes - workingSetBytes));
  return {
    bytes,
    why: `automatic: ${Math.round(BUDGET_FRACTION * 100)}% of ${gib(avail.bytes)} available (${avail.source}) less a per-block working set of ${gib(workingSetBytes)}`,
  };
}

/**
 * What one block needs at its peak besides the activation stores, for GPTQ at the shapes of `arch`:
 * the process itself, the block's fp32 weights (for AWQ twice: an allowance for its captured inputs and
 * search temporaries, not measured at these shapes), and the larger of the two phases of the widest
 * Linear (down_proj: hidden × I, I = its input width): GPTQ (Hessian and inverse factor, 2 × 4·I², and
 * 13·hidden·I bytes of transposed W, codes, dequantized Q and garbage not yet collected) or the forward
 * that collects its Hessian (4·I² and one ≤ 2048-row batch's intermediates). Measured at Llama-2-7B
 * shapes (bench/README.md "Memory"): 2.41 GiB spilled; this gives 2.40 GiB.
 */
export function blockWorkingSetBytes(arch: Pick<ArchSpec, "hidden" | "intermediate" | "linears">, seqlen: number, awq: boolean): number {
  const blockParams = arch.linears.reduce((s, l) => s + l.out * l.in, 0) + 2 * arch.hidden;
  const maxIn = Math.max(...arch.linears.map((l) => l.in));
  const maxLinear = Math.max(...arch.linears.map((l) => l.out * l.in));
  const rows = Math.max(seqlen, Math.floor(2048 / seqlen) * seqlen);
  const gptq = 2 * 4 * maxIn * maxIn + 13 * maxLinear;
  const forward = 4 * maxIn * maxIn + 4 * rows * (3 * arch.intermediate + 8 * arch.hidden);
  return PROCESS_BYTES + 4 * blockParams * (awq ? 2 : 1) + Math.max(gptq, forward);
}

/** Node, the native addon, OpenBLAS's buffers and the tokenizer before any model data (measured 0.20 GiB). */
const PROCESS_BYTES = 0.2 * 2 ** 30;

/** The number in a cgroup file ("max" kept as such); null when the file is absent or unreadable. */
function readNumber(file: string): number | "max" | null {
  try {
    const s = fs.readFileSync(file, "utf8").trim();
    if (s === "max") return "max";
    const n = Number(s);
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

/** A counter of a cgroup memory.stat file (0 when absent). */
function statField(file: string, key: string): number {
  try {
    const m = new RegExp(`^${key} (\\d+)$`, "m").exec(fs.readFileSync(file, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * This process's cgroup memory limit and usage: v2 (memory.max, memory.current) or v1
 * (memory/memory.limit_in_bytes, memory.usage_in_bytes), in its own cgroup's directory when that is
 * visible, else at the mount root (a container's cgroup namespace). Usage leaves out inactive page cache.
 */
export function readCgroupMemory(root = "/sys/fs/cgroup"): MemoryFacts["cgroup"] {
  let own: { v2: string | null; v1: string | null } = { v2: null, v1: null };
  try {
    for (const line of fs.readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
      const [, ctrl, p] = line.split(":");
      if (ctrl === "" && p) own.v2 = p;
      else if (ctrl?.split(",").includes("memory") && p) own.v1 = p;
    }
  } catch {
    own = { v2: null, v1: null };
  }
  const dirs = (base: string, p: string | null) => [...(p && p !== "/" ? [base + p] : []), base];
  for (const d of dirs(root, own.v2)) {
    const limit = readNumber(`${d}/memory.max`);
    if (limit === null) continue;
    const cur = readNumber(`${d}/memory.current`);
    return { limit, usage: typeof cur === "number" ? Math.max(0, cur - statField(`${d}/memory.stat`, "inactive_file")) : null };
  }
  for (const d of dirs(`${root}/memory`, own.v1)) {
    const limit = readNumber(`${d}/memory.limit_in_bytes`);
    if (limit === null) continue;
    const cur = readNumber(`${d}/memory.usage_in_bytes`);
    return { limit, usage: typeof cur === "number" ? Math.max(0, cur - statField(`${d}/memory.stat`, "total_inactive_file")) : null };
  }
  return null;
}

export function readMemoryFacts(): MemoryFacts {
  return { freeBytes: os.freemem(), totalBytes: os.totalmem(), cgroup: readCgroupMemory() };
}

const gib = fmtBytes;
