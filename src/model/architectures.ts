// Architecture registry: maps a Hugging Face `config.json` (validated with zod) to an ArchSpec, a plain
// data description of the decoder (tensor names, norms, linears in true-sequential order, positional
// scheme). The forward pass and the quantize pipeline are written once against ArchSpec; adding an
// architecture means adding a row here, never a new driver.

import { z } from "zod";
import { ModelError } from "../util/errors.js";

export type NormKind = "rms" | "layer";
export type Activation = "silu" | "relu" | "gelu_new" | "gelu";

export interface RopeSpec {
  theta: number;
  /** rope_scaling as in HF: linear divides positions by factor; llama3 reshapes the frequencies. */
  scaling:
    | null
    | { type: "linear"; factor: number }
    | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };
}

/** A Linear inside a decoder block, named relative to the block prefix (e.g. "self_attn.q_proj"). */
export interface LinearSpec {
  name: string;
  out: number;
  in: number;
  bias: boolean;
}

export interface NormSpec {
  weight: string;
  bias?: string;
}

/**
 * An exact activation-aware rescaling (AWQ): Linears sharing one input get their input columns multiplied
 * by s, and what produces that input is divided by s — a norm's weight (and bias), or a Linear's output
 * rows (and bias) followed by nothing or a positively homogeneous op (ReLU, attention's weighted sum of
 * v, the gate·up product). The model's function is unchanged; only where quantization error falls moves.
 */
export interface ScalePair {
  prev: { kind: "norm"; norm: NormSpec } | { kind: "linear"; name: string };
  linears: string[];
  /** The module whose output scores a candidate scale: the attention half, the MLP half, or the Linears alone. */
  scoreOn: "attn" | "mlp" | "linears";
}

export interface ArchSpec {
  modelType: string;
  family: "llama" | "opt" | "gpt2";
  hidden: number;
  intermediate: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  normKind: NormKind;
  normEps: number;
  activation: Activation;
  /** gated: down(act(gate(x)) * up(x)); plain: fc2(act(fc1(x))). */
  mlp: "gated" | "plain";
  positional: { kind: "rope"; rope: RopeSpec } | { kind: "learned"; tensor: string; offset: number };
  /** Prefix of block i's tensors, e.g. "model.layers.3.". */
  blockPrefix(i: number): string;
  /** The block's attention linears. GPT-2 has one fused qkv Linear. */
  attn: { q: string; k: string; v: string; o: string } | { qkv: string; o: string };
  mlpLinears: { gate?: string; up: string; down: string };
  linears: LinearSpec[];
  /** Linears grouped in true-sequential order: a group's input depends only on earlier groups, and all Linears of a group share that input. */
  sequentialGroups: string[][];
  /** AWQ's scalable pairs, in block order; only folds that are exact for this architecture are listed. */
  scalePairs: ScalePair[];
  attnNorm: NormSpec;
  mlpNorm: NormSpec;
  embedTokens: string;
  finalNorm: NormSpec;
  /** Tensor of the LM head; equals embedTokens when tied. */
  lmHead: string;
  tiedLmHead: boolean;
  /** Stored weights are [in, out] (GPT-2 Conv1D) and are transposed to [out, in] on load. */
  transposedLinears: boolean;
  bosId: number | null;
  eosId: number | null;
}

const positiveInt = z.number().int().positive();

const ropeScalingSchema = z
  .object({
    type: z.string().optional(),
    rope_type: z.string().optional(),
    factor: z.number().positive().optional(),
    low_freq_factor: z.number().optional(),
    high_freq_factor: z.number().optional(),
    original_max_position_embeddings: z.number().int().optional(),
  })
  .passthrough()
  .nullable()
  .optional();

const llamaSchema = z
  .object({
    model_type: z.enum(["llama", "mistral", "qwen2"]),
    hidden_size: positiveInt,
    intermediate_size: positiveInt,
    num_hidden_layers: positiveInt,
    num_attention_heads: positiveInt,
    num_key_value_heads: positiveInt.optional(),
    head_dim: positiveInt.nullable().optional(),
    vocab_size: positiveInt,
    max_position_embeddings: positiveInt.optional(),
    rms_norm_eps: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_scaling: ropeScalingSchema,
    hidden_act: z.string().optional(),
    tie_word_embeddings: z.boolean().optional(),
    attention_bias: z.boolean().optional(),
    mlp_bias: z.boolean().optional(),
    bos_token_id: z.number().int().nullable().optional(),
    eos_token_id: z.union([z.number().int(), z.array(z.number().int())]).nullable().optional(),
  })
  .passthrough();

