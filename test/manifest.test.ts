// quant4-manifest.json and `quant4 verify` on the bundled model: the manifest is in every output (the
// plain pipeline, --target-bits and the gate), validates against its exported schema, its `summary` is
// exactly what `quantize --json` printed, every hash and size matches the files (recomputed here), the
// source files are hashed; verify passes on a fresh output and fails (exit 1, naming the file) after one
// byte changes, after a truncation and after a deletion; no/invalid manifest is exit 2, one line.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { resolveText } from "../src/calibration/texts.js";
import { MANIFEST_FILE, manifestSchema, type Manifest } from "../src/pipeline/manifest.js";
import { makeTmpDir, removeTmpDirs, ROOT, runCli, stderrLines, STORIES_VENDORED, type CliResult, expectOneLineError } from "./helpers.js";

afterAll(removeTmpDirs);

const MODEL = STORIES_VENDORED;
const sha256 = (file: string): string => crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex");

function readManifestFile(dir: string): Manifest {
  return manifestSchema.parse(JSON.parse(fs.readFileSync(path.join(dir, MANIFEST_FILE), "utf8")));
}

/** Every file of `dir` but the manifest: its listing must be exactly these, with matching sizes and hashes. */
function expectHashesMatch(dir: string, m: Manifest): void {
  const own = m.outputs.find((o) => o.dir === ".")!;
  expect(own).toBeDefined();
  const names = fs.readdirSync(dir).filter((f) => f !== MANIFEST_FILE).sort();
  expect(own.files.map((f) => f.name)).toEqual(names);
  for (const f of own.files) {
    const p = path.join(dir, f.name);
    expect(f.bytes, f.name).toBe(fs.statSync(p).size);
    expect(f.sha256, f.name).toBe(sha256(p));
  }
}


/** A fresh copy of a finished output (each verify failure test damages its own). */
function copyOut(src: string): string {
  const dst = path.join(makeTmpDir("quant4-verify-"), "out");
  fs.cpSync(src, dst, { recursive: true });
  return dst;
}

