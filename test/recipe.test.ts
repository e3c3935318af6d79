// Recipes (`quantize --recipe`, `quant4 recipe init`) on the bundled model: errors name the key and the
// file (exit 2, one line); a recipe gives the same plan as the equivalent flags (JSON and YAML alike);
// flags typed on the command line override recipe keys; the starting recipe parses, validates and runs;
// several outputs from one calibration pass dequantize to exactly the same weights, each with a
// manifest that verify accepts, the timing reported; combinations that cannot share a pass are refused.

import fs from "node:fs";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { dequantize } from "../formats/index.js";
import { linearQuantSettings, openModel, unpackLinear } from "../src/model/model.js";
import { MANIFEST_FILE, manifestSchema } from "../src/pipeline/manifest.js";
import { validateRecipe } from "../src/pipeline/recipe.js";
import { makeTmpDir, removeTmpDirs, runCli, stderrLines, STORIES_VENDORED, type CliResult, expectOneLineError } from "./helpers.js";

afterAll(removeTmpDirs);

const MODEL = STORIES_VENDORED;

function writeRecipe(name: string, content: unknown): string {
  const file = path.join(makeTmpDir("quant4-recipe-"), name);
  const text = typeof content === "string" ? content : name.endsWith(".json") ? JSON.stringify(content, null, 2) : jsonToYaml(content);
  fs.writeFileSync(file, text);
  return file;
}

/** YAML is a superset of JSON: a flow-style document is valid YAML. */
const jsonToYaml = (x: unknown): string => `# written by the test\n${JSON.stringify(x)}\n`;


