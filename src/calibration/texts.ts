// Resolves a text argument (`--text`, `--calib`) to its content: a bundled set by name (see
// calibration-data/manifest.json), a .txt file, or a .jsonl file with a "text" field per line
// (documents joined with "\n\n", as the GPTQ code joins WikiText rows).
//
// A file is decoded strictly: UTF-8 by default (a leading BOM is dropped), and bytes that are not valid
// UTF-8 are an error naming the byte offset of the first invalid sequence, never U+FFFD replacements
// (which turned a binary file into a "perplexity" of 10⁹ with exit 0). A NUL character means binary
// data, in any encoding. `--text-encoding latin1|utf16le` reads files in another encoding (latin1
// decodes any bytes). Bundled sets are UTF-8 whatever the option says.

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

export const TEXT_ENCODINGS = ["utf8", "latin1", "utf16le"] as const;
export type TextEncoding = (typeof TEXT_ENCODINGS)[number];
/** The `--text-encoding` option of eval-ppl and quantize. */
export const textEncodingSchema = z.enum(TEXT_ENCODINGS).default("utf8");

const HINT = "pass --text-encoding latin1 or utf16le if the file is text in another encoding";

/**
 * Offset of the first byte that starts an ill-formed UTF-8 sequence (Unicode Table 3-7: no overlong
 * forms, no surrogates, nothing above U+10FFFF, no truncated sequence), or -1 when all of it is valid.
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  const n = b.length;
  let i = 0;
  while (i < n) {
    const c = b[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let len: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c === 0xe0) lo = 0xa0;
      else if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c === 0xf0) lo = 0x90;
      else if (c === 0xf4) hi = 0x8f;
    } else return i;
    if (i + len > n) return i;
    const c1 = b[i + 1]!;
    if (c1 < lo || c1 > hi) return i;
    for (let k = 2; k < len; k++) {
      const ck = b[i + k]!;
      if (ck < 0x80 || ck > 0xbf) return i;
    }
    i += len;
  }
  return -1;
}

const hex = (v: number): string => "0x" + v.toString(16).padStart(2, "0");

/** Decode a text file's bytes strictly; FileFormatError naming the file and byte offset otherwise. */
export function decodeText(file: string, bytes: Uint8Array, encoding: TextEncoding = "utf8"): string {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (encoding === "utf16le") {
    if (buf.length % 2 !== 0) throw new FileFormatError(file, `not UTF-16LE text: odd length (${buf.length} bytes)`);
    for (let i = 0; i < buf.length; i += 2) {
      const u = buf.readUInt16LE(i);
      if (u === 0) throw new FileFormatError(file, `NUL character at byte offset ${i}: a binary file, not text`);
      if (u >= 0xd800 && u <= 0xdbff) {
        const next = i + 2 < buf.length ? buf.readUInt16LE(i + 2) : -1;
        if (next < 0xdc00 || next > 0xdfff) throw new FileFormatError(file, `not valid UTF-16LE text: unpaired surrogate at byte offset ${i}`);
        i += 2;
      } else if (u >= 0xdc00 && u <= 0xdfff) throw new FileFormatError(file, `not valid UTF-16LE text: unpaired surrogate at byte offset ${i}`);
    }
    const s = buf.toString("utf16le");
    return s.charCodeAt(0) === 0xfeff ? s.slice(1) : s;
  }
  // UTF-8 and latin1 encode U+0000 as a 0x00 byte and nothing else does.
  const nul = buf.indexOf(0);
  if (encoding === "latin1") {
    if (nul >= 0) throw new FileFormatError(file, `NUL byte at byte offset ${nul}: a binary file, not text`);
    return buf.toString("latin1");
  }
  const bad = firstInvalidUtf8(buf);
  if (nul >= 0 && (bad < 0 || nul < bad)) throw new FileFormatError(file, `NUL byte at byte offset ${nul}: a binary file, not text`);
  if (bad >= 0) throw new FileFormatError(file, `not valid UTF-8: invalid byte ${hex(buf[bad]!)} at byte offset ${bad}; ${HINT}`);
  const s = buf.toString("utf8");
  return s.charCodeAt(0) === 0xfeff ? s.slice(1) : s;
}

const jsonlLine = z.object({ text: z.string() }).passthrough();

function readJsonl(file: string, encoding: TextEncoding): string {
  const docs: string[] = [];
  const lines = decodeText(file, fs.readFileSync(file), encoding).split("\n");
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

export function resolveText(spec: string, encoding: TextEncoding = "utf8"): TextSource {
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
  // Bundled sets are UTF-8; --text-encoding applies to the user's files.
  const enc = bundled[spec] ? "utf8" : encoding;
  let text: string;
  try {
    text = file.endsWith(".jsonl") ? readJsonl(file, enc) : decodeText(file, fs.readFileSync(file), enc);
  } catch (e) {
    if (e instanceof FileFormatError) throw e;
    throw new FileFormatError(file, `cannot read: ${(e as Error).message}`);
  }
  if (text.length === 0) throw new FileFormatError(file, "file is empty");
  return { name, file, text };
}
