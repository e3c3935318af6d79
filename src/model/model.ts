// Opening a checkpoint directory as a model: config.json → ArchSpec, tensor presence and shape checks,
// per-block weight loading, and the whole-model forward (embeddings → blocks → final norm → LM head)
// used by generate, eval and bench. Two ways to load a block:
//   - loadBlockWeights: every Linear as an fp32 [out, in] matrix (packed ones dequantized through the
//     format registry): the quantize pipeline's working copy, and inference with --dequantize;
//   - loadBlockTensors: inference. A packed Linear is unpacked by its format (the same validation) and
//     repacked once into the backend's runtime layout (Backend.packLinear), so it stays packed in memory
//     and runs on the packed kernels; fp Linears stay fp32. Embeddings and the LM head of a packed
//     checkpoint stay fp16 when stored so (Backend.f16Linear).

import fs from "node:fs";
import path from "node:path";
import type { Backend, LinearHandle } from "../compute/backend.js";
import { Checkpoint } from "../io/checkpoint.js";
import { assertFinite } from "../io/safetensors.js";
import { detectFormat } from "../../formats/index.js";
import { dequantize } from "../../formats/dequant.js";
import type { FormatSpec, LinearShape, QuantizedLinear, QuantSettings, TensorGetter } from "../../formats/types.js";
import type { DType, TensorInfo } from "../io/types.js";
import { FileFormatError, ModelError } from "../util/errors.js";
import { resolveArchitecture, type ArchSpec, type LinearSpec } from "./architectures.js";
import { applyNorm, blockForward, createContext, linear, type BlockTensors, type BlockWeights, type ForwardContext, type LayerCache, type Weight } from "./forward.js";

export interface QuantInfo {
  format: FormatSpec;
  config: Record<string, unknown>;
}

/** A checkpoint opened for reading: nothing but the header and config is loaded yet. */
export interface ModelSource {
  dir: string;
  config: Record<string, unknown>;
  arch: ArchSpec;
  ckpt: Checkpoint;
  quant: QuantInfo | null;
}

export function readConfig(dir: string): Record<string, unknown> {
  const file = path.join(dir, "config.json");
  if (!fs.existsSync(dir)) throw new FileFormatError(dir, "model directory does not exist");
  if (!fs.existsSync(file)) throw new FileFormatError(file, "missing: a Hugging Face model directory needs config.json");
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new FileFormatError(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new FileFormatError(file, "expected a JSON object");
  return raw as Record<string, unknown>;
}

/** Run `f` (reading config.json's quantization_config); a ModelError it throws is reworded to name config.json. */
function inConfig<T>(dir: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    const file = path.join(dir, "config.json");
    if (e instanceof ModelError && !e.message.startsWith(file)) throw new ModelError(`${file}: ${e.message}`);
    throw e;
  }
}

export function openModel(dir: string): ModelSource {
  const config = readConfig(dir);
  const ckpt = Checkpoint.open(dir);
  const arch = resolveArchitecture(config, path.join(dir, "config.json"), ckpt.names());
  const qc = config["quantization_config"];
  const quant = qc ? { format: inConfig(dir, () => detectFormat(qc)), config: qc as Record<string, unknown> } : null;
  const src: ModelSource = { dir, config, arch, ckpt, quant };
  checkGlobalShapes(src);
  return src;
}

function shapeStr(s: number[]): string {
  return `[${s.join(", ")}]`;
}

function expectShape(src: ModelSource, name: string, want: number[]): void {
  if (!src.ckpt.has(name)) throw new ModelError(`${src.dir}: tensor "${name}" is missing (needed by ${src.arch.modelType})`);
  const info = src.ckpt.info(name);
  if (info.shape.length !== want.length || info.shape.some((d, i) => d !== want[i]))
    throw new ModelError(`${info.file}: tensor "${name}" has shape ${shapeStr(info.shape)}, expected ${shapeStr(want)} from config.json`);
}

function checkGlobalShapes(src: ModelSource): void {
  const a = src.arch;
  expectShape(src, a.embedTokens, [a.vocabSize, a.hidden]);
  if (!a.tiedLmHead) expectShape(src, a.lmHead, [a.vocabSize, a.hidden]);
  if (a.positional.kind === "learned") expectShape(src, a.positional.tensor, [a.maxPositions + a.positional.offset, a.hidden]);
  expectShape(src, a.finalNorm.weight, [a.hidden]);
}

/** Dtypes a float tensor (weights, norms, embeddings, biases) may be stored in. */
const FLOAT_DTYPES: readonly DType[] = ["F32", "F16", "BF16", "F64"];

