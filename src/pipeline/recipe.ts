// Recipes: every `quantize` setting in one JSON or YAML file (`quantize --recipe <file>`). This module
// owns the recipe's schema (zod; errors name the key as `recipe.quantize.bits`), reading the file, the
// starting recipe `quant4 recipe init` writes, and the mapping of recipe keys onto the option names the
// command-line flags set. The CLI merges the two (flags typed on the command line win) and parses the
// result with the one options schema, so a recipe and the equivalent flags produce the same options
// object and run the same code.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { z } from "zod";
import { formatNames } from "../../formats/index.js";
import { UsageError } from "../util/errors.js";
import { METHOD_NAMES } from "./methods.js";
import { schemeNames } from "./schemes.js";

const BITS = [2, 3, 4, 8];

/** A type error message, or "missing (required)" when the key is absent. */
const expected = (what: string) => (iss: { input?: unknown }) => (iss.input === undefined ? "missing (required)" : what);
const int = (min: number) => z.number({ error: expected("expected a number") }).int("expected an integer").min(min, `expected an integer ≥ ${min}`);
const num = () => z.number({ error: expected("expected a number") }).finite("expected a finite number");
const str = () => z.string({ error: expected("expected a string") });
const bool = () => z.boolean({ error: expected("expected true or false") });
const strList = () => z.union([str(), z.array(str(), { error: "expected a list of strings" })]).transform((v) => (Array.isArray(v) ? v : [v]));
/** One of `names()` (read when validating, so the lists stay the registries'). */
const oneOf = (names: () => readonly string[]) =>
  str().refine((v) => names().includes(v), { error: () => `expected one of ${names().join(", ")}` });
const section = <T extends z.ZodRawShape>(shape: T) => z.strictObject(shape, { error: "expected a mapping of keys to values" });

export const recipeQuantizeSchema = section({
  method: oneOf(() => METHOD_NAMES).optional(),
  scheme: oneOf(schemeNames).optional(),
  bits: z.number({ error: "expected 2, 3, 4 or 8" }).refine((b) => BITS.includes(b), "expected 2, 3, 4 or 8").optional(),
  groupSize: z
    .number({ error: "expected -1 (per row) or a positive integer" })
    .int("expected -1 (per row) or a positive integer")
    .refine((g) => g === -1 || g >= 1, "expected -1 (per row) or a positive integer")
    .optional(),
  sym: bool().optional(),
  actOrder: bool().optional(),
  staticGroups: bool().optional(),
  damp: num().positive("expected a fraction in (0, 1]").max(1, "expected a fraction in (0, 1]").optional(),
  blockSize: int(1).optional(),
  awqTokens: int(1).optional(),
  outliers: num().min(0, "expected a fraction from 0 to 0.2").max(0.2, "expected a fraction from 0 to 0.2").optional(),
  propagate: z.enum(["auto", "quantized", "fp"], { error: "expected auto, quantized or fp" }).optional(),
  dynamic: strList().optional(),
  skip: strList().optional(),
  targetBits: num().min(2, "expected an average from 2 to 16").max(16, "expected an average from 2 to 16").optional(),
  format: oneOf(() => ["auto", ...formatNames()]).optional(),
});

export const recipeCalibrationSchema = section({
  text: str().optional(),
  textEncoding: z.enum(["utf8", "latin1", "utf16le"], { error: "expected utf8, latin1 or utf16le" }).optional(),
  nsamples: int(1).optional(),
  seqlen: int(2).optional(),
  seed: int(0).optional(),
});

export const recipeOutputSchema = section({
  dir: str().min(1, "expected a directory"),
  format: oneOf(formatNames),
});

export const recipeGateSchema = section({
  text: str(),
  maxIncrease: num().min(0, "expected a percentage ≥ 0"),
  seqlen: int(2).optional(),
  maxWindows: int(1).optional(),
  retries: int(0).optional(),
});

export const recipeRunSchema = section({
  device: z.enum(["cpu", "cuda"], { error: "expected cpu or cuda" }).optional(),
  threads: int(1).optional(),
  actDtype: z.enum(["fp32", "fp16"], { error: "expected fp32 or fp16" }).optional(),
  maxMemory: z.union([str(), num()]).transform(String).optional(),
  maxShardSize: z.union([str(), num()]).transform(String).optional(),
  overwrite: bool().optional(),
});

