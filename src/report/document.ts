// The report as data, independent of how it is drawn: one view per configuration (settings, sizes,
// bits per weight, per-layer results placed on a block × module grid, the worst layers, perplexity and
// the gate's verdict) and the scales shared by every chart. Pure: the HTML and markdown renderers
// (src/report/html.ts, src/report/markdown.ts) only format what this module computes.

import path from "node:path";
import type { ReportInput, SummaryLayer } from "./input.js";

/** Perplexity of one configuration against the source's (either may be missing). */
export interface PplView {
  ppl: number | null;
  baseline: number | null;
  /** (ppl / baseline − 1) · 100, when both are known. */
  increasePercent: number | null;
  /** Where the numbers come from, e.g. `quantize gate on tinystories (60 windows × 256 tokens)`. */
  source: string;
  /** The gate's verdict (the run's own gate, or the report's --max-increase/--max-ppl); null when no limit was set. */
  verdict: { pass: boolean; line: string } | null;
}

export interface LayerCell {
  name: string;
  /** The block index (row), or null for a Linear outside the numbered blocks. */
  block: number | null;
  /** The module name inside its block (column), e.g. `mlp.down_proj`. */
  module: string;
  status: "quantized" | "skipped";
  reason: string | null;
  relError: number | null;
  /** Code bits of the Linear (16 when kept fp16). */
  bits: number;
  seconds: number;
}

export interface ConfigView {
  /** Short unique name (the output directory's base name, or the file's). */
  label: string;
  arg: string;
  file: string;
  model: string;
  architecture: string;
  format: string;
  scheme: string;
  method: string;
  bits: number;
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  /** e.g. `128 × 512 tokens of "c4", seed 0`, or null when not calibrated. */
  calibration: string | null;
  sourceBytes: number;
  outputBytes: number;
  bitsPerQuantizedWeight: number | null;
  bitsPerParameter: number;
  quantized: number;
  skipped: number;
  meanRelError: number | null;
  layers: LayerCell[];
  /** Grid rows (block indices, ascending; null last) and columns (modules in the order Linears run). */
  rows: (number | null)[];
  modules: string[];
  /** More than one width among the Linears (or some kept fp16): the bits chart is drawn. */
  mixed: boolean;
  worst: LayerCell[];
  ppl: PplView | null;
  totalSeconds: number;
  peakRssBytes: number | null;
  warnings: string[];
  manifest: { quant4Version: string; createdAt: string; recipe: string | null; outputs: { dir: string; format: string; files: number; bytes: number }[] } | null;
}

export interface ReportDocument {
  title: string;
  quant4Version: string;
  configs: ConfigView[];
  /** The source's perplexity when one configuration's (or --baseline's) is known. */
  baseline: { ppl: number; source: string } | null;
  /** log10 range of the measured relative errors over every configuration (one colour scale for all), or null. */
  errorRange: { min: number; max: number } | null;
  /** Distinct widths over every configuration, ascending (16 = fp16). */
  widths: number[];
}

/** `model.layers.3.mlp.down_proj` → block 3, module `mlp.down_proj`. */
export function splitLayerName(name: string): { block: number | null; module: string } {
  const m = /^(?:.*?\.)?(\d+)\.(.+)$/.exec(name);
  return m ? { block: Number(m[1]), module: m[2]! } : { block: null, module: name };
}

function cellOf(l: SummaryLayer, baseBits: number): LayerCell {
  const { block, module } = splitLayerName(l.name);
  return {
    name: l.name,
    block,
    module,
    status: l.status,
    reason: l.reason ?? null,
    relError: l.status === "quantized" ? l.relError : null,
    bits: l.status === "skipped" ? 16 : (l.bits ?? baseBits),
    seconds: l.seconds,
  };
}

function calibrationText(c: ReportInput["summary"]["calibration"]): string | null {
  if (!c) return null;
  return `${c.nsamples} × ${c.seqlen} tokens of "${c.text ?? "?"}", seed ${c.seed}`;
}

/** A label for each input: the output directory's name, made unique with its parent when two clash. */
function labels(inputs: readonly ReportInput[]): string[] {
  const base = inputs.map((i) => {
    const p = i.dir ?? (i.manifest ? path.dirname(i.file) : i.file.replace(/\.json$/i, ""));
    return path.basename(path.resolve(p));
  });
  return base.map((b, k) => {
    if (base.filter((x) => x === b).length === 1) return b;
    const p = inputs[k]!.dir ?? inputs[k]!.file;
    return `${path.basename(path.dirname(path.resolve(p)))}/${b} (${k + 1})`;
  });
}