/** Header check of a float tensor: present, with a float dtype (an I32 relabelled weight is refused). */
function floatInfo(src: ModelSource, name: string): TensorInfo {
  const info = src.ckpt.info(name);
  if (!FLOAT_DTYPES.includes(info.dtype)) {
    throw new ModelError(`${info.file}: tensor "${name}" has dtype ${info.dtype}, expected a float dtype (F32/F16/BF16)`);
  }
  return info;
}

/** Read a floating tensor as fp32; refuse integer dtypes and NaN/Inf. */
export function readFloat(src: ModelSource, name: string): Float32Array {
  const info = floatInfo(src, name);
  const data = src.ckpt.readF32(name);
  assertFinite(name, data, info.file);
  return data;
}

/** The getter packed formats read a checkpoint through: each tensor with the file it lives in (named in errors). */
export function packedGetter(ckpt: Checkpoint): TensorGetter {
  return (name) => {
    const t = ckpt.stored(name);
    return t && { ...t, file: ckpt.info(name).file };
  };
}

/**
 * The one path a packed Linear is read by (eval-ppl, generate, inspect; quantize's journal re-read can
 * use it too): the format's unpack, which validates presence, dtypes, shapes, finite scales, g_idx and
 * zero points against the config, with errors naming the file and the tensor. Not dequantized.
 */
export function unpackLinear(ckpt: Checkpoint, format: FormatSpec, prefix: string, settings: QuantSettings, shape: LinearShape): QuantizedLinear {
  return format.unpack(prefix, packedGetter(ckpt), settings, shape);
}

function transpose(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c]!;
  return t;
}

/** Quantization settings of one Linear if the checkpoint stores it packed, else null. */
export function linearQuantSettings(src: ModelSource, fullPrefix: string): QuantSettings | null {
  if (!src.quant) return null;
  if (!src.quant.format.isQuantized(fullPrefix, (n) => src.ckpt.has(n))) return null;
  return inConfig(src.dir, () => src.quant!.format.settingsFromConfig(src.quant!.config, fullPrefix));
}

/**
 * Check the fp weight of a Linear stored unpacked. When it is absent but quantization_config packs this
 * module, the missing tensor named is the format's packed one (e.g. "<prefix>.qweight").
 */
function expectFpLinear(src: ModelSource, full: string, l: LinearSpec): void {
  const a = src.arch;
  const wn = `${full}.weight`;
  if (!src.ckpt.has(wn) && src.quant) {
    const settings = inConfig(src.dir, () => src.quant!.format.settingsFromConfig(src.quant!.config, full));
    if (settings) {
      const primary = src.quant.format.paramInfo(full, { out: l.out, in: l.in }, settings)[0]!;
      throw new ModelError(
        `${src.dir}: tensor "${primary.name}" is missing (expected ${primary.dtype} [${primary.shape.join(", ")}]): ` +
          `quantization_config packs ${full} as ${src.quant.format.name}, and the checkpoint holds neither it nor "${wn}"`,
      );
    }
  }
  expectShape(src, wn, a.transposedLinears ? [l.in, l.out] : [l.out, l.in]);
}

/** Load block i: norms as fp32, every Linear as an fp32 [out, in] matrix (dequantized when packed); `onlyLinear`: that Linear alone. */
export function loadBlockWeights(src: ModelSource, i: number, onlyLinear?: string): BlockWeights {
  const a = src.arch;
  const p = a.blockPrefix(i);
  const w: BlockWeights = new Map();
  for (const n of onlyLinear === undefined ? [a.attnNorm, a.mlpNorm] : []) {
    expectShape(src, p + n.weight, [a.hidden]);
    w.set(n.weight, readFloat(src, p + n.weight));
    if (n.bias) w.set(n.bias, readFloat(src, p + n.bias));
  }
  for (const l of a.linears) {
    if (onlyLinear !== undefined && l.name !== onlyLinear) continue;
    const full = p + l.name;
    const settings = linearQuantSettings(src, full);
    if (settings) {
      const q = unpackLinear(src.ckpt, src.quant!.format, full, settings, { out: l.out, in: l.in });
      w.set(`${l.name}.weight`, dequantize(q));
      if (l.bias) w.set(`${l.name}.bias`, q.bias ?? readFloat(src, `${full}.bias`));
    } else {
      const wn = `${full}.weight`;
      expectFpLinear(src, full, l);
      const raw = readFloat(src, wn);
      w.set(`${l.name}.weight`, a.transposedLinears ? transpose(raw, l.in, l.out) : raw);
      if (l.bias) {
        expectShape(src, `${full}.bias`, [l.out]);
        w.set(`${l.name}.bias`, readFloat(src, `${full}.bias`));
      }
    }
  }
  return w;
}

