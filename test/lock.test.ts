// One writer per output (issue 10 item 5) and what --resume says (issue 11 item 4): the lock in
// `<out>.partial/lock`, its stale and foreign-host cases, the journal's stored settings, and the
// "resuming at block k/n" line.
//
// End to end on the vendored stories260K with cheap settings (4 windows × 64 tokens, one BLAS thread,
// per-row into compressed-tensors so every Linear is quantized). Two test hooks of the CLI widen or
// create the situations: QUANT4_TEST_DELAY_MS (sleep right after the lock is taken, src/pipeline/
// journal.ts) and QUANT4_KILL_AFTER_BLOCK (SIGKILL after block i is journaled, src/cli/quantize.ts).

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Journal, describeSettingsDiff, settingsKeyOf } from "../src/pipeline/journal.js";
import { OutputError, UsageError } from "../src/util/errors.js";
import { makeTmpDir, removeTmpDirs, ROOT, STORIES_VENDORED, stderrLines, type CliResult } from "./helpers.js";

afterAll(removeTmpDirs);

const HOST = os.hostname();
const CHEAP = ["--calib", "tinystories", "--nsamples", "4", "--seqlen", "64", "--threads", "1", "--group-size", "-1", "--asym", "--format", "compressed-tensors"];
const args = (method: "rtn" | "gptq", out: string, extra: string[] = []): string[] => ["quantize", STORIES_VENDORED, out, "--method", method, ...CHEAP, ...extra];

interface Child {
  pid: number;
  done: Promise<CliResult>;
}

/** Start the CLI (node --import tsx bin/quant4.ts: the pid is the quant4 process's own). */
function start(argv: string[], env: Record<string, string> = {}): Child {
  const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "bin/quant4.ts"), ...argv], {
    cwd: ROOT,
    env: { ...process.env, OPENBLAS_NUM_THREADS: "1", NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 110_000);
  const done = new Promise<CliResult>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
  return { pid: child.pid!, done };
}
const run = (argv: string[], env: Record<string, string> = {}): Promise<CliResult> => start(argv, env).done;

/** Exit 2, exactly one stderr line "quant4: error: ...", no stack. Returns the message after the prefix. */
function oneLineError(r: CliResult): string {
  expect(r.code, r.stderr).toBe(2);
  const lines = stderrLines(r);
  expect(lines, r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at |internal error/);
  expect(lines[0]).toMatch(/^quant4: error: /);
  return lines[0]!.slice("quant4: error: ".length);
}

function readLock(out: string): { pid: number; host: string; started: string } | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(out + ".partial", "lock"), "utf8"));
  } catch {
    return null;
  }
}

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Same file names, byte-identical contents; the manifests (which record times and dates) list the same
 * files with the same hashes.
 */
function expectSameTree(a: string, b: string): void {
  const names = fs.readdirSync(a).sort();
  expect(names).toEqual(fs.readdirSync(b).sort());
  for (const f of names) {
    if (f === "quant4-manifest.json") {
      const files = (d: string) => JSON.parse(fs.readFileSync(path.join(d, f), "utf8")).outputs;
      expect(files(a)).toEqual(files(b));
    } else expect(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), f).toBe(true);
  }
}

/** Clean, uninterrupted runs of a configuration, one per key (the reference outputs). */
const clean = new Map<string, Promise<string>>();
function cleanRun(method: "rtn" | "gptq"): Promise<string> {
  if (!clean.has(method))
    clean.set(
      method,
      (async () => {
        const out = path.join(makeTmpDir("quant4-lock-ref-"), "out");
        const r = await run(args(method, out));
        expect(r.code, r.stderr).toBe(0);
        return out;
      })(),
    );
  return clean.get(method)!;
}

describe("two runs on one output", () => {
  it("started together (rtn and gptq): exactly one succeeds, the other is refused naming its pid; the output is entirely the winner's", async () => {
    const out = path.join(makeTmpDir("quant4-race-"), "out");
    // Each run sleeps 3 s right after taking the lock, so the other meets it held.
    const env = { QUANT4_TEST_DELAY_MS: "3000" };
    const runs = { rtn: start(args("rtn", out), env), gptq: start(args("gptq", out), env) };
    const results = { rtn: await runs.rtn.done, gptq: await runs.gptq.done };
    const ok = (["rtn", "gptq"] as const).filter((m) => results[m].code === 0);
    expect(ok, `${results.rtn.stderr}\n${results.gptq.stderr}`).toHaveLength(1);
    const winner = ok[0]!;
    const loser = winner === "rtn" ? "gptq" : "rtn";
    expect(oneLineError(results[loser])).toBe(`another quant4 run (pid ${runs[winner].pid} on ${HOST}) is writing ${out}`);
    expect(fs.existsSync(out + ".partial")).toBe(false);
    // Byte-identical to a clean run of the winner's settings, and the two methods' outputs do differ.
    expectSameTree(out, await cleanRun(winner));
    const tensors = (d: string) => fs.readFileSync(path.join(d, "model.safetensors"));
    expect(tensors(out).equals(tensors(await cleanRun(loser)))).toBe(false);
  });

  it("a live run refuses a second one (with or without --resume), then finishes undisturbed", async () => {
    const out = path.join(makeTmpDir("quant4-live-"), "out");
    const first = start(args("rtn", out), { QUANT4_TEST_DELAY_MS: "2000" });
    await until(() => readLock(out) !== null, "the first run's lock");
    expect(readLock(out)).toMatchObject({ pid: first.pid, host: HOST });
    // Keep the first run holding the lock while the second ones start (seconds of tsx startup).
    process.kill(first.pid, "SIGSTOP");
    let second: CliResult;
    let resumed: CliResult;
    try {
      [second, resumed] = await Promise.all([run(args("gptq", out)), run(args("rtn", out, ["--resume"]))]);
    } finally {
      process.kill(first.pid, "SIGCONT");
    }
    const msg = `another quant4 run (pid ${first.pid} on ${HOST}) is writing ${out}`;
    expect(oneLineError(second)).toBe(msg);
    expect(oneLineError(resumed)).toBe(msg);
    const r = await first.done;
    expect(r.code, r.stderr).toBe(0);
    expect(fs.existsSync(out + ".partial")).toBe(false);
    expectSameTree(out, await cleanRun("rtn"));
  });
});

