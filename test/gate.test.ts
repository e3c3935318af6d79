// The quality gate of `quantize` on the vendored stories260K (2-bit GPTQ, gptq g32, tinystories gate
// text, 4 windows of 128 tokens): an impossible limit (+0%) retries and then fails as documented (exit
// 1, one line per attempt on stderr, the attempts table, no output directory and no attempt or work
// dirs left); a limit that a fallback can meet passes after retries (exit 0, the passing attempt
// renamed into place, `quant4.gate` in its config.json with the fp and quantized perplexities, which
// eval-ppl reproduces on the output); an attempt interrupted by Ctrl-C resumes with --resume (a plain
// rerun is refused before the fp evaluation); and the flag combinations it refuses.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { makeTmpDir, removeTmpDirs, runCli, stderrLines, STORIES_VENDORED } from "./helpers.js";

const CALIB = ["--calib", "tinystories", "--nsamples", "8", "--seqlen", "128", "--threads", "1"];
const GATE = ["--gate-text", "tinystories", "--gate-seqlen", "128", "--gate-max-windows", "4"];
const BASE = ["--bits", "2", "--format", "gptq", "--group-size", "32", ...CALIB, ...GATE];

afterAll(removeTmpDirs);

const ATTEMPT_LINE = /^quant4: gate attempt (\d)\/(\d): (\d+\.\d{3}) code bits per Linear weight \((\d+\.\d{3}) stored\), perplexity (\d+\.\d{4}) vs fp (\d+\.\d{4}): (pass|fail) \((.*)\)$/;

