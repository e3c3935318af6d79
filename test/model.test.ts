// The fp32 reference inference path, in process: the published greedy sample and perplexity of
// stories260K, an independent float64 re-implementation of each architecture family (written from
// the Hugging Face modeling code, reading tensors by their HF names) checked against Model.forward,
// KV-cache and batching consistency, and generateGreedy's stopping rules.

import { readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getBackend } from "../src/compute/index.js";
import { resolveText } from "../src/calibration/texts.js";
import { evaluatePerplexity } from "../src/eval/perplexity.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import { argmax, generateGreedy } from "../src/model/generate.js";
import { Model } from "../src/model/model.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { ModelError } from "../src/util/errors.js";
import {
  collapseWs,
  hasShared,
  makeTmpDir,
  removeTmpDirs,
  rng,
  ROOT,
  STORIES_SHARED,
  STORIES_VENDORED,
  TINYSTORIES_TXT,
  withShared,
  writeSyntheticModel,
  type SyntheticKind,
} from "./helpers.js";

const backend = getBackend("cpu");
// One BLAS thread: the CI machine has 2 cores and test files run side by side.
backend.setThreads(1);
afterAll(removeTmpDirs);

// ---------------------------------------------------------------------------------------------
// An independent float64 forward pass, straight from the HF modeling files (LlamaForCausalLM /
// Qwen2ForCausalLM, OPTForCausalLM, GPT2LMHeadModel). Slow and simple on purpose.

type Cfg = Record<string, any>;
type Vec = Float64Array;

function matvec(x: Vec, W: Float32Array, out: number, inF: number, bias?: Float32Array, conv1d = false): Vec {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = bias ? bias[o]! : 0;
    if (conv1d) for (let i = 0; i < inF; i++) s += x[i]! * W[i * out + o]!; // Conv1D weight is [in, out]
    else for (let i = 0; i < inF; i++) s += x[i]! * W[o * inF + i]!;
    y[o] = s;
  }
  return y;
}

function rmsNormRef(x: Vec, w: Float32Array, eps: number): Vec {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]!);
}

function layerNormRef(x: Vec, w: Float32Array, b: Float32Array, eps: number): Vec {
  const n = x.length;
  const mean = x.reduce((a, v) => a + v, 0) / n;
  const varr = x.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
  const inv = 1 / Math.sqrt(varr + eps);
  return x.map((v, i) => (v - mean) * inv * w[i]! + b[i]!);
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const geluNew = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));

/** HF _compute_default_rope_parameters / _compute_llama3_parameters. */
function invFreqRef(cfg: Cfg, d: number): number[] {
  const base = cfg.rope_theta ?? 10000;
  const inv = Array.from({ length: d / 2 }, (_, i) => 1 / base ** ((2 * i) / d));
  const rs = cfg.rope_scaling;
  if (!rs || (rs.rope_type ?? rs.type) !== "llama3") return inv;
  const { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings: old } = rs;
  const lowWl = old / lo;
  const highWl = old / hi;
  return inv.map((f) => {
    const wl = (2 * Math.PI) / f;
    const scaled = wl > lowWl ? f / factor : f;
    if (wl < highWl || wl > lowWl) return scaled;
    const smooth = (old / wl - lo) / (hi - lo);
    return (1 - smooth) * (scaled / factor) + smooth * scaled;
  });
}

/** apply_rotary_pos_emb with rotate_half, per head, in place. */
function ropeRef(x: Vec, nHeads: number, d: number, pos: number, invFreq: number[]): void {
  const half = d / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * d;
    for (let i = 0; i < half; i++) {
      const c = Math.cos(pos * invFreq[i]!);
      const s = Math.sin(pos * invFreq[i]!);
      const a = x[o + i]!;
      const b = x[o + i + half]!;
      x[o + i] = a * c - b * s;
      x[o + i + half] = b * c + a * s;
    }
  }
}

