// The native causal attention op (Backend.attention: scores, softmax, P·V) at each SIMD level, GFLOP/s.
//   node --import tsx bench/attention.ts [--threads 1,2] [--levels avx2,avx512] [--reps 5] [--shapes brown,awq,7b,stories]
// FLOPs: 4·d per (query, visible key) pair (q·k and p·v); each number is the best of --reps calls, the levels
// alternate call by call so load from other jobs hits both alike.

import { getBackend, type CpuBackend } from "../src/compute/index.js";
import type { SimdLevel } from "../src/compute/cpu.js";
import { mulberry32 } from "../src/calibration/sampler.js";

const SHAPES = {
  brown: { B: 8, T: 256, nH: 4, nKv: 2, d: 64, what: "brown-llama eval (B 8 × T 256)" },
  awq: { B: 4, T: 512, nH: 4, nKv: 2, d: 64, what: "brown-llama AWQ (B 4 × T 512)" },
  "7b": { B: 1, T: 512, nH: 32, nKv: 32, d: 128, what: "7B (T 512)" },
  stories: { B: 8, T: 256, nH: 8, nKv: 4, d: 8, what: "stories260K eval (B 8 × T 256)" },
} as const;

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : def;
};
const threadsList = opt("--threads", "1,2").split(",").map(Number);
const levels = opt("--levels", "avx2,avx512").split(",") as SimdLevel[];
const reps = Number(opt("--reps", "5"));
const shapes = opt("--shapes", "brown,awq,7b").split(",") as (keyof typeof SHAPES)[];

const be = getBackend("cpu") as CpuBackend;
const available = be.kernelInfo().simdLevels;
const r = mulberry32(1);
const rand = (n: number): Float32Array => Float32Array.from({ length: n }, () => r() * 2 - 1);

console.log(`kernels ${available.join("/")}; ${be.blasInfo}`);
for (const name of shapes) {
  const s = SHAPES[name];
  const q = rand(s.B * s.T * s.nH * s.d);
  const k = rand(s.B * s.T * s.nKv * s.d);
  const v = rand(s.B * s.T * s.nKv * s.d);
  const out = new Float32Array(q.length);
  const shape = { B: s.B, T: s.T, nHeads: s.nH, nKvHeads: s.nKv, headDim: s.d, pos0: 0 };
  const flops = 4 * s.d * s.B * s.nH * ((s.T * (s.T + 1)) / 2);
  for (const threads of threadsList) {
    be.setThreads(threads);
    const best = new Map<SimdLevel, number>();
    for (let i = 0; i < reps; i++)
      for (const level of levels) {
        if (!available.includes(level)) continue;
        be.setSimd(level);
        const t0 = process.hrtime.bigint();
        be.attention(q, k, v, shape, undefined, out);
        const sec = Number(process.hrtime.bigint() - t0) / 1e9;
        best.set(level, Math.min(best.get(level) ?? Infinity, sec));
      }
    const cells = [...best].map(([l, sec]) => `${l} ${(flops / sec / 1e9).toFixed(1)} GFLOP/s (${(sec * 1e3).toFixed(2)} ms)`);
    console.log(`${s.what}, ${s.nH}/${s.nKv} heads × ${s.d}, ${threads} thread(s): ${cells.join(", ")}`);
  }
}
be.setSimd(true);
