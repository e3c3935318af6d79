// The resume journal of an interrupted `quantize`: a work directory `<out>.partial/` holding
//   lock                      {pid, host, started} of the one run writing <out> (see "Locking" below)
//   journal.json              the run's settings (and their hash) and the finished blocks, rewritten
//                             atomically after each block
//   block-NNNNN.safetensors   one file per finished block
// A resumed run with the same settings continues at the first unfinished block; with different
// settings it refuses, naming each setting that differs.
//
// Locking (one writer per output): the work directory is published atomically with its lock inside
// (built under a temp name, then renamed into place: a rename onto an existing non-empty directory
// fails), so of two runs started together exactly one gets it. The lock is held for the whole run: it
// goes with the work directory when the output is in place, and is removed (the work directory kept for
// --resume) when the run fails with an error. A lock whose process is gone (killed, crashed, power
// loss) is stale: a plain rerun reports it, `--resume` takes it over. A lock from another host cannot
// be checked and is never taken over. The holder re-reads the lock before each journal update and
// before moving the output into place, so a run that lost its lock stops instead of mixing outputs.

import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { atomicWriteFile } from "../io/writer.js";
import { FileFormatError, OutputError, UsageError } from "../util/errors.js";

const layerStatSchema = z.object({
  name: z.string(),
  status: z.enum(["quantized", "skipped"]),
  reason: z.string().optional(),
  relError: z.number().nullable(),
  seconds: z.number(),
  /** AWQ: the scale search's α for the Linear's input (absent when not scaled). */
  awqAlpha: z.number().optional(),
  /** AWQ: mean shrink of the clipping search over the Linear's (row, group) lanes. */
  clipShrink: z.number().optional(),
  /** AWQ: the relative output error plain RTN would have had (before scaling and clipping). */
  relErrorBefore: z.number().nullable().optional(),
  /** Bit width of this Linear's codes (differs from the run's with --dynamic/--target-bits overrides). */
  bits: z.number().optional(),
  /** Sensitivity probes (--probe-bits): the relative output error the same method gives at other widths. */
  probes: z.array(z.object({ bits: z.number(), relError: z.number() })).optional(),
});
export type LayerStat = z.infer<typeof layerStatSchema>;

/** The things that define a run's output, flat (see buildPlan): compared one by one on --resume. */
export type RunSettings = Record<string, string | number | boolean>;

const journalSchema = z.object({
  version: z.literal(3),
  settingsKey: z.string(),
  settings: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])),
  finishedBlocks: z.number().int().nonnegative(),
  layers: z.array(layerStatSchema),
  blockSeconds: z.array(z.number()),
});
export type JournalState = z.infer<typeof journalSchema>;

const lockSchema = z.object({ pid: z.number().int().positive(), host: z.string(), started: z.string() });
export type LockInfo = z.infer<typeof lockSchema>;

/** sha256 of the settings (the key stored beside them). */
export function settingsKeyOf(settings: RunSettings): string {
  return crypto.createHash("sha256").update(JSON.stringify(settings)).digest("hex");
}

/** How a setting is named in a refusal (the CLI option that sets it). */
const SETTING_LABELS: Record<string, string> = {
  model: "model files (name:bytes:mtime)",
  method: "--method",
  bits: "--bits",
  groupSize: "--group-size",
  sym: "--sym/--asym",
  actOrder: "--act-order",
  staticGroups: "--static-groups",
  damp: "--damp",
  format: "--format",
  seqlen: "--seqlen",
  nsamples: "--nsamples",
  seed: "--seed",
  blockSize: "--block-size",
  awqTokens: "--awq-tokens",
  actDtype: "--act-dtype",
  threads: "--threads",
  calib: "--calib",
  calibWindows: "calibration token windows (tokenizer)",
};
/** Settings that follow from others: named only when nothing else explains the difference. */
const DERIVED = new Set(["calibWindows"]);

function showValue(key: string, v: string | number | boolean | undefined): string {
  if (v === undefined) return "(not recorded)";
  if (key === "sym" && typeof v === "boolean") return v ? "sym" : "asym";
  if (typeof v === "boolean") return v ? "on" : "off";
  return String(v);
}