let rtnOut: Promise<{ out: string; json: Record<string, unknown> }> | null = null;
/** RTN per-row asym (no calibration: fast), with --json. Shared by the verify tests. */
function rtnOutput(): Promise<{ out: string; json: Record<string, unknown> }> {
  rtnOut ??= (async () => {
    const out = path.join(makeTmpDir("quant4-manifest-"), "out");
    const r = await runCli(["quantize", MODEL, out, "--method", "rtn", "--scheme", "w4-perrow-asym", "--format", "compressed-tensors", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    return { out, json: JSON.parse(r.stdout) };
  })();
  return rtnOut;
}

describe("quant4-manifest.json", () => {
  it("RTN: in the output, valid, summary = the --json object, hashes and sizes match every file, source hashed", async () => {
    const { out, json } = await rtnOutput();
    const m = readManifestFile(out);
    expect(m.manifestVersion).toBe(1);
    expect(m.quant4Version).toBe(JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")).version);
    expect(Number.isNaN(Date.parse(m.createdAt))).toBe(false);
    expect(m.summary).toEqual(json);
    expect((json["report"] as { files: string[] }).files).toContain(MANIFEST_FILE);
    expectHashesMatch(out, m);
    expect(m.outputs).toHaveLength(1);
    expect(m.outputs[0]).toMatchObject({ dir: ".", format: "compressed-tensors", producedBy: "quantized" });
    // The source: the weights and config.json, hashed.
    expect(m.source.model).toBe(MODEL);
    expect(m.source.hubId).toBeNull();
    expect(m.source.files.map((f) => f.name)).toEqual(["config.json", "model.safetensors"]);
    for (const f of m.source.files) expect(f.sha256).toBe(sha256(path.join(MODEL, f.name)));
    // The resolved options; RTN without --calib has no calibration.
    expect(m.options).toMatchObject({ method: "rtn", scheme: "w4-perrow-asym", format: "compressed-tensors" });
    expect(m.calibration).toBeNull();
    expect(m.recipe).toBeNull();
    expect(m.gate).toBeNull();
    expect(m.timing!.conversions).toEqual([]);
    // Per-layer results travel in the summary.
    const layers = (m.summary["report"] as { layers: { name: string; bits: number }[] }).layers;
    expect(layers).toHaveLength(35);
    expect(layers[0]!.bits).toBe(4);
  });

  it("GPTQ with calibration: the calibration text's hash and token count; no leftovers", async () => {
    const parent = makeTmpDir("quant4-manifest-gptq-");
    const out = path.join(parent, "out");
    const r = await runCli(["quantize", MODEL, out, "--calib", "tinystories", "--nsamples", "4", "--seqlen", "64", "--scheme", "w4-perrow", "--format", "compressed-tensors", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const m = readManifestFile(out);
    expect(m.summary).toEqual(JSON.parse(r.stdout));
    const textSha = crypto.createHash("sha256").update(resolveText("tinystories").text, "utf8").digest("hex");
    expect(m.calibration).toMatchObject({ text: "tinystories", sha256: textSha, nsamples: 4, seqlen: 64, seed: 0 });
    expect(m.calibration!.tokens).toBeGreaterThan(1000);
    expectHashesMatch(out, m);
    expect(fs.readdirSync(parent)).toEqual(["out"]);
  });

  it("--target-bits and the gate write the manifest too (gate: verdict and protocol)", async () => {
    const dir = makeTmpDir("quant4-manifest-gate-");
    const out = path.join(dir, "out");
    const r = await runCli([
      "quantize", MODEL, out, "--method", "rtn", "--scheme", "w4-perrow-asym", "--format", "compressed-tensors", "--calib", "tinystories", "--nsamples", "4", "--seqlen", "64",
      "--gate-text", "tinystories", "--gate-seqlen", "64", "--gate-max-windows", "4", "--gate-max-increase", "50", "--json",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const m = readManifestFile(out);
    expect(m.summary).toEqual(JSON.parse(r.stdout));
    expect(m.gate).toMatchObject({ passed: true, text: "tinystories", protocol: { seqlen: 64, windows: 4 } });
    expect(m.gate!.fpPpl).toBeGreaterThan(1);
    expectHashesMatch(out, m);
    expect((await runCli(["verify", out])).code).toBe(0);

    const out2 = path.join(dir, "out2");
    const t = await runCli(["quantize", MODEL, out2, "--method", "rtn", "--scheme", "w4-perrow-asym", "--format", "compressed-tensors", "--calib", "tinystories", "--nsamples", "4", "--seqlen", "64", "--target-bits", "4.5", "--json"]);
    expect(t.code, t.stderr).toBe(0);
    const m2 = readManifestFile(out2);
    expect(m2.summary).toEqual(JSON.parse(t.stdout));
    expect(m2.summary["targetBits"]).toMatchObject({ target: 4.5 });
    expectHashesMatch(out2, m2);
  });
});

describe("quant4 verify", () => {
  it("a fresh output: exit 0, one OK line; --json per-file results", async () => {
    const { out } = await rtnOutput();
    const r = await runCli(["verify", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^OK: 3 files in .* match quant4-manifest\.json \(compressed-tensors, quant4 /);
    expect(r.stdout.trim().split("\n")).toHaveLength(1);
    const j = await runCli(["verify", out, "--json"]);
    expect(j.code, j.stderr).toBe(0);
    expect(j.stderr).toBe("");
    const res = JSON.parse(j.stdout);
    expect(res.ok).toBe(true);
    expect(res.files.map((f: { name: string; status: string }) => [f.name, f.status])).toEqual([
      ["config.json", "ok"],
      ["model.safetensors", "ok"],
      ["tokenizer.model", "ok"],
    ]);
  });

  it("one byte changed: exit 1, the file named (hash mismatch); --json says which", async () => {
    const out = copyOut((await rtnOutput()).out);
    const f = path.join(out, "model.safetensors");
    const buf = fs.readFileSync(f);
    buf[buf.length - 7] ^= 0x01;
    fs.writeFileSync(f, buf);
    const r = await runCli(["verify", out]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(`${f}: hash mismatch`);
    expect(r.stderr).toMatch(/verify failed: 1 of 3 files .* model\.safetensors \(hash mismatch\)/);
    const j = await runCli(["verify", out, "--json"]);
    expect(j.code).toBe(1);
    const res = JSON.parse(j.stdout);
    expect(res.ok).toBe(false);
    expect(res.files.filter((x: { status: string }) => x.status !== "ok").map((x: { name: string; status: string }) => [x.name, x.status])).toEqual([["model.safetensors", "hash"]]);
  });

  it("a file deleted or truncated: exit 1, each named", async () => {
    const out = copyOut((await rtnOutput()).out);
    fs.rmSync(path.join(out, "tokenizer.model"));
    fs.truncateSync(path.join(out, "config.json"), 10);
    const r = await runCli(["verify", out]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`${path.join(out, "tokenizer.model")}: missing`);
    expect(r.stderr).toContain(`${path.join(out, "config.json")}: size mismatch: 10 bytes`);
    expect(r.stderr).toMatch(/verify failed: 2 of 3 files/);
  });

  it("a file the manifest does not list is reported, not a failure", async () => {
    const out = copyOut((await rtnOutput()).out);
    fs.writeFileSync(path.join(out, "report.html"), "<html></html>");
    const r = await runCli(["verify", out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("not in the manifest (not checked): report.html");
  });

  it("no manifest, invalid JSON, not a manifest, no such directory: exit 2, one error line naming the file", async () => {
    expectOneLineError(await runCli(["verify", MODEL]), path.join(MODEL, MANIFEST_FILE), "no manifest");
    const out = copyOut((await rtnOutput()).out);
    const mf = path.join(out, MANIFEST_FILE);
    fs.writeFileSync(mf, '{"manifestVersion": 1,');
    expectOneLineError(await runCli(["verify", out]), mf, "not valid JSON");
    const m = JSON.parse(fs.readFileSync(path.join((await rtnOutput()).out, MANIFEST_FILE), "utf8"));
    m.outputs[0].files[1].sha256 = "xyz";
    fs.writeFileSync(mf, JSON.stringify(m));
    expectOneLineError(await runCli(["verify", out]), mf, "manifest.outputs.0.files.1.sha256");
    expectOneLineError(await runCli(["verify", path.join(out, "nope")]), "no such directory");
  });
});
