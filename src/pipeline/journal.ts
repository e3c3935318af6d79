// The resume journal of an interrupted `quantize`: a work directory `<out>.partial/` holding one
// safetensors file per finished block and `journal.json` (the run's settings key and the finished
// blocks, rewritten atomically after each block). A resumed run with the same settings continues at
// the first unfinished block; with different settings it refuses.

import fs from "node:fs";
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
});
export type LayerStat = z.infer<typeof layerStatSchema>;

const journalSchema = z.object({
  version: z.literal(1),
  settingsKey: z.string(),
  finishedBlocks: z.number().int().nonnegative(),
  layers: z.array(layerStatSchema),
  blockSeconds: z.array(z.number()),
});
export type JournalState = z.infer<typeof journalSchema>;

export class Journal {
  readonly file: string;
  state: JournalState;

  private constructor(readonly workDir: string, state: JournalState) {
    this.file = path.join(workDir, "journal.json");
    this.state = state;
  }

  static workDirFor(outDir: string): string {
    return path.resolve(outDir) + ".partial";
  }

  /** Start fresh, or continue an interrupted run when `resume` (the settings must match). */
  static open(outDir: string, settingsKey: string, resume: boolean): Journal {
    const workDir = Journal.workDirFor(outDir);
    const file = path.join(workDir, "journal.json");
    if (fs.existsSync(workDir)) {
      if (!resume)
        throw new UsageError(`an interrupted run exists at ${workDir}; rerun with --resume to continue it, or delete that directory to start over`);
      if (fs.existsSync(file)) {
        let raw: unknown;
        try {
          raw = JSON.parse(fs.readFileSync(file, "utf8"));
        } catch (e) {
          throw new FileFormatError(file, `not valid JSON: ${(e as Error).message}`);
        }
        const r = journalSchema.safeParse(raw);
        if (!r.success) throw new FileFormatError(file, `not a quant4 journal: ${r.error.issues[0]?.message}`);
        if (r.data.settingsKey !== settingsKey)
          throw new UsageError(`${file}: the interrupted run used different settings, calibration data, --threads or a different model; rerun with the same options, or delete ${workDir} to start over`);
        return new Journal(workDir, r.data);
      }
    }
    try {
      fs.mkdirSync(workDir, { recursive: true });
    } catch (e) {
      throw new OutputError(workDir, `cannot create the work directory: ${(e as Error).message}`);
    }
    const j = new Journal(workDir, { version: 1, settingsKey, finishedBlocks: 0, layers: [], blockSeconds: [] });
    j.save();
    return j;
  }

  blockFile(i: number): string {
    return path.join(this.workDir, `block-${String(i).padStart(5, "0")}.safetensors`);
  }

  /** Record block i as finished (its file is already written). */
  finishBlock(i: number, layers: LayerStat[], seconds: number): void {
    if (i !== this.state.finishedBlocks) throw new Error(`internal: block ${i} finished out of order`);
    this.state.finishedBlocks = i + 1;
    this.state.layers.push(...layers);
    this.state.blockSeconds.push(seconds);
    this.save();
  }

  private save(): void {
    atomicWriteFile(this.file, JSON.stringify(this.state, null, 2) + "\n");
  }

  remove(): void {
    fs.rmSync(this.workDir, { recursive: true, force: true });
  }
}