/** Causal multi-head attention with GQA (query head h reads kv head floor(h / (nH / nKv))). */
function attendRef(q: Vec[], k: Vec[], v: Vec[], nH: number, nKv: number, d: number): Vec[] {
  return q.map((qt, t) => {
    const out = new Float64Array(nH * d);
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / (nH / nKv));
      const s = [];
      for (let j = 0; j <= t; j++) {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += qt[h * d + i]! * k[j]![kh * d + i]!;
        s.push(dot / Math.sqrt(d));
      }
      const m = Math.max(...s);
      const e = s.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0);
      for (let j = 0; j <= t; j++) for (let i = 0; i < d; i++) out[h * d + i] += (e[j]! / z) * v[j]![kh * d + i]!;
    }
    return out;
  });
}

const add = (a: Vec, b: Vec): Vec => a.map((x, i) => x + b[i]!);

/** Logits [T, vocab] (float64) of one sequence, from first principles. */
function referenceLogits(cfg: Cfg, get: (name: string) => Float32Array | undefined, tokens: number[]): Float64Array {
  const must = (n: string): Float32Array => {
    const t = get(n);
    if (!t) throw new Error(`reference: tensor ${n} missing`);
    return t;
  };
  const mt = cfg.model_type as string;
  let xs: Vec[];
  let V: number, h: number, lmHead: Float32Array;
  if (mt === "llama" || mt === "qwen2") {
    h = cfg.hidden_size;
    V = cfg.vocab_size;
    const nH = cfg.num_attention_heads, nKv = cfg.num_key_value_heads ?? nH, d = cfg.head_dim ?? h / nH;
    const I = cfg.intermediate_size, eps = cfg.rms_norm_eps;
    const invFreq = invFreqRef(cfg, d);
    const emb = must("model.embed_tokens.weight");
    xs = tokens.map((id) => Float64Array.from(emb.subarray(id * h, id * h + h)));
    for (let l = 0; l < cfg.num_hidden_layers; l++) {
      const p = `model.layers.${l}.`;
      const a = xs.map((x) => rmsNormRef(x, must(p + "input_layernorm.weight"), eps));
      const proj = (n: string, out: number) => a.map((x) => matvec(x, must(`${p}self_attn.${n}.weight`), out, h, get(`${p}self_attn.${n}.bias`)));
      const q = proj("q_proj", nH * d), k = proj("k_proj", nKv * d), v = proj("v_proj", nKv * d);
      q.forEach((x, t) => ropeRef(x, nH, d, t, invFreq));
      k.forEach((x, t) => ropeRef(x, nKv, d, t, invFreq));
      const att = attendRef(q, k, v, nH, nKv, d);
      xs = xs.map((x, t) => add(x, matvec(att[t]!, must(p + "self_attn.o_proj.weight"), h, nH * d)));
      xs = xs.map((x) => {
        const m = rmsNormRef(x, must(p + "post_attention_layernorm.weight"), eps);
        const g = matvec(m, must(p + "mlp.gate_proj.weight"), I, h);
        const u = matvec(m, must(p + "mlp.up_proj.weight"), I, h);
        return add(x, matvec(g.map((gv, i) => silu(gv) * u[i]!), must(p + "mlp.down_proj.weight"), h, I));
      });
    }
    xs = xs.map((x) => rmsNormRef(x, must("model.norm.weight"), eps));
    lmHead = get("lm_head.weight") ?? emb;
  } else if (mt === "opt") {
    h = cfg.hidden_size;
    V = cfg.vocab_size;
    const nH = cfg.num_attention_heads, d = h / nH, F = cfg.ffn_dim, eps = 1e-5;
    const P = "model.decoder.";
    const emb = must(P + "embed_tokens.weight"), pos = must(P + "embed_positions.weight");
    // OPTLearnedPositionalEmbedding: position ids (0-based, no padding) are shifted by 2.
    xs = tokens.map((id, t) => Float64Array.from({ length: h }, (_, i) => emb[id * h + i]! + pos[(t + 2) * h + i]!));
    for (let l = 0; l < cfg.num_hidden_layers; l++) {
      const p = `${P}layers.${l}.`;
      const ln = (x: Vec, n: string) => layerNormRef(x, must(`${p}${n}.weight`), must(`${p}${n}.bias`), eps);
      const a = xs.map((x) => ln(x, "self_attn_layer_norm"));
      const proj = (n: string) => a.map((x) => matvec(x, must(`${p}self_attn.${n}.weight`), h, h, must(`${p}self_attn.${n}.bias`)));
      const att = attendRef(proj("q_proj"), proj("k_proj"), proj("v_proj"), nH, nH, d);
      xs = xs.map((x, t) => add(x, matvec(att[t]!, must(p + "self_attn.out_proj.weight"), h, h, must(p + "self_attn.out_proj.bias"))));
      xs = xs.map((x) => {
        const f = matvec(ln(x, "final_layer_norm"), must(p + "fc1.weight"), F, h, must(p + "fc1.bias")).map((v) => Math.max(v, 0));
        return add(x, matvec(f, must(p + "fc2.weight"), h, F, must(p + "fc2.bias")));
      });
    }
    xs = xs.map((x) => layerNormRef(x, must(P + "final_layer_norm.weight"), must(P + "final_layer_norm.bias"), eps));
    lmHead = emb;
  } else if (mt === "gpt2") {
    h = cfg.n_embd;
    V = cfg.vocab_size;
    const nH = cfg.n_head, d = h / nH, F = cfg.n_inner ?? 4 * h, eps = cfg.layer_norm_epsilon;
    const wte = must("wte.weight"), wpe = must("wpe.weight");
    xs = tokens.map((id, t) => Float64Array.from({ length: h }, (_, i) => wte[id * h + i]! + wpe[t * h + i]!));
    for (let l = 0; l < cfg.n_layer; l++) {
      const p = `h.${l}.`;
      const ln = (x: Vec, n: string) => layerNormRef(x, must(`${p}${n}.weight`), must(`${p}${n}.bias`), eps);
      const conv = (x: Vec, n: string, inF: number, out: number) => matvec(x, must(`${p}${n}.weight`), out, inF, must(`${p}${n}.bias`), true);
      const qkv = xs.map((x) => conv(ln(x, "ln_1"), "attn.c_attn", h, 3 * h));
      const att = attendRef(qkv.map((r) => r.slice(0, h)), qkv.map((r) => r.slice(h, 2 * h)), qkv.map((r) => r.slice(2 * h)), nH, nH, d);
      xs = xs.map((x, t) => add(x, conv(att[t]!, "attn.c_proj", h, h)));
      xs = xs.map((x) => add(x, conv(conv(ln(x, "ln_2"), "mlp.c_fc", h, F).map(geluNew), "mlp.c_proj", F, h)));
    }
    xs = xs.map((x) => layerNormRef(x, must("ln_f.weight"), must("ln_f.bias"), eps));
    lmHead = wte;
  } else throw new Error(`reference: no model_type ${mt}`);
  const out = new Float64Array(tokens.length * V);
  xs.forEach((x, t) => out.set(matvec(x, lmHead, V, h), t * V));
  return out;
}

