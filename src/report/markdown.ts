// The markdown report, for a pull-request comment: one table of the configurations (settings, size,
// bits per weight, mean error, perplexity and its change, the gate), the verdict, and the worst layers
// of each configuration (folded in <details>, which GitHub renders). GitHub-flavoured markdown.

import { fmtBytes } from "../util/format.js";
import { settingsLine, type ReportDocument } from "./document.js";
import { sci } from "./svg.js";

/** Table cells must not break the table. */
const cell = (s: string): string => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
const pct = (x: number): string => `${x >= 0 ? "+" : ""}${x.toFixed(2)}%`;

export function renderMarkdown(doc: ReportDocument): string {
  const out: string[] = [`### ${cell(doc.title)}`, ""];
  out.push("| configuration | settings | format | size | bits/weight | mean error | perplexity | Δ | gate |");
  out.push("|---|---|---|---:|---:|---:|---:|---:|---|");
  for (const c of doc.configs) {
    const p = c.ppl;
    out.push(
      `| ${cell(c.label)} | ${cell(settingsLine(c))} | ${cell(c.format)} | ${fmtBytes(c.sourceBytes)} → ${fmtBytes(c.outputBytes)} | ` +
        `${c.bitsPerQuantizedWeight?.toFixed(3) ?? "–"} | ${c.meanRelError === null ? "–" : sci(c.meanRelError, 2)} | ` +
        `${p?.ppl != null ? (p.baseline !== null ? `${p.baseline.toFixed(4)} → ` : "") + p.ppl.toFixed(4) : "–"} | ${p?.increasePercent != null ? pct(p.increasePercent) : "–"} | ` +
        `${p?.verdict ? (p.verdict.pass ? "✅ pass" : "❌ fail") : "–"} |`,
    );
  }
  out.push("");
  const gated = doc.configs.filter((c) => c.ppl?.verdict);
  if (gated.length === 0) out.push("**Verdict:** no perplexity gate was applied.");
  else {
    const failed = gated.filter((c) => !c.ppl!.verdict!.pass);
    out.push(
      failed.length === 0
        ? `**Verdict: pass** — ${gated.length === 1 ? "the gate passed" : `all ${gated.length} gated configurations passed`}.`
        : `**Verdict: fail** — ${failed.map((c) => `${cell(c.label)}: ${cell(c.ppl!.verdict!.line)}`).join("; ")}.`,
    );
    for (const c of gated.filter((x) => x.ppl!.verdict!.pass)) out.push(`- ${cell(c.label)}: ${cell(c.ppl!.verdict!.line)}`);
  }
  const sources = [...new Set(doc.configs.map((c) => c.ppl?.source).filter((s): s is string => !!s))];
  if (sources.length > 0) out.push("", `Perplexity measured by ${sources.map(cell).join("; ")}.`);
  for (const c of doc.configs) {
    if (c.worst.length === 0) continue;
    out.push("", `<details><summary>${cell(c.label)}: highest relative output error</summary>`, "");
    out.push("| Linear | bits | relative error |", "|---|---:|---:|");
    for (const l of c.worst) out.push(`| \`${cell(l.name)}\` | ${l.bits} | ${sci(l.relError!, 3)} |`);
    out.push("", "</details>");
  }
  out.push("", `<sub>quant4 ${cell(doc.quant4Version)} · relative output error ‖(W−Q)X‖²/‖WX‖² on the calibration inputs</sub>`, "");
  return out.join("\n");
}