export const recipeSchema = z
  .strictObject(
    {
      /** Recipe format version; 1 (the default). */
      version: z.literal(1, { error: "expected 1" }).optional(),
      /** Local model directory or Hub id; relative paths are relative to the current directory, as on the command line. */
      model: str().optional(),
      /** One output directory (or `outputs`). */
      out: str().optional(),
      quantize: recipeQuantizeSchema.optional(),
      calibration: recipeCalibrationSchema.optional(),
      /** Several outputs from one calibration pass: the first is quantized, the others converted from it. */
      outputs: z.array(recipeOutputSchema, { error: "expected a list of {dir, format}" }).min(1, "expected at least one {dir, format}").optional(),
      gate: recipeGateSchema.optional(),
      run: recipeRunSchema.optional(),
    },
    { error: "expected a mapping of keys to values (model, out, quantize, calibration, outputs, gate, run)" },
  )
  .superRefine((r, ctx) => {
    if (r.out !== undefined && r.outputs !== undefined)
      ctx.addIssue({ code: "custom", path: ["outputs"], message: "give either out (one output) or outputs (a list), not both" });
    if (r.outputs !== undefined && r.outputs.length > 1 && r.quantize?.format !== undefined)
      ctx.addIssue({ code: "custom", path: ["quantize", "format"], message: "with several outputs each one names its format (outputs[i].format); remove quantize.format" });
  });
export type Recipe = z.infer<typeof recipeSchema>;

/** A recipe as loaded: its file, sha256 and content. */
export interface LoadedRecipe {
  file: string;
  sha256: string;
  recipe: Recipe;
}

/** The first schema problem as `recipe.<key>: <message>`. */
function describeIssue(issue: z.core.$ZodIssue): string {
  let key = ["recipe", ...issue.path.map((p) => (typeof p === "number" ? `[${p}]` : String(p)))].join(".").replace(/\.\[/g, "[");
  let message = issue.message;
  if (issue.code === "unrecognized_keys") {
    const k = issue.keys[0]!;
    key = `${key}.${k}`;
    message = `unknown key${issue.keys.length > 1 ? ` (also ${issue.keys.slice(1).join(", ")})` : ""}; see quant4 recipe init for every key`;
  }
  return `${key}: ${message}`;
}

/** Validate a parsed recipe; errors are UsageErrors `<file>: recipe.<key>: <problem>`. */
export function validateRecipe(data: unknown, file: string): Recipe {
  const r = recipeSchema.safeParse(data ?? {});
  if (!r.success) throw new UsageError(`${file}: ${describeIssue(r.error.issues[0]!)}`);
  return r.data;
}

/** Read a .json, .yaml or .yml recipe. */
export function loadRecipe(file: string): LoadedRecipe {
  const ext = path.extname(file).toLowerCase();
  if (![".json", ".yaml", ".yml"].includes(ext)) throw new UsageError(`--recipe ${file}: expected a .json, .yaml or .yml file`);
  let text: Buffer;
  try {
    text = fs.readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`--recipe ${file}: ${code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (e as Error).message}`);
  }
  let data: unknown;
  try {
    data = ext === ".json" ? JSON.parse(text.toString("utf8")) : parseYaml(text.toString("utf8"));
  } catch (e) {
    const msg = e instanceof YAMLParseError ? e.message.split("\n")[0]! : (e as Error).message;
    throw new UsageError(`${file}: not valid ${ext === ".json" ? "JSON" : "YAML"} (${msg})`);
  }
  return { file, sha256: crypto.createHash("sha256").update(text).digest("hex"), recipe: validateRecipe(data, file) };
}

/**
 * The recipe as command-line option values, keyed by the options' names (commander's camelCase):
 * `quantize.bits` → bits, `calibration.text` → calib, `gate.maxIncrease` → gateMaxIncrease… `sym` is
 * the folded sym/asym value. `outputs` (several) and `model`/`out` are returned apart.
 */