/** "--bits: interrupted run used 4, this run 3" for each setting that differs. */
export function describeSettingsDiff(old: RunSettings, now: RunSettings): string[] {
  const keys = [...new Set([...Object.keys(now), ...Object.keys(old)])];
  const differs = keys.filter((k) => old[k] !== now[k]);
  const primary = differs.filter((k) => !DERIVED.has(k));
  return (primary.length > 0 ? primary : differs).map(
    (k) => `${SETTING_LABELS[k] ?? k}: interrupted run used ${showValue(k, old[k])}, this run ${showValue(k, now[k])}`,
  );
}

/** Is a process with this id running (on this host)? EPERM: it exists but belongs to someone else. */
function processAlive(pid: number): boolean {
  if (pid === process.pid) return false; // a recycled pid (e.g. a container restarted): not a live other run
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

function sleepMs(ms: number): void {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Test hook (test/lock.test.ts): QUANT4_TEST_DELAY_MS=n sleeps n ms right after the lock is taken, to
 * widen the window in which a second run meets a live lock. Not an option; no effect when unset.
 */
function testDelay(): void {
  const ms = Number(process.env["QUANT4_TEST_DELAY_MS"] ?? 0);
  if (Number.isFinite(ms)) sleepMs(ms);
}

function errnoCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

export class Journal {
  readonly file: string;
  readonly lockFile: string;
  state: JournalState;
  /** The journal existed: this run continues an interrupted one (at block state.finishedBlocks). */
  readonly resumed: boolean;
  private readonly lock: LockInfo;
  private locked = true;

  private constructor(readonly workDir: string, readonly outDir: string, state: JournalState, lock: LockInfo, resumed: boolean) {
    this.file = path.join(workDir, "journal.json");
    this.lockFile = path.join(workDir, "lock");
    this.state = state;
    this.lock = lock;
    this.resumed = resumed;
  }

  static workDirFor(outDir: string): string {
    return path.resolve(outDir) + ".partial";
  }

  /**
   * Take the lock on `<out>.partial/` and start fresh, or, with `resume`, continue an interrupted run
   * (its settings must equal `settings`). Throws UsageError when another run holds the output, when an
   * interrupted run exists and `resume` is not set, or when the settings differ.
   */
  static open(outDir: string, settingsKey: string, resume: boolean, settings: RunSettings = {}): Journal {
    const workDir = Journal.workDirFor(outDir);
    const lockFile = path.join(workDir, "lock");
    const me: LockInfo = { pid: process.pid, host: os.hostname(), started: new Date().toISOString() };
    const fresh = (): JournalState => ({ version: 3, settingsKey, settings, finishedBlocks: 0, layers: [], blockSeconds: [] });
    // Each pass either returns, throws, or lost a race against another run (then looks again).
    for (let attempt = 0; attempt < 20; attempt++) {
      if (!fs.existsSync(workDir)) {
        if (Journal.publishWorkDir(workDir, me, fresh())) {
          testDelay();
          return new Journal(workDir, outDir, fresh(), me, false);
        }
        continue;
      }
      if (!fs.statSync(workDir).isDirectory()) throw new OutputError(workDir, "exists and is not a directory (quant4's work directory); delete it");
      const held = Journal.readLock(lockFile);
      if (held !== null) {
        const { info, raw } = held;
        if (info.host !== me.host)
          throw new UsageError(
            `${outDir} is locked by a quant4 run on another host (pid ${info.pid} on ${info.host}, started ${info.started}), which cannot be checked from ${me.host}; ` +
              `if that run is no longer running, delete ${lockFile} and rerun with --resume`,
          );
        if (processAlive(info.pid)) throw new UsageError(`another quant4 run (pid ${info.pid} on ${info.host}) is writing ${outDir}`);
        if (!resume)
          throw new UsageError(
            `a previous run (pid ${info.pid}) was interrupted; rerun with --resume to continue it, or delete ${workDir} to discard the interrupted run`,
          );
        Journal.readJournal(workDir, settingsKey, settings); // refuse a mismatch before touching the lock
        if (!Journal.takeOver(lockFile, raw, me)) continue;
      } else {
        // No lock: a run that failed with an error (it released the lock and kept its blocks).
        if (!resume)
          throw new UsageError(`an interrupted run exists at ${workDir}; rerun with --resume to continue it, or delete that directory to start over`);
        Journal.readJournal(workDir, settingsKey, settings);
        if (!Journal.createLock(lockFile, me)) continue;
      }
      // The lock is ours: read the journal again (it cannot change now) and continue it.
      let state: JournalState | null;
      try {
        state = Journal.readJournal(workDir, settingsKey, settings);
      } catch (e) {
        Journal.unlinkQuiet(lockFile);
        throw e;
      }
      const j = new Journal(workDir, outDir, state ?? fresh(), me, state !== null);
      if (state === null) j.save();
      testDelay();
      return j;
    }
    throw new UsageError(`could not lock ${workDir}: other quant4 runs kept changing it; try again`);
  }

  /** Create the work dir with its lock and an empty journal inside, atomically. false: it exists now. */
  private static publishWorkDir(workDir: string, me: LockInfo, state: JournalState): boolean {
    const parent = path.dirname(workDir);
    try {
      fs.mkdirSync(parent, { recursive: true });
    } catch (e) {
      throw new OutputError(workDir, `cannot create the work directory: ${(e as Error).message}`);
    }
    let tmp: string;
    try {
      tmp = fs.mkdtempSync(`${workDir}.new-`);
      fs.writeFileSync(path.join(tmp, "lock"), JSON.stringify(me) + "\n");
      fs.writeFileSync(path.join(tmp, "journal.json"), JSON.stringify(state, null, 2) + "\n");
    } catch (e) {
      throw new OutputError(workDir, `cannot create the work directory: ${(e as Error).message}`);
    }
    try {
      // Fails (ENOTEMPTY/EEXIST) when another run published its work dir first.
      fs.renameSync(tmp, workDir);
      return true;
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      const code = errnoCode(e);
      if (code === "ENOTEMPTY" || code === "EEXIST" || code === "ENOTDIR") return false;
      throw new OutputError(workDir, `cannot create the work directory: ${(e as Error).message}`);
    }
  }

  /**
   * The lock's holder; null when there is no lock file. A lock being written is read again; one that
   * stays unreadable is a FileFormatError naming it.
   */
  private static readLock(lockFile: string): { info: LockInfo; raw: string } | null {
    for (let tries = 0; ; tries++) {
      let raw: string;
      try {
        raw = fs.readFileSync(lockFile, "utf8");
      } catch (e) {
        if (errnoCode(e) === "ENOENT") return null;
        throw new FileFormatError(lockFile, `cannot read the lock: ${(e as Error).message}`);
      }
      let parsed: unknown = null;
      try {
        parsed = JSON.parse(raw);
      } catch {
        // being written by its creator (open + write): look again
      }
      const r = lockSchema.safeParse(parsed);
      if (r.success) return { info: r.data, raw };
      if (tries >= 10)
        throw new FileFormatError(lockFile, `not a quant4 lock (expected JSON {pid, host, started}); delete it if no quant4 run is writing this output`);
      sleepMs(50);
    }
  }

  /** Create the lock file exclusively (O_EXCL). false: someone else created it first. */
  private static createLock(lockFile: string, me: LockInfo): boolean {
    let fd: number;
    try {
      fd = fs.openSync(lockFile, "wx");
    } catch (e) {
      if (errnoCode(e) === "EEXIST") return false;
      throw new OutputError(lockFile, `cannot create the lock: ${(e as Error).message}`);
    }
    try {
      fs.writeSync(fd, JSON.stringify(me) + "\n");
    } finally {
      fs.closeSync(fd);
    }
    return true;
  }

  /**
   * Replace the stale lock whose content is `staleRaw` with ours. Only one of several runs taking it over
   * together can move the stale lock aside (rename); a run that moved a lock that is no longer the stale
   * one (taken over meanwhile) puts it back and looks again. false: look again.
   */
  private static takeOver(lockFile: string, staleRaw: string, me: LockInfo): boolean {
    const aside = `${lockFile}.stale-${process.pid}`;
    try {
      fs.renameSync(lockFile, aside);
    } catch (e) {
      if (errnoCode(e) === "ENOENT") return false;
      throw new OutputError(lockFile, `cannot take over the lock: ${(e as Error).message}`);
    }
    const moved = fs.readFileSync(aside, "utf8");
    if (moved !== staleRaw) {
      try {
        fs.linkSync(aside, lockFile); // exclusive: fails if a lock appeared meanwhile
      } catch {
        // another run holds a newer lock; ours is still not taken
      }
      Journal.unlinkQuiet(aside);
      return false;
    }
    Journal.unlinkQuiet(aside);
    return Journal.createLock(lockFile, me);
  }

  /** The interrupted run's journal, checked against this run's settings; null when there is none. */
  private static readJournal(workDir: string, settingsKey: string, settings: RunSettings): JournalState | null {
    const file = path.join(workDir, "journal.json");
    if (!fs.existsSync(file)) return null;
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
      throw new FileFormatError(file, `not valid JSON: ${(e as Error).message}`);
    }
    const version = (raw as { version?: unknown } | null)?.version;
    if (typeof version === "number" && version !== 3)
      throw new FileFormatError(file, `journal version ${version} was written by another quant4 version; delete ${workDir} to start over`);
    const r = journalSchema.safeParse(raw);
    if (!r.success) throw new FileFormatError(file, `not a quant4 journal: ${r.error.issues[0]?.message}`);
    const j = r.data;
    // The stored settings must hash to the stored key (a hand-edited journal is not trusted).
    if (Object.keys(j.settings).length > 0 && settingsKeyOf(j.settings) !== j.settingsKey)
      throw new FileFormatError(file, `its settings do not match its settingsKey (edited by hand?); delete ${workDir} to start over`);
    if (j.settingsKey !== settingsKey) {
      const diff = describeSettingsDiff(j.settings, settings);
      throw new UsageError(
        `${file}: the interrupted run used different settings` +
          (diff.length > 0 ? ` (${diff.join("; ")})` : ", calibration data, --threads or a different model") +
          `; rerun with the same options, or delete ${workDir} to start over`,
      );
    }
    if (j.blockSeconds.length !== j.finishedBlocks)
      throw new FileFormatError(file, `inconsistent: ${j.finishedBlocks} finished blocks but ${j.blockSeconds.length} block times; delete ${workDir} to start over`);
    for (let i = 0; i < j.finishedBlocks; i++) {
      const bf = path.join(workDir, Journal.blockFileName(i));
      if (!fs.existsSync(bf)) throw new FileFormatError(file, `lists block ${i} as finished but ${bf} is missing; delete ${workDir} to start over`);
    }
    return j;
  }

  private static blockFileName(i: number): string {
    return `block-${String(i).padStart(5, "0")}.safetensors`;
  }

  private static unlinkQuiet(f: string): void {
    try {
      fs.unlinkSync(f);
    } catch {
      // already gone
    }
  }

  blockFile(i: number): string {
    return path.join(this.workDir, Journal.blockFileName(i));
  }

  /**
   * Throw unless the lock still names this run. Called before each journal update and before the
   * output is moved into place, so only the lock holder writes the journal and the output.
   */
  assertLocked(): void {
    let info: LockInfo | null = null;
    try {
      info = lockSchema.parse(JSON.parse(fs.readFileSync(this.lockFile, "utf8")));
    } catch {
      info = null;
    }
    if (!this.locked || info === null || info.pid !== this.lock.pid || info.host !== this.lock.host || info.started !== this.lock.started) {
      this.locked = false;
      throw new OutputError(
        this.workDir,
        info ? `this run lost its lock to another quant4 run (pid ${info.pid} on ${info.host}); stopping without writing ${this.outDir}` : `this run's lock was removed; stopping without writing ${this.outDir}`,
      );
    }
  }

  /** Record block i as finished (its file is already written). */
  finishBlock(i: number, layers: LayerStat[], seconds: number): void {
    if (i !== this.state.finishedBlocks) throw new Error(`internal: block ${i} finished out of order`);
    this.assertLocked();
    this.state.finishedBlocks = i + 1;
    this.state.layers.push(...layers);
    this.state.blockSeconds.push(seconds);
    this.save();
  }

  private save(): void {
    atomicWriteFile(this.file, JSON.stringify(this.state, null, 2) + "\n");
  }

  /** After a failure: give up the lock, keep the work dir (and its finished blocks) for --resume. */
  release(): void {
    if (!this.locked) return;
    this.locked = false;
    try {
      const info = lockSchema.parse(JSON.parse(fs.readFileSync(this.lockFile, "utf8")));
      if (info.pid === this.lock.pid && info.started === this.lock.started) fs.unlinkSync(this.lockFile);
    } catch {
      // not ours or already gone
    }
  }

  /** The output is in place: remove the work dir, and with it the lock. */
  remove(): void {
    this.locked = false;
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}