const optSchema = z
  .object({
    model_type: z.literal("opt"),
    hidden_size: positiveInt,
    ffn_dim: positiveInt,
    num_hidden_layers: positiveInt,
    num_attention_heads: positiveInt,
    vocab_size: positiveInt,
    max_position_embeddings: positiveInt,
    word_embed_proj_dim: positiveInt.optional(),
    do_layer_norm_before: z.boolean().optional(),
    activation_function: z.string().optional(),
    enable_bias: z.boolean().optional(),
    tie_word_embeddings: z.boolean().optional(),
    bos_token_id: z.number().int().nullable().optional(),
    eos_token_id: z.number().int().nullable().optional(),
  })
  .passthrough();

const gpt2Schema = z
  .object({
    model_type: z.literal("gpt2"),
    n_embd: positiveInt,
    n_layer: positiveInt,
    n_head: positiveInt,
    n_inner: positiveInt.nullable().optional(),
    n_positions: positiveInt,
    vocab_size: positiveInt,
    layer_norm_epsilon: z.number().positive().optional(),
    activation_function: z.string().optional(),
    bos_token_id: z.number().int().nullable().optional(),
    eos_token_id: z.number().int().nullable().optional(),
  })
  .passthrough();

function firstId(v: number | number[] | null | undefined): number | null {
  if (v === undefined || v === null) return null;
  return Array.isArray(v) ? (v[0] ?? null) : v;
}

function activationOf(name: string | undefined, fallback: Activation, file: string): Activation {
  const a = name ?? fallback;
  if (a === "silu" || a === "swish") return "silu";
  if (a === "relu") return "relu";
  if (a === "gelu_new" || a === "gelu_pytorch_tanh") return "gelu_new";
  if (a === "gelu") return "gelu";
  throw new ModelError(`${file}: unsupported activation "${a}" (supported: silu, relu, gelu, gelu_new)`);
}

function parse<T>(schema: z.ZodType<T>, raw: unknown, file: string): T {
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new ModelError(`${file}: invalid config: ${issue.path.join(".") || "(root)"}: ${issue.message}`);
  }
  return r.data;
}

function llamaArch(raw: unknown, file: string, names: Set<string>): ArchSpec {
  const c = parse(llamaSchema, raw, file);
  const nHeads = c.num_attention_heads;
  const nKvHeads = c.num_key_value_heads ?? nHeads;
  const headDim = c.head_dim ?? c.hidden_size / nHeads;
  if (!Number.isInteger(headDim)) throw new ModelError(`${file}: hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${nHeads}`);
  if (nHeads % nKvHeads !== 0) throw new ModelError(`${file}: num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKvHeads}`);
  const h = c.hidden_size;
  const qkvBias = c.model_type === "qwen2" ? true : (c.attention_bias ?? false);
  const mlpBias = c.mlp_bias ?? false;
  let scaling: RopeSpec["scaling"] = null;
  if (c.rope_scaling) {
    const t = c.rope_scaling.rope_type ?? c.rope_scaling.type ?? "default";
    const factor = c.rope_scaling.factor ?? 1;
    if (t === "linear") scaling = { type: "linear", factor };
    else if (t === "llama3")
      scaling = {
        type: "llama3",
        factor,
        lowFreqFactor: c.rope_scaling.low_freq_factor ?? 1,
        highFreqFactor: c.rope_scaling.high_freq_factor ?? 4,
        originalMaxPositions: c.rope_scaling.original_max_position_embeddings ?? 8192,
      };
    else if (t !== "default") throw new ModelError(`${file}: unsupported rope_scaling type "${t}" (supported: linear, llama3)`);
  }
  // tie_word_embeddings defaults to false for Llama in HF; a checkpoint without lm_head.weight is tied anyway.
  const tied = c.tie_word_embeddings ?? !names.has("lm_head.weight");
  const kv = nKvHeads * headDim;
  const linears: LinearSpec[] = [
    { name: "self_attn.q_proj", out: nHeads * headDim, in: h, bias: qkvBias },
    { name: "self_attn.k_proj", out: kv, in: h, bias: qkvBias },
    { name: "self_attn.v_proj", out: kv, in: h, bias: qkvBias },
    { name: "self_attn.o_proj", out: h, in: nHeads * headDim, bias: c.model_type === "qwen2" ? false : (c.attention_bias ?? false) },
    { name: "mlp.gate_proj", out: c.intermediate_size, in: h, bias: mlpBias },
    { name: "mlp.up_proj", out: c.intermediate_size, in: h, bias: mlpBias },
    { name: "mlp.down_proj", out: h, in: c.intermediate_size, bias: mlpBias },
  ];
  return {
    modelType: c.model_type,
    family: "llama",
    hidden: h,
    intermediate: c.intermediate_size,
    nLayers: c.num_hidden_layers,
    nHeads,
    nKvHeads,
    headDim,
    vocabSize: c.vocab_size,
    maxPositions: c.max_position_embeddings ?? 2048,
    normKind: "rms",
    normEps: c.rms_norm_eps ?? 1e-6,
    activation: activationOf(c.hidden_act, "silu", file),
    mlp: "gated",
    positional: { kind: "rope", rope: { theta: c.rope_theta ?? 10000, scaling } },
    blockPrefix: (i) => `model.layers.${i}.`,
    attn: { q: "self_attn.q_proj", k: "self_attn.k_proj", v: "self_attn.v_proj", o: "self_attn.o_proj" },
    mlpLinears: { gate: "mlp.gate_proj", up: "mlp.up_proj", down: "mlp.down_proj" },
    linears,
    sequentialGroups: [
      ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
      ["self_attn.o_proj"],
      ["mlp.gate_proj", "mlp.up_proj"],
      ["mlp.down_proj"],
    ],
    // llm-awq auto_scale.py's Llama pairs; o ← v only without GQA (a v row then feeds exactly one o column).
    scalePairs: [
      { prev: { kind: "norm", norm: { weight: "input_layernorm.weight" } }, linears: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], scoreOn: "attn" },
      ...(nKvHeads === nHeads ? [{ prev: { kind: "linear" as const, name: "self_attn.v_proj" }, linears: ["self_attn.o_proj"], scoreOn: "linears" as const }] : []),
      { prev: { kind: "norm", norm: { weight: "post_attention_layernorm.weight" } }, linears: ["mlp.gate_proj", "mlp.up_proj"], scoreOn: "mlp" },
      { prev: { kind: "linear", name: "mlp.up_proj" }, linears: ["mlp.down_proj"], scoreOn: "linears" },
    ],
    attnNorm: { weight: "input_layernorm.weight" },
    mlpNorm: { weight: "post_attention_layernorm.weight" },
    embedTokens: "model.embed_tokens.weight",
    finalNorm: { weight: "model.norm.weight" },
    lmHead: tied ? "model.embed_tokens.weight" : "lm_head.weight",
    tiedLmHead: tied,
    transposedLinears: false,
    bosId: firstId(c.bos_token_id),
    eosId: firstId(c.eos_token_id),
  };
}

