#!/usr/bin/env node
// quant4 command-line entry: one subcommand per file in src/cli/. Exit codes (README "Exit codes"):
// 0 ok, 1 a quality gate or verify failed, 2 bad input / usage / I/O error, 3 internal error, 130 interrupted.

import { Command, CommanderError } from "commander";
import { registerBench } from "../src/cli/bench.js";
import { registerEvalPpl } from "../src/cli/eval-ppl.js";
import { registerGenerate } from "../src/cli/generate.js";
import { registerInspect } from "../src/cli/inspect.js";
import { registerQuantize } from "../src/cli/quantize.js";
import { registerRecipe } from "../src/cli/recipe.js";
import { registerReport } from "../src/cli/report.js";
import { registerSensitivity } from "../src/cli/sensitivity.js";
import { registerVerify } from "../src/cli/verify.js";
import { EXIT_ERROR, EXIT_OK, reportStdoutError } from "../src/cli/common.js";
import { VERSION } from "../src/version.js";

// `quant4 ... | head` closes stdout early: that is the reader's choice, not an error. Anything else
// (a full disk behind `> file`) is one error line.
process.stdout.on("error", reportStdoutError);

const program = new Command();
program
  .name("quant4")
  .description("Post-training INT4 quantization (RTN, GPTQ) of Hugging Face LLM checkpoints, with a reference inference path and a perplexity gate")
  .version(VERSION)
  // Usage errors are one line and exit 2 (commander's default is the full help and exit 1, the gate's code).
  .exitOverride()
  .configureOutput({ outputError: (str, write) => write(`quant4: ${str.trimEnd()} (see --help)\n`) })
  .addHelpText("after", `
Exit codes: 0 ok, 1 a quality gate or verify failed, 2 bad input, usage or I/O error, 3 internal error (please
report it), 130 interrupted (Ctrl-C; quantize resumes with --resume).`);

registerInspect(program);
registerGenerate(program);
registerEvalPpl(program);
registerQuantize(program);
registerVerify(program);
registerRecipe(program);
registerSensitivity(program);
registerBench(program);
registerReport(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (!(e instanceof CommanderError)) throw e;
  // --help and --version exit 0; `quant4` alone prints the help and counts as a usage error.
  const ok = e.code === "commander.helpDisplayed" || e.code === "commander.version";
  process.exitCode = ok ? EXIT_OK : EXIT_ERROR;
}
