// Batched evaluation (issue 15 item 5): evaluatePerplexity runs several windows through each forward,
// and the native row log-sum-exp replaces the TypeScript loop. Both must leave every number as it was:
// the same perplexity, KL and top-token agreement, bit for bit, as one window at a time in TypeScript.

import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { resolveText } from "../src/calibration/texts.js";
import { getBackend, type CpuBackend } from "../src/compute/index.js";
import { EVAL_BATCH_ROWS, EVAL_LOGITS_BYTES, evalBatching, evaluatePerplexity, pplTokens, rowsLse, windowNll } from "../src/eval/perplexity.js";
import { Model } from "../src/model/model.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { STORIES_VENDORED, gaussianArray, makeTmpDir, removeTmpDirs, runCli } from "./helpers.js";

afterAll(removeTmpDirs);

const be = getBackend("cpu");

describe("Backend.rowLse", () => {
  it("gives the TypeScript reference's log-sum-exp and argmax bit for bit, AVX2 and scalar", () => {
    const V = 1003; // not a multiple of 8 or of the 512-column chunks
    const rows = 13;
    const x = gaussianArray(rows * V, 7, 4);
    x[2 * V + 5] = x[2 * V + 900] = 30; // a tie: the first index wins
    x[4 * V + 17] = NaN;
    x[6 * V] = -Infinity;
    x[8 * V + V - 1] = Infinity;
    const ref = rowsLse(x, rows, V); // no backend: the TypeScript loop
    const cpu = be as CpuBackend;
    for (const simd of [true, false]) {
      const was = cpu.setSimd(simd);
      try {
        const got = rowsLse(x, rows, V, be);
        for (let r = 0; r < rows; r++) {
          expect(got.top[r], `row ${r}`).toBe(ref.top[r]);
          if ([4, 6, 8].includes(r)) expect(got.top[r]).toBe(-1); // a non-finite row is flagged
          else expect(got.lse[r], `row ${r}`).toBe(ref.lse[r]);
        }
        expect(got.top[2]).toBe(5);
      } finally {
        cpu.setSimd(was);
      }
    }
  });

  it("windowNll is the same with and without the backend", () => {
    const V = 512;
    const T = 40;
    const logits = gaussianArray(T * V, 3, 5);
    const toks = Array.from({ length: T }, (_, i) => (i * 37) % V);
    expect(windowNll(logits, toks, T, V, be)).toBe(windowNll(logits, toks, T, V));
  });
});

describe("evalBatching", () => {
  const arch = (hidden: number, inter: number, vocab: number) =>
    ({ hidden, vocabSize: vocab, linears: [{ name: "up", in: hidden, out: inter }, { name: "down", in: inter, out: hidden }] }) as unknown as Model["arch"];

  it("fills EVAL_BATCH_ROWS with whole windows, at least one, and bounds the logits", () => {
    expect(evalBatching(arch(64, 172, 512), 256)).toEqual({ windowsPerBatch: EVAL_BATCH_ROWS / 256, windowsPerHead: EVAL_BATCH_ROWS / 256 });
    expect(evalBatching(arch(64, 172, 512), 256, 256)).toEqual({ windowsPerBatch: 1, windowsPerHead: 1 });
    expect(evalBatching(arch(64, 172, 512), 4096).windowsPerBatch).toBe(1); // a window longer than the budget
    // A 32000-token vocabulary: the LM head takes as many windows as EVAL_LOGITS_BYTES holds (≥ 1).
    const big = evalBatching(arch(4096, 11008, 32000), 128);
    expect(big.windowsPerHead).toBe(Math.max(1, Math.floor(EVAL_LOGITS_BYTES / (4 * 32000 * 128))));
    expect(big.windowsPerHead).toBeLessThanOrEqual(big.windowsPerBatch);
    // Wide blocks: the activation bound keeps a batch under ~512 MiB.
    expect(evalBatching(arch(8192, 28672, 32000), 512).windowsPerBatch).toBe(1);
  });
});

describe("batched evaluatePerplexity (models/stories260K)", () => {
  const seqlen = 64;
  const maxWindows = 11; // not a multiple of the batch sizes below: a short last batch
  const tokensOf = (m: Model) => pplTokens(loadTokenizer(STORIES_VENDORED), m.arch, resolveText("tinystories").text);

  it("gives the perplexity of one window at a time, bit for bit, for any batch", () => {
    const model = Model.load(STORIES_VENDORED, be);
    const { tokens, addBos } = tokensOf(model);
    const one = evaluatePerplexity(model, tokens, { seqlen, maxWindows, batchRows: seqlen }, addBos);
    expect(one.windows).toBe(maxWindows);
    for (const batchRows of [3 * seqlen, 4 * seqlen + 5, EVAL_BATCH_ROWS]) {
      const seen: number[] = [];
      const r = evaluatePerplexity(model, tokens, { seqlen, maxWindows, batchRows, onWindow: (d) => seen.push(d) }, addBos);
      expect(r.meanNll, `batchRows ${batchRows}`).toBe(one.meanNll);
      expect(r.ppl).toBe(one.ppl);
      expect(seen).toEqual(Array.from({ length: maxWindows }, (_, i) => i + 1)); // progress per window, in order
    }
  });

  it("packed INT4 (qkernels) and --kl-base: the same perplexity and KL batched as one window at a time", async () => {
    const out = path.join(makeTmpDir(), "rtn4");
    const q = await runCli(["quantize", STORIES_VENDORED, out, "--method", "rtn", "--scheme", "w4-g32", "--format", "gptq", "--json"], { timeoutMs: 120_000 });
    expect(q.code, q.stderr).toBe(0);
    const packed = Model.load(out, be);
    expect(packed.weightMemory().packedLinears).toBeGreaterThan(0); // the packed kernels, not dequantized
    const base = Model.load(STORIES_VENDORED, be);
    const { tokens, addBos } = tokensOf(packed);
    const one = evaluatePerplexity(packed, tokens, { seqlen, maxWindows, klBase: base, batchRows: seqlen }, addBos);
    const all = evaluatePerplexity(packed, tokens, { seqlen, maxWindows, klBase: base }, addBos);
    expect(all.meanNll).toBe(one.meanNll);
    expect(all.kl).toEqual(one.kl);
    expect(one.kl!.meanKl).toBeGreaterThan(0);
    // (basePpl is exp of the mean over all predictions, ppl of the mean of window means: last bits differ)
    expect(one.kl!.basePpl).toBeCloseTo(evaluatePerplexity(base, tokens, { seqlen, maxWindows, batchRows: seqlen }, addBos).ppl, 10);
  }, 180_000);
});
