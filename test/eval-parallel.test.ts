// Data-parallel evaluation (issue 15 item 5, src/eval/parallel.ts): with --threads n, eval-ppl runs n
// one-thread evaluators (this thread and n − 1 worker threads) over batches of windows claimed from a
// shared counter. The numbers must be those of one evaluator bit for bit (ppl, mean NLL, every KL
// field); a failing window must give the single evaluator's error; a thread that dies must end the
// evaluation with an error, not hang it; and when the copies of the model do not fit, one evaluator runs.

import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { resolveText } from "../src/calibration/texts.js";
import { getBackend } from "../src/compute/index.js";
import { EVAL_GFLOPS_PER_THREAD, MIN_SECONDS_PER_EVALUATOR, evaluatePerplexityParallel, planEvaluators, workBatches, type ParallelOptions } from "../src/eval/parallel.js";
import { evaluatePerplexity, pplTokens } from "../src/eval/perplexity.js";
import { Model } from "../src/model/model.js";
import type { MemoryFacts } from "../src/pipeline/memory.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { ModelError } from "../src/util/errors.js";
import { BROWN, STORIES_VENDORED, copyModel, expectOneLineError, hasShared, makeTmpDir, removeTmpDirs, runCli, withShared } from "./helpers.js";

afterAll(removeTmpDirs);

const be = getBackend("cpu");
const GiB = 2 ** 30;