function optArch(raw: unknown, file: string): ArchSpec {
  const c = parse(optSchema, raw, file);
  const h = c.hidden_size;
  if (c.word_embed_proj_dim !== undefined && c.word_embed_proj_dim !== h)
    throw new ModelError(`${file}: OPT with word_embed_proj_dim ${c.word_embed_proj_dim} != hidden_size ${h} (project_in/out, as in OPT-350m) is not supported`);
  if (c.do_layer_norm_before === false)
    throw new ModelError(`${file}: OPT with do_layer_norm_before=false (post-norm, as in OPT-350m) is not supported`);
  const bias = c.enable_bias ?? true;
  const headDim = h / c.num_attention_heads;
  const optAct = activationOf(c.activation_function, "relu", file);
  const p = "model.decoder.";
  return {
    modelType: "opt",
    family: "opt",
    hidden: h,
    intermediate: c.ffn_dim,
    nLayers: c.num_hidden_layers,
    nHeads: c.num_attention_heads,
    nKvHeads: c.num_attention_heads,
    headDim,
    vocabSize: c.vocab_size,
    maxPositions: c.max_position_embeddings,
    normKind: "layer",
    normEps: 1e-5,
    activation: optAct,
    mlp: "plain",
    positional: { kind: "learned", tensor: `${p}embed_positions.weight`, offset: 2 },
    blockPrefix: (i) => `${p}layers.${i}.`,
    attn: { q: "self_attn.q_proj", k: "self_attn.k_proj", v: "self_attn.v_proj", o: "self_attn.out_proj" },
    mlpLinears: { up: "fc1", down: "fc2" },
    linears: [
      { name: "self_attn.q_proj", out: h, in: h, bias },
      { name: "self_attn.k_proj", out: h, in: h, bias },
      { name: "self_attn.v_proj", out: h, in: h, bias },
      { name: "self_attn.out_proj", out: h, in: h, bias },
      { name: "fc1", out: c.ffn_dim, in: h, bias },
      { name: "fc2", out: h, in: c.ffn_dim, bias },
    ],
    sequentialGroups: [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"], ["fc1"], ["fc2"]],
    // llm-awq auto_scale.py's OPT pairs; fc2 ← fc1 is exact only through ReLU (relu(x/s) = relu(x)/s).
    scalePairs: [
      { prev: { kind: "norm", norm: { weight: "self_attn_layer_norm.weight", bias: "self_attn_layer_norm.bias" } }, linears: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], scoreOn: "attn" },
      { prev: { kind: "linear", name: "self_attn.v_proj" }, linears: ["self_attn.out_proj"], scoreOn: "linears" },
      { prev: { kind: "norm", norm: { weight: "final_layer_norm.weight", bias: "final_layer_norm.bias" } }, linears: ["fc1"], scoreOn: "linears" },
      ...(optAct === "relu" ? [{ prev: { kind: "linear" as const, name: "fc1" }, linears: ["fc2"], scoreOn: "linears" as const }] : []),
    ],
    attnNorm: { weight: "self_attn_layer_norm.weight", bias: "self_attn_layer_norm.bias" },
    mlpNorm: { weight: "final_layer_norm.weight", bias: "final_layer_norm.bias" },
    embedTokens: `${p}embed_tokens.weight`,
    finalNorm: { weight: `${p}final_layer_norm.weight`, bias: `${p}final_layer_norm.bias` },
    lmHead: `${p}embed_tokens.weight`,
    tiedLmHead: true,
    transposedLinears: false,
    bosId: c.bos_token_id ?? 2,
    eosId: c.eos_token_id ?? 2,
  };
}