/** How inference holds its weights. */
export interface LoadOptions {
  /** Dequantize packed Linears to fp32 and widen fp16 tensors (the pre-runtime path, for comparison). */
  dequantize?: boolean;
}

/** Does this load keep packed Linears packed (a packed checkpoint, a backend with a packed runtime, no --dequantize)? */
function keepsPacked(src: ModelSource, backend: Backend, opts: LoadOptions): boolean {
  return src.quant !== null && !opts.dequantize && backend.packLinear !== undefined;
}

/**
 * Block i for inference: norms and biases fp32; each packed Linear unpacked and validated by its format
 * (as loadBlockWeights does) and then held by the backend in its runtime layout; fp Linears as in
 * loadBlockWeights (fp32), or fp16 handles when the checkpoint is packed and stores them as F16.
 * With opts.dequantize (or a backend without packed kernels) this is loadBlockWeights.
 */
export function loadBlockTensors(src: ModelSource, i: number, backend: Backend, opts: LoadOptions = {}): BlockTensors {
  if (!keepsPacked(src, backend, opts)) return loadBlockWeights(src, i);
  const a = src.arch;
  const p = a.blockPrefix(i);
  const w = new Map<string, Weight>();
  for (const n of [a.attnNorm, a.mlpNorm]) {
    expectShape(src, p + n.weight, [a.hidden]);
    w.set(n.weight, readFloat(src, p + n.weight));
    if (n.bias) w.set(n.bias, readFloat(src, p + n.bias));
  }
  for (const l of a.linears) {
    const full = p + l.name;
    const settings = linearQuantSettings(src, full);
    if (settings) {
      const q = unpackLinear(src.ckpt, src.quant!.format, full, settings, { out: l.out, in: l.in });
      w.set(`${l.name}.weight`, backend.packLinear!(q));
      if (l.bias) w.set(`${l.name}.bias`, q.bias ?? readFloat(src, `${full}.bias`));
    } else {
      const wn = `${full}.weight`;
      expectFpLinear(src, full, l);
      w.set(`${l.name}.weight`, (!a.transposedLinears && readF16Handle(src, wn, backend)) || loadFpLinear(src, wn, l));
      if (l.bias) {
        expectShape(src, `${full}.bias`, [l.out]);
        w.set(`${l.name}.bias`, readFloat(src, `${full}.bias`));
      }
    }
  }
  return w;
}

function loadFpLinear(src: ModelSource, wn: string, l: LinearSpec): Float32Array {
  const raw = readFloat(src, wn);
  return src.arch.transposedLinears ? transpose(raw, l.in, l.out) : raw;
}

/**
 * A 2-D tensor stored as F16 as a resident fp16 handle (NaN/Inf refused as readFloat does); null when
 * it is stored in another dtype or the backend has no fp16 weights.
 */
function readF16Handle(src: ModelSource, name: string, backend: Backend): LinearHandle | null {
  const info = floatInfo(src, name);
  if (info.dtype !== "F16" || info.shape.length !== 2 || !backend.f16Linear) return null;
  const raw = src.ckpt.readRaw(name);
  const n = info.shape[0]! * info.shape[1]!;
  const h = raw.byteOffset % 2 === 0 ? new Uint16Array(raw.buffer, raw.byteOffset, n) : new Uint16Array(raw.slice().buffer, 0, n);
  for (let k = 0; k < n; k++) {
    if ((h[k]! & 0x7c00) === 0x7c00) throw new ModelError(`${info.file}: tensor "${name}" contains NaN/Inf at index ${k}`);
  }
  return backend.f16Linear(h, info.shape[0]!, info.shape[1]!);
}

/**
 * Check a checkpoint without running it (inspect): every packed Linear through unpackLinear (the same
 * validation inference uses, without dequantizing), every float tensor the model reads for its dtype and shape.
 */
