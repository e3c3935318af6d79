// `quant4 recipe init [--out file] [--force]`: write the commented starting recipe (YAML, every key of
// `quantize --recipe` with its default; src/pipeline/recipe.ts owns the schema and the text).

import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { starterRecipe } from "../pipeline/recipe.js";
import { atomicWriteFile } from "../io/writer.js";
import { OutputError, UsageError } from "../util/errors.js";
import { action, parseOptions, writeStdout } from "./common.js";

const initSchema = z.object({ out: z.string().optional(), force: z.boolean().default(false) }).strict();

export function registerRecipe(program: Command): void {
  const recipe = program
    .command("recipe")
    .description("Recipes for quantize --recipe: `recipe init` writes a commented starting recipe")
    .addHelpText(
      "after",
      `
A recipe is a JSON or YAML file with every setting of quantize (model, outputs and formats, method,
bits, group size, per-module overrides, calibration, gate). quant4 quantize --recipe <file> runs it;
flags typed on the command line override its keys.

Examples:
  quant4 recipe init --out recipe.yaml && quant4 quantize --recipe recipe.yaml --dry-run`,
    );
  recipe
    .command("init")
    .description("Write a commented starting recipe (YAML): to stdout, or to --out <file>")
    .option("--out <file>", "write it to this file (.yaml or .yml) instead of stdout")
    .option("--force", "replace an existing --out file", false)
    .addHelpText(
      "after",
      `
Examples:
  quant4 recipe init                        # print it
  quant4 recipe init --out recipe.yaml      # write it (refuses to replace a file without --force)`,
    )
    .action(
      action(async (raw: Record<string, unknown>) => {
        const o = parseOptions(initSchema, raw);
        const text = starterRecipe();
        if (o.out === undefined) {
          writeStdout(text);
          return;
        }
        if (![".yaml", ".yml"].includes(path.extname(o.out).toLowerCase())) throw new UsageError(`--out ${o.out}: the starting recipe is YAML; name the file .yaml or .yml`);
        if (fs.existsSync(o.out) && !o.force) throw new UsageError(`--out ${o.out} exists; pass --force to replace it`);
        try {
          atomicWriteFile(o.out, text);
        } catch (e) {
          if (e instanceof OutputError) throw e;
          throw new OutputError(o.out, (e as Error).message);
        }
        process.stderr.write(`quant4: wrote ${o.out}; run it with: quant4 quantize --recipe ${o.out}\n`);
      }),
    );
}
