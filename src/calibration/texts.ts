// Resolves a text argument (`--text`, `--calib`) to its content: a bundled set by name (see
// calibration-data/manifest.json), a .txt file, or a .jsonl file with a "text" field per line
// (documents joined with "\n\n", as the GPTQ code joins WikiText rows).

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { FileFormatError, UsageError } from "../util/errors.js";

const here = path.dirname(fileURLToPath(import.meta.url));
/** calibration-data/ at the package root, found from both src/ (tsx) and dist/src/ (compiled). */
export const DATA_DIR = [path.resolve(here, "../../calibration-data"), path.resolve(here, "../../../calibration-data")].find((d) =>
  fs.existsSync(path.join(d, "manifest.json")),
) ?? path.resolve(here, "../../calibration-data");

const manifestSchema = z.record(
  z.string(),
  z.object({ file: z.string(), description: z.string(), source: z.string(), license: z.string(), use: z.string() }),
);
export type DatasetManifest = z.infer<typeof manifestSchema>;

export function bundledDatasets(): DatasetManifest {
  const file = path.join(DATA_DIR, "manifest.json");
  const r = manifestSchema.safeParse(JSON.parse(fs.readFileSync(file, "utf8")));
  if (!r.success) throw new FileFormatError(file, `invalid manifest: ${r.error.issues[0]?.message}`);
  return r.data;
}

export interface TextSource {
  /** Bundled name or the file path given. */
  name: string;
  file: string;
  text: string;
}

const jsonlLine = z.object({ text: z.string() }).passthrough();

function readJsonl(file: string): string {
  const docs: string[] = [];
  const lines = fs.readFileSync(file, "utf8").split("\n");
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new FileFormatError(file, `line ${i + 1} is not valid JSON: ${(e as Error).message}`);
    }
    const r = jsonlLine.safeParse(obj);
    if (!r.success) throw new FileFormatError(file, `line ${i + 1} has no string "text" field`);
    docs.push(r.data.text);
  });
  if (docs.length === 0) throw new FileFormatError(file, "no documents (expected JSON lines with a \"text\" field)");
  return docs.join("\n\n");
}

export function resolveText(spec: string): TextSource {
  const bundled = bundledDatasets();
  let file: string;
  let name = spec;
  if (bundled[spec]) {
    file = path.join(DATA_DIR, bundled[spec]!.file);
  } else if (fs.existsSync(spec)) {
    file = spec;
  } else {
    throw new UsageError(`text "${spec}" is neither a bundled set (${Object.keys(bundled).join(", ")}) nor an existing file`);
  }
  if (fs.statSync(file).isDirectory()) throw new UsageError(`text "${spec}" is a directory; give a .txt or .jsonl file`);
  const text = file.endsWith(".jsonl") ? readJsonl(file) : fs.readFileSync(file, "utf8");
  if (text.length === 0) throw new FileFormatError(file, "file is empty");
  return { name, file, text };
}
