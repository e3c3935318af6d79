// `quant4 report` on real quantize outputs of the vendored stories260K (fast settings: 8 × 128
// calibration tokens, 4 windows of the tinystories text for perplexity): the HTML page rendered in
// headless Chromium (no uncaught error, no console error, no request but the page itself, the heat
// map's cells, the bits grid and the perplexity bars in the DOM, a screenshot saved under
// test-artifacts/), skipped with the reason in its title when no Chromium is installed; the markdown
// summary; and every documented exit code (0 written, 1 the report's gate failed, 2 bad input or usage
// naming the file, 3 internal error).

import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTmpDir, removeTmpDirs, ROOT, runCli, stderrLines, STORIES_VENDORED, type CliResult } from "./helpers.js";

afterAll(removeTmpDirs);

const FAST = ["--nsamples", "8", "--seqlen", "128", "--threads", "1"];
const ARTIFACTS = path.join(ROOT, "test-artifacts");

/** A system Chromium (Debian's `chromium`; .ci/run installs it), or only QUANT4_CHROMIUM when it is set. */
const CHROMIUM_CANDIDATES = process.env["QUANT4_CHROMIUM"]
  ? [process.env["QUANT4_CHROMIUM"]]
  : ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"];
const chromium = CHROMIUM_CANDIDATES.find((p) => fs.existsSync(p)) ?? null;
const withBrowser = (title: string): string =>
  chromium ? title : `${title} [skipped: no Chromium found (tried ${CHROMIUM_CANDIDATES.join(", ")}); apt-get install chromium, or set QUANT4_CHROMIUM]`;

function expectOneLineError(r: CliResult, code: number, ...mustContain: (string | RegExp)[]): string {
  expect(r.code, r.stderr).toBe(code);
  const lines = stderrLines(r);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^quant4: error: /);
  for (const m of mustContain) expect(lines[0]).toMatch(m);
  expect(r.stdout).toBe("");
  return lines[0]!;
}

let dir: string; // parent of everything this file writes
let uniform: string; // GPTQ 4-bit per row, compressed-tensors (an output directory with its manifest)
let mixed: string; // down_proj at 8 bits, one Linear kept fp16
let uniformJson: string; // the `quantize --json` result of `uniform`, saved
let baseJson: string; // eval-ppl --json of the source

beforeAll(async () => {
  dir = makeTmpDir("quant4-report-");
  uniform = path.join(dir, "s260k-w4");
  mixed = path.join(dir, "s260k-mixed");
  uniformJson = path.join(dir, "s260k-w4.json");
  baseJson = path.join(dir, "base.json");
  const [a, b, c] = await Promise.all([
    runCli(["quantize", STORIES_VENDORED, uniform, "--format", "compressed-tensors", "--group-size", "-1", ...FAST, "--json"]),
    runCli(["quantize", STORIES_VENDORED, mixed, "--format", "compressed-tensors", "--group-size", "-1", "--asym", "--dynamic", ".*down_proj=bits:8", "--skip", String.raw`.*layers\.4\.mlp\.up_proj`, ...FAST]),
    runCli(["eval-ppl", STORIES_VENDORED, "--text", "tinystories", "--seqlen", "128", "--max-windows", "4", "--json", "--threads", "1"]),
  ]);
  expect(a.code, a.stderr).toBe(0);
  expect(b.code, b.stderr).toBe(0);
  expect(c.code, c.stderr).toBe(0);
  fs.writeFileSync(uniformJson, a.stdout);
  fs.writeFileSync(baseJson, c.stdout);
}, 240_000);

