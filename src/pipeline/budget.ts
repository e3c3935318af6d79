// The bits budget of `quantize --target-bits` and the quality gate's fallback: which Linears to raise
// to which width. The choice itself (chooseWidths) is pure: it sees each Linear's size, its width now,
// the widths it may go to, and the relative output errors a sensitivity run measured at those widths.
//
// The budget counts nominal code bits per Linear weight over all Linears of the model:
// Σ bits·params / Σ params, a Linear kept in fp16 counting 16 (scales, zero points and g_idx are not
// counted: they are measured afterwards from the written files). Starting from the run's widths, it
// repeatedly takes the raise (one Linear, one higher width) with the largest error reduction per added
// bit, (err_now − err_then) / ((bits_then − bits_now) · params), among those that keep the average at
// or below the target, until none fits.

import { escapeRegex } from "../../formats/common.js";
import type { LinearSpec } from "../model/architectures.js";
import type { LayerStat } from "./journal.js";
import { layerSettings, skipReason, type QuantizePlan } from "./quantize.js";
import type { ModuleRule } from "./rules.js";

/** Width of a Linear kept in fp16 (a skip rule); its output error counts as 0. */
export const FP16_BITS = 16;

export interface BudgetLinear {
  /** Full module name, e.g. "model.layers.3.mlp.down_proj". */
  name: string;
  /** out × in */
  params: number;
  /** Width now (FP16_BITS = kept fp16). */
  bits: number;
  /** Widths it may be raised to, ascending, each above `bits` (FP16_BITS = keep it fp16). */
  ladder: number[];
}

/** The relative output error of Linear `name` at `bits` (undefined: not measured; fp16 is 0 without asking). */
export type ErrorOf = (name: string, bits: number) => number | undefined;

export interface Raise {
  name: string;
  params: number;
  from: number;
  to: number;
  /** Error reduction per added bit per weight of the raise (the greedy's score). */
  gain: number;
}

export interface BudgetResult {
  /** Every Linear's width after the budget (unchanged ones included). */
  widths: Map<string, number>;
  /** The raises in the order they were taken (a Linear may appear twice: 3 → 4, then 4 → 8). */
  raises: Raise[];
  /** Average code bits per Linear weight before and after. */
  startBits: number;
  bits: number;
}

/** Σ bits·params / Σ params (widths: overrides of each Linear's `bits`). */
export function averageBits(linears: readonly Pick<BudgetLinear, "name" | "params" | "bits">[], widths?: ReadonlyMap<string, number>): number {
  let num = 0;
  let den = 0;
  for (const l of linears) {
    num += (widths?.get(l.name) ?? l.bits) * l.params;
    den += l.params;
  }
  return den > 0 ? num / den : 0;
}

/** The average with every Linear at the top of its ladder: the most a budget can spend. */
export function maxAverageBits(linears: readonly BudgetLinear[]): number {
  return averageBits(linears.map((l) => ({ ...l, bits: l.ladder.length > 0 ? l.ladder[l.ladder.length - 1]! : l.bits })));
}

/**
 * Raise Linears until the average code bits per Linear weight reaches `targetBits` without exceeding
 * it (greedy by error reduction per added bit per weight; ties: the earlier Linear, then the lower
 * width). A raise whose errors are not both known, or that does not lower the error, is never taken.
 */
export function chooseWidths(linears: readonly BudgetLinear[], errorOf: ErrorOf, targetBits: number): BudgetResult {
  const err = (name: string, bits: number): number | undefined => (bits >= FP16_BITS ? 0 : errorOf(name, bits));
  const widths = new Map(linears.map((l) => [l.name, l.bits]));
  const totalParams = linears.reduce((s, l) => s + l.params, 0);
  // Integer bit counts (Σ bits·params) so the comparison with the target is exact.
  let used = linears.reduce((s, l) => s + l.bits * l.params, 0);
  const budget = Math.floor(targetBits * totalParams + 1e-6);
  const raises: Raise[] = [];
  for (;;) {
    let best: Raise | null = null;
    for (const l of linears) {
      const now = widths.get(l.name)!;
      const eNow = err(l.name, now);
      if (eNow === undefined) continue;
      for (const to of l.ladder) {
        if (to <= now) continue;
        const cost = (to - now) * l.params;
        if (used + cost > budget) continue;
        const eThen = err(l.name, to);
        if (eThen === undefined || !(eThen < eNow)) continue;
        const gain = (eNow - eThen) / cost;
        if (best === null || gain > best.gain) best = { name: l.name, params: l.params, from: now, to, gain };
      }
    }
    if (best === null) break;
    widths.set(best.name, best.to);
    used += (best.to - best.from) * best.params;
    raises.push(best);
  }
  return { widths, raises, startBits: averageBits(linears), bits: totalParams > 0 ? used / totalParams : 0 };
}

