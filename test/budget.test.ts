// The pure bits budget (src/pipeline/budget.ts): the greedy choice by error reduction per added bit per
// weight, the target never exceeded, fp16 steps, unknown errors, the exact-name rules it produces, and
// the ladders a plan gives (4 and 8 where the format holds them, fp16 where it cannot hold 8).

import { describe, expect, it } from "vitest";
import type { FormatSpec } from "../formats/types.js";
import {
  averageBits,
  budgetRules,
  chooseWidths,
  errorCurves,
  FP16_BITS,
  ladderOf,
  maxAverageBits,
  probeWidths,
  summarizeRaises,
  type BudgetLinear,
} from "../src/pipeline/budget.js";
import { matchRule, parseDynamic } from "../src/pipeline/rules.js";

const curves = (m: Record<string, Record<number, number>>) => (name: string, bits: number) => m[name]?.[bits];

describe("chooseWidths", () => {
  const lin: BudgetLinear[] = [
    { name: "a", params: 100, bits: 3, ladder: [4, 8] },
    { name: "b", params: 100, bits: 3, ladder: [4, 8] },
    { name: "c", params: 200, bits: 3, ladder: [4, 8] },
  ];
  const err = curves({
    a: { 3: 0.1, 4: 0.02, 8: 0.001 }, // 3→4 gains 0.08 per 100 bits
    b: { 3: 0.01, 4: 0.005, 8: 0.0001 }, // small gains
    c: { 3: 0.2, 4: 0.05, 8: 0.002 }, // 0.15 per 200 bits: 7.5e-4/bit·weight, below a's 8e-4
  });

  it("raises in order of error reduction per added bit per weight and never exceeds the target", () => {
    // Budget 3.25 × 400 = 1300 bits; start 1200. a 3→4 costs 100 (gain 8e-4): taken; then nothing fits.
    const r = chooseWidths(lin, err, 3.25);
    expect(r.startBits).toBe(3);
    expect(r.raises.map((x) => [x.name, x.from, x.to])).toEqual([["a", 3, 4]]);
    expect(r.bits).toBe(3.25);
    // A larger budget: a first, then c (7.5e-4), then a 4→8 ((0.02−0.001)/400 = 4.75e-5) vs b 3→4 (5e-5): b.
    const r2 = chooseWidths(lin, err, 4);
    expect(r2.raises.map((x) => `${x.name}${x.from}→${x.to}`)).toEqual(["a3→4", "c3→4", "b3→4"]);
    expect(r2.bits).toBeLessThanOrEqual(4);
    for (const t of [3, 3.1, 3.5, 4.2, 5, 6.66, 8]) {
      const x = chooseWidths(lin, err, t);
      expect(x.bits, `target ${t}`).toBeLessThanOrEqual(t + 1e-12);
      expect(averageBits(lin, x.widths)).toBeCloseTo(x.bits, 12);
    }
  });

  it("with room for everything, every Linear reaches the top of its ladder", () => {
    const r = chooseWidths(lin, err, 8);
    expect([...r.widths.values()]).toEqual([8, 8, 8]);
    expect(r.bits).toBe(maxAverageBits(lin));
  });

  it("can jump a width when the higher one is worth more per bit", () => {
    // 2→4 barely helps; 2→8 almost removes the error: the jump has the better gain per bit.
    const l: BudgetLinear[] = [{ name: "x", params: 10, bits: 2, ladder: [4, 8] }];
    const r = chooseWidths(l, curves({ x: { 2: 0.5, 4: 0.49, 8: 0.001 } }), 8);
    expect(r.raises.map((x) => x.to)).toEqual([8]);
  });

  it("fp16 costs 16 bits and has no error; unknown errors and raises that do not help are never taken", () => {
    const l: BudgetLinear[] = [
      { name: "f", params: 10, bits: 4, ladder: [FP16_BITS] },
      { name: "u", params: 10, bits: 4, ladder: [8] }, // error at 8 not measured
      { name: "w", params: 10, bits: 4, ladder: [8] }, // 8 is not better
      { name: "k", params: 10, bits: FP16_BITS, ladder: [] }, // kept fp16 already
    ];
    const r = chooseWidths(l, curves({ f: { 4: 0.01 }, u: { 4: 0.3 }, w: { 4: 0.01, 8: 0.02 } }), 16);
    expect(r.widths.get("f")).toBe(FP16_BITS);
    expect(r.widths.get("u")).toBe(4);
    expect(r.widths.get("w")).toBe(4);
    expect(r.startBits).toBe((4 * 30 + 16 * 10) / 40);
    expect(summarizeRaises(l, r.widths)).toEqual([{ to: FP16_BITS, linears: 1, params: 10 }]);
  });

  it("a target below the start raises nothing", () => {
    const r = chooseWidths(lin, err, 2);
    expect(r.raises).toEqual([]);
    expect(r.bits).toBe(3);
  });
});

