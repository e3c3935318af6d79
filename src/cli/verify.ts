// `quant4 verify <out-dir>`: re-hash every file a quantize output's quant4-manifest.json lists (its own
// directory's entry) and compare sizes and sha256. Exit 0 when all match, 1 on any mismatch (each file
// named: missing, size or hash), 2 when the manifest is missing, not JSON or not a manifest.

import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { hashFile, listFiles, MANIFEST_FILE, ownOutput, readManifest } from "../pipeline/manifest.js";
import { UsageError } from "../util/errors.js";
import { action, EXIT_GATE, parseOptions, printJson, writeStdout } from "./common.js";

export interface VerifyFileResult {
  name: string;
  /** ok | missing | size (size differs; not hashed) | hash (same size, other content) */
  status: "ok" | "missing" | "size" | "hash";
  expectedBytes: number;
  bytes: number | null;
  expectedSha256: string;
  sha256: string | null;
}

export interface VerifyResult {
  dir: string;
  manifest: string;
  ok: boolean;
  quant4Version: string;
  createdAt: string;
  format: string;
  files: VerifyFileResult[];
  /** Files in the directory the manifest does not list (reported, not a failure: e.g. a report written beside the weights). */
  extra: string[];
}

const PROBLEM: Record<Exclude<VerifyFileResult["status"], "ok">, (f: VerifyFileResult) => string> = {
  missing: (f) => `missing (the manifest lists ${f.expectedBytes} bytes)`,
  size: (f) => `size mismatch: ${f.bytes} bytes, the manifest says ${f.expectedBytes}`,
  hash: (f) => `hash mismatch: sha256 ${f.sha256!.slice(0, 16)}…, the manifest says ${f.expectedSha256.slice(0, 16)}…`,
};

/** Check `dir` against its manifest; throws FileFormatError (exit 2) when there is no valid manifest. */
export async function verifyDir(dir: string): Promise<VerifyResult> {
  if (!fs.existsSync(dir)) throw new UsageError(`${dir}: no such directory`);
  if (!fs.statSync(dir).isDirectory()) throw new UsageError(`${dir}: not a directory`);
  const m = readManifest(dir);
  const own = ownOutput(m);
  const files: VerifyFileResult[] = [];
  for (const f of own.files) {
    const p = path.join(dir, ...f.name.split("/"));
    const base = { name: f.name, expectedBytes: f.bytes, expectedSha256: f.sha256 };
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      files.push({ ...base, status: "missing", bytes: null, sha256: null });
      continue;
    }
    if (!st.isFile()) {
      files.push({ ...base, status: "missing", bytes: null, sha256: null });
      continue;
    }
    if (st.size !== f.bytes) {
      files.push({ ...base, status: "size", bytes: st.size, sha256: null });
      continue;
    }
    const h = await hashFile(p);
    files.push({ ...base, status: h.sha256 === f.sha256 ? "ok" : "hash", bytes: h.bytes, sha256: h.sha256 });
  }
  const listed = new Set([...own.files.map((f) => f.name), MANIFEST_FILE]);
  const extra = listFiles(dir).filter((f) => !listed.has(f));
  return {
    dir,
    manifest: path.join(dir, MANIFEST_FILE),
    ok: files.every((f) => f.status === "ok"),
    quant4Version: m.quant4Version,
    createdAt: m.createdAt,
    format: own.format,
    files,
    extra,
  };
}

const optionsSchema = z.object({ json: z.boolean().default(false) }).strict();

export function registerVerify(program: Command): void {
  program
    .command("verify")
    .description("Check a quantize output against its quant4-manifest.json: every listed file's size and sha256")
    .argument("<out-dir>", "an output directory written by quant4 quantize")
    .option("--json", "print the per-file results as JSON on stdout", false)
    .addHelpText(
      "after",
      `
Every output of quant4 quantize holds quant4-manifest.json: the size and sha256 of each of its files
(and where they came from). verify re-hashes the files (streamed) and compares. Files the manifest
does not list are reported but do not fail the check.

Examples:
  quant4 verify out/stories260K-gptq
  quant4 verify out/llama-w4 --json > verify.json

Exit codes: 0 every file matches, 1 a file is missing or differs (each one named on stderr),
2 no manifest, not JSON or not a quant4 manifest (one error line), 3 internal error.`,
    )
    .action(
      action(async (dir: string, raw: Record<string, unknown>) => {
        const o = parseOptions(optionsSchema, raw);
        const r = await verifyDir(dir);
        const bad = r.files.filter((f) => f.status !== "ok");
        for (const f of bad) process.stderr.write(`quant4: verify: ${path.join(dir, f.name)}: ${PROBLEM[f.status as Exclude<VerifyFileResult["status"], "ok">](f)}\n`);
        if (!o.json && r.extra.length > 0)
          process.stderr.write(`quant4: note: ${r.extra.length} file${r.extra.length === 1 ? "" : "s"} not in the manifest (not checked): ${r.extra.slice(0, 5).join(", ")}${r.extra.length > 5 ? ", …" : ""}\n`);
        if (o.json) printJson(r);
        if (r.ok) {
          if (!o.json) writeStdout(`OK: ${r.files.length} files in ${dir} match ${MANIFEST_FILE} (${r.format}, quant4 ${r.quant4Version}, ${r.createdAt})\n`);
        } else {
          // A failed check is the gate's exit code (1): the artifact must not be shipped.
          process.exitCode = EXIT_GATE;
          process.stderr.write(
            `quant4: verify failed: ${bad.length} of ${r.files.length} files in ${dir} differ from ${MANIFEST_FILE}: ${bad.map((f) => `${f.name} (${f.status === "missing" ? "missing" : `${f.status} mismatch`})`).join(", ")}\n`,
          );
        }
      }),
    );
}
