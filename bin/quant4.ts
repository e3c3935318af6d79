#!/usr/bin/env node
// quant4 command-line entry: one subcommand per file in src/cli/.

import { Command } from "commander";
import { registerEvalPpl } from "../src/cli/eval-ppl.js";
import { registerGenerate } from "../src/cli/generate.js";
import { registerInspect } from "../src/cli/inspect.js";
import { registerQuantize } from "../src/cli/quantize.js";

// `quant4 ... | head` closes stdout early: that is the reader's choice, not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

const program = new Command();
program
  .name("quant4")
  .description("Post-training INT4 quantization (RTN, GPTQ) of Hugging Face LLM checkpoints, with a reference inference path and a perplexity gate")
  .version("0.1.0")
  .showHelpAfterError();

registerInspect(program);
registerGenerate(program);
registerEvalPpl(program);
registerQuantize(program);

await program.parseAsync(process.argv);
