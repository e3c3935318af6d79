// The CI examples (examples/ci/): the plain shell script run end to end on the bundled stories260K
// with the shipped recipe (two formats from one calibration pass; the gate on 8 windows of the
// tinystories text): exit 0 with every artifact (models with manifests, results, HTML and markdown
// report); exit 1 when the gate fails (the report still written, saying fail); exit 2 on a bad recipe;
// exit 3 passed through from an internal error. The GitHub Actions workflow parses and names only
// files that exist.

import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { makeTmpDir, removeTmpDirs, ROOT } from "./helpers.js";

afterAll(removeTmpDirs);

const SCRIPT = path.join(ROOT, "examples/ci/quantize-gate-report.sh");
const RECIPE = path.join(ROOT, "examples/ci/recipe.yaml");
// The current sources through tsx (no build needed), from any directory.
const QUANT4 = `${process.execPath} --import ${pathToFileURL(path.join(ROOT, "node_modules/tsx/dist/loader.mjs")).href} ${path.join(ROOT, "bin/quant4.ts")}`;

interface Run {
  code: number | null;
  stderr: string;
  cwd: string;
  art: string;
}

/** Run the script in a fresh directory holding `models/` (the recipe's paths are relative to it). */
function runScript(env: Record<string, string>, recipe = RECIPE): Promise<Run> {
  const cwd = makeTmpDir("quant4-ci-example-");
  fs.symlinkSync(path.join(ROOT, "models"), path.join(cwd, "models"));
  const art = path.join(cwd, "artifacts");
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [SCRIPT, recipe, art], {
      cwd,
      env: { ...process.env, OPENBLAS_NUM_THREADS: "1", QUANT4, EVAL_TEXT: "tinystories", EVAL_SEQLEN: "128", EVAL_MAX_WINDOWS: "8", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 280_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, cwd, art });
    });
  });
}

describe("examples/ci/quantize-gate-report.sh", () => {
  it("exit 0: quantizes with the recipe, gates, verifies and reports; the artifact holds the models, manifests and report", async () => {
    const r = await runScript({ MAX_INCREASE: "25" });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^ci: ok: every output passed the gate and verify$/m);
    const files = ["quantize.json", "baseline.json", "eval-stories260K-gptq.json", "eval-stories260K-ct.json", "report.html", "report.md"];
    for (const f of files) expect(fs.existsSync(path.join(r.art, f)), f).toBe(true);
    for (const d of ["stories260K-gptq", "stories260K-ct"]) {
      const m = JSON.parse(fs.readFileSync(path.join(r.art, "models", d, "quant4-manifest.json"), "utf8"));
      expect(m.manifestVersion).toBe(1);
      expect(fs.existsSync(path.join(r.art, "models", d, "model.safetensors"))).toBe(true);
    }
    // One calibration pass: the compressed-tensors output was converted from the GPTQ one.
    const q = JSON.parse(fs.readFileSync(path.join(r.art, "quantize.json"), "utf8"));
    expect(q.format).toBe("gptq");
    expect(q.outputs.map((o: { format: string }) => o.format)).toEqual(["compressed-tensors"]);
    expect(r.stderr.match(/^OK: \d+ files in out\/ci\/stories260K-\w+ match quant4-manifest\.json/gm)).toHaveLength(2);
    const md = fs.readFileSync(path.join(r.art, "report.md"), "utf8");
    expect(md).toMatch(/^\| stories260K-gptq \| gptq 4-bit g32 sym \| gptq \| .* \| ✅ pass \|$/m);
    expect(md).toMatch(/^\| stories260K-ct \| gptq 4-bit g32 sym \| compressed-tensors \| .* \| ✅ pass \|$/m);
    expect(md).toMatch(/\*\*Verdict: pass\*\* — all 2 gated configurations passed\./);
    expect(fs.readFileSync(path.join(r.art, "report.html"), "utf8").match(/class="cell heat-cell"/g)).toHaveLength(70);
  }, 300_000);

  it("exit 1: a gate the outputs cannot meet fails the job, and the report is still written, saying why", async () => {
    const r = await runScript({ MAX_INCREASE: "0" });
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/^quant4: gate failed: perplexity \d+\.\d{4} is \d+\.\d\d% above the baseline/m);
    expect(r.stderr).toMatch(/^ci: FAILED: a perplexity gate or verify failed/m);
    const md = fs.readFileSync(path.join(r.art, "report.md"), "utf8");
    expect(md).toMatch(/\*\*Verdict: fail\*\* — stories260K-gptq: perplexity/);
    expect(fs.existsSync(path.join(r.art, "models/stories260K-gptq/quant4-manifest.json"))).toBe(true);
  }, 300_000);

  it("exit 2: a bad recipe stops the job at quantize, naming the key", async () => {
    const dir = makeTmpDir("quant4-ci-recipe-");
    const bad = path.join(dir, "bad.yaml");
    fs.writeFileSync(bad, fs.readFileSync(RECIPE, "utf8").replace("bits: 4", "bits: 5"));
    const r = await runScript({}, bad);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^quant4: error: .*bad\.yaml: .*recipe\.quantize\.bits/m);
    expect(r.stderr).toMatch(/^ci: quantize failed with exit 2$/m);
    expect(fs.existsSync(path.join(r.art, "report.html"))).toBe(false);
  }, 120_000);

  it("exit 3: an internal error in a step is passed through", async () => {
    const r = await runScript({ MAX_INCREASE: "25", QUANT4_TEST_INTERNAL_ERROR: "report" });
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/^quant4: internal error: /m);
    expect(r.stderr).toMatch(/^ci: report failed with exit 3$/m);
  }, 300_000);
});

describe("examples/ci/github-actions.yml", () => {
  it("parses, runs every quant4 step the script does, and names only files that exist", () => {
    const wf = parseYaml(fs.readFileSync(path.join(ROOT, "examples/ci/github-actions.yml"), "utf8")) as {
      on: Record<string, unknown>;
      jobs: Record<string, { env: Record<string, string>; steps: { run?: string; uses?: string }[] }>;
    };
    expect(Object.keys(wf.on)).toContain("pull_request");
    const job = wf.jobs["quantize"]!;
    const runs = job.steps.map((s) => s.run ?? "").join("\n");
    for (const cmd of ["bash scripts/install.sh", "quant4 quantize --recipe", "quant4 eval-ppl", "--max-increase", "quant4 verify", "quant4 report"]) expect(runs).toContain(cmd);
    expect(job.steps.some((s) => s.uses?.startsWith("actions/upload-artifact@"))).toBe(true);
    expect(fs.existsSync(path.join(ROOT, job.env["RECIPE"]!))).toBe(true);
    expect(fs.existsSync(path.join(ROOT, "scripts/install.sh"))).toBe(true);
  });
});