// ---------------------------------------------------------------------------------------------

/** max |a - b| relative to max |b|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** Logits of `tokens` decoded incrementally with one KV cache: a prefill, one multi-token chunk, then single tokens. */
function cachedLogits(model: Model, tokens: number[], prefill: number, chunk: number): Float32Array {
  const V = model.arch.vocabSize;
  const cache = model.newCache(tokens.length);
  const out = new Float32Array(tokens.length * V);
  let pos = 0;
  const step = (n: number) => {
    out.set(model.forward(tokens.slice(pos, pos + n), 1, n, { pos0: pos, cache }), pos * V);
    pos += n;
  };
  step(prefill);
  step(chunk);
  while (pos < tokens.length) step(1);
  return out;
}

/** Greedy decoding without a cache: a full forward of the whole sequence per new token. */
function greedyNoCache(model: Model, prompt: number[], maxTokens: number): number[] {
  const seq = [...prompt];
  const V = model.arch.vocabSize;
  const out: number[] = [];
  while (out.length < maxTokens && seq.length <= model.arch.maxPositions) {
    const logits = model.forward(seq, 1, seq.length);
    const next = argmax(logits, (seq.length - 1) * V, V);
    out.push(next);
    seq.push(next);
  }
  return out;
}

// The stories260K tests use the vendored copy (models/stories260K) and the bundled text
// (calibration-data/tinystories-sample.txt), so they run on a bare clone; the checks that those are
// the shared files the references were measured on need ../shared and skip without it.
const REFERENCE_FILE = path.join(STORIES_VENDORED, "greedy-reference.txt");
const BUNDLED_TINYSTORIES = path.join(ROOT, "calibration-data/tinystories-sample.txt");

