// The report's charts as inline SVG strings (no library, no script needed to draw them): the relative
// output error heat map (blocks × modules, log colour scale with a legend), the bits-per-Linear grid
// for mixed precision, and the perplexity-per-configuration bars. Every data mark carries a <title>
// (the browser's hover tooltip) and data-* attributes the page's script and the tests read.

import type { ConfigView, LayerCell } from "./document.js";

/** Escape text for HTML/SVG content and attribute values. */
export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

/** 9.44e-3 with `d` digits after the point. */
export const sci = (x: number, d = 2): string => x.toExponential(d).replace(/e\+?/, "e");

// Sequential yellow → orange → red (ColorBrewer YlOrRd, 9 classes): low error light, high error dark.
const YLORRD = ["#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8d3c", "#fc4e2a", "#e31a1c", "#bd0026", "#800026"];

function hex(c: string): [number, number, number] {
  return [parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16)];
}

/** The colour of t ∈ [0, 1] on the sequential palette (linear between its stops). */
export function rampColor(t: number): string {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (YLORRD.length - 1);
  const i = Math.min(YLORRD.length - 2, Math.floor(x));
  const f = x - i;
  const a = hex(YLORRD[i]!);
  const b = hex(YLORRD[i + 1]!);
  return "#" + a.map((v, k) => Math.round(v + (b[k]! - v) * f).toString(16).padStart(2, "0")).join("");
}

/** Black or white text, whichever reads on `fill`. */
function inkOn(fill: string): string {
  const [r, g, b] = hex(fill);
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#222" : "#fff";
}

/** Colours of code widths (categorical; fp16 grey). */
export const BITS_COLORS: Record<number, string> = { 2: "#b2182b", 3: "#ef8a62", 4: "#67a9cf", 8: "#2166ac", 16: "#8c8c8c" };
const bitsColor = (b: number): string => BITS_COLORS[b] ?? "#5e3c99";
const bitsName = (b: number): string => (b === 16 ? "fp16" : `${b}-bit`);

/** A column header: the module's last name part (`down_proj`); the full name is in its title. */
const shortModule = (m: string): string => m.split(".").pop()!;

interface Grid {
  cellW: number;
  cellH: number;
  left: number;
  top: number;
  width: number;
  height: number;
}

function gridOf(c: ConfigView, extraBottom: number): Grid {
  const cellW = Math.max(56, Math.min(84, Math.round(6.4 * Math.max(...c.modules.map((m) => shortModule(m).length)) + 8)));
  const cellH = c.rows.length > 24 ? 18 : 26;
  const left = 74;
  const top = 34;
  return { cellW, cellH, left, top, width: left + cellW * c.modules.length + 16, height: top + cellH * c.rows.length + extraBottom };
}

const rowName = (b: number | null): string => (b === null ? "other" : `block ${b}`);

function axes(c: ConfigView, g: Grid): string {
  const parts: string[] = [];
  c.modules.forEach((m, j) =>
    parts.push(`<text class="col-label" x="${g.left + g.cellW * (j + 0.5)}" y="${g.top - 10}" text-anchor="middle"><title>${esc(m)}</title>${esc(shortModule(m))}</text>`),
  );
  c.rows.forEach((b, i) => parts.push(`<text class="row-label" x="${g.left - 8}" y="${g.top + g.cellH * (i + 0.5) + 4}" text-anchor="end">${rowName(b)}</text>`));
  return parts.join("");
}

function cellsOf(c: ConfigView, draw: (l: LayerCell, x: number, y: number) => string, g: Grid): string {
  const out: string[] = [];
  for (const l of c.layers) {
    const i = c.rows.indexOf(l.block);
    const j = c.modules.indexOf(l.module);
    out.push(draw(l, g.left + g.cellW * j, g.top + g.cellH * i));
  }
  return out.join("");
}

/**
 * Relative output error per Linear: rows are blocks, columns modules, colour log10(error) on one scale
 * shared by every configuration of the report (`range`). Kept-fp16 Linears are hatched grey, Linears
 * without a measurement (RTN without calibration) light grey.
 */
