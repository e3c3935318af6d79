// `quant4 sensitivity` on the vendored stories260K: the table (text and --json) has one row per
// quantized Linear with the error at the base width and at 4/8 bits, the error falls with every extra
// bit for every Linear, the per-bit reductions are what the errors say, and nothing is left behind
// (the run's work dir lives in a temp dir, removed afterwards). The options are quantize's.

import fs from "node:fs";
import os from "node:os";
import { afterAll, describe, expect, it } from "vitest";
import { removeTmpDirs, runCli, stderrLines, STORIES_VENDORED } from "./helpers.js";

const CALIB = ["--calib", "tinystories", "--nsamples", "8", "--seqlen", "128", "--threads", "1"];
const BASE = ["sensitivity", STORIES_VENDORED, "--format", "gptq", "--group-size", "32", ...CALIB];

afterAll(removeTmpDirs);

const tmpEntries = (): string[] => fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith("quant4-sensitivity-"));

describe("quant4 sensitivity", () => {
  it("--json: every quantized Linear at 2/4/8 bits, the error falling with every extra bit", async () => {
    const before = new Set(tmpEntries());
    const r = await runCli([...BASE, "--bits", "2", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.format).toBe("gptq");
    expect(j.settings.bits).toBe(2);
    expect(j.probeBits).toEqual([4, 8]);
    expect(j.widths).toEqual([2, 4, 8]);
    // gptq holds the attention Linears (widths multiples of 32), not the 172-wide MLP ones: 4 × 5 rows.
    expect(j.linears).toHaveLength(20);
    expect(j.skipped).toHaveLength(15);
    for (const s of j.skipped) expect(s.name).toMatch(/\.mlp\./);
    for (const row of j.linears) {
      expect(row.name).toMatch(/^model\.layers\.\d\.self_attn\.[qkvo]_proj$/);
      expect(row.params).toBe(row.shape[0] * row.shape[1]);
      expect(row.bits).toBe(2);
      expect(row.errors.map((e: any) => e.bits)).toEqual([2, 4, 8]);
      const errs = row.errors.map((e: any) => e.relError) as number[];
      for (const e of errs) expect(e).toBeGreaterThan(0);
      // Monotone: more bits, less output error.
      expect(errs[1]!, row.name).toBeLessThan(errs[0]!);
      expect(errs[2]!, row.name).toBeLessThan(errs[1]!);
      expect(row.reductionPerBit).toEqual([
        { from: 2, to: 4, perBit: (errs[0]! - errs[1]!) / 2 },
        { from: 4, to: 8, perBit: (errs[1]! - errs[2]!) / 4 },
      ]);
    }
    // The temp work dir is gone.
    expect(tmpEntries().filter((f) => !before.has(f))).toEqual([]);
  });

  it("the table: header with each width and Δ/bit, one line per Linear; 8 only above a 4-bit base", async () => {
    const r = await runCli([...BASE.map((a) => (a === "gptq" ? "compressed-tensors" : a === "32" ? "-1" : a)), "--asym"]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^sensitivity of .*stories260K: gptq 4-bit per-row asym \(compressed-tensors\), calibration 8 × 128 tokens of "tinystories", seed 0$/);
    expect(lines[1]).toMatch(/relative output error/);
    expect(lines[2]).toMatch(/^Linear\s+shape\s+params\s+4-bit\s+8-bit\s+Δ\/bit 4→8$/);
    const rows = lines.filter((l) => l.startsWith("model.layers."));
    expect(rows).toHaveLength(35); // per row, compressed-tensors holds every Linear
    for (const row of rows) {
      const [, , params, e4, e8, red] = row.trim().split(/\s+/);
      expect(Number(e8)).toBeLessThan(Number(e4));
      expect(Number(red)).toBeCloseTo((Number(e4) - Number(e8)) / 4, 5);
      expect(Number(params)).toBeGreaterThan(0);
    }
    expect(rows.find((l) => l.startsWith("model.layers.0.mlp.down_proj"))).toMatch(/64×172\s+11008\s/);
    expect(lines[lines.length - 1]).toMatch(/^time [\d.]+ s \(one calibration pass\)$/);
    expect(stderrLines(r).filter((l) => /error|warning/.test(l))).toEqual([]);
  });

  it("refuses quantize-only options and bad values with one line (exit 2)", async () => {
    const r = await runCli(["sensitivity", STORIES_VENDORED, "--target-bits", "5"]);
    expect(r.code).toBe(2);
    expect(stderrLines(r)).toHaveLength(1);
    expect(r.stderr).toMatch(/unknown option '--target-bits'/);
    const r2 = await runCli(["sensitivity", STORIES_VENDORED, "--bits", "5", ...CALIB]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/^quant4: error: --bits: must be 2, 3, 4 or 8\n$/);
  });
});
