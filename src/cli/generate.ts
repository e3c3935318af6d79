// `quant4 generate`: greedy decoding, printing only the generated text (the forward-pass reference check).

import type { Command } from "commander";
import { z } from "zod";
import { generateGreedy } from "../model/generate.js";
import { Model } from "../model/model.js";
import { loadTokenizer } from "../tokenizer/index.js";
import { action, resolveModelArg, deviceSchema, intOpt, parseOptions, printJson, setupBackend } from "./common.js";

const optionsSchema = z.object({
  prompt: z.string().optional(),
  maxTokens: intOpt(1).default(256),
  json: z.boolean().default(false),
  device: deviceSchema,
  threads: intOpt(1).optional(),
  dequantize: z.boolean().default(false),
});

export function registerGenerate(program: Command): void {
  program
    .command("generate")
    .description("Greedy (temperature 0) text generation; prints only the generated text")
    .argument("<model-dir>", "model directory (fp or packed INT4)")
    .option("--prompt <text>", "prompt text (default: start from BOS alone)")
    .option("--max-tokens <n>", "number of tokens to generate (stops early at EOS)", "256")
    .option("--json", "print {text, tokens, tokensPerSecond} as JSON", false)
    .option("--device <cpu|cuda>", "compute device", "cpu")
    .option("--threads <n>", "BLAS and kernel threads (default: all cores)")
    .option("--dequantize", "run a packed checkpoint dequantized to fp32 (the pre-runtime path) instead of on the packed kernels", false)
    .addHelpText("after", `
Examples:
  quant4 generate models/stories260K --max-tokens 256
  quant4 generate out/stories260K-gptq --prompt "Once upon a time" --max-tokens 64`)
    .action(
      action(async (spec: string, raw: unknown) => {
        const o = parseOptions(optionsSchema, raw);
        const dir = await resolveModelArg(spec, { json: o.json });
        const backend = setupBackend(o.device, o.threads);
        const model = Model.load(dir, backend, undefined, { dequantize: o.dequantize });
        const tok = await loadTokenizer(dir);
        const bos = tok.bosId ?? model.arch.bosId;
        const prompt = [...(bos !== null ? [bos] : []), ...(o.prompt ? tok.encode(o.prompt) : [])];
        const t0 = performance.now();
        const ids = generateGreedy(model, prompt, o.maxTokens, tok.eosId ?? model.arch.eosId);
        const secs = (performance.now() - t0) / 1000;
        const text = tok.decode(ids);
        if (o.json) printJson({ text, tokens: ids, tokensPerSecond: ids.length / secs });
        else process.stdout.write(text.endsWith("\n") ? text : text + "\n");
      }),
    );
}