describe("stories260K (real llama2.c weights)", () => {
  let model: Model;
  let tok: ReturnType<typeof loadTokenizer>;
  let story: number[];
  beforeAll(() => {
    model = Model.load(STORIES_VENDORED, backend);
    tok = loadTokenizer(STORIES_VENDORED);
    story = [1, ...tok.encode(readFileSync(BUNDLED_TINYSTORIES, "utf8").slice(0, 2000))].slice(0, 96);
  });

  it("greedy decoding from BOS reproduces the published llama2.c sample (256 tokens)", () => {
    expect(tok.bosId).toBe(1);
    const ids = generateGreedy(model, [tok.bosId!], 256, tok.eosId);
    expect(ids.length).toBe(256);
    // The reference file ends with a newline; the decoded text has none.
    expect(collapseWs(tok.decode(ids))).toBe(collapseWs(readFileSync(REFERENCE_FILE, "utf8")).trimEnd());
  });

  it.skipIf(!hasShared)(withShared("the vendored copy is the shared model (same greedy ids, same reference text)"), () => {
    const shared = Model.load(STORIES_SHARED, backend);
    expect(generateGreedy(shared, [1], 256, 2)).toEqual(generateGreedy(model, [1], 256, 2));
    expect(readFileSync(path.join(STORIES_SHARED, "greedy-reference.txt"), "utf8")).toBe(readFileSync(REFERENCE_FILE, "utf8"));
  });

  it.skipIf(!hasShared)(withShared("the bundled tinystories text is the shared file the perplexity reference was measured on"), () => {
    expect(resolveText("tinystories").text).toBe(readFileSync(TINYSTORIES_TXT, "utf8"));
    expect(readFileSync(BUNDLED_TINYSTORIES, "utf8")).toBe(readFileSync(TINYSTORIES_TXT, "utf8"));
  });

  it("perplexity at seqlen 512 matches the PyTorch fp32 reference (FORMATS.md: 30 × 511, 6.5893) within 0.1%", () => {
    const text = resolveText("tinystories");
    const tokens = [1, ...tok.encode(text.text)];
    const r = evaluatePerplexity(model, tokens, { seqlen: 512 }, true);
    expect(r.windows).toBe(30);
    expect(r.predictionsPerWindow).toBe(511);
    expect(Math.abs(r.ppl / 6.5893 - 1)).toBeLessThan(1e-3);
    expect(r.meanNll).toBeCloseTo(Math.log(r.ppl), 12);
  });

  it("Model.forward equals an independent float64 implementation of LlamaForCausalLM", () => {
    const ckpt = Checkpoint.open(STORIES_VENDORED);
    const cfg = JSON.parse(readFileSync(path.join(STORIES_VENDORED, "config.json"), "utf8"));
    const T = 40;
    const ref = referenceLogits(cfg, (n) => (ckpt.has(n) ? ckpt.readF32(n) : undefined), story.slice(0, T));
    ckpt.close();
    expect(relErr(model.forward(story.slice(0, T), 1, T), ref)).toBeLessThan(1e-4);
  });

  it("incremental decoding with the KV cache gives the full-sequence logits", () => {
    const full = model.forward(story, 1, story.length);
    expect(relErr(cachedLogits(model, story, 17, 23), full)).toBeLessThan(1e-4);
  });

  it("a batch of 3 sequences equals 3 single-sequence forwards", () => {
    const T = 32;
    const seqs = [story.slice(0, T), story.slice(T, 2 * T), story.slice(2 * T, 3 * T)];
    const batched = model.forward(seqs.flat(), 3, T);
    const V = model.arch.vocabSize;
    seqs.forEach((s, b) => expect(relErr(batched.subarray(b * T * V, (b + 1) * T * V), model.forward(s, 1, T))).toBeLessThan(1e-5));
  });

  it("refuses sequences past the context and token ids outside the vocabulary", () => {
    expect(() => model.forward(new Array(513).fill(5), 1, 513)).toThrow(ModelError);
    expect(() => model.forward([1, 512], 1, 2)).toThrow(/outside the vocabulary/);
    expect(() => generateGreedy(model, [], 4, null)).toThrow(ModelError);
  });
});