async function dryRun(args: string[]): Promise<Record<string, any>> {
  // A fixed "available memory": the automatic activation budget in the plan would otherwise vary between runs.
  const r = await runCli(["quantize", ...args, "--dry-run", "--json"], { env: { QUANT4_AVAILABLE_MEMORY: "16GiB" } });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

const BASE = {
  model: MODEL,
  out: "/tmp/quant4-recipe-never-written",
  quantize: { method: "gptq", bits: 4, groupSize: -1, sym: false, actOrder: true, format: "compressed-tensors", dynamic: [".*down_proj=bits:8"] },
  calibration: { text: "tinystories", nsamples: 8, seqlen: 64, seed: 3 },
};

describe.concurrent("recipe errors name the key and the file (exit 2, one line)", () => {
  it.each([
    ["bits 5", { quantize: { bits: 5 } }, "recipe.quantize.bits: expected 2, 3, 4 or 8"],
    ["bits as text", { quantize: { bits: "four" } }, "recipe.quantize.bits: expected 2, 3, 4 or 8"],
    ["unknown key", { quantize: { bitz: 4 } }, "recipe.quantize.bitz: unknown key"],
    ["unknown section", { quantise: {} }, "recipe.quantise: unknown key"],
    ["unknown method", { quantize: { method: "magic" } }, "recipe.quantize.method: expected one of rtn, gptq"],
    ["group size 0", { quantize: { groupSize: 0 } }, "recipe.quantize.groupSize: expected -1 (per row) or a positive integer"],
    ["nsamples 0", { calibration: { nsamples: 0 } }, "recipe.calibration.nsamples: expected an integer ≥ 1"],
    ["output without format", { outputs: [{ dir: "x" }] }, "recipe.outputs[0].format: missing (required)"],
    ["unknown output format", { outputs: [{ dir: "x", format: "gguf" }] }, "recipe.outputs[0].format: expected one of gptq, compressed-tensors"],
    ["gate without maxIncrease", { gate: { text: "tinystories" } }, "recipe.gate.maxIncrease: missing (required)"],
    ["out and outputs", { out: "a", outputs: [{ dir: "b", format: "gptq" }] }, "recipe.outputs: give either out (one output) or outputs (a list), not both"],
    ["not a mapping", [1, 2], "recipe: expected a mapping"],
  ])("%s", async (name, content, message) => {
    // Every case through the CLI in YAML; the first also in JSON (the same schema reads both).
    for (const ext of name === "bits 5" ? [".yaml", ".json"] : [".yaml"]) {
      const file = writeRecipe(`r${ext}`, content);
      expectOneLineError(await runCli(["quantize", MODEL, "out-never", "--recipe", file]), `${file}: ${message}`);
    }
  });

  it("unreadable, invalid YAML/JSON, wrong extension", async () => {
    expectOneLineError(await runCli(["quantize", "--recipe", "/nonexistent/r.yaml"]), "--recipe /nonexistent/r.yaml: no such file");
    const bad = writeRecipe("bad.yaml", "quantize: {bits: [4\n");
    expectOneLineError(await runCli(["quantize", "--recipe", bad]), `${bad}: not valid YAML`);
    const badJson = writeRecipe("bad.json", "{");
    expectOneLineError(await runCli(["quantize", "--recipe", badJson]), `${badJson}: not valid JSON`);
    const txt = writeRecipe("r.txt", "{}");
    expectOneLineError(await runCli(["quantize", "--recipe", txt]), "expected a .json, .yaml or .yml file");
  });

  it("no model or out anywhere", async () => {
    const file = writeRecipe("r.yaml", { quantize: { bits: 4 } });
    expectOneLineError(await runCli(["quantize", "--recipe", file]), "missing required argument 'model-dir'", "has no model key");
    expectOneLineError(await runCli(["quantize", MODEL, "--recipe", file]), "missing required argument 'out-dir'", "has neither out nor outputs");
  });
});

describe.concurrent("a recipe resolves into the same options as the flags", () => {
  it("JSON and YAML recipes give the plan the equivalent flags give", async () => {
    const flags = await dryRun([
      MODEL, BASE.out, "--method", "gptq", "--bits", "4", "--group-size", "-1", "--asym", "--act-order", "--format", "compressed-tensors",
      "--dynamic", ".*down_proj=bits:8", "--calib", "tinystories", "--nsamples", "8", "--seqlen", "64", "--seed", "3",
    ]);
    const json = await dryRun(["--recipe", writeRecipe("r.json", BASE)]);
    const yaml = await dryRun(["--recipe", writeRecipe("r.yaml", BASE)]);
    expect(json).toEqual(flags);
    expect(yaml).toEqual(flags);
    expect(flags.settings).toMatchObject({ method: "gptq", bits: 4, groupSize: -1, sym: false, actOrder: true });
    expect(flags.calibration).toMatchObject({ text: "tinystories", nsamples: 8, seqlen: 64, seed: 3 });
  });

  it("flags typed on the command line override recipe keys; the rest stays the recipe's", async () => {
    const file = writeRecipe("r.yaml", BASE);
    const p = await dryRun(["--recipe", file, "--nsamples", "4", "--sym", "--group-size", "32", "--damp", "0.05", "--calib", "c4"]);
    expect(p.calibration).toMatchObject({ text: "c4", nsamples: 4, seqlen: 64, seed: 3 });
    expect(p.settings).toMatchObject({ method: "gptq", sym: true, groupSize: 32, damp: 0.05, actOrder: true });
    expect(p.format).toBe("compressed-tensors");
    // Positional arguments override the recipe's model and out.
    const other = path.join(makeTmpDir("quant4-recipe-out-"), "o");
    const q = await dryRun([MODEL, other, "--recipe", file]);
    expect(q.out).toBe(other);
  });

  it("a recipe-set GPTQ option with --method rtn on the command line is a conflict (the recipe's keys count as given)", async () => {
    const file = writeRecipe("r.yaml", BASE);
    // actOrder: true comes from the recipe.
    expectOneLineError(
      await runCli(["quantize", "--recipe", file, "--method", "rtn", "--dry-run"]),
      "--act-order applies to --method gptq or awq-gptq only",
      `(set by recipe.quantize.actOrder in ${file})`,
    );
    // A value the options check refuses names the recipe key too.
    const long = writeRecipe("long.yaml", { ...BASE, calibration: { ...BASE.calibration, seqlen: 100000 } });
    expectOneLineError(await runCli(["quantize", "--recipe", long, "--dry-run"]), "--seqlen 100000 exceeds the model's context", `(set by recipe.calibration.seqlen in ${long})`);
  });
});

describe("quant4 recipe init", () => {
  it("prints a commented YAML recipe that parses, validates and runs (--dry-run)", async () => {
    const r = await runCli(["recipe", "init"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^# quant4 recipe/);
    const recipe = validateRecipe(parseYaml(r.stdout), "stdout");
    expect(recipe.model).toBe("models/stories260K");
    expect(recipe.quantize?.method).toBe("gptq");
    const file = writeRecipe("init.yaml", r.stdout);
    const p = await dryRun(["--recipe", file]);
    expect(p.settings).toMatchObject({ method: "gptq", bits: 4, sym: true });
  });

  it("--out writes the file, refuses to replace it without --force", async () => {
    const file = path.join(makeTmpDir("quant4-recipe-init-"), "recipe.yaml");
    const a = await runCli(["recipe", "init", "--out", file]);
    expect(a.code, a.stderr).toBe(0);
    expect(a.stdout).toBe("");
    expect(fs.readFileSync(file, "utf8")).toMatch(/^# quant4 recipe/);
    fs.writeFileSync(file, "mine");
    expectOneLineError(await runCli(["recipe", "init", "--out", file]), `--out ${file} exists; pass --force`);
    expect(fs.readFileSync(file, "utf8")).toBe("mine");
    expect((await runCli(["recipe", "init", "--out", file, "--force"])).code).toBe(0);
    expect(fs.readFileSync(file, "utf8")).toMatch(/^# quant4 recipe/);
  });
});

describe("several outputs from one calibration pass", () => {
  it("gptq + compressed-tensors + quant4: one quantize pass, conversions timed, the same dequantized weights, a manifest each that verify accepts", async () => {
    const dir = makeTmpDir("quant4-recipe-multi-");
    const outs = { gptq: path.join(dir, "gptq"), ct: path.join(dir, "ct"), q4: path.join(dir, "q4") };
    const file = writeRecipe("multi.yaml", {
      model: MODEL,
      outputs: [
        { dir: outs.gptq, format: "gptq" },
        { dir: outs.ct, format: "compressed-tensors" },
        { dir: outs.q4, format: "quant4" },
      ],
      quantize: { method: "gptq", groupSize: 32, actOrder: true },
      calibration: { text: "tinystories", nsamples: 4, seqlen: 64 },
    });
    const r = await runCli(["quantize", "--recipe", file, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    // One calibration pass: the quantize time, then a conversion per extra output.
    expect(j.timing.quantizeSeconds).toBeGreaterThan(0);
    expect(j.timing.conversions.map((c: { format: string }) => c.format)).toEqual(["compressed-tensors", "quant4"]);
    expect(j.outputs.map((o: { out: string }) => o.out)).toEqual([outs.ct, outs.q4]);
    expect(fs.readdirSync(dir).sort()).toEqual(["ct", "gptq", "q4"]); // no work dirs left

    // Each output has its own manifest (listing all three), verify passes on each.
    for (const [name, d] of Object.entries(outs)) {
      const m = manifestSchema.parse(JSON.parse(fs.readFileSync(path.join(d, MANIFEST_FILE), "utf8")));
      expect(m.outputs.map((o) => o.dir).sort(), name).toEqual([".", ...Object.values(outs).filter((x) => x !== d).map((x) => path.relative(d, x))].sort());
      expect(m.outputs.find((o) => o.dir === ".")!.producedBy).toBe(name === "gptq" ? "quantized" : "converted");
      expect(m.recipe?.file).toBe(file);
      expect(m.recipe?.content).toMatchObject({ quantize: { groupSize: 32, actOrder: true } });
      expect(m.timing).toEqual(j.timing);
      const v = await runCli(["verify", d]);
      expect(v.code, v.stderr).toBe(0);
    }
    const primary = manifestSchema.parse(JSON.parse(fs.readFileSync(path.join(outs.gptq, MANIFEST_FILE), "utf8")));
    const { outputs: _o, timing: _t, ...summary } = j;
    expect(primary.summary).toEqual(summary);

    // The same weights: every Linear dequantizes to the same numbers; everything else is byte-identical.
    const a = openModel(outs.gptq);
    let packed = 0;
    for (const other of [outs.ct, outs.q4]) {
      const b = openModel(other);
      expect(b.quant!.format.name).toBe(other === outs.ct ? "compressed-tensors" : "quant4");
      for (let i = 0; i < a.arch.nLayers; i++)
        for (const l of a.arch.linears) {
          const name = a.arch.blockPrefix(i) + l.name;
          const sa = linearQuantSettings(a, name);
          const sb = linearQuantSettings(b, name);
          expect(sb === null, name).toBe(sa === null);
          if (sa === null) {
            expect(Buffer.from(b.ckpt.readRaw(`${name}.weight`)).equals(Buffer.from(a.ckpt.readRaw(`${name}.weight`))), name).toBe(true);
            continue;
          }
          packed++;
          const qa = dequantize(unpackLinear(a.ckpt, a.quant!.format, name, sa, { out: l.out, in: l.in }));
          const qb = dequantize(unpackLinear(b.ckpt, b.quant!.format, name, sb!, { out: l.out, in: l.in }));
          expect(Buffer.from(qb.buffer).equals(Buffer.from(qa.buffer)), name).toBe(true);
        }
      for (const n of ["model.embed_tokens.weight", "model.norm.weight"]) expect(Buffer.from(b.ckpt.readRaw(n)).equals(Buffer.from(a.ckpt.readRaw(n))), n).toBe(true);
      b.ckpt.close();
    }
    a.ckpt.close();
    expect(packed).toBe(2 * 20); // gptq g32 holds the 20 attention Linears of stories260K
  });

  it("combinations that cannot share a pass are refused before anything runs", async () => {
    const dir = makeTmpDir("quant4-recipe-refuse-");
    const base = { model: MODEL, quantize: { method: "rtn", groupSize: -1 } };
    // AWQ holds 4-bit asymmetric weights only; this run is symmetric.
    const awq = writeRecipe("awq.yaml", { ...base, outputs: [{ dir: path.join(dir, "a"), format: "compressed-tensors" }, { dir: path.join(dir, "b"), format: "awq" }] });
    expectOneLineError(await runCli(["quantize", "--recipe", awq]), `${awq}: recipe.outputs[1]: awq cannot share the calibration pass of compressed-tensors`);
    // A gate evaluates one output.
    const gated = writeRecipe("gate.yaml", {
      ...base,
      outputs: [{ dir: path.join(dir, "a"), format: "compressed-tensors" }, { dir: path.join(dir, "b"), format: "quant4" }],
      gate: { text: "tinystories", maxIncrease: 5 },
    });
    expectOneLineError(await runCli(["quantize", "--recipe", gated]), "recipe.outputs lists 2 outputs, which share one calibration pass only without the gate");
    // Several outputs: directories and formats come from the recipe only.
    const two = writeRecipe("two.yaml", { ...base, outputs: [{ dir: path.join(dir, "a"), format: "compressed-tensors" }, { dir: path.join(dir, "b"), format: "gptq" }] });
    expectOneLineError(await runCli(["quantize", "--recipe", two, MODEL, path.join(dir, "c")]), "give them in the recipe only");
    expectOneLineError(await runCli(["quantize", "--recipe", two, "--format", "gptq"]), "--format conflicts with");
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});
