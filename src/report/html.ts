// The HTML report: one self-contained file (styles and the small script inline, charts as inline SVG
// from src/report/svg.ts, nothing fetched). Sections: the summary (one card per configuration: model,
// settings, size before → after, bits per weight, perplexity before → after, the gate's verdict), the
// comparison of several configurations (table and perplexity bars), then per configuration the error
// heat map, the bits grid when mixed, the worst layers and every layer in a sortable table.

import { fmtBytes } from "../util/format.js";
import { settingsLine, type ConfigView, type ReportDocument } from "./document.js";
import { bitsGrid, errorHeatmap, esc, pplBars, sci } from "./svg.js";

const STYLE = `
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#f6f7f9;margin:0;padding:24px 28px 40px}
h1{font-size:21px;margin:0 0 2px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #dde1e6;padding-bottom:4px}h3{font-size:15px;margin:18px 0 8px}
.sub{color:#667;margin:0 0 18px;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:12px 16px;min-width:340px;flex:1 1 340px;max-width:640px}
.card h3{margin:0 0 8px;font-size:15px}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
.kv dt{color:#667}.kv dd{margin:0;font-variant-numeric:tabular-nums}
.big{font-size:18px;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;color:#fff}
.pass{background:#1a9850}.fail{background:#d73027}.none{background:#8c8c8c}
section.config{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:4px 18px 16px;margin-top:18px}
.charts{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.chart{font:12px system-ui,sans-serif;max-width:100%;height:auto}
.chart .row-label,.chart .col-label{fill:#444}.chart .tick{fill:#555;font-size:11px}.chart .legend-title{fill:#444;font-size:11px}
.chart .cell-value{font-size:10px;pointer-events:none;font-variant-numeric:tabular-nums}.chart .bar-value{fill:#222;font-size:12px}
.chart rect.cell:hover,.chart rect.cell.hl{stroke:#111;stroke-width:2}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;background:#fff}
th,td{padding:3px 10px;border-bottom:1px solid #eceff3;text-align:left;white-space:nowrap}
th{background:#f0f2f5;font-weight:600}th.sort{cursor:pointer;user-select:none}th.sort:after{content:" ⇅";color:#aab}
td.num,th.num{text-align:right}
tr.hl td{background:#fff3c4}
details{margin-top:10px}summary{cursor:pointer;color:#345}
.warn{color:#8a5300}
code{font-size:12.5px;background:#f0f2f5;padding:0 4px;border-radius:3px}
footer{margin-top:26px;color:#889;font-size:12px}
`;

// Sortable tables, and the heat map and the layer tables highlighting the same Linear on hover.
const SCRIPT = `
(function(){
  "use strict";
  function num(t){var v=parseFloat(t);return isNaN(v)?null:v;}
  document.querySelectorAll("table.sortable").forEach(function(tbl){
    tbl.querySelectorAll("th").forEach(function(th,col){
      th.classList.add("sort");
      th.addEventListener("click",function(){
        var body=tbl.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var dir=th.getAttribute("data-dir")==="asc"?"desc":"asc";th.setAttribute("data-dir",dir);
        rows.sort(function(a,b){
          var x=a.cells[col].getAttribute("data-v")||a.cells[col].textContent,y=b.cells[col].getAttribute("data-v")||b.cells[col].textContent;
          var nx=num(x),ny=num(y),c=(nx!==null&&ny!==null)?nx-ny:String(x).localeCompare(String(y));
          return dir==="asc"?c:-c;
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  function mark(name,on){
    document.querySelectorAll('[data-layer]').forEach(function(el){
      if(el.getAttribute("data-layer")===name)el.classList.toggle("hl",on);
    });
  }
  document.querySelectorAll("[data-layer]").forEach(function(el){
    el.addEventListener("mouseenter",function(){mark(el.getAttribute("data-layer"),true);});
    el.addEventListener("mouseleave",function(){mark(el.getAttribute("data-layer"),false);});
  });
  document.body.setAttribute("data-ready","1");
})();
`;

const pct = (x: number): string => `${x >= 0 ? "+" : ""}${x.toFixed(2)}%`;