describe("a SIGKILLed run leaves a stale lock", () => {
  it("a plain rerun reports it; --resume with other settings names each one; --resume takes it over and finishes byte-identical", async () => {
    const out = path.join(makeTmpDir("quant4-stale-"), "out");
    const work = out + ".partial";
    const killed = await run(args("gptq", out), { QUANT4_KILL_AFTER_BLOCK: "2" });
    expect(killed.code, killed.stderr).toBeNull(); // died from SIGKILL
    const stale = readLock(out)!;
    expect(stale.host).toBe(HOST);
    expect(alive(stale.pid)).toBe(false);
    const lockBytes = fs.readFileSync(path.join(work, "lock"));
    const journalBytes = fs.readFileSync(path.join(work, "journal.json"));
    const journal = JSON.parse(journalBytes.toString("utf8"));
    expect(journal.finishedBlocks).toBe(3);
    expect(journal.settings).toMatchObject({ method: "gptq", bits: 4, groupSize: -1, sym: false, nsamples: 4, seqlen: 64, seed: 0, threads: 1, format: "compressed-tensors" });
    expect(journal.settingsKey).toBe(settingsKeyOf(journal.settings));

    const [plain, bits, seed, two] = await Promise.all([
      run(args("gptq", out)),
      run(args("gptq", out, ["--resume", "--bits", "8"])),
      run(args("gptq", out, ["--resume", "--seed", "1"])),
      run(args("rtn", out, ["--resume", "--nsamples", "5"])),
    ]);
    expect(oneLineError(plain)).toBe(`a previous run (pid ${stale.pid}) was interrupted; rerun with --resume to continue it, or delete ${work} to discard the interrupted run`);
    const j = path.join(work, "journal.json");
    const refusal = (diffs: string) => `${j}: the interrupted run used different settings (${diffs}); rerun with the same options, or delete ${work} to start over`;
    expect(oneLineError(bits)).toBe(refusal("--bits: interrupted run used 4, this run 8"));
    // Another seed samples other windows; the refusal names the seed, not its consequence.
    expect(oneLineError(seed)).toBe(refusal("--seed: interrupted run used 0, this run 1"));
    expect(oneLineError(two)).toBe(refusal("--method: interrupted run used gptq, this run rtn; --nsamples: interrupted run used 4, this run 5"));
    // Refusals touch nothing.
    expect(fs.readFileSync(path.join(work, "lock")).equals(lockBytes)).toBe(true);
    expect(fs.readFileSync(j).equals(journalBytes)).toBe(true);
    expect(fs.existsSync(out)).toBe(false);

    // --resume takes the lock over (its own pid in it) and continues at block 3 of 5.
    const resumer = start(args("gptq", out, ["--resume"]), { QUANT4_TEST_DELAY_MS: "1500" });
    // Taking over replaces the lock file, so it can be absent for a moment: wait for the new one.
    await until(() => {
      const l = readLock(out);
      return l !== null && l.pid !== stale.pid;
    }, "the lock to be taken over");
    expect(readLock(out)).toMatchObject({ pid: resumer.pid, host: HOST });
    const resumed = await resumer.done;
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stderr).toContain("quant4: resuming at block 3/5 (blocks before it are reused from the interrupted run)\n");
    expect(resumed.stdout).toMatch(/resumed at block 3/);
    expect(fs.existsSync(work)).toBe(false);
    expectSameTree(out, await cleanRun("gptq"));
  });

  it("--json reports resumedFromBlock and keeps stderr free of the resume line", async () => {
    const out = path.join(makeTmpDir("quant4-stale-json-"), "out");
    const killed = await run(args("rtn", out), { QUANT4_KILL_AFTER_BLOCK: "0" });
    expect(killed.code).toBeNull();
    const r = await run(args("rtn", out, ["--resume", "--json"]));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).report.resumedFromBlock).toBe(1);
    expect(r.stderr).not.toMatch(/resuming/);
    expectSameTree(out, await cleanRun("rtn"));
  });
});

