// Per-module settings (`--dynamic`, `--skip`), with GPTQModel's `dynamic` semantics: an ordered list of
// rules, each a Python-style regex matched with re.match (anchored at the start, not the end) against the
// full module name ("model.layers.3.mlp.down_proj"); "-:" skips the module (stays fp16), "+:" (or none)
// overrides its bits / group size / symmetry; the first matching rule wins. The same rules go into the
// output's config (GPTQ `dynamic`, compressed-tensors config groups) so loaders see what was done.

import type { ModuleOverride, QuantSettings } from "../../formats/types.js";
import { UsageError } from "../util/errors.js";

export interface ModuleRule {
  /** Python regex, re.match on the full module name. */
  pattern: string;
  skip: boolean;
  bits?: number;
  groupSize?: number;
  sym?: boolean;
}

function compile(pattern: string, flag: string): RegExp {
  try {
    return new RegExp(`^(?:${pattern})`);
  } catch (e) {
    throw new UsageError(`${flag} "${pattern}": not a valid regular expression (${(e as Error).message})`);
  }
}

/**
 * One `--dynamic` value: `[+:|-:]<regex>[=key:value,...]` with keys bits (2/3/4/8), group (or
 * group_size; -1 = per row) and sym (true/false). "-:" takes no settings.
 */
export function parseDynamic(spec: string): ModuleRule {
  const flag = "--dynamic";
  let rest = spec;
  let skip = false;
  if (rest.startsWith("-:")) (skip = true), (rest = rest.slice(2));
  else if (rest.startsWith("+:")) rest = rest.slice(2);
  const eq = rest.lastIndexOf("=");
  const hasSettings = eq > 0 && /^[\w_]+:/.test(rest.slice(eq + 1));
  const pattern = hasSettings ? rest.slice(0, eq) : rest;
  if (pattern === "") throw new UsageError(`${flag} "${spec}": empty module pattern (expected [+:|-:]<regex>[=bits:8,group:64])`);
  compile(pattern, flag);
  const rule: ModuleRule = { pattern, skip };
  if (!hasSettings) {
    if (!skip) throw new UsageError(`${flag} "${spec}": an override needs settings, e.g. "${pattern}=bits:8,group:64" (or "-:${pattern}" to skip)`);
    return rule;
  }
  if (skip) throw new UsageError(`${flag} "${spec}": a "-:" (skip) rule takes no settings`);
  for (const kv of rest.slice(eq + 1).split(",")) {
    const [k, v] = kv.split(":").map((x) => x.trim()) as [string, string | undefined];
    const num = Number(v);
    if (k === "bits") {
      if (![2, 3, 4, 8].includes(num)) throw new UsageError(`${flag} "${spec}": bits must be 2, 3, 4 or 8`);
      rule.bits = num;
    } else if (k === "group" || k === "group_size") {
      if (!(num === -1 || (Number.isInteger(num) && num > 0))) throw new UsageError(`${flag} "${spec}": group must be -1 (per row) or a positive integer`);
      rule.groupSize = num;
    } else if (k === "sym") {
      if (v !== "true" && v !== "false") throw new UsageError(`${flag} "${spec}": sym must be true or false`);
      rule.sym = v === "true";
    } else {
      throw new UsageError(`${flag} "${spec}": unknown key "${k}" (bits, group, sym)`);
    }
  }
  return rule;
}

/** A `--skip <regex>` value: a "-:" rule. */
export function parseSkip(pattern: string): ModuleRule {
  compile(pattern, "--skip");
  return { pattern, skip: true };
}

/** The first rule matching `module`, if any. */
export function matchRule(rules: readonly ModuleRule[], module: string): ModuleRule | undefined {
  return rules.find((r) => new RegExp(`^(?:${r.pattern})`).test(module));
}

/** The module's settings: null when a rule skips it, else the base settings with the first matching override. */
export function moduleSettings<S extends QuantSettings>(base: S, rules: readonly ModuleRule[], module: string): S | null {
  const r = matchRule(rules, module);
  if (!r) return base;
  if (r.skip) return null;
  return { ...base, bits: r.bits ?? base.bits, groupSize: r.groupSize ?? base.groupSize, sym: r.sym ?? base.sym };
}

/** The overrides (not the skips, which travel as the skipped-module list) in the formats' terms. */
export function overridesOf(rules: readonly ModuleRule[]): ModuleOverride[] {
  return rules.filter((r) => !r.skip).map(({ pattern, bits, groupSize, sym }) => ({ pattern, bits, groupSize, sym }));
}
