// The activation memory budget: derived from free memory and cgroup limits (pure functions), the default
// spill it chooses (forced with QUANT4_AVAILABLE_MEMORY), what the CLI says about it, byte-identical
// output spilled or not, and one-line errors when spilling cannot work.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { availableMemory, BUDGET_FRACTION, blockWorkingSetBytes, defaultActivationBudget, readCgroupMemory } from "../src/pipeline/memory.js";
import { ActivationStore, checkSpillSpace, spillsActivations } from "../src/pipeline/activations.js";
import { resolveMaxMemory } from "../src/cli/quantize.js";
import { OutputError } from "../src/util/errors.js";
import { makeTmpDir, removeTmpDirs, runCli, STORIES_VENDORED } from "./helpers.js";

afterAll(removeTmpDirs);

const GiB = 2 ** 30;

describe("budget derivation", () => {
  it("outside a cgroup: the fraction of free memory less the working set", () => {
    const f = { freeBytes: 16 * GiB, totalBytes: 32 * GiB, cgroup: null };
    expect(availableMemory(f).bytes).toBe(16 * GiB);
    const b = defaultActivationBudget(f, 3 * GiB);
    expect(b.bytes).toBe(Math.floor(BUDGET_FRACTION * 16 * GiB - 3 * GiB));
    expect(b.why).toContain("free memory");
  });

  it("a cgroup limit lower than free memory wins (less what the cgroup already uses)", () => {
    const f = { freeBytes: 60 * GiB, totalBytes: 64 * GiB, cgroup: { limit: 8 * GiB, usage: 1 * GiB } };
    const a = availableMemory(f);
    expect(a.bytes).toBe(7 * GiB);
    expect(a.source).toContain("cgroup limit 8.00 GiB");
    expect(defaultActivationBudget(f, 2 * GiB).bytes).toBe(Math.floor(BUDGET_FRACTION * 7 * GiB - 2 * GiB));
  });

  it('"max" (v2) and v1\'s huge "unlimited" number are no limit; a limit above free memory changes nothing', () => {
    for (const limit of ["max", 9223372036854771712, 100 * GiB] as const) {
      const a = availableMemory({ freeBytes: 10 * GiB, totalBytes: 16 * GiB, cgroup: { limit, usage: 2 * GiB } });
      expect(a.bytes, String(limit)).toBe(10 * GiB);
    }
  });

  it("never negative: a working set beyond the available memory leaves a budget of 0 (everything spills)", () => {
    expect(defaultActivationBudget({ freeBytes: GiB, totalBytes: GiB, cgroup: null }, 4 * GiB).bytes).toBe(0);
    expect(defaultActivationBudget({ freeBytes: 8 * GiB, totalBytes: 8 * GiB, cgroup: { limit: GiB, usage: 2 * GiB } }, 0).bytes).toBe(0);
  });

  it("reads cgroup v2 (memory.max, memory.current less inactive_file) and v1 files", () => {
    const v2 = makeTmpDir("quant4-cg2-");
    fs.writeFileSync(path.join(v2, "memory.max"), "4294967296\n");
    fs.writeFileSync(path.join(v2, "memory.current"), String(3 * GiB));
    fs.writeFileSync(path.join(v2, "memory.stat"), `anon 100\ninactive_file ${GiB}\nactive_file 5\n`);
    expect(readCgroupMemory(v2)).toEqual({ limit: 4 * GiB, usage: 2 * GiB });
    fs.writeFileSync(path.join(v2, "memory.max"), "max\n");
    expect(readCgroupMemory(v2)?.limit).toBe("max");
    const v1 = makeTmpDir("quant4-cg1-");
    fs.mkdirSync(path.join(v1, "memory"));
    fs.writeFileSync(path.join(v1, "memory/memory.limit_in_bytes"), "9223372036854771712\n");
    fs.writeFileSync(path.join(v1, "memory/memory.usage_in_bytes"), "1000\n");
    expect(readCgroupMemory(v1)).toEqual({ limit: 9223372036854771712, usage: 1000 });
    expect(readCgroupMemory(makeTmpDir("quant4-cg0-"))).toBeNull();
  });

  it("--max-memory: a size, none/inf (in memory), auto or absent (derived)", () => {
    const facts = () => ({ freeBytes: 8 * GiB, totalBytes: 16 * GiB, cgroup: null });
    expect(resolveMaxMemory("2GB", 0, facts).bytes).toBe(2e9);
    expect(resolveMaxMemory("none", 0, facts).bytes).toBeNull();
    expect(resolveMaxMemory("inf", 0, facts).bytes).toBeNull();
    expect(resolveMaxMemory("0", 0, facts).bytes).toBe(0);
    expect(resolveMaxMemory(undefined, GiB, facts).bytes).toBe(Math.floor(BUDGET_FRACTION * 8 * GiB - GiB));
    expect(resolveMaxMemory("auto", GiB, facts)).toEqual(resolveMaxMemory(undefined, GiB, facts));
  });

  it("the working set at Llama-2-7B shapes is dominated by the block's weights and the 11008² Hessians", () => {
    const l = (name: string, out: number, inF: number) => ({ name, out, in: inF, bias: false });
    const arch = {
      hidden: 4096, intermediate: 11008,
      linears: [l("q", 4096, 4096), l("k", 4096, 4096), l("v", 4096, 4096), l("o", 4096, 4096), l("g", 11008, 4096), l("u", 11008, 4096), l("d", 4096, 11008)],
    };
    const ws = blockWorkingSetBytes(arch, 2048, false);
    expect(ws).toBeGreaterThan(2 * GiB);
    expect(ws).toBeLessThan(3.5 * GiB);
    expect(blockWorkingSetBytes(arch, 2048, true) - ws).toBe(4 * (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096));
  });

  it("both stores spill when together they exceed the budget", () => {
    const bytes = ActivationStore.bytesFor(4, 8, 16, "fp32");
    expect(bytes).toBe(4 * 8 * 16 * 4);
    const p = { nsamples: 4, seqlen: 8, actDtype: "fp32" as const };
    expect(spillsActivations({ ...p, maxMemoryBytes: null }, 16)).toBe(false);
    expect(spillsActivations({ ...p, maxMemoryBytes: 2 * bytes }, 16)).toBe(false);
    expect(spillsActivations({ ...p, maxMemoryBytes: 2 * bytes - 1 }, 16)).toBe(true);
    expect(spillsActivations({ ...p, actDtype: "fp16", maxMemoryBytes: bytes }, 16)).toBe(false);
  });
});