const KINDS: SyntheticKind[] = ["opt", "gpt2", "qwen2", "llama3"];

describe.each(KINDS)("synthetic %s checkpoint (random weights, HF layout)", (kind) => {
  let syn: ReturnType<typeof writeSyntheticModel>;
  let model: Model;
  beforeAll(() => {
    syn = writeSyntheticModel(path.join(makeTmpDir(), kind), kind, 7 + KINDS.indexOf(kind));
    model = Model.load(syn.dir, backend);
  });
  const T = 24;

  it("loads with the architecture its config describes", () => {
    const a = model.arch;
    expect(a.family).toBe(kind === "qwen2" || kind === "llama3" ? "llama" : kind);
    expect([a.hidden, a.nLayers, a.nHeads, a.headDim, a.vocabSize]).toEqual([32, 2, 4, 8, 96]);
    expect(a.tiedLmHead).toBe(kind !== "qwen2");
    if (kind === "qwen2") expect(a.linears.filter((l) => l.bias).map((l) => l.name)).toEqual(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]);
    if (kind === "llama3") expect(a.positional).toMatchObject({ kind: "rope", rope: { scaling: { type: "llama3", factor: 8 } } });
  });

  it("Model.forward equals an independent float64 implementation of the HF model", () => {
    const tokens = randomTokens(T, 96, 11);
    const ref = referenceLogits(syn.config, (n) => syn.tensors.get(n)?.data, tokens);
    const got = model.forward(tokens, 1, T);
    expect(relErr(got, ref)).toBeLessThan(1e-4);
    // Not a degenerate model: predictions differ between positions.
    expect(new Set(Array.from({ length: T }, (_, t) => argmax(got, t * 96, 96))).size).toBeGreaterThan(3);
  });

  it("incremental decoding with the KV cache gives the full-sequence logits", () => {
    const tokens = randomTokens(T, 96, 12);
    expect(relErr(cachedLogits(model, tokens, 5, 7), model.forward(tokens, 1, T))).toBeLessThan(1e-4);
  });

  it("a batch of 3 sequences equals 3 single-sequence forwards", () => {
    const seqs = [0, 1, 2].map((s) => randomTokens(T, 96, 20 + s));
    const batched = model.forward(seqs.flat(), 3, T);
    seqs.forEach((s, b) => expect(relErr(batched.subarray(b * T * 96, (b + 1) * T * 96), model.forward(s, 1, T))).toBeLessThan(1e-5));
  });

  it("generateGreedy (cached) equals greedy decoding by full forwards, and stops at EOS and at the context", () => {
    const prompt = randomTokens(3, 96, 30);
    const ids = generateGreedy(model, prompt, 12, null);
    expect(ids).toEqual(greedyNoCache(model, prompt, 12));
    // EOS: the first token not seen before, used as EOS, ends the output just before it.
    const k = ids.findIndex((id, i) => i > 0 && !ids.slice(0, i).includes(id));
    if (k > 0) expect(generateGreedy(model, prompt, 12, ids[k]!)).toEqual(ids.slice(0, k));
    // Near the end of the context: every position is used, nothing throws.
    const C = model.arch.maxPositions;
    const long = randomTokens(C - 3, 96, 31);
    const tail = generateGreedy(model, long, 10, null);
    expect(tail).toEqual(greedyNoCache(model, long, 10));
    expect(tail.length).toBe(4);
  });
});