function gpt2Arch(raw: unknown, file: string, names: Set<string>): ArchSpec {
  const c = parse(gpt2Schema, raw, file);
  const h = c.n_embd;
  const inner = c.n_inner ?? 4 * h;
  // The original gpt2 checkpoints store tensors without the "transformer." prefix.
  const p = names.has("transformer.wte.weight") ? "transformer." : "";
  return {
    modelType: "gpt2",
    family: "gpt2",
    hidden: h,
    intermediate: inner,
    nLayers: c.n_layer,
    nHeads: c.n_head,
    nKvHeads: c.n_head,
    headDim: h / c.n_head,
    vocabSize: c.vocab_size,
    maxPositions: c.n_positions,
    normKind: "layer",
    normEps: c.layer_norm_epsilon ?? 1e-5,
    activation: activationOf(c.activation_function, "gelu_new", file),
    mlp: "plain",
    positional: { kind: "learned", tensor: `${p}wpe.weight`, offset: 0 },
    blockPrefix: (i) => `${p}h.${i}.`,
    attn: { qkv: "attn.c_attn", o: "attn.c_proj" },
    mlpLinears: { up: "mlp.c_fc", down: "mlp.c_proj" },
    linears: [
      { name: "attn.c_attn", out: 3 * h, in: h, bias: true },
      { name: "attn.c_proj", out: h, in: h, bias: true },
      { name: "mlp.c_fc", out: inner, in: h, bias: true },
      { name: "mlp.c_proj", out: h, in: inner, bias: true },
    ],
    sequentialGroups: [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]],
    // The norms only: GELU is not homogeneous (c_proj ← c_fc would change the function), and folding
    // into the v third of the fused c_attn is not done.
    scalePairs: [
      { prev: { kind: "norm", norm: { weight: "ln_1.weight", bias: "ln_1.bias" } }, linears: ["attn.c_attn"], scoreOn: "attn" },
      { prev: { kind: "norm", norm: { weight: "ln_2.weight", bias: "ln_2.bias" } }, linears: ["mlp.c_fc"], scoreOn: "mlp" },
    ],
    attnNorm: { weight: "ln_1.weight", bias: "ln_1.bias" },
    mlpNorm: { weight: "ln_2.weight", bias: "ln_2.bias" },
    embedTokens: `${p}wte.weight`,
    finalNorm: { weight: `${p}ln_f.weight`, bias: `${p}ln_f.bias` },
    lmHead: `${p}wte.weight`,
    tiedLmHead: true,
    transposedLinears: true,
    bosId: c.bos_token_id ?? 50256,
    eosId: c.eos_token_id ?? 50256,
  };
}

type ArchBuilder = (raw: unknown, file: string, names: Set<string>) => ArchSpec;

const REGISTRY: Record<string, ArchBuilder> = {
  llama: llamaArch,
  mistral: llamaArch,
  qwen2: llamaArch,
  opt: optArch,
  gpt2: gpt2Arch,
};

export const SUPPORTED_MODEL_TYPES = Object.keys(REGISTRY);

/**
 * Build the ArchSpec for a parsed config.json. `tensorNames` (the checkpoint's tensor names) resolves
 * details configs leave implicit (tied heads, GPT-2 prefixes).
 */
export function resolveArchitecture(rawConfig: unknown, file: string, tensorNames: Iterable<string>): ArchSpec {
  const mt = (rawConfig as { model_type?: unknown } | null)?.model_type;
  if (typeof mt !== "string") throw new ModelError(`${file}: config has no "model_type" (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`);
  const builder = REGISTRY[mt];
  if (!builder) throw new ModelError(`${file}: unsupported model_type "${mt}" (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`);
  return builder(rawConfig, file, new Set(tensorNames));
}
