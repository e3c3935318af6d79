// The provenance manifest of a quantize output: `quant4-manifest.json`, written into every output
// directory before it is moved into place (so it is part of the atomic output). It records what made
// the checkpoint (quant4 version, the resolved options or recipe, the source files' sha256, the
// calibration text's hash and token count), what was written (every file's size and sha256, the
// manifest itself excepted), the run's results (`summary`: exactly the object `quantize --json`
// prints) and the gate's verdict with its evaluation protocol. `quant4 verify` re-hashes the files
// against it; `quant4 report` reads `summary`. This module owns the schema (zod, exported with its
// TypeScript type), hashing (streamed) and reading/writing the file; it knows nothing of the CLI.
//
// Compatibility: manifestVersion 1. Fields may be added (readers must ignore unknown keys: the schema
// is not strict); none is removed or changes meaning without a new manifestVersion.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { atomicWriteFile } from "../io/writer.js";
import { pplProtocolSchema } from "../eval/perplexity.js";
import { FileFormatError } from "../util/errors.js";

/** The manifest's file name inside an output directory. */
export const MANIFEST_FILE = "quant4-manifest.json";
export const MANIFEST_VERSION = 1;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "expected a sha256 (64 lowercase hex digits)");

/** One file: its path relative to the directory it is listed for (POSIX separators), size and sha256. */
export const manifestFileSchema = z.object({
  name: z
    .string()
    .min(1)
    .refine((n) => !path.posix.isAbsolute(n) && !n.split("/").includes(".."), "expected a path inside the directory"),
  bytes: z.number().int().nonnegative(),
  sha256: sha256Hex,
});
export type ManifestFile = z.infer<typeof manifestFileSchema>;

/** One output directory of the run (a recipe may ask for several, from one calibration pass). */
export const manifestOutputSchema = z.object({
  /** Relative to the directory holding this manifest: "." is that directory itself (the one `verify` checks). */
  dir: z.string().min(1),
  format: z.string(),
  /** How it was made: "quantized" (the pipeline wrote it) or "converted" (repacked from the quantized output's layers). */
  producedBy: z.enum(["quantized", "converted"]).default("quantized"),
  /** Every file of that directory except quant4-manifest.json. */
  files: z.array(manifestFileSchema),
});
export type ManifestOutput = z.infer<typeof manifestOutputSchema>;

export const manifestCalibrationSchema = z.object({
  text: z.string().nullable(),
  sha256: z.string().nullable(),
  tokens: z.number().int().nonnegative(),
  nsamples: z.number().int().nonnegative(),
  seqlen: z.number().int().nonnegative(),
  seed: z.number().int().nonnegative(),
});

/** Perplexity evaluation protocol (eval-ppl's): what a perplexity number was measured on. */
export const manifestProtocolSchema = pplProtocolSchema;

/** The quality gate (`quantize --gate-text`), when it ran: its protocol, the fp and final perplexities, every attempt. */
export const manifestGateSchema = z
  .object({
    passed: z.boolean(),
    text: z.string(),
    protocol: manifestProtocolSchema,
    protocolDescription: z.string().optional(),
    fpPpl: z.number().nullable(),
    ppl: z.number().nullable(),
    increasePercent: z.number().nullable(),
    maxIncreasePercent: z.number(),
    attempt: z.number().int().optional(),
    retries: z.number().int(),
    /** Every attempt: the bits it spent (measured from its files), its perplexity and verdict. */
    attempts: z.array(
      z.object({
        attempt: z.number().int(),
        codeBitsPerWeight: z.number(),
        storedBitsPerWeight: z.number().optional(),
        bitsPerQuantizedWeight: z.number().nullable().optional(),
        raisedLinears: z.number().int().optional(),
        ppl: z.number().nullable(),
        increasePercent: z.number().nullable(),
        verdict: z.enum(["pass", "fail"]),
        reason: z.string().optional(),
        seconds: z.number().optional(),
      }),
    ),
  })
  .passthrough();
export type ManifestGate = z.infer<typeof manifestGateSchema>;

/** Time spent, seconds: the one calibration/quantize pass and each conversion to another format. */
export const manifestTimingSchema = z.object({
  quantizeSeconds: z.number(),
  conversions: z.array(z.object({ format: z.string(), dir: z.string(), seconds: z.number() })),
  totalSeconds: z.number(),
});