function verdictBadge(c: ConfigView): string {
  const v = c.ppl?.verdict;
  if (!v) return `<span class="badge none">no gate</span>`;
  return `<span class="badge ${v.pass ? "pass" : "fail"}" title="${esc(v.line)}">gate ${v.pass ? "pass" : "fail"}</span>`;
}

function pplLine(c: ConfigView): string {
  const p = c.ppl;
  if (!p || p.ppl === null) return "not measured (pass --baseline, or quantize with --gate-text)";
  const before = p.baseline !== null ? `${p.baseline.toFixed(4)} → ` : "";
  return `<span class="big">${before}${p.ppl.toFixed(4)}</span>${p.increasePercent !== null ? ` (${pct(p.increasePercent)})` : ""}`;
}

function card(c: ConfigView): string {
  const rows: [string, string][] = [
    ["model", `${esc(c.model)} (${esc(c.architecture)})`],
    ["settings", `${esc(settingsLine(c))}, scheme ${esc(c.scheme)}`],
    ["format", esc(c.format)],
    ["size", `<span class="big">${fmtBytes(c.sourceBytes)} → ${fmtBytes(c.outputBytes)}</span> (${(c.sourceBytes / c.outputBytes).toFixed(2)}× smaller)`],
    ["bits / weight", `<span class="big">${c.bitsPerQuantizedWeight === null ? "–" : c.bitsPerQuantizedWeight.toFixed(3)}</span> per quantized weight; ${c.bitsPerParameter.toFixed(2)} per parameter`],
    ["perplexity", pplLine(c)],
    ["gate", `${verdictBadge(c)}${c.ppl?.verdict ? ` ${esc(c.ppl.verdict.line)}` : ""}`],
    ["linears", `${c.quantized} quantized, ${c.skipped} kept fp16`],
    ["output error", c.meanRelError === null ? "not measured" : `mean ${sci(c.meanRelError, 3)}, highest ${sci(c.worst[0]!.relError!, 3)} (${esc(c.worst[0]!.name)})`],
    ["calibration", c.calibration === null ? "none" : esc(c.calibration)],
    ["time", `${c.totalSeconds.toFixed(1)} s${c.peakRssBytes !== null ? `, peak RSS ${fmtBytes(c.peakRssBytes)}` : ""}`],
  ];
  if (c.ppl?.ppl != null) rows.push(["measured on", esc(c.ppl.source)]);
  return `<div class="card" data-config="${esc(c.label)}"><h3>${esc(c.label)}</h3><dl class="kv">${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("")}</dl></div>`;
}

function comparison(doc: ReportDocument): string {
  const head = ["configuration", "settings", "format", "size", "bits/weight", "mean error", "perplexity", "Δ", "gate"];
  const rows = doc.configs.map(
    (c) =>
      `<tr><td>${esc(c.label)}</td><td>${esc(settingsLine(c))}</td><td>${esc(c.format)}</td><td class="num" data-v="${c.outputBytes}">${fmtBytes(c.outputBytes)}</td>` +
      `<td class="num">${c.bitsPerQuantizedWeight?.toFixed(3) ?? "–"}</td><td class="num" data-v="${c.meanRelError ?? ""}">${c.meanRelError === null ? "–" : sci(c.meanRelError, 2)}</td>` +
      `<td class="num">${c.ppl?.ppl != null ? c.ppl.ppl.toFixed(4) : "–"}</td><td class="num" data-v="${c.ppl?.increasePercent ?? ""}">${c.ppl?.increasePercent != null ? pct(c.ppl.increasePercent) : "–"}</td><td>${verdictBadge(c)}</td></tr>`,
  );
  const withPpl = doc.configs.filter((c) => c.ppl?.ppl != null).length;
  return (
    `<h2>Configurations</h2><table class="sortable compare"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>${rows.join("")}</tbody></table>` +
    (withPpl > 0 ? `<h3>Perplexity per configuration${doc.baseline ? ` (dashed: the source, ${doc.baseline.ppl.toFixed(4)})` : ""}</h3>${pplBars(doc.configs, doc.baseline?.ppl ?? null, "ppl-chart")}` : "")
  );
}