/** One line per width reached: how many Linears went there (from the start). */
export function summarizeRaises(linears: readonly BudgetLinear[], widths: ReadonlyMap<string, number>): { to: number; linears: number; params: number }[] {
  const by = new Map<number, { to: number; linears: number; params: number }>();
  for (const l of linears) {
    const w = widths.get(l.name) ?? l.bits;
    if (w === l.bits) continue;
    const e = by.get(w) ?? { to: w, linears: 0, params: 0 };
    e.linears++;
    e.params += l.params;
    by.set(w, e);
  }
  return [...by.values()].sort((a, b) => a.to - b.to);
}

/**
 * The exact-name rules that give each changed Linear its new width, GPTQModel style: "^<escaped name>$"
 * (re.match, first match wins, so they go before the user's own rules). fp16 is a skip ("-:") rule; an
 * override keeps the Linear's own group size and symmetry when they differ from the run's.
 */
export function budgetRules(
  changes: readonly { name: string; bits: number; current: { groupSize: number; sym: boolean } }[],
  base: { groupSize: number; sym: boolean },
): ModuleRule[] {
  return changes.map(({ name, bits, current }) => {
    const pattern = `^${escapeRegex(name)}$`;
    if (bits >= FP16_BITS) return { pattern, skip: true };
    const r: ModuleRule = { pattern, skip: false, bits };
    if (current.groupSize !== base.groupSize) r.groupSize = current.groupSize;
    if (current.sym !== base.sym) r.sym = current.sym;
    return r;
  });
}

/** Widths a budget may give a quantized Linear: 4 and 8 above its own, where the format holds them; fp16 where it cannot hold 8. */
export function ladderOf(plan: Pick<QuantizePlan, "format" | "settings" | "rules">, l: LinearSpec, module: string): { bits: number; ladder: number[] } {
  if (skipReason(plan, l, module) !== null) return { bits: FP16_BITS, ladder: [] };
  const s = layerSettings(plan, module)!;
  const holds = (bits: number): boolean =>
    plan.format.canHold({ out: l.out, in: l.in }, { ...s, bits }) === null && plan.format.canHoldOverrides([{ pattern: "^x$", bits }]) === null;
  const ladder = [4, 8].filter((w) => w > s.bits && holds(w));
  if (s.bits < 8 && !holds(8)) ladder.push(FP16_BITS);
  return { bits: s.bits, ladder };
}

/** Every Linear of the model (all blocks) as the budget sees it under this plan. */
export function budgetLinears(plan: Pick<QuantizePlan, "src" | "format" | "settings" | "rules">): BudgetLinear[] {
  const a = plan.src.arch;
  const out: BudgetLinear[] = [];
  for (let b = 0; b < a.nLayers; b++)
    for (const l of a.linears) {
      const name = a.blockPrefix(b) + l.name;
      out.push({ name, params: l.out * l.in, ...ladderOf(plan, l, name) });
    }
  return out;
}

/** Errors by Linear and width from a run's layer stats: relError at its own width, and its probes. */
export function errorCurves(layers: readonly LayerStat[]): Map<string, Map<number, number>> {
  const curves = new Map<string, Map<number, number>>();
  for (const l of layers) {
    if (l.status !== "quantized") continue;
    const c = new Map<number, number>();
    if (l.relError !== null && l.bits !== undefined) c.set(l.bits, l.relError);
    for (const p of l.probes ?? []) if (!c.has(p.bits)) c.set(p.bits, p.relError);
    curves.set(l.name, c);
  }
  return curves;
}

/** The probe widths a sensitivity run needs for these Linears: 4 and 8 above the lowest width quantized. */
export function probeWidths(linears: readonly BudgetLinear[]): number[] {
  const quantized = linears.filter((l) => l.bits < FP16_BITS).map((l) => l.bits);
  if (quantized.length === 0) return [];
  const low = Math.min(...quantized);
  return [4, 8].filter((w) => w > low);
}
