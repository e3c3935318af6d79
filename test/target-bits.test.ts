// `quantize --target-bits` on the vendored stories260K: the budget is respected as measured from the
// written files (code bits per Linear weight over all Linears, fp16 ones counting 16: at most the
// target, above the base), the per-module widths are written as GPTQModel `dynamic` exact-name "+:"
// rules that a GPTQModel/vLLM-style reader (re.match, first key wins) resolves to the widths the
// packed tensors were written with, --json and the summary report the plan and the measured bits, and
// eval-ppl reads the result. Also compressed-tensors (config groups) and the one-line refusals.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Checkpoint } from "../src/io/checkpoint.js";
import { makeTmpDir, removeTmpDirs, runCli, stderrLines, STORIES_VENDORED } from "./helpers.js";

const CALIB = ["--calib", "tinystories", "--nsamples", "8", "--seqlen", "128", "--threads", "1"];
const GPTQ = ["--format", "gptq", "--group-size", "32"];

afterAll(removeTmpDirs);

const LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
const SHAPES: Record<string, [number, number]> = {
  "self_attn.q_proj": [64, 64],
  "self_attn.k_proj": [32, 64],
  "self_attn.v_proj": [32, 64],
  "self_attn.o_proj": [64, 64],
  "mlp.gate_proj": [172, 64],
  "mlp.up_proj": [172, 64],
  "mlp.down_proj": [64, 172],
};
const modules = (): { name: string; out: number; in: number }[] =>
  [0, 1, 2, 3, 4].flatMap((b) => LINEARS.map((l) => ({ name: `model.layers.${b}.${l}`, out: SHAPES[l]![0], in: SHAPES[l]![1] })));

/** vLLM's get_dynamic_override (gptq_utils.py) / GPTQModel dynamic_get: keys in order, re.match, "-:" = not quantized. */
function dynamicOverride(dynamic: Record<string, Record<string, unknown>>, name: string): Record<string, unknown> | false | undefined {
  for (const [key, value] of Object.entries(dynamic)) {
    if (key.startsWith("-:")) {
      if (new RegExp(key.slice(2)).exec(name)?.index === 0) return false;
    } else if (new RegExp(key.replace(/^\+:/, "")).exec(name)?.index === 0) return value;
  }
  return undefined;
}

/** Code bits of every Linear as read from the files: GPTQ qweight rows (in/32·bits int32) or a float weight (16). */
function gptqBitsFromFiles(dir: string): Map<string, number> {
  const ck = Checkpoint.open(dir);
  try {
    const bits = new Map<string, number>();
    for (const m of modules()) {
      if (ck.has(`${m.name}.qweight`)) {
        const info = ck.info(`${m.name}.qweight`);
        expect(info.dtype).toBe("I32");
        expect(info.shape[1]).toBe(m.out);
        bits.set(m.name, (info.shape[0]! * 32) / m.in);
      } else {
        expect(ck.info(`${m.name}.weight`).dtype).toBe("F16");
        bits.set(m.name, 16);
      }
    }
    return bits;
  } finally {
    ck.close();
  }
}

const avg = (bits: Map<string, number>): number => {
  let num = 0;
  let den = 0;
  for (const m of modules()) {
    num += bits.get(m.name)! * m.out * m.in;
    den += m.out * m.in;
  }
  return num / den;
};

