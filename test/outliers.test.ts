// Outlier retention (issue 13) in the pure algorithms and the per-module rules: exactly the budget is
// kept, kept values are the fp16 weights, they leave their group's range (the grid tightens), and the
// output error falls; --dynamic/--skip parse GPTQModel's syntax and resolve first-match-wins.

import { describe, expect, it } from "vitest";
import { GptqHessian, gptqQuantize, reconstructionError } from "../algorithms/gptq.js";
import { activationSaliency, outlierBudget, topKMask } from "../algorithms/outliers.js";
import { roundToF16 } from "../algorithms/quantizer.js";
import { quantizeRtn } from "../algorithms/rtn.js";
import { dequantize } from "../formats/dequant.js";
import { getBackend } from "../src/compute/index.js";
import { matchRule, moduleSettings, parseDynamic, parseSkip } from "../src/pipeline/rules.js";
import { gaussian, rng } from "./helpers.js";

const backend = getBackend("cpu");
backend.setThreads(1);

/** A weight with a few large entries (as real Linears have) and correlated inputs with strong channels. */
function problem(seed: number, out = 24, inF = 64, rows = 256) {
  const g = gaussian(rng(seed));
  const W = Float32Array.from({ length: out * inF }, () => g() * 0.05);
  for (let k = 0; k < 12; k++) W[Math.floor(rng(seed + k)() * out * inF)] = (k % 2 ? -1 : 1) * (0.6 + 0.05 * k);
  const X = Float32Array.from({ length: rows * inF }, (_, i) => g() * (i % inF < 4 ? 6 : 1));
  const h = new GptqHessian(backend, inF);
  h.addBatch(X, rows);
  return { W, X, H: h.H, out, inF, rows };
}

describe("outlier selection", () => {
  it("outlierBudget rounds the fraction of out×in, at least one weight when asked for any", () => {
    expect(outlierBudget(0, 10, 10)).toBe(0);
    expect(outlierBudget(0.01, 10, 10)).toBe(1);
    expect(outlierBudget(0.005, 100, 100)).toBe(50);
  });
  it("topKMask marks exactly k entries, the largest, ties by index", () => {
    const m = topKMask(Float64Array.from([1, 5, 3, 5, 2]), 2);
    expect(Array.from(m)).toEqual([0, 1, 0, 1, 0]);
    expect(Array.from(topKMask(Float64Array.from([2, 2, 2]), 2))).toEqual([1, 1, 0]);
  });
});

describe.each([
  ["per row", -1],
  ["g16", 16],
])("RTN with outliers, %s", (_label, groupSize) => {
  it("keeps exactly the budget at its fp16 values, out of the group ranges, and lowers the output error", () => {
    const { W, X, H, out, inF, rows } = problem(7);
    const opts = { bits: 3, groupSize, sym: false };
    const k = outlierBudget(0.01, out, inF);
    const mask = topKMask(activationSaliency(W, out, inF, H), k);
    const plain = quantizeRtn(W, out, inF, opts);
    const kept = quantizeRtn(W, out, inF, opts, mask);
    const o = kept.layer.outliers!;
    expect(o.indptr[out]).toBe(k);
    const Q = dequantize(kept.layer);
    for (let r = 0; r < out; r++)
      for (let j = o.indptr[r]!; j < o.indptr[r + 1]!; j++) {
        const c = o.indices[j]!;
        expect(mask[r * inF + c]).toBe(1);
        expect(Q[r * inF + c]).toBe(roundToF16(W[r * inF + c]!));
      }
    // Leaving the large weights out of the min/max shrinks some scales.
    expect(kept.layer.scales.some((s, i) => s < plain.layer.scales[i]!)).toBe(true);
    expect(reconstructionError(backend, W, Q, X, rows, out, inF)).toBeLessThan(reconstructionError(backend, W, dequantize(plain.layer), X, rows, out, inF));
  });
});

describe.each([
  ["per row", -1, false],
  ["g16", 16, false],
  ["g16 act-order", 16, true],
])("GPTQ with outliers (saliency w²/[H⁻¹]ᵢᵢ², in its column loop), %s", (_label, groupSize, actOrder) => {
  it("keeps at most the budget, values are fp16 exact in the result, and the error falls below plain GPTQ's", () => {
    const { W, X, H, out, inF, rows } = problem(9);
    const opts = { bits: 3, groupSize, sym: false, actOrder };
    const k = outlierBudget(0.01, out, inF);
    const plain = gptqQuantize(backend, W, H.slice(), out, inF, opts);
    const kept = gptqQuantize(backend, W, H.slice(), out, inF, { ...opts, outlierFraction: 0.01 });
    const o = kept.layer.outliers!;
    expect(o.indptr[out]).toBeGreaterThan(0);
    expect(o.indptr[out]).toBeLessThanOrEqual(k);
    for (const v of o.values) expect(roundToF16(v)).toBe(v);
    const Q = dequantize(kept.layer);
    for (let r = 0; r < out; r++) for (let j = o.indptr[r]!; j < o.indptr[r + 1]!; j++) expect(Q[r * inF + o.indices[j]!]).toBe(o.values[j]);
    expect(reconstructionError(backend, W, Q, X, rows, out, inF)).toBeLessThan(reconstructionError(backend, W, dequantize(plain.layer), X, rows, out, inF));
  });
});

describe("--dynamic / --skip rules (GPTQModel `dynamic` semantics)", () => {
  it("parses overrides and skips, refusing malformed ones", () => {
    expect(parseDynamic(".*\\.mlp\\.down_proj=bits:8,group:64")).toEqual({ pattern: ".*\\.mlp\\.down_proj", skip: false, bits: 8, groupSize: 64 });
    expect(parseDynamic("+:.*q_proj=sym:false")).toEqual({ pattern: ".*q_proj", skip: false, sym: false });
    expect(parseDynamic("-:.*\\.3\\..*")).toEqual({ pattern: ".*\\.3\\..*", skip: true });
    expect(parseSkip("lm_head")).toEqual({ pattern: "lm_head", skip: true });
    expect(() => parseDynamic(".*down=bits:5")).toThrow(/bits must be 2, 3, 4 or 8/);
    expect(() => parseDynamic(".*down=size:5")).toThrow(/unknown key "size"/);
    expect(() => parseDynamic(".*down")).toThrow(/needs settings/);
    expect(() => parseDynamic("-:.*down=bits:8")).toThrow(/takes no settings/);
    expect(() => parseDynamic("([=bits:8")).toThrow(/not a valid regular expression/);
  });
  it("matches with re.match (anchored at the start only); the first matching rule wins", () => {
    const rules = [parseSkip(".*\\.0\\.mlp"), parseDynamic(".*mlp\\.down_proj=bits:8"), parseDynamic(".*mlp=bits:3,group:32")];
    const base = { bits: 4, groupSize: 128, sym: true, actOrder: false };
    expect(moduleSettings(base, rules, "model.layers.0.mlp.down_proj")).toBeNull();
    expect(moduleSettings(base, rules, "model.layers.1.mlp.down_proj")).toMatchObject({ bits: 8, groupSize: 128 });
    expect(moduleSettings(base, rules, "model.layers.1.mlp.up_proj")).toMatchObject({ bits: 3, groupSize: 32 });
    expect(moduleSettings(base, rules, "model.layers.1.self_attn.q_proj")).toBe(base);
    expect(matchRule([parseDynamic("mlp=bits:8")], "model.layers.1.mlp.up_proj")).toBeUndefined(); // re.match: anchored at the start
  });
});