describe("spill errors", () => {
  it("a spill file that cannot be created is one OutputError line naming the file", () => {
    const f = path.join(makeTmpDir("quant4-spill-"), "file");
    fs.writeFileSync(f, "x");
    const target = path.join(f, "activations-a.bin"); // under a regular file: ENOTDIR, even as root
    let err: unknown;
    try {
      new ActivationStore(2, 4, 8, "fp32", target);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OutputError);
    expect((err as Error).message).toContain(target);
    expect((err as Error).message).toContain("cannot create the activation spill file");
    expect((err as Error).message).not.toContain("\n");
  });

  it("a file system without room for the spill is refused up front, in one line", () => {
    const statfs = () => ({ bavail: 10, bsize: 4096 });
    expect(() => checkSpillSpace("/work/x.partial", 1e6, statfs)).toThrow(OutputError);
    expect(() => checkSpillSpace("/work/x.partial", 1e6, statfs)).toThrow(/^\/work\/x\.partial: spilling the calibration activations needs [^\n]*--act-dtype fp16/);
    expect(() => checkSpillSpace("/work/x.partial", 40960, statfs)).not.toThrow();
  });
});

describe("default spill through the CLI (models/stories260K)", () => {
  const args = (out: string, extra: string[] = []) => ["quantize", STORIES_VENDORED, out, "--group-size", "32", "--nsamples", "8", "--seqlen", "64", "--threads", "1", ...extra];
  const files = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();

  it("with little memory available the activations spill by default, said on stderr; the output is byte-identical to in-memory", async () => {
    const dir = makeTmpDir("quant4-spill-cli-");
    const spilled = path.join(dir, "spilled");
    const inMem = path.join(dir, "in-memory");
    const [a, b] = await Promise.all([
      runCli(args(spilled), { env: { QUANT4_AVAILABLE_MEMORY: "1MB" } }),
      runCli(args(inMem, ["--max-memory", "none"]), { env: { QUANT4_AVAILABLE_MEMORY: "1MB" } }),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    const line = a.stderr.split("\n").find((l) => l.includes("calibration activations"));
    expect(line, a.stderr).toBeDefined();
    expect(line).toContain("exceed the memory budget of 0 B (automatic: 75% of 976.6 KiB available");
    expect(line).toContain(`spilling them to ${spilled}.partial/activations-{a,b}.bin`);
    expect(line).not.toContain("--act-dtype fp16 would"); // nothing fits in 0 B
    expect(b.stderr).not.toContain("calibration activations");
    expect(files(spilled)).toEqual(files(inMem));
    for (const f of files(spilled)) expect(fs.readFileSync(path.join(spilled, f)).equals(fs.readFileSync(path.join(inMem, f))), f).toBe(true);
    expect(fs.existsSync(spilled + ".partial")).toBe(false);
  }, 120_000);

  it("--act-dtype fp16: spilled (--max-memory 0) and in memory give byte-identical output too", async () => {
    const dir = makeTmpDir("quant4-spill-fp16-");
    const [a, b] = await Promise.all([
      runCli(args(path.join(dir, "s"), ["--act-dtype", "fp16", "--max-memory", "0"])),
      runCli(args(path.join(dir, "m"), ["--act-dtype", "fp16", "--max-memory", "none"])),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    expect(a.stderr).toContain("(--max-memory 0: always spill)");
    for (const f of files(path.join(dir, "m"))) expect(fs.readFileSync(path.join(dir, "s", f)).equals(fs.readFileSync(path.join(dir, "m", f))), f).toBe(true);
  }, 120_000);

  it("--json: stdout stays one JSON document, the spill is said on stderr; --dry-run shows the budget", async () => {
    const dir = makeTmpDir("quant4-spill-json-");
    const r = await runCli(args(path.join(dir, "o"), ["--json", "--max-memory", "200KB"]));
    expect(r.code, r.stderr).toBe(0);
    expect(() => JSON.parse(r.stdout)).not.toThrow();
    expect(r.stdout).not.toContain("spilling");
    expect(r.stderr).toMatch(/calibration activations \(2 × 128\.0 KiB fp32, 8 × 64 tokens\) exceed the memory budget of 195\.3 KiB \(--max-memory\)/);
    expect(r.stderr).toContain("--act-dtype fp16 would keep them in memory (2 × 64.0 KiB)");
    const d = await runCli(args(path.join(dir, "d"), ["--dry-run", "--max-memory", "200KB"]));
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toContain("(spilled to disk: over the budget of 195.3 KiB)");
    expect(d.stdout).toMatch(/budget +195\.3 KiB: --max-memory/);
  }, 120_000);
});