let gptqRun: Promise<{ out: string; json: any; stderr: string }> | null = null;
function gptqTarget(): Promise<{ out: string; json: any; stderr: string }> {
  gptqRun ??= (async () => {
    const out = path.join(makeTmpDir("quant4-tb-"), "out");
    const r = await runCli(["quantize", STORIES_VENDORED, out, "--bits", "3", ...GPTQ, ...CALIB, "--target-bits", "13", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    return { out, json: JSON.parse(r.stdout), stderr: r.stderr };
  })();
  return gptqRun;
}

describe("quantize --target-bits", () => {
  it("respects the budget as measured from the written tensors: at most the target, above the base", async () => {
    const { out, json } = await gptqTarget();
    const bits = gptqBitsFromFiles(out);
    // The base: every Linear gptq holds at 3 bits (the attention ones), the 172-wide MLP ones fp16.
    const base = new Map([...bits].map(([n, b]) => [n, b === 16 ? 16 : 3]));
    const measured = avg(bits);
    expect(measured).toBeLessThanOrEqual(13);
    expect(measured).toBeGreaterThan(avg(base));
    expect(avg(base)).toBeCloseTo(json.targetBits.startBits, 10);
    // Only widths of the ladder: 3 (kept), 4, 8; fp16 only where gptq cannot hold the Linear at all.
    for (const [n, b] of bits) expect([3, 4, 8, 16], n).toContain(b);
    expect([...bits.values()].filter((b) => b > 3 && b < 16).length).toBeGreaterThan(0);
    // --json: the plan and the measurement agree with the files.
    expect(json.targetBits.target).toBe(13);
    expect(json.targetBits.measured.codeBitsPerWeight).toBeCloseTo(measured, 10);
    expect(json.targetBits.plannedBits).toBeCloseTo(measured, 10);
    expect(json.targetBits.measured.storedBitsPerWeight).toBeGreaterThan(measured); // + scales, zeros, g_idx
    for (const r of json.targetBits.raised) expect(bits.get(r.name), r.name).toBe(r.to);
    expect(json.targetBits.raised.length).toBe([...bits.values()].filter((b) => b > 3 && b < 16).length);
    // The summary's bits/weight is measured from the files too (summary.ts), now above 3-bit's.
    expect(json.output.bitsPerQuantizedWeight).toBeGreaterThan(3.5);
    expect(json.targetBits.sensitivitySeconds).toBeGreaterThan(0);
    // No leftovers: the sensitivity pass's work dir is gone.
    expect(fs.readdirSync(path.dirname(out))).toEqual(["out"]);
  });

  it("writes GPTQModel `dynamic` exact-name '+:' rules with bits, resolved by a GPTQModel/vLLM-style reader to the written widths", async () => {
    const { out } = await gptqTarget();
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
    const qc = cfg.quantization_config;
    expect(qc.quant_method).toBe("gptq");
    expect(qc.bits).toBe(3);
    expect(qc.group_size).toBe(32);
    const dynamic = qc.dynamic as Record<string, Record<string, unknown>>;
    const plus = Object.keys(dynamic).filter((k) => k.startsWith("+:"));
    expect(plus.length).toBeGreaterThan(0);
    for (const k of plus) {
      // "+:^model\.layers\.N\.self_attn\.x_proj$" → {bits: 4 | 8}, nothing else (group and sym are the base's).
      expect(k).toMatch(/^\+:\^model\\\.layers\\\.\d+\\\.self_attn\\\.[qkvo]_proj\$$/);
      expect(Object.keys(dynamic[k]!)).toEqual(["bits"]);
      expect([4, 8]).toContain(dynamic[k]!["bits"]);
      // Exact: the pattern matches exactly one module of the model.
      expect(modules().filter((m) => new RegExp(k.slice(2)).test(m.name))).toHaveLength(1);
    }
    const fileBits = gptqBitsFromFiles(out);
    for (const m of modules()) {
      const o = dynamicOverride(dynamic, m.name);
      if (o === false) expect(fileBits.get(m.name), m.name).toBe(16);
      else expect(fileBits.get(m.name), m.name).toBe((o?.["bits"] as number | undefined) ?? qc.bits);
    }
    // The sidecar for AutoGPTQ-style loaders carries the same rules.
    expect(JSON.parse(fs.readFileSync(path.join(out, "quantize_config.json"), "utf8")).dynamic).toEqual(dynamic);
  });

  it("eval-ppl reads the mixed-width output", async () => {
    const { out } = await gptqTarget();
    const r = await runCli(["eval-ppl", out, "--text", "tinystories", "--seqlen", "128", "--max-windows", "2", "--json", "--threads", "1"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).ppl).toBeLessThan(8);
  });

  it("compressed-tensors per row, 4-bit base: 8-bit config groups, measured at most the target", async () => {
    const out = path.join(makeTmpDir("quant4-tb-ct-"), "out");
    const r = await runCli(["quantize", STORIES_VENDORED, out, "--format", "compressed-tensors", "--group-size", "-1", "--asym", ...CALIB, "--target-bits", "5"]);
    expect(r.code, r.stderr).toBe(0);
    const line = r.stdout.split("\n").find((l) => l.startsWith("  target bits"));
    expect(line).toMatch(/^ {2}target bits {2}5 requested, from 4\.000 \(4-bit base\): \d+ Linears? raised \(\d+ to 8-bit\); measured from the files (\d\.\d{3}) code bits per Linear weight/);
    const measured = Number(/measured from the files (\d\.\d{3})/.exec(line!)![1]);
    expect(measured).toBeLessThanOrEqual(5);
    expect(measured).toBeGreaterThan(4);
    expect(stderrLines(r)).toContainEqual(expect.stringMatching(/^quant4: --target-bits 5: sensitivity pass \(one extra calibration pass; each Linear measured at 4\/8 bits; nothing written\)$/));
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")).quantization_config;
    const groups = Object.values(cfg.config_groups as Record<string, any>);
    const eight = groups.filter((g) => g.weights.num_bits === 8);
    expect(eight.length).toBeGreaterThan(0);
    // Exact-name targets ("re:" + the rule, with the format's precedence prefix): each matches one module.
    for (const g of eight)
      for (const t of g.targets) {
        expect(t).toMatch(/^re:.*\^model\\\.layers\\\.\d\\\.\w+\\\.\w+\$$/);
        expect(modules().filter((m) => new RegExp(t.slice(3)).test(m.name))).toHaveLength(1);
      }
    // From the tensors: a packed row holds ceil(in·bits/32) int32 words (the last one padded).
    const ck = Checkpoint.open(out);
    try {
      let num = 0;
      let den = 0;
      for (const m of modules()) {
        const info = ck.info(`${m.name}.weight_packed`);
        expect(info.shape[0]).toBe(m.out);
        const bits = [4, 8].filter((b) => Math.ceil((m.in * b) / 32) === info.shape[1]);
        expect(bits, m.name).toHaveLength(1);
        num += bits[0]! * m.out * m.in;
        den += m.out * m.in;
      }
      expect(num / den).toBeCloseTo(measured, 3);
    } finally {
      ck.close();
    }
  });

  it("refuses a target below the start, and gives the range (exit 2, one line, before any pass)", async () => {
    const out = path.join(makeTmpDir("quant4-tb-x-"), "out");
    const r = await runCli(["quantize", STORIES_VENDORED, out, "--bits", "3", ...GPTQ, ...CALIB, "--target-bits", "3.5"]);
    expect(r.code).toBe(2);
    expect(stderrLines(r)).toEqual([
      "quant4: error: --target-bits 3.5 is below the 12.475 code bits per Linear weight the run starts from (3-bit base; 15 of 35 Linears kept fp16 count 16); give a target from 12.475 to 13.831",
    ]);
    const r2 = await runCli(["quantize", STORIES_VENDORED, out, "--bits", "4", "--target-bits", "3"]);
    expect(r2.code).toBe(2);
    expect(stderrLines(r2)).toEqual(["quant4: error: --target-bits 3 is below --bits 4: the budget only raises Linears above the base width"]);
    expect(fs.existsSync(out)).toBe(false);
  });
});