export function validateModel(src: ModelSource): void {
  const a = src.arch;
  const floats = [a.embedTokens, a.finalNorm.weight, ...(a.finalNorm.bias ? [a.finalNorm.bias] : [])];
  if (!a.tiedLmHead) floats.push(a.lmHead);
  if (a.positional.kind === "learned") floats.push(a.positional.tensor);
  for (let i = 0; i < a.nLayers; i++) {
    const p = a.blockPrefix(i);
    for (const n of [a.attnNorm, a.mlpNorm]) {
      expectShape(src, p + n.weight, [a.hidden]);
      floats.push(p + n.weight, ...(n.bias ? [p + n.bias] : []));
    }
    for (const l of a.linears) {
      const full = p + l.name;
      const settings = linearQuantSettings(src, full);
      if (settings) {
        const q = unpackLinear(src.ckpt, src.quant!.format, full, settings, { out: l.out, in: l.in });
        if (l.bias && !q.bias) floats.push(`${full}.bias`);
        continue;
      }
      expectFpLinear(src, full, l);
      floats.push(`${full}.weight`);
      if (l.bias) {
        expectShape(src, `${full}.bias`, [l.out]);
        floats.push(`${full}.bias`);
      }
    }
  }
  for (const n of floats) floatInfo(src, n);
}

/** Everything outside the blocks: embeddings, positional table, final norm, LM head. */
export interface GlobalWeights {
  embed: Float32Array;
  positions: Float32Array | null;
  finalNorm: Map<string, Float32Array>;
  lmHead: Float32Array;
}

/** The globals inference runs: embeddings and LM head may be resident handles (fp16 as stored). */
export interface RuntimeGlobals {
  embed: Weight;
  positions: Float32Array | null;
  finalNorm: Map<string, Float32Array>;
  lmHead: Weight;
}

/** Globals for inference: as loadGlobalWeights, but a packed checkpoint's F16 embeddings / LM head stay fp16. */
export function loadRuntimeGlobals(src: ModelSource, backend: Backend, opts: LoadOptions = {}): RuntimeGlobals {
  if (!keepsPacked(src, backend, opts)) return loadGlobalWeights(src);
  const a = src.arch;
  const embed = readF16Handle(src, a.embedTokens, backend) ?? readFloat(src, a.embedTokens);
  const finalNorm = new Map<string, Float32Array>([[a.finalNorm.weight, readFloat(src, a.finalNorm.weight)]]);
  if (a.finalNorm.bias) finalNorm.set(a.finalNorm.bias, readFloat(src, a.finalNorm.bias));
  return {
    embed,
    positions: a.positional.kind === "learned" ? readFloat(src, a.positional.tensor) : null,
    finalNorm,
    lmHead: a.tiedLmHead ? embed : (readF16Handle(src, a.lmHead, backend) ?? readFloat(src, a.lmHead)),
  };
}

export function loadGlobalWeights(src: ModelSource): GlobalWeights {
  const a = src.arch;
  const embed = readFloat(src, a.embedTokens);
  const finalNorm = new Map<string, Float32Array>([[a.finalNorm.weight, readFloat(src, a.finalNorm.weight)]]);
  if (a.finalNorm.bias) finalNorm.set(a.finalNorm.bias, readFloat(src, a.finalNorm.bias));
  return {
    embed,
    positions: a.positional.kind === "learned" ? readFloat(src, a.positional.tensor) : null,
    finalNorm,
    lmHead: a.tiedLmHead ? embed : readFloat(src, a.lmHead),
  };
}

/** Token (and learned position) embeddings for B sequences of T tokens starting at pos0. */
export function embedTokens(arch: ArchSpec, g: Pick<RuntimeGlobals, "embed" | "positions">, tokens: ArrayLike<number>, T: number, pos0 = 0): Float32Array {
  const h = arch.hidden;
  const x = new Float32Array(tokens.length * h);
  const table = g.embed;
  for (let r = 0; r < tokens.length; r++) {
    const id = tokens[r]!;
    if (id < 0 || id >= arch.vocabSize) throw new ModelError(`token id ${id} is outside the vocabulary (size ${arch.vocabSize})`);
    if (table instanceof Float32Array) x.set(table.subarray(id * h, id * h + h), r * h);
    else table.rows(id, id + 1, x.subarray(r * h, r * h + h));
    if (g.positions && arch.positional.kind === "learned") {
      const p = pos0 + (r % T) + arch.positional.offset;
      for (let i = 0; i < h; i++) x[r * h + i] = x[r * h + i]! + g.positions[p * h + i]!;
    }
  }
  return x;
}

/** Final norm + LM head: logits [rows, vocab]. */
export function logitsOf(ctx: ForwardContext, g: Pick<RuntimeGlobals, "finalNorm" | "lmHead">, x: Float32Array, rows: number, out?: Float32Array): Float32Array {
  const a = ctx.arch;
  const n = applyNorm(ctx.backend, a, (k) => g.finalNorm.get(k), a.finalNorm, x, rows);
  return linear(ctx.backend, n, rows, g.lmHead, a.vocabSize, a.hidden, undefined, out);
}