export const manifestSchema = z
  .object({
    manifestVersion: z.literal(MANIFEST_VERSION),
    quant4Version: z.string(),
    /** ISO 8601, UTC. */
    createdAt: z.string(),
    /** The recipe file the run was given (path as given, its sha256, its validated content), or null (flags only). */
    recipe: z.object({ file: z.string(), sha256: sha256Hex, content: z.record(z.string(), z.unknown()).optional() }).nullable(),
    /** The resolved options the run used: the one object CLI flags and recipes both produce. */
    options: z.record(z.string(), z.unknown()),
    source: z.object({
      /** The model argument as given: a local directory or a Hub id (org/name[@revision]). */
      model: z.string(),
      /** The local directory it was read from (the Hub cache for a Hub id). */
      dir: z.string(),
      /** A Hub id when the model came from the Hugging Face Hub, else null. */
      hubId: z.string().nullable(),
      /** The checkpoint's weights and configs (safetensors, index, config.json), hashed. */
      files: z.array(manifestFileSchema),
    }),
    calibration: manifestCalibrationSchema.nullable(),
    /** Every output of the run; the entry with dir "." is the directory holding this manifest. */
    outputs: z.array(manifestOutputSchema).min(1),
    /** Exactly the object `quantize --json` prints for this output (plan, report with per-layer results, output sizes and bits, worst layers, warnings). */
    summary: z.record(z.string(), z.unknown()),
    gate: manifestGateSchema.nullable(),
    timing: manifestTimingSchema.nullable(),
  })
  .passthrough();
export type Manifest = z.infer<typeof manifestSchema>;

/** The output entry a manifest lists for its own directory. */
export function ownOutput(m: Manifest): ManifestOutput {
  const own = m.outputs.find((o) => o.dir === ".");
  if (!own) throw new Error("manifest lists no output with dir \".\"");
  return own;
}

/** sha256 (hex) and size of a file, streamed (never the whole file in memory). */
export function hashFile(file: string): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash("sha256");
    let bytes = 0;
    const s = fs.createReadStream(file, { highWaterMark: 1 << 20 });
    s.on("data", (chunk) => {
      const b = chunk as Buffer;
      bytes += b.length;
      h.update(b);
    });
    s.on("error", reject);
    s.on("end", () => resolve({ bytes, sha256: h.digest("hex") }));
  });
}

/** Regular files under `dir`, recursively, as sorted POSIX relative paths. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFile()) out.push(r);
    }
  };
  walk("");
  return out.sort();
}

/** Hash the given files (relative to `dir`), in order. */
export async function hashFiles(dir: string, names: readonly string[]): Promise<ManifestFile[]> {
  const out: ManifestFile[] = [];
  for (const name of names) out.push({ name, ...(await hashFile(path.join(dir, ...name.split("/")))) });
  return out;
}

/** Every file of an output directory except the manifest, hashed. */
export function hashOutputDir(dir: string): Promise<ManifestFile[]> {
  return hashFiles(dir, listFiles(dir).filter((f) => f !== MANIFEST_FILE));
}

/** Write `m` (validated) as `<dir>/quant4-manifest.json`, atomically. */
export function writeManifest(dir: string, m: Manifest): void {
  const r = manifestSchema.safeParse(m);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(`manifest does not match its own schema at ${i.path.map(String).join(".") || "(root)"}: ${i.message}`);
  }
  atomicWriteFile(path.join(dir, MANIFEST_FILE), JSON.stringify(m, null, 2) + "\n");
}

/**
 * Read and validate `<dir>/quant4-manifest.json`. A missing file, bad JSON or a schema mismatch is a
 * FileFormatError naming the file and (for the schema) the key.
 */
export function readManifest(dir: string): Manifest {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT")
      throw new FileFormatError(file, `no manifest: ${dir} was not written by quant4 quantize (or predates manifests); quantize it again to get one`);
    throw new FileFormatError(file, `cannot read it: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FileFormatError(file, `not valid JSON (${(e as Error).message})`);
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    const i = r.error.issues[0]!;
    const key = i.path.map(String).join(".");
    throw new FileFormatError(file, `not a quant4 manifest: ${key ? `manifest.${key}` : "manifest"}: ${i.message}`);
  }
  if (!r.data.outputs.some((o) => o.dir === ".")) throw new FileFormatError(file, `not a quant4 manifest: manifest.outputs lists no entry with dir "." (this directory)`);
  return r.data;
}