describe("quant4 report: HTML", () => {
  let html: string;
  let htmlFile: string;
  let json: Record<string, any>;

  beforeAll(async () => {
    htmlFile = path.join(dir, "report.html");
    const r = await runCli(["report", uniform, mixed, "--baseline", baseJson, "--max-increase", "50", "-o", htmlFile, "--json", "--threads", "1"]);
    expect(r.code, r.stderr).toBe(0);
    json = JSON.parse(r.stdout);
    html = fs.readFileSync(htmlFile, "utf8");
  }, 120_000);

  it("evaluates each output on the baseline's protocol; --json says what was written", () => {
    expect(json["output"]).toBe(htmlFile);
    expect(json["format"]).toBe("html");
    expect(json["bytes"]).toBe(Buffer.byteLength(html));
    const base = JSON.parse(fs.readFileSync(baseJson, "utf8"));
    expect(json["baseline"].ppl).toBe(base.ppl);
    const cfg = json["configurations"] as Record<string, any>[];
    expect(cfg.map((c) => c["label"])).toEqual(["s260k-w4", "s260k-mixed"]);
    for (const c of cfg) {
      expect(c["ppl"]).toBeGreaterThan(1);
      expect(c["baselinePpl"]).toBe(base.ppl);
      expect(c["increasePercent"]).toBeCloseTo((c["ppl"] / base.ppl - 1) * 100, 9);
      expect(c["gate"]).toBe("pass");
      expect(c["pplSource"]).toMatch(/^quant4 report on tinystories \(4 windows × 128 tokens\)$/);
    }
  });

  it("is self-contained: no external script, style, image or link", () => {
    expect(html).not.toMatch(/<(script|img|iframe)[^>]*\ssrc=/i);
    expect(html).not.toMatch(/<link\b/i);
    expect(html).not.toMatch(/url\(\s*['"]?(https?:)?\/\//i);
    expect(html).not.toMatch(/\b(src|href)=["']?(https?:)?\/\//i);
    expect(html).toMatch(/<style>/);
    expect(html).toMatch(/<script>/);
  });

  it("holds the summary: sizes, bits per weight, perplexity before → after, the gate", () => {
    expect(html).toMatch(/1020\.6 KiB → \d+\.\d KiB/);
    expect(html).toMatch(/per quantized weight/);
    expect(html).toMatch(/\d\.\d{4} → \d\.\d{4}/);
    expect(html).toMatch(/gate pass/);
    // One heat-map cell per Linear in each configuration (5 blocks × 7 modules), a bits grid for the mixed one only.
    expect(html.match(/class="cell heat-cell"/g)).toHaveLength(70);
    expect(html.match(/class="cell bits-cell"/g)).toHaveLength(35);
    expect(html).toMatch(/model\.layers\.4\.mlp\.up_proj: kept fp16/);
  });

  it.skipIf(!chromium)(withBrowser("renders in headless Chromium: no errors, the charts in the DOM, a screenshot saved"), async () => {
    const { default: puppeteer } = await import("puppeteer-core");
    const browser = await puppeteer.launch({ executablePath: chromium!, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      const requests: string[] = [];
      page.on("pageerror", (e) => problems.push(`uncaught: ${(e as Error).message}`));
      page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warn") problems.push(`console.${m.type()}: ${m.text()}`);
      });
      page.on("requestfailed", (req) => problems.push(`request failed: ${req.url()}`));
      page.on("request", (req) => requests.push(req.url()));
      await page.setViewport({ width: 1100, height: 900 });
      await page.goto("file://" + htmlFile, { waitUntil: "load" });
      expect(problems).toEqual([]);
      expect(requests).toEqual(["file://" + htmlFile]); // nothing fetched but the page itself
      // The inline script ran to its end.
      expect(await page.$eval("body", (b) => b.getAttribute("data-ready"))).toBe("1");
      // The charts as rendered: one heat map per configuration with 35 cells each, drawn with a size.
      const heat = await page.$$eval("svg.heatmap", (svgs) =>
        svgs.map((s) => ({
          cells: s.querySelectorAll("rect.heat-cell").length,
          titles: s.querySelectorAll("rect.heat-cell > title").length,
          legend: s.querySelectorAll(".legend-bar").length,
          width: s.getBoundingClientRect().width,
          height: s.getBoundingClientRect().height,
          firstCellWidth: (s.querySelector("rect.heat-cell") as SVGRectElement).getBoundingClientRect().width,
        })),
      );
      expect(heat).toHaveLength(2);
      for (const h of heat) {
        expect(h.cells).toBe(35);
        expect(h.titles).toBe(35);
        expect(h.legend).toBe(1);
        expect(h.width).toBeGreaterThan(300);
        expect(h.height).toBeGreaterThan(100);
        expect(h.firstCellWidth).toBeGreaterThan(20);
      }
      expect(await page.$$eval("svg.bits-grid rect.bits-cell", (r) => r.length)).toBe(35);
      expect(await page.$$eval("svg.ppl-chart rect.ppl-bar", (r) => r.map((x) => x.getAttribute("data-config")))).toEqual(["s260k-w4", "s260k-mixed"]);
      // The colours differ across cells (a heat map, not one colour).
      const fills = await page.$$eval("svg#heat-0 rect.heat-cell", (r) => new Set(r.map((x) => x.getAttribute("fill"))).size);
      expect(fills).toBeGreaterThan(5);
      // Hover a cell: the script highlights the same Linear in the layer table.
      await page.hover("svg#heat-0 rect.heat-cell");
      expect(await page.$$eval("tr.hl", (r) => r.length)).toBeGreaterThan(0);
      // Sorting a table by a numeric column works.
      await page.$$eval("table.layers", (t) => (t[0]!.querySelectorAll("th")[2] as HTMLElement).click());
      const sorted = await page.$$eval("table.layers", (t) => Array.from(t[0]!.querySelectorAll("tbody tr td:nth-child(3)")).map((c) => Number(c.getAttribute("data-v"))));
      expect(sorted).toEqual([...sorted].sort((a, b) => a - b));
      expect(problems).toEqual([]);
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const png = path.join(ARTIFACTS, "report-stories260K.png");
      await page.screenshot({ path: png, fullPage: true });
      expect(fs.statSync(png).size).toBeGreaterThan(10_000);
    } finally {
      await browser.close();
    }
  });
});

describe("quant4 report: markdown and inputs", () => {
  it("--format md: the table, the verdict and the worst layers, on stdout", async () => {
    const r = await runCli(["report", uniform, "--format", "md"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^### quant4 report: stories260K\n/);
    expect(r.stdout).toMatch(/^\| configuration \| settings \| format \| size \| bits\/weight \| mean error \| perplexity \| Δ \| gate \|$/m);
    expect(r.stdout).toMatch(/^\| s260k-w4 \| gptq 4-bit per-row sym \| compressed-tensors \| 1020\.6 KiB → \d+\.\d KiB \| 4\.\d{3} \| \d\.\d\de-\d \| – \| – \| – \|$/m);
    expect(r.stdout).toMatch(/\*\*Verdict:\*\* no perplexity gate was applied\./);
    expect(r.stdout.match(/^\| `model\.layers\.\d\.[a-z_.]+` \| 4 \| \d\.\d{3}e-\d \|$/gm)).toHaveLength(5);
  });

  it("a saved quantize --json result reads as the output directory's manifest does; -o .md picks markdown", async () => {
    const md = path.join(dir, "from-json.md");
    const a = await runCli(["report", uniformJson, "-o", md]);
    expect(a.code, a.stderr).toBe(0);
    expect(stderrLines(a)).toEqual([`quant4: wrote ${md} (md, ${stderrLines(a)[0]!.match(/\(md, (.*?),/)![1]}, 1 configuration)`]);
    const b = await runCli(["report", uniform, "--format", "md"]);
    expect(fs.readFileSync(md, "utf8")).toBe(b.stdout);
  });

  it("the report's gate: --max-increase passes (exit 0) or fails (exit 1, the report still written) against an --eval result", async () => {
    const ev = path.join(dir, "eval-w4.json");
    const e = await runCli(["eval-ppl", uniform, "--text", "tinystories", "--seqlen", "128", "--max-windows", "4", "--json", "--threads", "1"]);
    expect(e.code, e.stderr).toBe(0);
    fs.writeFileSync(ev, e.stdout);
    const out = path.join(dir, "gate.md");
    const fail = await runCli(["report", uniform, "--baseline", baseJson, "--eval", ev, "--max-increase", "0", "-o", out]);
    expect(fail.code, fail.stderr).toBe(1);
    expect(stderrLines(fail)[1]).toMatch(/^quant4: gate failed: s260k-w4: perplexity \d\.\d{4} is \d+\.\d\d% above the baseline \d\.\d{4} \(allowed: 0%\)$/);
    expect(fs.readFileSync(out, "utf8")).toMatch(/\*\*Verdict: fail\*\* — s260k-w4: perplexity/);
    const pass = await runCli(["report", uniform, "--baseline", baseJson, "--eval", ev, "--max-increase", "1000", "-o", out]);
    expect(pass.code, pass.stderr).toBe(0);
    expect(fs.readFileSync(out, "utf8")).toMatch(/\*\*Verdict: pass\*\* — the gate passed\./);
    expect(fs.readFileSync(out, "utf8")).toMatch(/Perplexity measured by eval-ppl result .*eval-w4\.json\./);
  });
});

describe("quant4 report: exit codes (0 written, 1 the report's gate failed, 2 bad input or usage, 3 internal error)", () => {
  it("2: an input that does not exist, names it", async () => {
    const f = path.join(dir, "nope.json");
    expectOneLineError(await runCli(["report", f]), 2, f, /no such file or directory/);
  });

  it("2: a directory without a manifest names the manifest it looked for", async () => {
    expectOneLineError(await runCli(["report", STORIES_VENDORED]), 2, path.join(STORIES_VENDORED, "quant4-manifest.json"), /has no quant4 manifest/);
  });

  it("2: invalid JSON, and a result missing a key, name the file (and the key)", async () => {
    const bad = path.join(dir, "bad.json");
    fs.writeFileSync(bad, "{ not json");
    expectOneLineError(await runCli(["report", bad]), 2, bad, /not valid JSON/);
    const j = JSON.parse(fs.readFileSync(uniformJson, "utf8"));
    j.report.layers[3].relError = "high";
    const broken = path.join(dir, "broken.json");
    fs.writeFileSync(broken, JSON.stringify(j));
    expectOneLineError(await runCli(["report", broken]), 2, broken, /result\.report\.layers\.3\.relError: /);
  });

  it("2: a corrupt manifest names the manifest and its key", async () => {
    const copy = path.join(dir, "manifest-copy.json");
    const m = JSON.parse(fs.readFileSync(path.join(uniform, "quant4-manifest.json"), "utf8"));
    delete m.summary.output;
    fs.writeFileSync(copy, JSON.stringify(m));
    expectOneLineError(await runCli(["report", copy]), 2, copy, /manifest\.summary\.output: /);
  });

  it("2: a dry-run plan or an eval-ppl result is not a quantize result", async () => {
    expectOneLineError(await runCli(["report", baseJson]), 2, baseJson, /eval-ppl --json result.*--baseline/);
    const plan = path.join(dir, "plan.json");
    const p = await runCli(["quantize", STORIES_VENDORED, path.join(dir, "never"), "--dry-run", "--json", ...FAST]);
    fs.writeFileSync(plan, p.stdout);
    expectOneLineError(await runCli(["report", plan]), 2, plan, /--dry-run plan/);
  });

  it("2: usage errors: unknown --format, --json without -o, --max-increase without --baseline, -o in a missing directory, a bad --baseline file", async () => {
    expectOneLineError(await runCli(["report", uniform, "--format", "pdf"]), 2, /--format: /);
    expectOneLineError(await runCli(["report", uniform, "--json"]), 2, /--json needs -o/);
    expectOneLineError(await runCli(["report", uniform, "--max-increase", "5"]), 2, /--max-increase needs --baseline/);
    expectOneLineError(await runCli(["report", uniform, "-o", path.join(dir, "no/such/dir/r.html")]), 2, /does not exist/);
    expectOneLineError(await runCli(["report", uniform, "--baseline", uniformJson]), 2, uniformJson, /--baseline: not an eval-ppl --json result: result\.ppl/);
    const r = await runCli(["report"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^quant4: error: missing required argument 'inputs'/);
  });

  it("2: an --eval result that matches no input, or was measured on another protocol than --baseline", async () => {
    const other = path.join(dir, "other-protocol.json");
    const e = await runCli(["eval-ppl", STORIES_VENDORED, "--text", "tinystories", "--seqlen", "64", "--max-windows", "4", "--json", "--threads", "1"]);
    const j = JSON.parse(e.stdout);
    fs.writeFileSync(other, JSON.stringify({ ...j, model: uniform }));
    expectOneLineError(await runCli(["report", uniform, "--baseline", baseJson, "--eval", other]), 2, other, /another protocol than --baseline \(seqlen 128 vs 64\)/);
    fs.writeFileSync(other, JSON.stringify({ ...j, model: "/elsewhere" }));
    expectOneLineError(await runCli(["report", uniform, mixed, "--eval", other]), 2, other, /matches no input/);
  });

  it("3: an internal error asks for a report", async () => {
    const r = await runCli(["report", uniform, "--format", "md"], { env: { QUANT4_TEST_INTERNAL_ERROR: "report" } });
    expect(r.code).toBe(3);
    expect(stderrLines(r)).toHaveLength(1);
    expect(r.stderr).toMatch(/^quant4: internal error: test hook: simulated internal error; this is a bug in quant4; please report it/);
  });

  it("--help has examples and the exit codes", async () => {
    const r = await runCli(["report", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Examples:\n {2}quant4 report out\/s260k -o report\.html/);
    expect(r.stdout).toMatch(/Exit codes: 0 written/);
  });
});