export function errorHeatmap(c: ConfigView, range: { min: number; max: number } | null, id: string): string {
  const legendH = 54;
  const g = gridOf(c, legendH);
  const span = range && range.max > range.min ? range.max - range.min : 1;
  const tOf = (e: number): number => (range ? (Math.log10(e) - range.min) / span : 0.5);
  const showValues = g.cellW >= 56 && g.cellH >= 22;
  const cells = cellsOf(
    c,
    (l, x, y) => {
      let fill: string;
      let label = "";
      let title: string;
      if (l.status === "skipped") {
        fill = `url(#${id}-hatch)`;
        title = `${l.name}: kept fp16${l.reason ? ` (${l.reason})` : ""}`;
        label = "fp16";
      } else if (l.relError === null) {
        fill = "#eeeeee";
        title = `${l.name}: ${l.bits}-bit, output error not measured (no calibration)`;
        label = "–";
      } else {
        fill = rampColor(tOf(Math.max(l.relError, 1e-30)));
        title = `${l.name}: relative output error ${sci(l.relError, 3)} (${l.bits}-bit, ${l.seconds.toFixed(2)} s)`;
        label = sci(l.relError, 1);
      }
      const ink = fill.startsWith("#") ? inkOn(fill) : "#333";
      return (
        `<g class="cell-group"><rect class="cell heat-cell" x="${x + 1}" y="${y + 1}" width="${g.cellW - 2}" height="${g.cellH - 2}" rx="2" fill="${fill}" ` +
        `data-layer="${esc(l.name)}" data-value="${l.relError ?? ""}" data-status="${l.status}"><title>${esc(title)}</title></rect>` +
        (showValues ? `<text class="cell-value" x="${x + g.cellW / 2}" y="${y + g.cellH / 2 + 4}" text-anchor="middle" fill="${ink}">${label}</text>` : "") +
        `</g>`
      );
    },
    g,
  );
  // The legend: a gradient bar over the shared log range, with ticks at each power of ten inside it.
  const lx = g.left;
  const lw = Math.max(160, Math.min(320, g.width - g.left - 24));
  const ly = g.height - legendH + 16;
  const stops = Array.from({ length: 11 }, (_, k) => `<stop offset="${k * 10}%" stop-color="${rampColor(k / 10)}"/>`).join("");
  const ticks: string[] = [];
  if (range) {
    const vals = new Set<number>([range.min, range.max]);
    for (let p = Math.ceil(range.min); p <= Math.floor(range.max); p++) vals.add(p);
    for (const v of [...vals].sort((a, b) => a - b)) {
      const x = lx + ((v - range.min) / span) * lw;
      const near = [...vals].some((w) => w !== v && Math.abs(w - v) / span < 0.12 && Number.isInteger(w) && !Number.isInteger(v));
      if (near) continue; // an end label too close to a power of ten
      ticks.push(`<line x1="${x}" x2="${x}" y1="${ly + 12}" y2="${ly + 16}" stroke="#555"/><text class="tick" x="${x}" y="${ly + 27}" text-anchor="middle">${sci(10 ** v, Number.isInteger(v) ? 0 : 1)}</text>`);
    }
  }
  const legend =
    `<g class="legend"><text class="legend-title" x="${lx}" y="${ly - 4}">relative output error ‖(W−Q)X‖²/‖WX‖² (log scale, same for every configuration)</text>` +
    `<rect class="legend-bar" x="${lx}" y="${ly}" width="${lw}" height="12" fill="url(#${id}-ramp)" stroke="#999" stroke-width="0.5"/>${ticks.join("")}</g>`;
  return (
    `<svg class="chart heatmap" id="${id}" role="img" aria-label="relative output error per Linear of ${esc(c.label)}" width="${g.width}" height="${g.height}" viewBox="0 0 ${g.width} ${g.height}" xmlns="http://www.w3.org/2000/svg">` +
    `<defs><linearGradient id="${id}-ramp">${stops}</linearGradient>` +
    `<pattern id="${id}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#d9d9d9"/><line x1="0" y1="0" x2="0" y2="6" stroke="#a6a6a6" stroke-width="2"/></pattern></defs>` +
    axes(c, g) +
    cells +
    legend +
    `</svg>`
  );
}