export function configView(input: ReportInput, label: string, ppl: PplView | null): ConfigView {
  const s = input.summary;
  const layers = s.report.layers.map((l) => cellOf(l, s.settings.bits));
  const rows = [...new Set(layers.map((l) => l.block))].sort((a, b) => (a === null ? 1 : b === null ? -1 : a - b));
  const modules = [...new Set(layers.map((l) => l.module))];
  const q = layers.filter((l) => l.status === "quantized");
  const measured = q.filter((l) => l.relError !== null);
  const m = input.manifest;
  return {
    label,
    arg: input.arg,
    file: input.file,
    model: s.model,
    architecture: s.architecture,
    format: s.format,
    scheme: s.scheme,
    method: s.settings.method,
    bits: s.settings.bits,
    groupSize: s.settings.groupSize,
    sym: s.settings.sym,
    actOrder: s.settings.actOrder ?? false,
    calibration: calibrationText(s.calibration),
    sourceBytes: s.output.sourceBytes,
    outputBytes: s.output.outputBytes,
    bitsPerQuantizedWeight: s.output.bitsPerQuantizedWeight,
    bitsPerParameter: s.output.bitsPerParameter,
    quantized: q.length,
    skipped: layers.length - q.length,
    meanRelError: measured.length > 0 ? measured.reduce((a, l) => a + l.relError!, 0) / measured.length : null,
    layers,
    rows,
    modules,
    mixed: new Set(layers.map((l) => l.bits)).size > 1,
    worst: [...measured].sort((a, b) => b.relError! - a.relError!).slice(0, 5),
    ppl,
    totalSeconds: s.report.totalSeconds,
    peakRssBytes: s.report.peakRssBytes ?? null,
    warnings: s.warnings,
    manifest: m
      ? {
          quant4Version: m.quant4Version,
          createdAt: m.createdAt,
          recipe: m.recipe?.file ?? null,
          outputs: m.outputs.map((o) => ({ dir: o.dir, format: o.format, files: o.files.length, bytes: o.files.reduce((a, f) => a + f.bytes, 0) })),
        }
      : null,
  };
}

/** The perplexity a run's own gate measured (quantize --gate-text), or null. */
export function gatePpl(input: ReportInput): PplView | null {
  const g = input.summary.gate;
  if (!g || g.ppl === undefined || g.ppl === null) return null;
  const p = g.protocol;
  return {
    ppl: g.ppl,
    baseline: g.fpPpl,
    increasePercent: g.increasePercent ?? (g.fpPpl ? (g.ppl / g.fpPpl - 1) * 100 : null),
    source: `quantize gate on ${g.text}${p ? ` (${p.windows} windows × ${p.seqlen} tokens)` : ""}`,
    verdict: { pass: g.passed, line: `${g.passed ? "pass" : "fail"}: limit +${g.maxIncreasePercent}% over the fp perplexity` },
  };
}

export function buildDocument(inputs: readonly ReportInput[], ppls: readonly (PplView | null)[], o: { quant4Version: string; baseline?: { ppl: number; source: string } | null }): ReportDocument {
  const names = labels(inputs);
  const configs = inputs.map((inp, k) => configView(inp, names[k]!, ppls[k] ?? null));
  const errs = configs.flatMap((c) => c.layers.map((l) => l.relError).filter((e): e is number => e !== null && e > 0));
  const models = [...new Set(configs.map((c) => path.basename(c.model)))];
  const fromConfigs = configs.find((c) => c.ppl?.baseline != null);
  return {
    title: `quant4 report: ${models.join(", ")}`,
    quant4Version: o.quant4Version,
    configs,
    baseline: o.baseline ?? (fromConfigs ? { ppl: fromConfigs.ppl!.baseline!, source: fromConfigs.ppl!.source } : null),
    errorRange: errs.length > 0 ? { min: Math.log10(Math.min(...errs)), max: Math.log10(Math.max(...errs)) } : null,
    widths: [...new Set(configs.flatMap((c) => c.layers.map((l) => l.bits)))].sort((a, b) => a - b),
  };
}

/** `gptq 4-bit g128 sym act-order` */
export function settingsLine(c: ConfigView): string {
  return `${c.method} ${c.bits}-bit ${c.groupSize === -1 ? "per-row" : `g${c.groupSize}`} ${c.sym ? "sym" : "asym"}${c.actOrder ? " act-order" : ""}`;
}
