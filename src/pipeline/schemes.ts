// Named quantization schemes (`--scheme w4-g128`) and the automatic choice of output format and group
// size (`--format auto`, the default): which engine format holds the most of a model's Linears.
// Pure data and arithmetic on LinearSpecs; the CLI resolves flags through here, explicit flags win.

import { FORMATS, getFormat } from "../../formats/index.js";
import type { FormatSpec, QuantSettings } from "../../formats/types.js";
import { UsageError } from "../util/errors.js";

export interface Scheme {
  bits: number;
  /** −1 = one group per row. */
  groupSize: number;
  sym: boolean;
  /** What it is for, one line (shown in --help and the README table). */
  use: string;
}

/** The named schemes, in the order --help lists them. */
export const SCHEMES: Record<string, Scheme> = {
  "w4-g128": { bits: 4, groupSize: 128, sym: true, use: "the standard 4-bit setting (GPTQ/AWQ papers, vLLM, TGI)" },
  "w4-g64": { bits: 4, groupSize: 64, sym: true, use: "4-bit, finer groups: a little better quality, +0.25 bit/weight of scales" },
  "w4-g32": { bits: 4, groupSize: 32, sym: true, use: "4-bit for narrow models (widths divisible by 32, not 128)" },
  "w4-g128-asym": { bits: 4, groupSize: 128, sym: false, use: "4-bit with zero points (min-max grid, AutoGPTQ sym=False)" },
  "w4-perrow": { bits: 4, groupSize: -1, sym: true, use: "4-bit, one scale per output row (any width; compressed-tensors channel strategy)" },
  "w4-perrow-asym": { bits: 4, groupSize: -1, sym: false, use: "4-bit per row with zero points" },
  "w3-g128": { bits: 3, groupSize: 128, sym: true, use: "3-bit (gptq format only; GPTQ recommended over RTN)" },
  "w8-perrow": { bits: 8, groupSize: -1, sym: true, use: "8-bit per row: near-lossless" },
  "w8-g128": { bits: 8, groupSize: 128, sym: true, use: "8-bit, groups of 128" },
};

export function schemeNames(): string[] {
  return Object.keys(SCHEMES);
}

export function getScheme(name: string): Scheme {
  const s = SCHEMES[name];
  if (!s) throw new UsageError(`--scheme: unknown scheme "${name}"; known schemes: ${schemeNames().join(", ")}`);
  return s;
}

/** Group sizes the automatic choice tries when none is given, best first. */
export const AUTO_GROUP_SIZES = [128, 64, 32, -1] as const;

export interface LinearDims {
  out: number;
  in: number;
}

export interface FormatChoice {
  format: FormatSpec;
  groupSize: number;
  held: number;
  total: number;
  /** One line: what was chosen and why (what the alternatives would hold). */
  why: string;
}

const gs = (g: number): string => (g === -1 ? "per row" : `g${g}`);

/**
 * Pick the (format, group size) that holds the most Linears; ties go to the larger group (fewer scales)
 * and then to the format listed first in the registry. A fixed format or group size narrows the search.
 * `linears` are all of the model's Linears (every block), so counts are what the output will hold.
 */
export function chooseFormat(
  linears: readonly LinearDims[],
  s: Pick<QuantSettings, "bits" | "sym" | "actOrder">,
  fixed: { format?: string; groupSize?: number; accept?: (f: FormatSpec) => string | null },
): FormatChoice {
  // Formats that cannot hold what the run needs (outliers, per-module settings) are not candidates.
  const why = (f: FormatSpec): string | null => fixed.accept?.(f) ?? null;
  if (fixed.format !== undefined) {
    const f = getFormat(fixed.format);
    const no = why(f);
    if (no) throw new UsageError(`--format ${f.name}: ${no}`);
  }
  const formats = fixed.format !== undefined ? [getFormat(fixed.format)] : FORMATS.filter((f) => why(f) === null);
  if (formats.length === 0) throw new UsageError(`no output format can hold this run: ${FORMATS.map((f) => `${f.name}: ${why(f)}`).join("; ")}`);
  const groups = fixed.groupSize !== undefined ? [fixed.groupSize] : [...AUTO_GROUP_SIZES];
  const tried: { format: FormatSpec; groupSize: number; held: number }[] = [];
  for (const groupSize of groups)
    for (const format of formats) {
      const settings = { ...s, groupSize };
      tried.push({ format, groupSize, held: linears.filter((l) => format.canHold(l, settings) === null).length });
    }
  const best = tried.reduce((a, b) => (b.held > a.held ? b : a));
  const others = tried
    .filter((t) => t !== best)
    .map((t) => `${t.format.name} ${gs(t.groupSize)}: ${t.held}`)
    .join(", ");
  return {
    format: best.format,
    groupSize: best.groupSize,
    held: best.held,
    total: linears.length,
    why: `${best.format.name} ${gs(best.groupSize)} holds ${best.held}/${linears.length} Linears${others ? ` (${others})` : ""}`,
  };
}