function layerTable(c: ConfigView, rows: ConfigView["layers"], cls: string): string {
  const body = rows
    .map(
      (l) =>
        `<tr data-layer="${esc(l.name)}"><td>${esc(l.name)}</td><td class="num">${l.bits === 16 ? "fp16" : l.bits}</td>` +
        `<td class="num" data-v="${l.relError ?? ""}">${l.relError === null ? (l.status === "skipped" ? "kept fp16" : "–") : sci(l.relError, 3)}</td><td class="num">${l.seconds.toFixed(3)}</td>` +
        `<td>${l.reason ? esc(l.reason) : ""}</td></tr>`,
    )
    .join("");
  return `<table class="sortable ${cls}" data-config="${esc(c.label)}"><thead><tr><th>Linear</th><th class="num">bits</th><th class="num">relative error</th><th class="num">seconds</th><th>note</th></tr></thead><tbody>${body}</tbody></table>`;
}

function section(c: ConfigView, doc: ReportDocument, k: number): string {
  const charts = [`<div><h3>Relative output error per Linear</h3>${errorHeatmap(c, doc.errorRange, `heat-${k}`)}</div>`];
  if (c.mixed) charts.push(`<div><h3>Code bits per Linear (mixed precision)</h3>${bitsGrid(c, doc.widths, `bits-${k}`)}</div>`);
  const worst = c.worst.length > 0 ? `<h3>Highest output error</h3>${layerTable(c, c.worst, "worst")}` : "";
  const warn = c.warnings.length > 0 ? `<h3>Warnings</h3><ul>${c.warnings.map((w) => `<li class="warn">${esc(w)}</li>`).join("")}</ul>` : "";
  const m = c.manifest;
  const prov = m
    ? `<details><summary>Provenance (quant4-manifest.json)</summary><dl class="kv"><dt>quant4</dt><dd>${esc(m.quant4Version)}</dd><dt>created</dt><dd>${esc(m.createdAt)}</dd>` +
      `<dt>recipe</dt><dd>${m.recipe ? `<code>${esc(m.recipe)}</code>` : "none (command-line flags)"}</dd>` +
      m.outputs.map((o) => `<dt>output</dt><dd><code>${esc(o.dir)}</code> ${esc(o.format)}: ${o.files} files, ${fmtBytes(o.bytes)}</dd>`).join("") +
      `</dl><p>Check the files against it with <code>quant4 verify ${esc(c.arg)}</code>.</p></details>`
    : "";
  return (
    `<section class="config" id="config-${k}" data-config="${esc(c.label)}"><h2>${esc(c.label)} <small style="font-weight:400;color:#667">${esc(settingsLine(c))}, ${esc(c.format)}</small></h2>` +
    `<div class="charts">${charts.join("")}</div>${worst}${warn}` +
    `<details><summary>All ${c.layers.length} Linears</summary>${layerTable(c, c.layers, "layers")}</details>${prov}</section>`
  );
}

/** The whole report page. */
export function renderHtml(doc: ReportDocument): string {
  const srcPpl = doc.baseline ? ` · source perplexity ${doc.baseline.ppl.toFixed(4)} (${esc(doc.baseline.source)})` : "";
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="generator" content="quant4 ${esc(doc.quant4Version)}">
<title>${esc(doc.title)}</title><style>${STYLE}</style></head>
<body>
<h1>${esc(doc.title)}</h1>
<p class="sub">${doc.configs.length} configuration${doc.configs.length === 1 ? "" : "s"}${srcPpl}</p>
<div class="cards">${doc.configs.map(card).join("")}</div>
${doc.configs.length > 1 || doc.configs.some((c) => c.ppl?.ppl != null) ? comparison(doc) : ""}
${doc.configs.map((c, k) => section(c, doc, k)).join("\n")}
<footer>Written by quant4 ${esc(doc.quant4Version)} (<code>quant4 report</code>). Relative output error: ‖(W−Q)X‖²/‖WX‖² of each Linear on the calibration inputs. Hover a cell for its Linear; click a table header to sort.</footer>
<script>${SCRIPT}</script>
</body></html>
`;
}