/** Resident weight memory of a loaded model, by storage. */
export interface WeightMemory {
  /** Bytes of packed Linears (codes, scales, zero points, index maps, outliers). */
  packed: number;
  /** Bytes of fp16 handles (embeddings, LM head, unquantized Linears of a packed checkpoint). */
  f16: number;
  /** Bytes of fp32 arrays (norms, biases, fp Linears; everything with --dequantize). */
  f32: number;
  total: number;
  packedLinears: number;
  denseLinears: number;
}

/** A fully loaded model for inference: packed Linears stay packed (see loadBlockTensors), the rest fp32. */
export class Model {
  readonly ctx: ForwardContext;
  private constructor(
    readonly src: ModelSource,
    readonly globals: RuntimeGlobals,
    readonly blocks: BlockTensors[],
    backend: Backend,
  ) {
    this.ctx = createContext(src.arch, backend);
  }

  static load(dir: string, backend: Backend, onBlock?: (i: number, n: number) => void, opts: LoadOptions = {}): Model {
    const src = openModel(dir);
    const globals = loadRuntimeGlobals(src, backend, opts);
    const blocks: BlockTensors[] = [];
    for (let i = 0; i < src.arch.nLayers; i++) {
      blocks.push(loadBlockTensors(src, i, backend, opts));
      onBlock?.(i + 1, src.arch.nLayers);
    }
    src.ckpt.close();
    return new Model(src, globals, blocks, backend);
  }

  /** Bytes the loaded weights occupy (each distinct tensor once: a tied LM head is the embedding). */
  weightMemory(): WeightMemory {
    const m: WeightMemory = { packed: 0, f16: 0, f32: 0, total: 0, packedLinears: 0, denseLinears: 0 };
    const seen = new Set<Weight>();
    const add = (t: Weight, isLinear: boolean) => {
      if (seen.has(t)) return;
      seen.add(t);
      if (t instanceof Float32Array) m.f32 += t.byteLength;
      else if (t.kind === "packed") m.packed += t.bytes;
      else m.f16 += t.bytes;
      if (isLinear) {
        if (!(t instanceof Float32Array) && t.kind === "packed") m.packedLinears++;
        else m.denseLinears++;
      }
    };
    const g = this.globals;
    add(g.embed, false);
    add(g.lmHead, false);
    if (g.positions) add(g.positions, false);
    for (const t of g.finalNorm.values()) add(t, false);
    const linearKeys = new Set(this.arch.linears.map((l) => `${l.name}.weight`));
    for (const b of this.blocks) for (const [k, t] of b) add(t, linearKeys.has(k));
    m.total = m.packed + m.f16 + m.f32;
    return m;
  }

  get arch(): ArchSpec {
    return this.src.arch;
  }

  newCache(capacity: number): LayerCache[] {
    const kv = this.arch.nKvHeads * this.arch.headDim;
    return this.blocks.map(() => ({ k: new Float32Array(capacity * kv), v: new Float32Array(capacity * kv), capacity }));
  }

  /** Logits [B*T, vocab] for B sequences of T tokens (B must be 1 with a cache). */
  forward(tokens: ArrayLike<number>, B: number, T: number, opts: { pos0?: number; cache?: LayerCache[] } = {}): Float32Array {
    return this.logits(this.hidden(tokens, B, T, opts), B * T);
  }

  /** The last block's output [B*T, hidden] (before the final norm): forward() without the LM head. */
  hidden(tokens: ArrayLike<number>, B: number, T: number, opts: { pos0?: number; cache?: LayerCache[] } = {}): Float32Array {
    const pos0 = opts.pos0 ?? 0;
    if (pos0 + T > this.arch.maxPositions)
      throw new ModelError(`sequence of ${pos0 + T} tokens exceeds the model's context of ${this.arch.maxPositions}`);
    let x = embedTokens(this.arch, this.globals, tokens, T, pos0);
    for (let i = 0; i < this.blocks.length; i++) {
      x = blockForward(this.ctx, this.blocks[i]!, x, B, T, { pos0, cache: opts.cache?.[i] });
    }
    return x;
  }

  /**
   * Final norm + LM head on `rows` rows of hidden() output: logits [rows, vocab] (into `out` when given).
   * Row-wise, so the head can run on a few rows at a time after the blocks ran on many (eval keeps the
   * logits small).
   */
  logits(x: Float32Array, rows: number, out?: Float32Array): Float32Array {
    return logitsOf(this.ctx, this.globals, x, rows, out);
  }
}