describe("Journal (unit): lock ownership", () => {
  const settings = { method: "rtn", bits: 4, groupSize: -1, sym: false, seed: 0 };
  const key = settingsKeyOf(settings);
  const lockOf = (out: string) => JSON.parse(fs.readFileSync(path.join(Journal.workDirFor(out), "lock"), "utf8"));
  const writeLock = (out: string, lock: object) => fs.writeFileSync(path.join(Journal.workDirFor(out), "lock"), JSON.stringify(lock));
  const deadPid = (): number => {
    const p = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
    return Number(p.stdout);
  };
  const usage = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(UsageError);
      return (e as Error).message;
    }
    throw new Error("did not throw");
  };

  it("a fresh open takes the lock; a lock that names someone else stops the journal before it writes", () => {
    const out = path.join(makeTmpDir("quant4-journal-"), "out");
    const j = Journal.open(out, key, false, settings);
    expect(lockOf(out)).toMatchObject({ pid: process.pid, host: HOST });
    expect(JSON.parse(fs.readFileSync(j.file, "utf8"))).toMatchObject({ version: 3, settingsKey: key, settings, finishedBlocks: 0 });
    expect(fs.readdirSync(path.dirname(j.workDir))).toEqual(["out.partial"]); // no temp dir left
    // Another run (here: our parent, alive) holds it now: no journal update, no output.
    writeLock(out, { pid: process.ppid, host: HOST, started: new Date().toISOString() });
    const before = fs.readFileSync(j.file);
    expect(() => j.finishBlock(0, [], 1)).toThrow(OutputError);
    expect(() => j.assertLocked()).toThrow(/lost its lock to another quant4 run \(pid \d+ on /);
    expect(fs.readFileSync(j.file).equals(before)).toBe(true);
    // release() removes only its own lock.
    j.release();
    expect(lockOf(out).pid).toBe(process.ppid);
    expect(usage(() => Journal.open(out, key, true, settings))).toBe(`another quant4 run (pid ${process.ppid} on ${HOST}) is writing ${out}`);
  });

  it("a stale lock: reported without --resume, taken over with it; an error-released run says 'interrupted run exists'", () => {
    const out = path.join(makeTmpDir("quant4-journal-"), "out");
    const j = Journal.open(out, key, false, settings);
    const dead = deadPid();
    writeLock(out, { pid: dead, host: HOST, started: "2020-01-01T00:00:00.000Z" });
    expect(usage(() => Journal.open(out, key, false, settings))).toBe(
      `a previous run (pid ${dead}) was interrupted; rerun with --resume to continue it, or delete ${j.workDir} to discard the interrupted run`,
    );
    expect(usage(() => Journal.open(out, settingsKeyOf({ ...settings, bits: 3 }), true, { ...settings, bits: 3 }))).toMatch(
      /different settings \(--bits: interrupted run used 4, this run 3\)/,
    );
    expect(lockOf(out).pid).toBe(dead); // a refused --resume leaves the stale lock alone
    const k = Journal.open(out, key, true, settings);
    expect(k.resumed).toBe(true);
    expect(lockOf(out)).toMatchObject({ pid: process.pid, host: HOST });
    expect(fs.readdirSync(k.workDir).sort()).toEqual(["journal.json", "lock"]);
    k.release();
    expect(fs.existsSync(k.lockFile)).toBe(false);
    expect(usage(() => Journal.open(out, key, false, settings))).toBe(
      `an interrupted run exists at ${k.workDir}; rerun with --resume to continue it, or delete that directory to start over`,
    );
    Journal.open(out, key, true, settings).remove();
    expect(fs.existsSync(k.workDir)).toBe(false);
  });

  it("a lock from another host is never taken over", () => {
    const out = path.join(makeTmpDir("quant4-journal-"), "out");
    const j = Journal.open(out, key, false, settings);
    writeLock(out, { pid: 4242, host: "build-7.example", started: "2024-05-01T10:00:00.000Z" });
    for (const resume of [false, true])
      expect(usage(() => Journal.open(out, key, resume, settings))).toBe(
        `${out} is locked by a quant4 run on another host (pid 4242 on build-7.example, started 2024-05-01T10:00:00.000Z), ` +
          `which cannot be checked from ${HOST}; if that run is no longer running, delete ${j.lockFile} and rerun with --resume`,
      );
  });

  it("describeSettingsDiff names each differing setting by its option, derived ones only when nothing else differs", () => {
    const a = { method: "gptq", sym: true, actOrder: false, calibWindows: "aa", threads: 2 };
    expect(describeSettingsDiff(a, { ...a, sym: false, actOrder: true, calibWindows: "bb" })).toEqual([
      "--sym/--asym: interrupted run used sym, this run asym",
      "--act-order: interrupted run used off, this run on",
    ]);
    expect(describeSettingsDiff(a, { ...a, calibWindows: "bb" })).toEqual(["calibration token windows (tokenizer): interrupted run used aa, this run bb"]);
    expect(describeSettingsDiff(a, { ...a, threads: 1 })).toEqual(["--threads: interrupted run used 2, this run 1"]);
  });
});