describe("budgetRules", () => {
  it("exact-name GPTQModel rules: '+:' bits (own group/sym when they differ), '-:' for fp16, escaped", () => {
    const rules = budgetRules(
      [
        { name: "model.layers.1.self_attn.v_proj", bits: 8, current: { groupSize: 32, sym: true } },
        { name: "model.layers.1.mlp.down_proj", bits: 4, current: { groupSize: 64, sym: false } },
        { name: "model.layers.12.mlp.up_proj", bits: FP16_BITS, current: { groupSize: 32, sym: true } },
      ],
      { groupSize: 32, sym: true },
    );
    expect(rules).toEqual([
      { pattern: "^model\\.layers\\.1\\.self_attn\\.v_proj$", skip: false, bits: 8 },
      { pattern: "^model\\.layers\\.1\\.mlp\\.down_proj$", skip: false, bits: 4, groupSize: 64, sym: false },
      { pattern: "^model\\.layers\\.12\\.mlp\\.up_proj$", skip: true },
    ]);
    // Exact: no other module matches (not layer 11 nor 1x, "." is literal).
    expect(matchRule(rules, "model.layers.1.self_attn.v_proj")?.bits).toBe(8);
    expect(matchRule(rules, "model.layers.11.self_attn.v_proj")).toBeUndefined();
    expect(matchRule(rules, "model.layers.1xself_attn.v_proj")).toBeUndefined();
    expect(matchRule(rules, "model.layers.12.mlp.up_proj")?.skip).toBe(true);
    // And the --dynamic parser reads them back as the same rules.
    expect(parseDynamic(`${rules[0]!.pattern}=bits:8`)).toEqual(rules[0]);
    expect(parseDynamic(`-:${rules[2]!.pattern}`)).toEqual(rules[2]);
  });
});

describe("ladders, curves, probe widths", () => {
  const settings = { bits: 3, groupSize: 32, sym: true, actOrder: false, method: "gptq" as const };
  const fmt = (bits: number[], overrides: boolean): FormatSpec =>
    ({
      canHold: (_shape: unknown, s: { bits: number }) => (bits.includes(s.bits) ? null : `holds ${bits.join("/")} only`),
      canHoldOverrides: () => (overrides ? null : "no per-module overrides"),
    }) as unknown as FormatSpec;
  const l = { name: "self_attn.q_proj", out: 64, in: 64, bias: false } as never;

  it("4 and 8 where held; fp16 where 8 is not; none for a skipped Linear", () => {
    expect(ladderOf({ format: fmt([2, 3, 4, 8], true), settings, rules: [] }, l, "m.q")).toEqual({ bits: 3, ladder: [4, 8] });
    expect(ladderOf({ format: fmt([3, 4], true), settings, rules: [] }, l, "m.q")).toEqual({ bits: 3, ladder: [4, FP16_BITS] });
    // A format without per-module overrides can still keep a Linear fp16 (its skip list).
    expect(ladderOf({ format: fmt([3, 4, 8], false), settings, rules: [] }, l, "m.q")).toEqual({ bits: 3, ladder: [FP16_BITS] });
    expect(ladderOf({ format: fmt([2, 3, 4, 8], true), settings: { ...settings, bits: 8 }, rules: [] }, l, "m.q")).toEqual({ bits: 8, ladder: [] });
    expect(ladderOf({ format: fmt([2, 3, 4, 8], true), settings, rules: [{ pattern: "m\\.q", skip: true }] }, l, "m.q")).toEqual({ bits: FP16_BITS, ladder: [] });
  });

  it("curves from layer stats; probe widths above the lowest width", () => {
    const c = errorCurves([
      { name: "a", status: "quantized", relError: 0.1, seconds: 0, bits: 3, probes: [{ bits: 4, relError: 0.02 }, { bits: 8, relError: 0.001 }] },
      { name: "b", status: "skipped", reason: "x", relError: null, seconds: 0 },
    ]);
    expect([...c.get("a")!]).toEqual([[3, 0.1], [4, 0.02], [8, 0.001]]);
    expect(c.has("b")).toBe(false);
    const L = (bits: number): BudgetLinear => ({ name: String(bits), params: 1, bits, ladder: [] });
    expect(probeWidths([L(2), L(16)])).toEqual([4, 8]);
    expect(probeWidths([L(4), L(4)])).toEqual([8]);
    expect(probeWidths([L(8)])).toEqual([]);
    expect(probeWidths([L(16)])).toEqual([]);
  });
});