describe("quantize --gate-text", () => {
  it("an impossible limit: retries, then exit 1 with the attempts table, and nothing written", async () => {
    const parent = makeTmpDir("quant4-gate-fail-");
    const out = path.join(parent, "out");
    const r = await runCli(["quantize", STORIES_VENDORED, out, ...BASE, "--gate-max-increase", "0", "--gate-retries", "2"]);
    expect(r.code, r.stderr).toBe(1);
    const attempts = stderrLines(r)
      .map((l) => ATTEMPT_LINE.exec(l))
      .filter((m) => m !== null);
    expect(attempts.map((m) => [m![1], m![2], m![7]])).toEqual([
      ["1", "3", "fail"],
      ["2", "3", "fail"],
      ["3", "3", "fail"],
    ]);
    // Each retry raises more: the measured bits grow, and the perplexity falls from the 2-bit one.
    const bits = attempts.map((m) => Number(m![3]));
    expect(bits[1]!).toBeGreaterThan(bits[0]!);
    expect(bits[2]!).toBeGreaterThan(bits[1]!);
    const ppl = attempts.map((m) => Number(m![5]));
    expect(ppl[2]!).toBeLessThan(ppl[0]!);
    expect(new Set(attempts.map((m) => m![6])).size).toBe(1); // the fp perplexity is evaluated once
    expect(stderrLines(r).at(-1)).toMatch(/^quant4: gate failed: perplexity \d+\.\d{4} is \d+\.\d\d% above the baseline \d+\.\d{4} \(allowed: 0%\); 3 attempts, nothing written to .*out$/);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^gate failed: no attempt within \+0% of the fp perplexity \d+\.\d{4}; nothing written$/);
    expect(lines[1]).toMatch(/^ {2}gate text {4}tinystories, 4 non-overlapping windows × 127 predictions \(seqlen 128/);
    expect(lines[2]).toMatch(/^ {2}attempt\s+code bits\s+stored bits\s+perplexity\s+increase\s+verdict\s+raised$/);
    expect(lines.slice(3, 6).map((l) => l.trim().split(/\s+/)[5])).toEqual(["fail", "fail", "fail"]);
    // No output, no attempt, sensitivity or work directory: the parent is empty.
    expect(fs.readdirSync(parent)).toEqual([]);
  });

  it("a limit the fallback can meet: fails at 2 bits, passes after raising Linears; the gate goes into the config", async () => {
    const parent = makeTmpDir("quant4-gate-pass-");
    const out = path.join(parent, "out");
    const r = await runCli(["quantize", STORIES_VENDORED, out, ...BASE, "--gate-max-increase", "5", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    const g = j.gate;
    expect(g.passed).toBe(true);
    expect(g.attempt).toBeGreaterThan(1);
    expect(g.attempts).toHaveLength(g.attempt);
    expect(g.attempts.map((t: any) => t.verdict)).toEqual([...Array(g.attempt - 1).fill("fail"), "pass"]);
    expect(g.attempts[0].raisedLinears).toBe(0);
    expect(g.attempts.at(-1).raisedLinears).toBeGreaterThan(0);
    expect(g.increasePercent).toBeLessThanOrEqual(5);
    expect(g.ppl).toBeCloseTo(g.fpPpl * (1 + g.increasePercent / 100), 10);
    expect(g.protocol).toMatchObject({ text: "tinystories", seqlen: 128, windows: 4, bos: true });
    // stderr: one verdict line per attempt even with --json.
    expect(stderrLines(r).filter((l) => ATTEMPT_LINE.test(l))).toHaveLength(g.attempt);
    // Only the output is left.
    expect(fs.readdirSync(parent)).toEqual(["out"]);
    expect(j.report.outDir).toBe(out);
    // config.json: the gate beside the provenance; the raised Linears as dynamic rules.
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
    expect(cfg.quant4.method).toBe("gptq");
    expect(cfg.quant4.gate).toMatchObject({ text: "tinystories", attempt: g.attempt, retries: 3, maxIncreasePercent: 5, fpPpl: g.fpPpl, ppl: g.ppl });
    expect(cfg.quant4.gate.protocol).toEqual(g.protocol);
    expect(Object.keys(cfg.quantization_config.dynamic).filter((k) => k.startsWith("+:")).length).toBeGreaterThan(0);
    // eval-ppl on the output, same protocol: the same perplexity.
    const e = await runCli(["eval-ppl", out, "--text", "tinystories", "--seqlen", "128", "--max-windows", "4", "--json", "--threads", "1"]);
    expect(e.code, e.stderr).toBe(0);
    const ej = JSON.parse(e.stdout);
    expect(ej.protocol).toEqual(g.protocol);
    expect(ej.ppl).toBeCloseTo(g.ppl, 10);
  });

  it("an interrupted attempt keeps its work dir; a plain rerun is refused up front, --resume continues it", async () => {
    const parent = makeTmpDir("quant4-gate-resume-");
    const out = path.join(parent, "out");
    const args = ["quantize", STORIES_VENDORED, out, ...BASE, "--gate-max-increase", "1000"];
    const r1 = await runCli(args, { env: { QUANT4_SIGINT_AFTER_BLOCK: "1" } });
    expect(r1.code, r1.stderr).toBe(130);
    expect(fs.readdirSync(parent)).toEqual(["out.gate-attempt-1.partial"]);
    const r2 = await runCli(args);
    expect(r2.code).toBe(2);
    expect(stderrLines(r2).at(-1)).toBe(`quant4: error: an interrupted run exists at ${out}.gate-attempt-1.partial; rerun with --resume to continue it, or delete that directory to start over`);
    expect(stderrLines(r2).some((l) => l.startsWith("quant4: gate:"))).toBe(false); // before the fp evaluation
    const r3 = await runCli([...args, "--resume"]);
    expect(r3.code, r3.stderr).toBe(0);
    expect(r3.stderr).toMatch(/quant4: resuming at block 2\/5/);
    expect(stderrLines(r3).filter((l) => ATTEMPT_LINE.test(l)).map((l) => ATTEMPT_LINE.exec(l)![7])).toEqual(["pass"]);
    expect(fs.readdirSync(parent)).toEqual(["out"]);
    expect(JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).quant4.gate.attempt).toBe(1);
  });

  it("refuses incomplete gate flags (exit 2, one line)", async () => {
    const out = path.join(makeTmpDir("quant4-gate-x-"), "out");
    const cases: [string[], RegExp][] = [
      [["--gate-max-windows", "3"], /^quant4: error: --gate-max-windows needs --gate-text$/],
      [["--gate-text", "tinystories"], /^quant4: error: --gate-text needs --gate-max-increase <percent>/],
      [["--gate-text", "tinystories", "--gate-max-increase", "3", "--gate-seqlen", "4096", ...CALIB], /^quant4: error: --gate-text tinystories: --gate-seqlen 4096 exceeds the model's context of 512 tokens$/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli(["quantize", STORIES_VENDORED, out, "--format", "gptq", "--group-size", "32", ...args]);
      expect(r.code, args.join(" ")).toBe(2);
      expect(stderrLines(r), args.join(" ")).toHaveLength(1);
      expect(stderrLines(r)[0]).toMatch(re);
    }
    expect(fs.existsSync(out)).toBe(false);
  });
});