/** Code bits per Linear (mixed precision): the same grid, one colour per width, with a legend of the widths present. */
export function bitsGrid(c: ConfigView, widths: readonly number[], id: string): string {
  const legendH = 34;
  const g = gridOf(c, legendH);
  const cells = cellsOf(
    c,
    (l, x, y) =>
      `<g class="cell-group"><rect class="cell bits-cell" x="${x + 1}" y="${y + 1}" width="${g.cellW - 2}" height="${g.cellH - 2}" rx="2" fill="${bitsColor(l.bits)}" data-layer="${esc(l.name)}" data-value="${l.bits}">` +
      `<title>${esc(`${l.name}: ${l.status === "skipped" ? `kept fp16${l.reason ? ` (${l.reason})` : ""}` : `${l.bits}-bit codes`}`)}</title></rect>` +
      (g.cellH >= 22 ? `<text class="cell-value" x="${x + g.cellW / 2}" y="${y + g.cellH / 2 + 4}" text-anchor="middle" fill="#fff">${bitsName(l.bits)}</text>` : "") +
      `</g>`,
    g,
  );
  const present = widths.filter((w) => c.layers.some((l) => l.bits === w));
  const ly = g.height - legendH + 12;
  const legend = present
    .map((w, k) => `<rect x="${g.left + k * 78}" y="${ly}" width="14" height="14" rx="2" fill="${bitsColor(w)}"/><text class="tick" x="${g.left + k * 78 + 19}" y="${ly + 11}">${bitsName(w)}: ${c.layers.filter((l) => l.bits === w).length}</text>`)
    .join("");
  return (
    `<svg class="chart bits-grid" id="${id}" role="img" aria-label="code bits per Linear of ${esc(c.label)}" width="${g.width}" height="${g.height}" viewBox="0 0 ${g.width} ${g.height}" xmlns="http://www.w3.org/2000/svg">` +
    axes(c, g) +
    cells +
    `<g class="legend">${legend}</g></svg>`
  );
}

/**
 * Perplexity per configuration: one horizontal bar each (green passed its gate, red failed, blue no
 * gate), the source's perplexity as a dashed line.
 */
export function pplBars(configs: readonly ConfigView[], baseline: number | null, id: string): string {
  const rows = configs.filter((c) => c.ppl?.ppl != null);
  const labelW = Math.min(260, 16 + 7 * Math.max(8, ...rows.map((c) => c.label.length)));
  const barH = 24;
  const gap = 8;
  const plotW = 420;
  const top = 26;
  const height = top + rows.length * (barH + gap) + 30;
  const width = labelW + plotW + 150;
  const vals = rows.map((c) => c.ppl!.ppl!);
  if (baseline !== null) vals.push(baseline);
  const max = Math.max(...vals) * 1.05;
  // The axis starts below the smallest value so that differences of a few percent are visible.
  const min = Math.max(0, Math.min(...vals) * 0.9);
  const xOf = (v: number): number => labelW + ((v - min) / (max - min || 1)) * plotW;
  const bars = rows.map((c, k) => {
    const p = c.ppl!;
    const y = top + k * (barH + gap);
    const fill = p.verdict ? (p.verdict.pass ? "#1a9850" : "#d73027") : "#4575b4";
    const inc = p.increasePercent !== null ? ` (${p.increasePercent >= 0 ? "+" : ""}${p.increasePercent.toFixed(2)}%)` : "";
    const title = `${c.label}: perplexity ${p.ppl!.toFixed(4)}${inc}; ${p.source}${p.verdict ? `; gate ${p.verdict.pass ? "pass" : "fail"}` : ""}`;
    return (
      `<text class="row-label" x="${labelW - 8}" y="${y + barH / 2 + 4}" text-anchor="end">${esc(c.label)}</text>` +
      `<rect class="bar ppl-bar" x="${labelW}" y="${y}" width="${Math.max(1, xOf(p.ppl!) - labelW)}" height="${barH}" fill="${fill}" data-config="${esc(c.label)}" data-value="${p.ppl}"><title>${esc(title)}</title></rect>` +
      `<text class="bar-value" x="${xOf(p.ppl!) + 6}" y="${y + barH / 2 + 4}">${p.ppl!.toFixed(4)}${inc}</text>`
    );
  });
  const base =
    baseline !== null
      ? `<line class="baseline" x1="${xOf(baseline)}" x2="${xOf(baseline)}" y1="${top - 8}" y2="${height - 22}" stroke="#333" stroke-dasharray="4 3"/>` +
        `<text class="tick" x="${xOf(baseline)}" y="${top - 12}" text-anchor="middle">source ${baseline.toFixed(4)}</text>`
      : "";
  const axis = `<line x1="${labelW}" x2="${labelW + plotW}" y1="${height - 22}" y2="${height - 22}" stroke="#999"/>` +
    [min, (min + max) / 2, max].map((v) => `<text class="tick" x="${xOf(v)}" y="${height - 8}" text-anchor="middle">${v.toFixed(2)}</text>`).join("");
  return (
    `<svg class="chart ppl-chart" id="${id}" role="img" aria-label="perplexity per configuration" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" xmlns="http://www.w3.org/2000/svg">` +
    bars.join("") +
    base +
    axis +
    `</svg>`
  );
}
