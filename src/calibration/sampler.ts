// Calibration windows: `nsamples` random windows of `seqlen` tokens from the tokenized calibration
// text, seeded, as the GPTQ code samples WikiText-2 (random start in the joined token stream).

import { UsageError } from "../util/errors.js";

/** mulberry32: a small, fast, well-distributed 32-bit PRNG; same seed → same windows on every machine. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Returns nsamples × seqlen token ids, row-major. Each window starts at a uniform random offset. */
export function sampleWindows(tokens: ArrayLike<number>, nsamples: number, seqlen: number, seed: number, source: string): Int32Array {
  if (tokens.length <= seqlen)
    throw new UsageError(
      `calibration text "${source}" has ${tokens.length} tokens; a window of --seqlen ${seqlen} needs more than that (use a longer text or a smaller --seqlen)`,
    );
  const rand = mulberry32(seed);
  const out = new Int32Array(nsamples * seqlen);
  const span = tokens.length - seqlen;
  for (let s = 0; s < nsamples; s++) {
    const start = Math.floor(rand() * span);
    for (let t = 0; t < seqlen; t++) out[s * seqlen + t] = tokens[start + t]!;
  }
  return out;
}
