// Shared test utilities: repo and shared-data paths, a CLI runner, temp dirs with cleanup, and a
// builder for tiny synthetic Hugging Face checkpoints (config.json + model.safetensors, random weights)
// of every architecture family, written with HF tensor names and HF layouts independently of
// src/model/architectures.ts.

import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { expect } from "vitest";
import { writeSafetensors } from "../src/io/writer.js";

export const ROOT = path.resolve(import.meta.dirname, "..");
export const SHARED = path.resolve(ROOT, "../shared");
export const STORIES_SHARED = path.join(SHARED, "models/stories260K");
export const STORIES_VENDORED = path.join(ROOT, "models/stories260K");
export const BROWN = path.join(SHARED, "models/brown-llama");
export const TINYSTORIES_TXT = path.join(SHARED, "text/tinystories/stories-sample.txt");

/**
 * Is ../shared (the project's real models and texts) beside the repo? Tests that read it use
 * `describe.skipIf(!hasShared)(withShared("title"), ...)` (or `it.skipIf`) so a bare clone skips them
 * with the reason in the title; nothing may read ../shared at module scope or in a describe body.
 */
export const hasShared = existsSync(path.join(SHARED, "models/stories260K/config.json"));

/** A test title that says why it is skipped on a bare clone. */
export function withShared(title: string): string {
  return hasShared ? title : `${title} [skipped: needs ../shared beside the repo, absent at ${SHARED}]`;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `node --import tsx bin/quant4.ts ...args` from the repo root. Never throws on a non-zero exit. */
export function runCli(args: string[], opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "bin/quant4.ts"), ...args], {
      cwd: opts.cwd ?? ROOT,
      // One BLAS thread: the machine is shared and test files run in parallel.
      env: { ...process.env, OPENBLAS_NUM_THREADS: "1", NO_COLOR: "1", ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 90_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** What the project's hook compares: `tr -s ' \n' ' '` (newlines to spaces, space runs squeezed). */
export function collapseWs(s: string): string {
  return s.replace(/[ \n]+/g, " ");
}

/** The lines of stderr that have any content. */
export function stderrLines(r: CliResult): string[] {
  return r.stderr.split("\n").filter((l) => l.trim() !== "");
}

/**
 * The contract for bad input: exit 2, nothing on stdout, exactly one `quant4: error:` line on stderr
 * (no stack trace, not an internal error) containing each of `mustContain`. Returns the line.
 */
export function expectOneLineError(r: CliResult, ...mustContain: (string | RegExp)[]): string {
  expect(r.code, r.stderr + r.stdout).toBe(2);
  expect(r.stdout).toBe("");
  const lines = stderrLines(r);
  expect(lines, r.stderr).toHaveLength(1);
  const line = lines[0]!;
  expect(line).toMatch(/^quant4: error: /);
  expect(r.stderr).not.toMatch(/\n\s+at |internal error/);
  for (const m of mustContain) typeof m === "string" ? expect(line).toContain(m) : expect(line).toMatch(m);
  return line;
}

// ---------------------------------------------------------------------------------------------
// Temp dirs

const tmpDirs: string[] = [];

/** A fresh temp dir, removed by removeTmpDirs() (call it from afterAll). */
export function makeTmpDir(prefix = "quant4-test-"): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

export function removeTmpDirs(): void {
  for (const d of tmpDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** Copy a model directory into a new temp dir and return the copy's path. */
export function copyModel(src: string, name = path.basename(src)): string {
  const dst = path.join(makeTmpDir(), name);
  cpSync(src, dst, { recursive: true });
  return dst;
}

// ---------------------------------------------------------------------------------------------
// Synthetic checkpoints

/** The project's seeded PRNG (mulberry32), floats in [0, 1). */
import { mulberry32 as rng } from "../src/calibration/sampler.js";
export { rng };

/** Standard normal samples (Box–Muller) from a uniform source. */
export function gaussian(rand: () => number): () => number {
  return () => {
    const u = Math.max(rand(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
}

/** `n` seeded normal samples × `std` (Box–Muller, both outputs of each pair used), as a Float32Array. */
export function gaussianArray(n: number, seed: number, std = 1): Float32Array {
  const u = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u() + 1e-12));
    const t = 2 * Math.PI * u();
    a[i] = std * r * Math.cos(t);
    if (i + 1 < n) a[i + 1] = std * r * Math.sin(t);
  }
  return a;
}

export type SyntheticKind = "opt" | "gpt2" | "qwen2" | "llama3";

export interface SyntheticModel {
  dir: string;
  config: Record<string, unknown>;
  /** Every tensor written, by its HF name, with its on-disk shape (GPT-2 Conv1D weights are [in, out]). */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

// Tiny dimensions shared by every synthetic model: 4 heads of 8, 2 layers.
const H = 32;
const HEADS = 4;
const FFN = 48;
const LAYERS = 2;
const VOCAB = 96;
const CTX = 64;

/** Config of a tiny model of `kind`, in the HF config.json schema of that model type. */
export function syntheticConfig(kind: SyntheticKind): Record<string, unknown> {
  switch (kind) {
    case "opt":
      return {
        architectures: ["OPTForCausalLM"], model_type: "opt", hidden_size: H, ffn_dim: FFN, num_hidden_layers: LAYERS,
        num_attention_heads: HEADS, vocab_size: VOCAB, max_position_embeddings: CTX, word_embed_proj_dim: H,
        do_layer_norm_before: true, activation_function: "relu", enable_bias: true, bos_token_id: 2, eos_token_id: 2, pad_token_id: 1,
      };
    case "gpt2":
      return {
        architectures: ["GPT2LMHeadModel"], model_type: "gpt2", n_embd: H, n_layer: LAYERS, n_head: HEADS, n_inner: null,
        n_positions: CTX, n_ctx: CTX, vocab_size: VOCAB, layer_norm_epsilon: 1e-5, activation_function: "gelu_new",
        bos_token_id: VOCAB - 1, eos_token_id: VOCAB - 1,
      };
    case "qwen2":
      return {
        architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", hidden_size: H, intermediate_size: FFN, num_hidden_layers: LAYERS,
        num_attention_heads: HEADS, num_key_value_heads: 2, vocab_size: VOCAB, max_position_embeddings: CTX, rms_norm_eps: 1e-6,
        rope_theta: 10000, hidden_act: "silu", tie_word_embeddings: false, bos_token_id: 0, eos_token_id: 1,
      };
    case "llama3":
      // original_max_position_embeddings 64 with theta 1e4 and head_dim 8 puts one frequency in each
      // branch of the llama3 rule (kept, smoothed, divided by factor).
      return {
        architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: H, intermediate_size: FFN, num_hidden_layers: LAYERS,
        num_attention_heads: HEADS, num_key_value_heads: 2, vocab_size: VOCAB, max_position_embeddings: 2 * CTX, rms_norm_eps: 1e-5,
        rope_theta: 10000, hidden_act: "silu", tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2,
        rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
      };
  }
}

/** HF tensor names and on-disk shapes of a tiny model of `kind`. */
function syntheticShapes(kind: SyntheticKind): [string, number[]][] {
  const t: [string, number[]][] = [];
  if (kind === "opt") {
    const p = "model.decoder.";
    t.push([`${p}embed_tokens.weight`, [VOCAB, H]], [`${p}embed_positions.weight`, [CTX + 2, H]]);
    for (let i = 0; i < LAYERS; i++) {
      const b = `${p}layers.${i}.`;
      for (const l of ["q_proj", "k_proj", "v_proj", "out_proj"]) t.push([`${b}self_attn.${l}.weight`, [H, H]], [`${b}self_attn.${l}.bias`, [H]]);
      t.push([`${b}self_attn_layer_norm.weight`, [H]], [`${b}self_attn_layer_norm.bias`, [H]]);
      t.push([`${b}fc1.weight`, [FFN, H]], [`${b}fc1.bias`, [FFN]], [`${b}fc2.weight`, [H, FFN]], [`${b}fc2.bias`, [H]]);
      t.push([`${b}final_layer_norm.weight`, [H]], [`${b}final_layer_norm.bias`, [H]]);
    }
    t.push([`${p}final_layer_norm.weight`, [H]], [`${p}final_layer_norm.bias`, [H]]);
  } else if (kind === "gpt2") {
    // Hub-style names (no "transformer." prefix); Conv1D weights are [in, out].
    t.push(["wte.weight", [VOCAB, H]], ["wpe.weight", [CTX, H]]);
    for (let i = 0; i < LAYERS; i++) {
      const b = `h.${i}.`;
      t.push([`${b}ln_1.weight`, [H]], [`${b}ln_1.bias`, [H]]);
      t.push([`${b}attn.c_attn.weight`, [H, 3 * H]], [`${b}attn.c_attn.bias`, [3 * H]]);
      t.push([`${b}attn.c_proj.weight`, [H, H]], [`${b}attn.c_proj.bias`, [H]]);
      t.push([`${b}ln_2.weight`, [H]], [`${b}ln_2.bias`, [H]]);
      t.push([`${b}mlp.c_fc.weight`, [H, 4 * H]], [`${b}mlp.c_fc.bias`, [4 * H]]);
      t.push([`${b}mlp.c_proj.weight`, [4 * H, H]], [`${b}mlp.c_proj.bias`, [H]]);
    }
    t.push(["ln_f.weight", [H]], ["ln_f.bias", [H]]);
  } else {
    const kv = 2 * (H / HEADS);
    t.push(["model.embed_tokens.weight", [VOCAB, H]]);
    for (let i = 0; i < LAYERS; i++) {
      const b = `model.layers.${i}.`;
      t.push([`${b}input_layernorm.weight`, [H]]);
      t.push([`${b}self_attn.q_proj.weight`, [H, H]], [`${b}self_attn.k_proj.weight`, [kv, H]], [`${b}self_attn.v_proj.weight`, [kv, H]]);
      if (kind === "qwen2") t.push([`${b}self_attn.q_proj.bias`, [H]], [`${b}self_attn.k_proj.bias`, [kv]], [`${b}self_attn.v_proj.bias`, [kv]]);
      t.push([`${b}self_attn.o_proj.weight`, [H, H]], [`${b}post_attention_layernorm.weight`, [H]]);
      t.push([`${b}mlp.gate_proj.weight`, [FFN, H]], [`${b}mlp.up_proj.weight`, [FFN, H]], [`${b}mlp.down_proj.weight`, [H, FFN]]);
    }
    t.push(["model.norm.weight", [H]]);
    if (kind === "qwen2") t.push(["lm_head.weight", [VOCAB, H]]);
  }
  return t;
}

/**
 * Write a tiny random-weight checkpoint of `kind` into `dir` (created if needed): config.json and
 * model.safetensors (fp32). Weights are scaled so activations stay O(1) and attention is not uniform.
 */
export function writeSyntheticModel(dir: string, kind: SyntheticKind, seed = 1234): SyntheticModel {
  mkdirSync(dir, { recursive: true });
  const config = syntheticConfig(kind);
  const g = gaussian(rng(seed));
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of syntheticShapes(kind)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const isNorm = /(norm|ln_\d|ln_f)\.weight$/.test(name);
    let std: number;
    if (isNorm) std = 0.1;
    else if (name.endsWith(".bias")) std = 0.1;
    else if (/embed_tokens|wte|lm_head/.test(name)) std = 1;
    else if (/embed_positions|wpe/.test(name)) std = 0.5;
    else {
      // A Linear: fan-in is the last dim in PyTorch layout, the first in GPT-2's Conv1D layout.
      const fanIn = kind === "gpt2" ? shape[0]! : shape[shape.length - 1]!;
      std = 1.5 / Math.sqrt(fanIn);
    }
    for (let i = 0; i < n; i++) data[i] = (isNorm ? 1 : 0) + std * g();
    tensors.set(name, { shape, data });
  }
  writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  writeSafetensors(
    path.join(dir, "model.safetensors"),
    [...tensors].map(([name, t]) => ({ name, dtype: "F32" as const, shape: t.shape, data: t.data })),
    { format: "pt" },
  );
  return { dir, config, tensors };
}
