// eval-ppl --kl-base: KL(base ‖ model) per prediction and top-token agreement, against hand-computed
// values and on the bundled model (itself → 0; an RTN copy → > 0 with the base's own perplexity).

import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { windowKl } from "../src/eval/perplexity.js";
import { BROWN, STORIES_VENDORED, hasShared, makeTmpDir, removeTmpDirs, runCli, stderrLines, withShared } from "./helpers.js";

afterAll(removeTmpDirs);

describe("windowKl", () => {
  it("matches a hand computation on a 3-token vocabulary", () => {
    // Two positions scored (T = 3); position 2's logits are never used.
    const base = Float32Array.from([0, 0, 0, 2, 0, -1, 9, 9, 9]);
    const model = Float32Array.from([1, 0, 0, 2, 0, -1, 0, 0, 0]);
    const kl = new Float64Array(2);
    const r = windowKl(model, base, [0, 1, 0], 3, 3, kl);
    const lse = (v: number[]): number => Math.log(v.reduce((s, x) => s + Math.exp(x), 0));
    const pb = [0, 0, 0].map((x) => Math.exp(x - lse([0, 0, 0])));
    const lq = [1, 0, 0].map((x) => x - lse([1, 0, 0]));
    const want0 = pb.reduce((s, p, j) => s + p * (Math.log(p) - lq[j]!), 0);
    expect(kl[0]).toBeCloseTo(want0, 6);
    expect(kl[1]).toBeCloseTo(0, 6); // identical rows
    // Base NLL: −log p(1) at position 0 (uniform: log 3), −log p(0) at position 1.
    expect(r.baseNllSum).toBeCloseTo(Math.log(3) + (lse([2, 0, -1]) - 2), 5);
    // Position 0: the base's argmax is token 0 (first of a tie), the model's token 0 too; position 1 equal.
    expect(r.sameTop).toBe(2);
  });
});

describe("eval-ppl --kl-base", () => {
  const QUICK = ["--text", "tinystories", "--seqlen", "128", "--max-windows", "4", "--json"];

  it("is zero against itself, positive for an RTN copy, and reports the base's perplexity", async () => {
    const self = await runCli(["eval-ppl", STORIES_VENDORED, "--kl-base", STORIES_VENDORED, ...QUICK]);
    expect(self.code, self.stderr).toBe(0);
    const s = JSON.parse(self.stdout);
    expect(s.kl.meanKl).toBe(0);
    expect(s.kl.sameTop).toBe(1);
    expect(s.kl.basePpl).toBeCloseTo(s.ppl, 10);

    const out = path.join(makeTmpDir(), "rtn3");
    const q = await runCli(["quantize", STORIES_VENDORED, out, "--method", "rtn", "--bits", "3", "--group-size", "32", "--format", "gptq", "--json"], { timeoutMs: 120_000 });
    expect(q.code, q.stderr).toBe(0);
    const r = await runCli(["eval-ppl", out, "--kl-base", STORIES_VENDORED, ...QUICK, "--per-window"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    // ln(ppl / base ppl) is the mean per-window NLL difference; its error the windows' sd / √windows.
    const d = (j.perWindow.nll as number[]).map((x, w) => x - j.perWindow.baseNll[w]);
    expect(d).toHaveLength(4);
    const m = d.reduce((a, b) => a + b, 0) / d.length;
    expect(j.kl.lnPplRatio).toBeCloseTo(Math.log(j.ppl / j.kl.basePpl), 10);
    expect(j.kl.lnPplRatio).toBeCloseTo(m, 10);
    expect(j.kl.lnPplRatioStderr).toBeCloseTo(Math.sqrt(d.reduce((a, x) => a + (x - m) ** 2, 0) / 3 / 4), 10);
    expect(j.kl.meanKlStderr).toBeGreaterThan(0);
    expect(j.kl.meanKlStderr).toBeLessThan(j.kl.meanKl);
    expect(s.kl.lnPplRatio).toBe(0);
    expect(s.kl.lnPplRatioStderr).toBe(0);
    expect(s.perWindow).toBeUndefined(); // only with --per-window
    expect(j.kl.meanKl).toBeGreaterThan(1e-3);
    expect(j.kl.medianKl).toBeLessThanOrEqual(j.kl.p99Kl);
    expect(j.kl.p99Kl).toBeLessThanOrEqual(j.kl.maxKl);
    expect(j.kl.sameTop).toBeGreaterThan(0.3);
    expect(j.kl.sameTop).toBeLessThan(1);
    expect(j.kl.basePpl).toBeCloseTo(s.ppl, 10); // the base on the same windows
    expect(j.ppl).not.toBeCloseTo(s.ppl, 3);
    expect(j.klBase).toBe(STORIES_VENDORED);

    const text = await runCli(["eval-ppl", out, "--kl-base", STORIES_VENDORED, "--text", "tinystories", "--seqlen", "128", "--max-windows", "2"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/KL\(base ‖ model\) mean \S+ ± \S+ nats .*same top token \d+\.\d+%; base perplexity \d+\.\d{4}/);
    expect(text.stdout).toMatch(/ln\(ppl \/ base ppl\) -?\d+\.\d{5} ± \d+\.\d{5}/);
    const noJson = await runCli(["eval-ppl", out, "--per-window", "--text", "tinystories", "--seqlen", "128", "--max-windows", "2"]);
    expect(noJson.code).toBe(2);
    expect(noJson.stderr).toContain("--per-window needs --json");
  }, 240_000);

  it.skipIf(!hasShared)(withShared("refuses a base with another vocabulary, naming it"), async () => {
    const r = await runCli(["eval-ppl", STORIES_VENDORED, "--kl-base", BROWN, ...QUICK]);
    expect(r.code).toBe(2);
    const lines = stderrLines(r);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(BROWN);
    expect(lines[0]).toContain("vocabulary");
  });

  it("refuses a missing base directory with one line", async () => {
    const missing = path.join(makeTmpDir(), "nope");
    const r = await runCli(["eval-ppl", STORIES_VENDORED, "--kl-base", missing, ...QUICK]);
    expect(r.code).toBe(2);
    expect(stderrLines(r)).toHaveLength(1);
    expect(r.stderr).toContain(missing);
  });
});
