// The synthetic checkpoint with Llama-2-7B layer shapes (hidden 4096, intermediate 11008, 32 heads,
// vocab 512, random fp16 weights) that bench/quantize.ts and bench/runtime.ts measure on, written with
// the project's own writer and models/stories260K's tokenizer.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { f32ToF16 } from "../src/io/dtype.js";
import { ShardedWriter, atomicWriteFile } from "../src/io/writer.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** Deterministic N(0, std²)-ish values (sum of 4 uniforms, variance-matched); fast enough for 400M values. */
export function randomF16(n: number, std: number, seed: number): Uint16Array {
  const x = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const k = std * Math.sqrt(3); // sum of 4 U(-1,1) has variance 4/3 → scale to std
  for (let i = 0; i < n; i++) {
    let u = 0;
    for (let j = 0; j < 4; j++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      u += (s >>> 0) / 2147483648 - 1;
    }
    x[i] = (u * k) / 2;
  }
  return f32ToF16(x);
}

export function writeSynthetic7b(dir: string, blocks: number, seqlen = 4096): void {
  const hidden = 4096;
  const inter = 11008;
  const vocab = 512;
  fs.mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: blocks,
    num_attention_heads: 32,
    num_key_value_heads: 32,
    vocab_size: vocab,
    max_position_embeddings: Math.max(4096, seqlen),
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    hidden_act: "silu",
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "float16",
    attention_bias: false,
    mlp_bias: false,
  };
  atomicWriteFile(path.join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  fs.copyFileSync(path.join(root, "models/stories260K/tokenizer.model"), path.join(dir, "tokenizer.model"));
  const w = new ShardedWriter(dir, { maxShardBytes: 64e9 });
  let seed = 1;
  const ones = (n: number) => f32ToF16(new Float32Array(n).fill(1));
  try {
    w.add({ name: "model.embed_tokens.weight", dtype: "F16", shape: [vocab, hidden], data: randomF16(vocab * hidden, 1, seed++) });
    for (let i = 0; i < blocks; i++) {
      const p = `model.layers.${i}.`;
      w.add({ name: p + "input_layernorm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
      w.add({ name: p + "post_attention_layernorm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
      for (const n of ["q_proj", "k_proj", "v_proj", "o_proj"])
        w.add({ name: `${p}self_attn.${n}.weight`, dtype: "F16", shape: [hidden, hidden], data: randomF16(hidden * hidden, 0.02, seed++) });
      for (const n of ["gate_proj", "up_proj"])
        w.add({ name: `${p}mlp.${n}.weight`, dtype: "F16", shape: [inter, hidden], data: randomF16(inter * hidden, 0.02, seed++) });
      w.add({ name: `${p}mlp.down_proj.weight`, dtype: "F16", shape: [hidden, inter], data: randomF16(hidden * inter, 0.02, seed++) });
    }
    w.add({ name: "model.norm.weight", dtype: "F16", shape: [hidden], data: ones(hidden) });
    w.add({ name: "lm_head.weight", dtype: "F16", shape: [vocab, hidden], data: randomF16(vocab * hidden, 0.02, seed++) });
    w.finish({ format: "pt" });
  } catch (e) {
    w.abort();
    throw e;
  }
}
