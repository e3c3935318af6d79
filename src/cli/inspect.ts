// `quant4 inspect`: what a checkpoint holds (architecture, parameters, tensors, dtypes, quantization).

import fs from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { z } from "zod";
import { openModel, linearQuantSettings, validateModel } from "../model/model.js";
import { DTYPE_SIZE } from "../io/types.js";
import { action, resolveModelArg, fmtBytes, parseOptions, printJson } from "./common.js";

const optionsSchema = z.object({ json: z.boolean().default(false), tensors: z.boolean().default(false) });

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("Show a checkpoint's architecture, parameter count, tensors, dtypes and quantization config")
    .argument("<model-dir>", "model directory")
    .option("--tensors", "list every tensor (name, dtype, shape, bytes)", false)
    .option("--json", "print everything as JSON", false)
    .addHelpText("after", `
Example:
  quant4 inspect models/stories260K --tensors`)
    .action(
      action(async (spec: string, raw: unknown) => {
        const o = parseOptions(optionsSchema, raw);
        const dir = await resolveModelArg(spec, { json: o.json });
        const src = openModel(dir);
        validateModel(src); // packed Linears through the same unpack validation inference uses; float dtypes
        const a = src.arch;
        const tensors = src.ckpt.names().map((n) => {
          const i = src.ckpt.info(n);
          const elements = i.shape.reduce((x, y) => x * y, 1);
          return { name: n, dtype: i.dtype, shape: i.shape, bytes: elements * DTYPE_SIZE[i.dtype], elements, file: path.basename(i.file) };
        });
        const dtypes: Record<string, { tensors: number; bytes: number }> = {};
        for (const t of tensors) {
          const d = (dtypes[t.dtype] ??= { tensors: 0, bytes: 0 });
          d.tensors++;
          d.bytes += t.bytes;
        }
        // Parameters of the fp model this checkpoint represents: a packed Linear counts as out×in, and
        // its packed tensors (as its format declares them) do not count.
        const packed = new Set<string>();
        let quantizedLinears = 0;
        let params = 0;
        for (let b = 0; b < a.nLayers; b++)
          for (const l of a.linears) {
            const full = a.blockPrefix(b) + l.name;
            const settings = linearQuantSettings(src, full);
            if (!settings) continue;
            for (const p of src.quant!.format.paramInfo(full, { out: l.out, in: l.in }, settings)) packed.add(p.name);
            params += l.out * l.in;
            quantizedLinears++;
          }
        for (const t of tensors) if (!packed.has(t.name)) params += t.elements;
        const fileBytes = src.ckpt.files.reduce((s, f) => s + fs.statSync(f).size, 0);
        const summary = {
          dir,
          modelType: a.modelType,
          architecture: {
            layers: a.nLayers, hidden: a.hidden, intermediate: a.intermediate, heads: a.nHeads, kvHeads: a.nKvHeads,
            headDim: a.headDim, vocab: a.vocabSize, context: a.maxPositions, norm: a.normKind, activation: a.activation,
            positional: a.positional.kind, tiedLmHead: a.tiedLmHead,
          },
          parameters: params,
          files: src.ckpt.files.map((f) => path.basename(f)),
          fileBytes,
          dtypes,
          quantization: src.quant ? { format: src.quant.format.name, config: src.quant.config, quantizedLinears, totalLinears: a.nLayers * a.linears.length } : null,
          tensors: o.tensors || o.json ? tensors : undefined,
        };
        src.ckpt.close();
        if (o.json) return printJson(summary);
        const out: string[] = [];
        out.push(`${dir}: ${a.modelType} (${a.family} family), ${(params / 1e6).toFixed(2)}M parameters, ${fmtBytes(fileBytes)} in ${summary.files.length} file(s)`);
        out.push(`  layers ${a.nLayers}, hidden ${a.hidden}, intermediate ${a.intermediate}, heads ${a.nHeads} (kv ${a.nKvHeads}, head_dim ${a.headDim}), vocab ${a.vocabSize}, context ${a.maxPositions}`);
        out.push(`  ${a.normKind === "rms" ? "RMSNorm" : "LayerNorm"}, ${a.activation}, ${a.positional.kind === "rope" ? "RoPE" : "learned positions"}, lm_head ${a.tiedLmHead ? "tied to embeddings" : "separate"}`);
        out.push(`  dtypes: ${Object.entries(dtypes).map(([d, v]) => `${d} ${v.tensors} tensors ${fmtBytes(v.bytes)}`).join(", ")}`);
        if (src.quant) out.push(`  quantization: ${src.quant.format.name}, ${quantizedLinears}/${a.nLayers * a.linears.length} linears packed; config ${JSON.stringify(src.quant.config)}`);
        else out.push(`  quantization: none`);
        if (o.tensors) for (const t of tensors) out.push(`  ${t.name}  ${t.dtype}  [${t.shape.join(", ")}]  ${fmtBytes(t.bytes)}`);
        process.stdout.write(out.join("\n") + "\n");
      }),
    );
}
