// sgemm GFLOP/s of the CPU backend.
//   node --import tsx bench/gemm-peak.ts [--threads T] [--reps R] [n ...]     (default n: 512 1024)

import { gemmPeakGflops, getBackend, type CpuBackend } from "../src/compute/index.js";

const args = process.argv.slice(2);
let threads: number | undefined;
let reps = 10;
const sizes: number[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === "--threads") threads = Number(args[++i]);
  else if (a === "--reps") reps = Number(args[++i]);
  else sizes.push(Number(a));
}
if (sizes.length === 0) sizes.push(512, 1024);

const be = getBackend("cpu");
if (threads !== undefined) be.setThreads(threads);
console.log(`${(be as CpuBackend).blasInfo}; threads=${be.getThreads()}`);
for (const n of sizes) {
  const g = gemmPeakGflops(be, n, reps);
  console.log(`sgemm n=${n}: ${g.toFixed(1)} GFLOP/s (best of ${reps})`);
}