describe("planEvaluators", () => {
  const facts = (freeBytes: number, cgroup: MemoryFacts["cgroup"] = null): MemoryFacts => ({ freeBytes, totalBytes: 64 * GiB, cgroup });
  /** Work for `s` seconds of one thread at the estimate's rate. */
  const work = (threads: number, perEvaluatorBytes: number, batches: number, s = 100) => ({ threads, perEvaluatorBytes, batches, flops: s * EVAL_GFLOPS_PER_THREAD * 1e9 });

  it("one evaluator for one thread, for QUANT4_EVAL_WORKERS=0, for a single batch, and for a short evaluation", () => {
    expect(planEvaluators(work(1, GiB, 100), facts(64 * GiB), {}).evaluators).toBe(1);
    expect(planEvaluators(work(4, GiB, 100), facts(64 * GiB), { QUANT4_EVAL_WORKERS: "0" })).toMatchObject({ evaluators: 1, why: "QUANT4_EVAL_WORKERS=0: one evaluator on 4 threads" });
    expect(planEvaluators(work(4, GiB, 1), facts(64 * GiB), {}).evaluators).toBe(1);
    // Each evaluator needs MIN_SECONDS_PER_EVALUATOR of estimated work: 2.5 s feeds two of four threads.
    expect(planEvaluators(work(4, GiB, 100, 1.5), facts(64 * GiB), {})).toMatchObject({ evaluators: 1, why: expect.stringMatching(/^a short evaluation \(~1\.5 s/) });
    expect(planEvaluators(work(4, GiB, 100, 2.5 * MIN_SECONDS_PER_EVALUATOR), facts(64 * GiB), {}).evaluators).toBe(2);
    // QUANT4_EVAL_WORKERS=n asks for n whatever the threads and the work; not a number is a usage error.
    expect(planEvaluators(work(1, GiB, 100, 0.1), facts(64 * GiB), { QUANT4_EVAL_WORKERS: "3" }).evaluators).toBe(3);
    expect(planEvaluators(work(1, GiB, 2, 0.1), facts(64 * GiB), { QUANT4_EVAL_WORKERS: "3" }).evaluators).toBe(2);
    expect(() => planEvaluators(work(2, GiB, 100), facts(64 * GiB), { QUANT4_EVAL_WORKERS: "two" })).toThrow(/QUANT4_EVAL_WORKERS must be a whole number/);
  });

  it("n evaluators when n − 1 more copies fit in 75% of the available memory (free or cgroup), else one on n threads", () => {
    expect(planEvaluators(work(4, GiB, 100), facts(16 * GiB), {}).evaluators).toBe(4);
    expect(planEvaluators(work(4, GiB, 3), facts(16 * GiB), {}).evaluators).toBe(3); // no more evaluators than batches
    // 3 more copies of 1 GiB: fits in 0.75 × 4 GiB, not in 0.75 × 3.9 GiB.
    expect(planEvaluators(work(4, GiB, 100), facts(4 * GiB), {}).evaluators).toBe(4);
    const low = planEvaluators(work(4, GiB, 100), facts(3.9 * GiB), {});
    expect(low.evaluators).toBe(1);
    expect(low.why).toMatch(/3 more copies of the model need 3\.00 GiB.*one evaluator on 4 threads/);
    // Plenty of free memory, but the container's limit leaves 1 GiB.
    const cg = planEvaluators(work(2, GiB, 100), facts(64 * GiB, { limit: 3 * GiB, usage: 2 * GiB }), {});
    expect(cg.evaluators).toBe(1);
    expect(cg.why).toContain("cgroup limit");
    expect(planEvaluators(work(2, GiB, 100), facts(64 * GiB, { limit: "max", usage: 2 * GiB }), {}).evaluators).toBe(2);
    // Forced, still checked.
    expect(planEvaluators(work(2, GiB, 100), facts(GiB), { QUANT4_EVAL_WORKERS: "2" }).evaluators).toBe(1);
  });
});

describe("workBatches", () => {
  it("whole batches, then shrinking ones at the end; every window once, in order", () => {
    for (const [windows, wpb, ev] of [[334, 8, 2], [23, 2, 3], [60, 8, 2], [1, 8, 2], [7, 1, 4], [1000, 3, 16]] as const) {
      const s = Array.from(workBatches(windows, wpb, ev));
      expect(s[0]).toBe(0);
      expect(s.at(-1)).toBe(windows);
      const sizes = s.slice(1).map((x, i) => x - s[i]!);
      expect(sizes.every((n, i) => n >= 1 && n <= wpb && (i === 0 || n <= sizes[i - 1]!))).toBe(true);
    }
    // brown-llama, 334 windows of 256, 2 evaluators: 39 batches of 8, then 6, 4, 3, 3, 2, 1, 1, 1, 1.
    const s = Array.from(workBatches(334, 8, 2));
    expect(s.slice(1).map((x, i) => x - s[i]!).slice(38)).toEqual([8, 6, 4, 3, 3, 2, 1, 1, 1, 1]);
  });
});

/** A copy of stories260K whose layer-1 down_proj overflows: every window's logits are NaN. */
function overflowingStories(): string {
  const dir = copyModel(STORIES_VENDORED);
  const file = path.join(dir, "model.safetensors");
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const begin = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"))["model.layers.1.mlp.down_proj.weight"].data_offsets[0] as number;
  for (let i = 0; i < 172; i++) buf.writeFloatLE(i % 2 ? 3e38 : -3e38, 8 + n + begin + 4 * i);
  writeFileSync(file, buf);
  return dir;
}

describe("evaluatePerplexityParallel (models/stories260K)", () => {
  const seqlen = 64;
  const maxWindows = 23; // 2 windows a batch (batchRows 128): 12 batches, the last one short
  const batchRows = 2 * seqlen;
  const setup = (dir: string) => {
    const model = Model.load(dir, be);
    return { model, ...pplTokens(loadTokenizer(dir), model.arch, resolveText("tinystories").text) };
  };
  const par = (evaluators: number, dir: string, more: Partial<ParallelOptions> = {}): ParallelOptions => ({ evaluators, spec: { modelDir: dir, dequantize: false }, backend: be, ...more });

  it("the same bits as one evaluator: 2 and 3 evaluators, and the threads alone; progress counts every window", async () => {
    const { model, tokens, addBos } = setup(STORIES_VENDORED);
    be.setThreads(1);
    const one = evaluatePerplexity(model, tokens, { seqlen, maxWindows }, addBos);
    for (const [evaluators, parentEvaluates] of [[2, true], [3, true], [2, false], [3, false]] as const) {
      const seen: number[] = [];
      const r = await evaluatePerplexityParallel(model, tokens, { seqlen, maxWindows, batchRows, onWindow: (d, t) => (expect(t).toBe(maxWindows), seen.push(d)) }, addBos, par(evaluators, STORIES_VENDORED, { parentEvaluates }));
      const what = `${evaluators} evaluators, parent ${parentEvaluates}`;
      expect(r.meanNll, what).toBe(one.meanNll);
      expect(r.ppl, what).toBe(one.ppl);
      expect([r.windows, r.seqlen, r.totalTokens, r.protocol]).toEqual([one.windows, one.seqlen, one.totalTokens, one.protocol]);
      expect(r.tokensPerSecond).toBeGreaterThan(0);
      expect(seen.at(-1), what).toBe(maxWindows);
      expect(seen.every((d, i) => i === 0 || d > seen[i - 1]!), what).toBe(true);
    }
  });

  it("a straggling thread's batch is scored here too: not waited for, counted once, the same bits", async () => {
    const model = Model.load(STORIES_VENDORED, be);
    const { tokens, addBos } = pplTokens(loadTokenizer(STORIES_VENDORED), model.arch, resolveText("wikitext2").text);
    const o = { seqlen, maxWindows: 1200, batchRows }; // ~1–2 s: the thread starts in time and claims a batch
    be.setThreads(1);
    const one = evaluatePerplexity(model, tokens, o, addBos);
    const seen: number[] = [];
    const stats = { redone: 0 };
    const t0 = performance.now();
    const r = await evaluatePerplexityParallel(model, tokens, { ...o, onWindow: (d) => seen.push(d) }, addBos, par(2, STORIES_VENDORED, { stallMs: 60_000, stats }));
    expect(performance.now() - t0).toBeLessThan(40_000); // the thread's first batch never finishes: redone here
    expect(stats.redone).toBe(1);
    expect(r.meanNll).toBe(one.meanNll);
    expect(seen.at(-1)).toBe(1200);
    expect(seen.every((d, i) => i === 0 || d > seen[i - 1]!)).toBe(true);
  });

  it("packed INT4 with a KL base: the same perplexity and KL fields, bit for bit", async () => {
    const out = path.join(makeTmpDir(), "rtn4");
    const q = await runCli(["quantize", STORIES_VENDORED, out, "--method", "rtn", "--scheme", "w4-g32", "--format", "gptq", "--threads", "1", "--json"], { timeoutMs: 120_000 });
    expect(q.code, q.stderr).toBe(0);
    const { model: packed, tokens, addBos } = setup(out);
    expect(packed.weightMemory().packedLinears).toBeGreaterThan(0);
    const base = Model.load(STORIES_VENDORED, be);
    be.setThreads(1);
    const one = evaluatePerplexity(packed, tokens, { seqlen, maxWindows, klBase: base }, addBos);
    expect(one.kl!.meanKl).toBeGreaterThan(0);
    for (const parentEvaluates of [true, false]) {
      const r = await evaluatePerplexityParallel(packed, tokens, { seqlen, maxWindows, batchRows, klBase: base }, addBos, {
        ...par(2, out, { parentEvaluates }),
        spec: { modelDir: out, klBaseDir: STORIES_VENDORED, dequantize: false },
      });
      expect(r.meanNll).toBe(one.meanNll);
      expect(r.kl).toEqual(one.kl);
    }
  }, 180_000);

  it("a window with non-finite logits scored on a thread: the single evaluator's ModelError, the first failing window", async () => {
    const dir = overflowingStories();
    const { model, tokens, addBos } = setup(dir);
    be.setThreads(1);
    let single: Error | undefined;
    try {
      evaluatePerplexity(model, tokens, { seqlen, maxWindows }, addBos);
    } catch (e) {
      single = e as Error;
    }
    expect(single).toBeInstanceOf(ModelError);
    expect(single!.message).toContain(`${dir}: the model produced non-finite logits in window 1 of ${maxWindows}`);
    // Two threads, this one idle: they claim batches 0 and 1 and both fail; window 1's error is reported.
    for (const evaluators of [2, 3]) {
      const p = evaluatePerplexityParallel(model, tokens, { seqlen, maxWindows, batchRows }, addBos, par(evaluators, dir, { parentEvaluates: false }));
      await expect(p).rejects.toBeInstanceOf(ModelError);
      await expect(p).rejects.toThrow(single!.message);
    }
  });

  it("a thread that dies mid-batch without a word: an error naming its windows, no hang", async () => {
    const { model, tokens, addBos } = setup(STORIES_VENDORED);
    const t0 = performance.now();
    const p = evaluatePerplexityParallel(model, tokens, { seqlen, maxWindows, batchRows }, addBos, par(2, STORIES_VENDORED, { parentEvaluates: false, exitAtBatch: 0 }));
    await expect(p).rejects.toThrow(`evaluator thread 1 stopped (exit code 7) while scoring windows 1..2 of ${maxWindows}`);
    expect(performance.now() - t0).toBeLessThan(60_000);
    // Two threads: the one that claims batch 5 dies, the other scores the rest; batch 5 is reported lost.
    const q = evaluatePerplexityParallel(model, tokens, { seqlen, maxWindows, batchRows }, addBos, par(3, STORIES_VENDORED, { parentEvaluates: false, exitAtBatch: 5 }));
    await expect(q).rejects.toThrow(new RegExp(`^evaluator thread [12] stopped \\(exit code 7\\) while scoring windows 11\\.\\.12 of ${maxWindows}$`));
  });
});

describe("eval-ppl --threads through the CLI", () => {
  const fields = (stdout: string) => {
    const j = JSON.parse(stdout);
    return { ppl: j.ppl, meanNll: j.meanNll, kl: j.kl, protocol: j.protocol, evaluators: j.evaluators };
  };

  it("stories260K, tinystories seqlen 256, with --kl-base: two evaluators give --threads 1's numbers; a short evaluation and QUANT4_EVAL_WORKERS=0 keep one", async () => {
    const args = ["eval-ppl", STORIES_VENDORED, "--text", "tinystories", "--seqlen", "256", "--kl-base", STORIES_VENDORED, "--json"];
    const [one, two, short, off] = await Promise.all([
      runCli([...args, "--threads", "1"]),
      runCli([...args, "--threads", "2"], { env: { QUANT4_EVAL_WORKERS: "2" } }),
      runCli([...args, "--threads", "2"]), // ~0.5 s of work: not worth a second evaluator
      runCli([...args, "--threads", "2"], { env: { QUANT4_EVAL_WORKERS: "0" } }),
    ]);
    for (const r of [one, two, short, off]) expect(r.code, r.stderr).toBe(0);
    const a = fields(one.stdout);
    expect(a.evaluators).toBe(1);
    expect(a.ppl.toFixed(4)).toBe("6.2368");
    expect(fields(two.stdout)).toEqual({ ...a, evaluators: 2 });
    expect(fields(short.stdout)).toEqual({ ...a, evaluators: 1 });
    expect(JSON.parse(short.stdout).evaluatorPlan).toMatch(/^a short evaluation/);
    expect(fields(off.stdout)).toEqual({ ...a, evaluators: 1 });
  });

  it("an overflowing model: --threads 2 gives --threads 1's one-line error, exit 2", async () => {
    const dir = overflowingStories();
    const args = ["eval-ppl", dir, "--text", "tinystories", "--seqlen", "64", "--max-windows", "40"];
    const [one, two] = await Promise.all([runCli([...args, "--threads", "1"]), runCli([...args, "--threads", "2"], { env: { QUANT4_EVAL_WORKERS: "2" } })]);
    const line = expectOneLineError(one, `${dir}: the model produced non-finite logits in window 1 of 40`);
    expect(expectOneLineError(two)).toBe(line);
  });

  it.skipIf(!hasShared)(withShared("brown-llama, wikitext2 seqlen 256, 48 windows: --threads 2 gives --threads 1's numbers"), async () => {
    const args = ["eval-ppl", BROWN, "--seqlen", "256", "--max-windows", "48", "--json"];
    const one = await runCli([...args, "--threads", "1"]);
    const two = await runCli([...args, "--threads", "2"]);
    for (const r of [one, two]) expect(r.code, r.stderr).toBe(0);
    const a = fields(one.stdout);
    expect(fields(two.stdout)).toEqual({ ...a, evaluators: 2 });
  });
});