export function recipeOptions(r: Recipe): Record<string, unknown> {
  const q = r.quantize ?? {};
  const c = r.calibration ?? {};
  const g = r.gate;
  const run = r.run ?? {};
  const o: Record<string, unknown> = {
    ...q,
    calib: c.text,
    textEncoding: c.textEncoding,
    nsamples: c.nsamples,
    seqlen: c.seqlen,
    seed: c.seed,
    ...run,
  };
  if (r.outputs?.length === 1) o["format"] = r.outputs[0]!.format;
  if (g) Object.assign(o, { gateText: g.text, gateMaxIncrease: g.maxIncrease, gateSeqlen: g.seqlen, gateMaxWindows: g.maxWindows, gateRetries: g.retries });
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

/** Where in a recipe an option (commander's name) is set: `bits` → `quantize.bits`, `calib` → `calibration.text`… */
export function recipeKeyOf(option: string): string {
  const named: Record<string, string> = {
    calib: "calibration.text",
    textEncoding: "calibration.textEncoding",
    nsamples: "calibration.nsamples",
    seqlen: "calibration.seqlen",
    seed: "calibration.seed",
    gateText: "gate.text",
    gateMaxIncrease: "gate.maxIncrease",
    gateSeqlen: "gate.seqlen",
    gateMaxWindows: "gate.maxWindows",
    gateRetries: "gate.retries",
  };
  if (named[option]) return named[option];
  if (recipeRunSchema.shape[option as keyof typeof recipeRunSchema.shape]) return `run.${option}`;
  return `quantize.${option}`;
}

/** The output directories a recipe names, with their formats (null: the format option decides). */
export function recipeOutputs(r: Recipe): { dir: string; format: string | null }[] {
  if (r.outputs) return r.outputs.map((x) => ({ dir: x.dir, format: x.format }));
  return r.out !== undefined ? [{ dir: r.out, format: null }] : [];
}

/** The commented starting recipe `quant4 recipe init` writes (YAML; every key, defaults shown). */
export function starterRecipe(): string {
  return `# quant4 recipe: every setting of \`quant4 quantize\` in one file.
#   quant4 quantize --recipe recipe.yaml            # flags typed on the command line override these keys
#   quant4 quantize --recipe recipe.yaml --dry-run  # check it and print the plan; write nothing
# Keys left out (or commented out) take the command-line defaults. README: "Recipes".
version: 1

# The fp16/bf16/fp32 checkpoint: a local directory or a Hugging Face Hub id (org/name[@revision]).
model: models/stories260K

# One output directory ...
out: out/stories260K-w4
# ... or several outputs from one calibration pass (instead of \`out\`): the first is quantized, the
# others are converted from its packed layers (exact: same integer codes, scales and zeros). Every
# format must hold the same Linears with the same bits, group size and symmetry.
# outputs:
#   - { dir: out/stories260K-gptq, format: gptq }
#   - { dir: out/stories260K-ct, format: compressed-tensors }

quantize:
  method: gptq            # rtn | gptq | awq | awq-gptq
  # scheme: w4-g128       # named setting; bits/groupSize/sym below override its parts
  bits: 4                 # 2, 3, 4 or 8
  # groupSize: 128        # -1 = one scale per row; left out: the largest of 128/64/32/per-row that holds the most Linears
  sym: true               # false = asymmetric (zero points)
  actOrder: false         # GPTQ: columns by decreasing Hessian diagonal (desc_act)
  staticGroups: false     # GPTQ: group scales fixed up front
  damp: 0.01              # GPTQ dampening, fraction of mean(diag H)
  blockSize: 128          # GPTQ lazy-batch block
  # awqTokens: 8192       # AWQ: calibration tokens the scale search runs on, at most
  outliers: 0             # fraction of weights kept exactly in fp16 (needs format quant4)
  propagate: auto         # what feeds the next block: auto | quantized | fp
  format: auto            # auto | gptq | compressed-tensors | awq | quant4 (with \`out\`)
  dynamic: []             # per-module overrides, e.g. ['.*\\.mlp\\.down_proj=bits:8']
  skip: []                # modules kept fp16, e.g. ['model\\.layers\\.0\\.']
  # targetBits: 4.5       # mixed precision: average code bits per Linear weight (one extra calibration pass)

calibration:
  text: c4                # c4 | wikitext2-valid | tinystories | a .txt/.jsonl file
  textEncoding: utf8      # of a text file: utf8 | latin1 | utf16le
  nsamples: 128           # calibration windows
  # seqlen: 2048          # tokens per window (default: min(2048, model context))
  seed: 0                 # window sampler seed

# Quality gate: compare perplexity with the fp model; too high => raise the most sensitive Linears and retry.
# gate:
#   text: wikitext2       # bundled name or a .txt/.jsonl file
#   maxIncrease: 5        # largest allowed perplexity increase over the fp model, percent
#   seqlen: 2048
#   maxWindows: 40
#   retries: 3

run:
  device: cpu             # cpu | cuda
  # threads: 8            # BLAS threads (default: all cores)
  actDtype: fp32          # calibration activations between blocks: fp32 | fp16
  # maxMemory: 8GB        # above it, activations are spilled to files in <out>.partial/ (default auto: from free memory; none: in memory)
  maxShardSize: 4GB       # shard the output files
  overwrite: false        # replace a non-empty output directory
`;
}
