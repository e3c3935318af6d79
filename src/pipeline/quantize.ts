// The layer-by-layer quantize driver (one driver for every architecture): read → block → calibrate →
// quantize → pack → write. Only the current block's weights and the calibration activations are in
// memory. Inputs to block i are the outputs of the already-quantized block i−1 (sequential, as GPTQ);
// inside a block the Linears are quantized in the architecture's true-sequential groups, each group's
// Hessian collected with the earlier groups already quantized; each group's calibration pass resumes
// from the previous one's cached stage (passes.ts), so a block costs about one forward over the
// calibration set. AWQ alone with fp propagation (llm-awq's setting) needs no quantized pass: the fp
// forward that makes the next block's inputs also collects AWQ's sample and every group's Hessian.
// Each finished block is written to the journal's work directory, so an interrupted run resumes at the
// first unfinished block.

import fs from "node:fs";
import path from "node:path";
import type { Backend } from "../compute/backend.js";
import { Checkpoint } from "../io/checkpoint.js";
import { toF16Checked } from "../io/dtype.js";
import type { TensorToWrite } from "../io/types.js";
import { ShardedWriter, atomicWriteFile, writeSafetensors } from "../io/writer.js";
import { dequantize } from "../../formats/dequant.js";
import type { FormatSpec, QuantSettings, QuantizedLinear } from "../../formats/types.js";
import { quantizeRtn } from "../../algorithms/rtn.js";
import type { QuantOptions } from "../../algorithms/quantizer.js";
import { roundToF16InPlace } from "../../algorithms/quantizer.js";
import { type GptqFactor, GptqHessian, gptqFactor, gptqQuantize } from "../../algorithms/gptq.js";
import type { ArchSpec, LinearSpec } from "../model/architectures.js";
import { Stage, blockForward, createContext, releaseScratch, stageOfLinear, type BlockWeights, type ForwardContext } from "../model/forward.js";
import { embedTokens, loadBlockWeights, readFloat, unpackLinear, type ModelSource } from "../model/model.js";
import { InterruptedError, OutputError } from "../util/errors.js";
import { awqCapture, awqCollector, prepareAwqBlock } from "./awq.js";
import { METHODS, type MethodName } from "./methods.js";
import { matchRule, moduleSettings, overridesOf, type ModuleRule } from "./rules.js";
import { activationSaliency, outlierBudget, topKMask } from "../../algorithms/outliers.js";
import { ActivationStore, checkSpillSpace, spillsActivations, spillsPassCaches, type ActDtype } from "./activations.js";
import { BlockPasses, batchWindows, type CacheStoreFactory } from "./passes.js";
import { Journal, type LayerStat, type RunSettings } from "./journal.js";

export interface QuantizePlan {
  src: ModelSource;
  format: FormatSpec;
  settings: QuantSettings & { method: MethodName };
  /**
   * What feeds block i+1 during calibration: the quantized block's outputs (as GPTQ does, so later
   * blocks see the error of earlier ones) or the fp block's (as llm-awq does). Default "quantized".
   */
  propagate?: "quantized" | "fp";
  /** AWQ's scale-search sample bound in tokens (whole windows); default AWQ_SCALE_TOKENS. */
  awqTokens?: number;
  /** Calibration token windows, nsamples × seqlen (empty without calibration). */
  windows: Int32Array;
  /**
   * Run calibration activations through the blocks. GPTQ needs them (its Hessians); RTN only to
   * measure each Linear's output error, so without them it quantizes straight from the weights.
   */
  calibrate: boolean;
  /** Recorded in the output's config.json as "quant4" (version, method, scheme, calibration text and hash). */
  provenance?: { version: string; method: string; scheme: string; calibration: { text: string; sha256: string; nsamples: number; seqlen: number; seed: number } | null };
  nsamples: number;
  seqlen: number;
  actDtype: ActDtype;
  /** Budget for the two activation stores; above it they live in temp files in the work dir. null = in memory. */
  maxMemoryBytes: number | null;
  blockSize: number;
  maxShardBytes: number;
  outDir: string;
  /** Identifies the run for --resume (model files, options, calibration data). */
  settingsKey: string;
  /** The settings behind settingsKey, stored in the journal so a refused --resume names what differs. */
  runSettings?: RunSettings;
  resume: boolean;
  /** Replace an existing non-empty output directory (unset: never replace one). */
  overwrite?: boolean;
  /** Per-module rules (--dynamic, --skip), first match wins. */
  rules?: ModuleRule[];
  /** Fraction of each quantized Linear's weights kept exactly in fp16 (--outliers); 0 = none. */
  outlierFraction?: number;
  /**
   * Sensitivity probes: for every quantized Linear, also measure the relative output error the same
   * method would give at each of these bit widths (on the same working weights and Hessian; nothing of
   * it is written). Feeds `quant4 sensitivity`, --target-bits and the gate's fallback.
   */
  probeBits?: number[];
  /**
   * Measure only (`quant4 sensitivity`, --target-bits' sensitivity run): every block is quantized and
   * journaled as usual, but no output is assembled; the work dir is removed at the end and
   * report.files is empty.
   */
  dryOutput?: boolean;
  /**
   * Internal (tests): every calibration pass runs the block from its input instead of resuming from
   * the previous group's cached stage. Same arithmetic, same output; slower.
   */
  restartPasses?: boolean;
}

export interface QuantizeEvents {
  onBlockStart?(block: number, total: number): void;
  onLayerDone?(block: number, stat: LayerStat, doneInBlock: number, totalInBlock: number): void;
  onBlockDone?(block: number, total: number, seconds: number): void;
  onWarning?(message: string): void;
  /** An interrupted run is continued: blocks before `block` are reused from its journal. */
  onResume?(block: number, total: number): void;
  /** Test hook: called after block i is durably journaled. */
  afterBlockJournaled?(block: number): void;
  /**
   * Asked between Linears (the pipeline yields to the event loop there, so a SIGINT handler can run):
   * true stops the run with an InterruptedError; finished blocks stay journaled for --resume.
   */
  shouldStop?(): boolean;
  /**
   * The output is complete in its staging directory (inside `<out>.partial/`) and about to be moved into
   * place: add files to it now (the manifest) so they are part of the atomic output. `report` is the
   * run's final report; its `files` already list `extraFiles`.
   */
  beforePublish?: { extraFiles: string[]; run(stagingDir: string, report: QuantizeReport): Promise<void> };
}

export interface QuantizeReport {
  outDir: string;
  files: string[];
  layers: LayerStat[];
  skipped: string[];
  blockSeconds: number[];
  resumedFromBlock: number;
  totalSeconds: number;
  peakRssBytes: number;
}

/** Why a Linear is kept in fp16 under this format and settings (null ⇒ it is quantized). */
export function skipReason(plan: Pick<QuantizePlan, "format" | "settings" | "rules">, l: LinearSpec, module: string): string | null {
  const s = layerSettings(plan, module);
  if (!s) return `skipped by the rule "-:${matchRule(plan.rules ?? [], module)!.pattern}" (--skip/--dynamic)`;
  return plan.format.canHold({ out: l.out, in: l.in }, s);
}

/** The settings of one module (full name): the run's, with the first matching --dynamic override; null if skipped. */
export function layerSettings(plan: Pick<QuantizePlan, "settings" | "rules">, module: string): QuantizePlan["settings"] | null {
  return moduleSettings(plan.settings, plan.rules ?? [], module);
}

/** fp16 copy of a stored float tensor (embeddings, norms, fp16-kept linears keep their stored layout). */
function asF16Tensor(src: ModelSource, name: string, outName = name): TensorToWrite {
  const info = src.ckpt.info(name);
  const h = toF16Checked(readFloat(src, name), `tensor "${name}"`);
  return { name: outName, dtype: "F16", shape: info.shape, data: h };
}

/** Output rows the relative error is measured on: all of them up to this count, else an even stride. */
const ERROR_ROWS = 512;

/**
 * Relative output error ‖(W−Q)Xᵀ‖² / ‖WXᵀ‖² from H ∝ XᵀX: tr(ΔHΔᵀ) / tr(WHWᵀ). Exact for layers with at
 * most ERROR_ROWS outputs; wider layers use every k-th output row (the cost is rows·in² per GEMM, which
 * for a 7B-sized layer would otherwise exceed GPTQ itself).
 */
function relativeError(backend: Backend, W: Float32Array, Q: Float32Array, H: Float32Array, out: number, inF: number): number {
  const stride = Math.ceil(out / ERROR_ROWS);
  const rows = Math.ceil(out / stride);
  const D = new Float32Array(rows * inF);
  const Ws = new Float32Array(rows * inF);
  for (let r = 0; r < rows; r++) {
    const o = r * stride * inF;
    for (let c = 0; c < inF; c++) {
      Ws[r * inF + c] = W[o + c]!;
      D[r * inF + c] = W[o + c]! - Q[o + c]!;
    }
  }
  const tmp = new Float32Array(rows * inF);
  backend.gemm(false, false, rows, inF, inF, 1, D, H, 0, tmp);
  let num = 0;
  for (let i = 0; i < D.length; i++) num += D[i]! * tmp[i]!;
  backend.gemm(false, false, rows, inF, inF, 1, Ws, H, 0, tmp);
  let den = 0;
  for (let i = 0; i < Ws.length; i++) den += Ws[i]! * tmp[i]!;
  return den > 0 ? num / den : 0;
}

/** A block's source Linear weights, read from the checkpoint when asked for ("<linear>.weight") and not kept. */
function sourceLinears(src: ModelSource, i: number): BlockWeights {
  const m = new Map<string, Float32Array>();
  m.get = (key: string) => (key.endsWith(".weight") ? loadBlockWeights(src, i, key.slice(0, -".weight".length)).get(key) : undefined);
  return m;
}

/**
 * The relative output error plain RTN would give the unscaled weight: its Hessian is the scaled one
 * mapped back (X = X'·diag(s), so H = diag(s)·H'·diag(s)).
 */
function rtnErrorBefore(backend: Backend, W: Float32Array, Hs: Float32Array, s: Float32Array | undefined, out: number, inF: number, opts: QuantOptions): number {
  const H = Hs.slice();
  if (s) for (let r = 0; r < inF; r++) for (let c = 0; c < inF; c++) H[r * inF + c] = H[r * inF + c]! * s[r]! * s[c]!;
  return relativeError(backend, W, quantizeRtn(W, out, inF, opts).dequant, H, out, inF);
}

/** H[r][c] ÷ (s[r]·s[c]) in place: the Hessian of x ÷ s from that of x (rtnErrorBefore maps it back). */
function unscaleHessian(H: Float32Array, s: Float32Array): void {
  const n = s.length;
  for (let r = 0; r < n; r++) {
    const sr = s[r]!;
    for (let c = 0; c < n; c++) H[r * n + c] = H[r * n + c]! / (sr * s[c]!);
  }
}

/** Run the block over every calibration sample, writing its outputs to `write`. */
function runBlockOverSamples(
  ctx: ForwardContext, w: BlockWeights, acts: ActivationStore, write: ActivationStore,
  /** A Linear-input hook per batch of windows [s0, s1) (AWQ's capture rides on the fp pass). */
  hook?: (s0: number, s1: number) => ((name: string, x: Float32Array, rows: number) => void) | undefined,
): void {
  const B = batchWindows(acts.seqlen, acts.samples);
  for (let s0 = 0; s0 < acts.samples; s0 += B) {
    const s1 = Math.min(acts.samples, s0 + B);
    const onLinearInput = hook?.(s0, s1);
    write.set(s0, blockForward(ctx, w, acts.get(s0, s1), s1 - s0, acts.seqlen, onLinearInput ? { onLinearInput } : undefined));
  }
  releaseScratch(ctx); // not held through the next block's GPTQ (peak memory)
}

/** Weights of a finished block as the pipeline ran them, re-read from its journal file. */
function blockWeightsFromJournal(plan: QuantizePlan, file: string, i: number): BlockWeights {
  const a = plan.src.arch;
  const w: BlockWeights = new Map();
  const f = Checkpoint.open(file);
  try {
    // The working values of everything not packed (norms, fp16-kept Linears), as the run had them.
    for (const n of f.names()) if (n.startsWith(WORK)) w.set(n.slice(WORK.length), f.readF32(n));
    for (const l of a.linears) {
      const full = a.blockPrefix(i) + l.name;
      if (!plan.format.isQuantized(full, (n) => f.has(n))) continue;
      const q = unpackLinear(f, plan.format, full, plan.settings, { out: l.out, in: l.in });
      w.set(`${l.name}.weight`, dequantize(q));
      if (l.bias && q.bias) w.set(`${l.name}.bias`, q.bias);
    }
  } finally {
    f.close();
  }
  return w;
}

/**
 * Journal tensors that are not output: the fp32 working values of a block's norms and kept Linears
 * (AWQ folds scales into them), so a resumed run continues from exactly what the interrupted one had.
 */
const WORK = "quant4.work.";

/** fp16 output tensor (stored layout) and fp32 journal copy of a working-block tensor `key` (relative name). */
function fromWorkingBlock(arch: ArchSpec, prefix: string, w: BlockWeights, key: string, shape: number[]): TensorToWrite[] {
  let data = w.get(key)!;
  const l = arch.transposedLinears && key.endsWith(".weight") ? arch.linears.find((x) => `${x.name}.weight` === key) : undefined;
  // GPT-2 Conv1D weights are stored [in, out]: write them back in the stored layout.
  if (l) data = transposeRows(data, l.out, l.in);
  return [
    { name: prefix + key, dtype: "F16", shape, data: toF16Checked(data, `tensor "${prefix + key}"`) },
    { name: WORK + key, dtype: "F32", shape: [w.get(key)!.length], data: w.get(key)! },
  ];
}

function transposeRows(x: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = x[r * cols + c]!;
  return t;
}

/** Quantize one block in place (w's Linears become their dequantized INT4 values); returns tensors to store. */
/** Let the event loop run (a SIGINT handler, a progress timer), then honour a stop request. */
async function checkpoint(events: QuantizeEvents, block: number, total: number): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  if (events.shouldStop?.()) {
    const done = block; // blocks [0, block) are journaled
    throw new InterruptedError(`interrupted after block ${done}/${total}; rerun with --resume to continue from there`);
  }
}

async function quantizeBlock(
  plan: QuantizePlan,
  backend: Backend,
  ctx: ForwardContext,
  i: number,
  w: BlockWeights,
  acts: ActivationStore,
  events: QuantizeEvents,
  /** The block's fp weights before any change (AWQ's "before" errors), when kept. */
  original: BlockWeights | null,
  /** The block's calibration passes (with calibration); `passes.run(Stage.out)` afterwards resumes from the last one's cache when `keepLast`. */
  passes: BlockPasses | null,
  keepLast: boolean,
  /** AWQ's capture, when the fp pass that feeds the next block already made it. */
  awqInputs?: Map<string, Float32Array>,
  /** Each group's Hessian (by its first Linear) from the fp block's inputs, when that pass made them (then no `passes`). */
  fpHessians?: Map<string, GptqHessian>,
): Promise<{ tensors: TensorToWrite[]; stats: LayerStat[] }> {
  const a = plan.src.arch;
  const prefix = a.blockPrefix(i);
  const tensors: TensorToWrite[] = [];
  const stats: LayerStat[] = [];
  const byName = new Map(a.linears.map((l) => [l.name, l]));
  const method = METHODS[plan.settings.method];
  const reasonOf = (l: LinearSpec): string | null => skipReason(plan, l, prefix + l.name);
  const optsOf = (l: LinearSpec): QuantOptions => {
    const s = layerSettings(plan, prefix + l.name) ?? plan.settings;
    return { bits: s.bits, groupSize: s.groupSize, sym: s.sym };
  };
  // AWQ rewrites the working block (scales folded, weights clipped) before anything is quantized.
  const awq = method.awq ? prepareAwqBlock(ctx, backend, w, acts, optsOf, (l) => reasonOf(l) === null, { clip: true, tokens: plan.awqTokens }, awqInputs) : null;
  if (awq) await checkpoint(events, i, a.nLayers);
  // Hessians of the fp block's inputs describe the inputs before AWQ's folds; the working Linears now
  // read x ÷ s (s: the scales folded into their input columns), so H → diag(1/s)·H·diag(1/s).
  for (const [first, h] of fpHessians ?? []) {
    const s = awq?.get(first)?.scales;
    if (s) unscaleHessian(h.H, s);
  }
  let done = 0;
  // Groups with a quantized Linear get a calibration pass; each pass caches its stage for the next one
  // (or for the pass that makes the next block's inputs, when that resumes: keepLast).
  const fed = a.sequentialGroups.map((g) => passes !== null && g.some((n) => reasonOf(byName.get(n)!) === null));
  const lastFed = fed.lastIndexOf(true);
  for (const [gi, group] of a.sequentialGroups.entries()) {
    // The Linears of a group share one input (q/k/v, gate/up), hence one Hessian, fed by the group's first Linear.
    const hessian = fpHessians ? (fpHessians.get(group[0]!) ?? null) : plan.calibrate ? new GptqHessian(backend, byName.get(group[0]!)!.in) : null;
    if (hessian && fed[gi])
      passes!.run(stageOfLinear(a, group[0]!), (s0, s1, st) => hessian.addBatch(st.input!, (s1 - s0) * acts.seqlen), gi < lastFed || keepLast);
    // GPTQ's damped inverse Cholesky factor depends only on H, damp and act-order: one per Hessian, made
    // at the group's first quantized Linear (whose name its errors carry) and shared by the others.
    let factor: GptqFactor | undefined;
    const factorFor = (full: string): GptqFactor =>
      (factor ??= gptqFactor(backend, hessian!.H, hessian!.inF, { damp: plan.settings.damp ?? 0.01, actOrder: plan.settings.actOrder, name: full }));
    for (const name of group) {
      await checkpoint(events, i, a.nLayers);
      const l = byName.get(name)!;
      const full = prefix + name;
      const t0 = performance.now();
      const reason = reasonOf(l);
      let stat: LayerStat;
      if (reason) {
        tensors.push(...fromWorkingBlock(a, prefix, w, `${name}.weight`, plan.src.ckpt.info(`${full}.weight`).shape));
        if (l.bias) tensors.push(...fromWorkingBlock(a, prefix, w, `${name}.bias`, [l.out]));
        stat = { name: full, status: "skipped", reason, relError: null, seconds: (performance.now() - t0) / 1000 };
        events.onWarning?.(`${full} [${l.out}×${l.in}] stays fp16: ${reason}`);
      } else {
        const W = w.get(`${name}.weight`)!;
        const H = hessian?.H ?? null;
        const opts = optsOf(l);
        const fraction = plan.outlierFraction ?? 0;
        // RTN/AWQ outliers: the budget's most salient weights by |w|·‖xᵢ‖ (GPTQ picks its own in its loop).
        const mask = fraction > 0 && !method.gptq ? topKMask(activationSaliency(W, l.out, l.in, H!), outlierBudget(fraction, l.out, l.in)) : undefined;
        // Every algorithm's result carries the format-neutral layer; the pipeline reads only that.
        const r = (
          method.gptq
            ? gptqQuantize(backend, W, H!, l.out, l.in, {
                ...opts,
                factor: factorFor(full),
                outlierFraction: fraction,
                damp: plan.settings.damp ?? 0.01,
                blockSize: plan.blockSize,
                actOrder: plan.settings.actOrder,
                staticGroups: plan.settings.staticGroups ?? false,
                name: full,
                onWarning: (m) => events.onWarning?.(m),
              })
            : quantizeRtn(W, l.out, l.in, opts, mask)
        ).layer;
        const bias = l.bias ? roundToF16InPlace(w.get(`${name}.bias`)!.slice()) : undefined;
        const layer: QuantizedLinear = { ...r, name: full, ...(bias ? { bias } : {}) };
        // The forward uses exactly what a reader of the output gets, so a resumed run is bit-identical.
        const Q = dequantize(layer);
        const relError = H ? relativeError(backend, W, Q, H, l.out, l.in) : null;
        // Probes at other widths, before w's entry is replaced by Q below.
        const probes = H && plan.probeBits?.length
          ? plan.probeBits.map((bits) => {
              const o = { ...opts, bits };
              const q = method.gptq
                ? gptqQuantize(backend, W, H, l.out, l.in, { ...o, factor: factorFor(full), damp: plan.settings.damp ?? 0.01, blockSize: plan.blockSize, actOrder: plan.settings.actOrder, staticGroups: plan.settings.staticGroups ?? false, outlierFraction: fraction }).layer
                : quantizeRtn(W, l.out, l.in, o, mask).layer;
              return { bits, relError: relativeError(backend, W, dequantize(q), H, l.out, l.in) };
            })
          : undefined;
        w.set(`${name}.weight`, Q);
        if (bias) w.set(`${name}.bias`, bias);
        tensors.push(...plan.format.pack(layer));
        stat = { name: full, status: "quantized", relError, seconds: (performance.now() - t0) / 1000, bits: opts.bits, ...(probes ? { probes } : {}) };
        const ai = awq?.get(name);
        if (ai) {
          if (ai.alpha !== undefined) stat.awqAlpha = ai.alpha;
          if (ai.clipShrink !== undefined) stat.clipShrink = ai.clipShrink;
          if (H && original) stat.relErrorBefore = rtnErrorBefore(backend, original.get(`${name}.weight`)!, H, ai.scales, l.out, l.in, opts);
        }
      }
      stats.push(stat);
      events.onLayerDone?.(i, stat, ++done, a.linears.length);
    }
  }
  for (const n of [a.attnNorm, a.mlpNorm]) {
    tensors.push(...fromWorkingBlock(a, prefix, w, n.weight, [a.hidden]));
    if (n.bias) tensors.push(...fromWorkingBlock(a, prefix, w, n.bias, [a.hidden]));
  }
  return { tensors, stats };
}

/** Tensors outside the blocks, written as fp16. */
function globalTensors(src: ModelSource): TensorToWrite[] {
  const a = src.arch;
  const names = [a.embedTokens];
  if (a.positional.kind === "learned") names.push(a.positional.tensor);
  names.push(a.finalNorm.weight);
  if (a.finalNorm.bias) names.push(a.finalNorm.bias);
  if (!a.tiedLmHead) names.push(a.lmHead);
  return names.map((n) => asF16Tensor(src, n));
}

/**
 * Files a loader needs beside the weights, copied unchanged: tokenizer, generation config, chat
 * template, licence and model card. Anything else in the source folder (.bin weights, notebooks,
 * reference outputs) stays behind.
 */
const COMPANION = /^(tokenizer\.json|tokenizer\.model|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|vocab\.txt|encoder\.json|vocab\.bpe|generation_config\.json|chat_template\.(json|jinja)|preprocessor_config\.json|(LICEN[CS]E|NOTICE|USE_POLICY)(\.[\w]+)?|README\.md)$/i;

export function companionFiles(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => COMPANION.test(f) && fs.statSync(path.join(dir, f)).isFile());
}

export function outputConfig(plan: Pick<QuantizePlan, "src" | "format" | "settings" | "provenance" | "rules">, skipped: string[]): Record<string, unknown> {
  return {
    ...plan.src.config,
    torch_dtype: "float16",
    quantization_config: plan.format.quantizationConfig(plan.settings, skipped, overridesOf(plan.rules ?? [])),
    ...(plan.provenance ? { quant4: plan.provenance } : {}),
  };
}

/** Block-0 inputs: the embeddings of the calibration windows. Only the embedding tables are read (not
 * the LM head, often the largest tensor), and they are released before the first block. */
function embedCalibration(plan: QuantizePlan, acts: ActivationStore): void {
  const { src } = plan;
  const a = src.arch;
  const tables = {
    embed: readFloat(src, a.embedTokens),
    positions: a.positional.kind === "learned" ? readFloat(src, a.positional.tensor) : null,
  };
  for (let s = 0; s < plan.nsamples; s++) {
    const win = plan.windows.subarray(s * plan.seqlen, (s + 1) * plan.seqlen);
    acts.set(s, embedTokens(a, tables, win, plan.seqlen));
  }
}

export async function runQuantize(plan: QuantizePlan, backend: Backend, events: QuantizeEvents = {}): Promise<QuantizeReport> {
  const t0 = performance.now();
  // One writer per output: the journal holds the lock of <out>.partial/ until the output is in place;
  // on an error the lock is released and the finished blocks are kept for --resume.
  const journal = Journal.open(plan.outDir, plan.settingsKey, plan.resume, plan.runSettings);
  try {
    return await quantizeLocked(plan, backend, events, journal, t0);
  } catch (e) {
    journal.release();
    throw e;
  }
}

async function quantizeLocked(plan: QuantizePlan, backend: Backend, events: QuantizeEvents, journal: Journal, t0: number): Promise<QuantizeReport> {
  const { src } = plan;
  const a: ArchSpec = src.arch;
  const resumedFrom = journal.state.finishedBlocks;
  if (journal.resumed) events.onResume?.(resumedFrom, a.nLayers);
  const ctx = createContext(a, backend, Math.max(a.maxPositions, plan.seqlen));

  const spill = spillsActivations(plan, a.hidden);
  if (spill && plan.calibrate) checkSpillSpace(journal.workDir, 2 * ActivationStore.bytesFor(plan.nsamples, plan.seqlen, a.hidden, plan.actDtype));
  const store = (tag: string) =>
    new ActivationStore(plan.nsamples, plan.seqlen, a.hidden, plan.actDtype, spill ? path.join(journal.workDir, `activations-${tag}.bin`) : null);
  let acts = store("a");
  if (plan.calibrate) embedCalibration(plan, acts);
  let next = store("b");
  // The calibration passes' caches (fp32: exactly the values the forward computed) are widest at the MLP
  // hidden state, with the residual beside it; over the budget together with the two stores, they spill too.
  const cacheSpill = spillsPassCaches(plan, a.hidden, a.intermediate);
  const cacheStore: CacheStoreFactory = (width, tag) =>
    new ActivationStore(plan.nsamples, plan.seqlen, width, "fp32", cacheSpill ? path.join(journal.workDir, `stage-${tag}.bin`) : null);

  for (let i = 0; i < a.nLayers; i++) {
    events.onBlockStart?.(i, a.nLayers);
    const tb = performance.now();
    let w: BlockWeights;
    if (i < journal.state.finishedBlocks) {
      // Without calibration a finished block is not needed again (nothing flows through it).
      if (!plan.calibrate) continue;
      w = plan.propagate === "fp" ? loadBlockWeights(src, i) : blockWeightsFromJournal(plan, journal.blockFile(i), i);
    } else {
      w = loadBlockWeights(src, i);
      const fpPropagation = plan.propagate === "fp";
      // No second fp32 copy of the block is held while it is quantized (at 7B shapes 0.75 GiB): AWQ's
      // "before" errors re-read one source Linear at a time, fp propagation runs the fp block first.
      const original = METHODS[plan.settings.method].awq ? sourceLinears(src, i) : null;
      const passes = plan.calibrate ? new BlockPasses(ctx, w, acts, cacheStore, plan.restartPasses === true) : null;
      let stats: LayerStat[];
      try {
        // With fp propagation the next block's inputs are the fp block's outputs: computed first, from w
        // as loaded, and the same forward captures what AWQ's searches read (no forward of its own).
        let awqInputs: Map<string, Float32Array> | undefined;
        let fpHessians: Map<string, GptqHessian> | undefined;
        if (plan.calibrate && fpPropagation) {
          let hook: Parameters<typeof runBlockOverSamples>[4];
          if (METHODS[plan.settings.method].awq) {
            const quantized = (l: LinearSpec): boolean => skipReason(plan, l, a.blockPrefix(i) + l.name) === null;
            const c = awqCollector(a, awqCapture(a, acts.samples, acts.seqlen, quantized, true, plan.awqTokens), acts.seqlen);
            awqInputs = c.inputs;
            // AWQ alone (no GPTQ) with fp propagation takes every statistic from the fp block, as llm-awq
            // does: the same forward accumulates each group's Hessian (for the output-error metric and
            // outlier saliency), so no quantized calibration pass runs for this block.
            if (!METHODS[plan.settings.method].gptq) {
              const groups = a.sequentialGroups.filter((g) => g.some((n) => quantized(a.linears.find((l) => l.name === n)!)));
              fpHessians = new Map(groups.map((g) => [g[0]!, new GptqHessian(backend, a.linears.find((l) => l.name === g[0])!.in)]));
            }
            hook = (s0, s1) => {
              const capture = c.hook(s0, s1);
              if (!fpHessians) return capture;
              return (n, x, rows) => {
                capture?.(n, x, rows);
                fpHessians!.get(n)?.addBatch(x, rows);
              };
            };
          }
          runBlockOverSamples(ctx, w, acts, next, hook);
        }
        let tensors: TensorToWrite[];
        ({ tensors, stats } = await quantizeBlock(plan, backend, ctx, i, w, acts, events, original, fpHessians ? null : passes, !fpPropagation, awqInputs, fpHessians));
        writeSafetensors(journal.blockFile(i), tensors);
        // Otherwise they come from the quantized block, resuming from the last pass's cache.
        if (!(plan.calibrate && fpPropagation)) passes?.run(Stage.out, (s0, _s1, st) => next.set(s0, st.residual), false);
      } finally {
        passes?.drop();
      }
      journal.finishBlock(i, stats, (performance.now() - tb) / 1000);
      events.afterBlockJournaled?.(i);
      events.onBlockDone?.(i, a.nLayers, (performance.now() - tb) / 1000);
      [acts, next] = [next, acts];
      continue;
    }
    runBlockOverSamples(ctx, w, acts, next);
    [acts, next] = [next, acts];
    events.onBlockDone?.(i, a.nLayers, (performance.now() - tb) / 1000);
  }

  acts.close();
  next.close();
  const skipped = journal.state.layers.filter((l) => l.status === "skipped").map((l) => l.name);
  const reportFor = (files: string[]): QuantizeReport => ({
    outDir: plan.outDir,
    files,
    layers: journal.state.layers,
    skipped,
    blockSeconds: journal.state.blockSeconds,
    resumedFromBlock: resumedFrom,
    totalSeconds: (performance.now() - t0) / 1000,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  });
  let report = reportFor([]);
  if (!plan.dryOutput)
    await assembleOutput(plan, journal, skipped, async (staging) => {
      const hook = events.beforePublish;
      report = reportFor([...fs.readdirSync(staging), ...(hook?.extraFiles ?? [])].sort());
      await hook?.run(staging, report);
    });
  journal.remove();
  return report;
}

/** Stream globals and every block file into the final shards, add configs and companions (and, via `beforeRename`, the manifest), then rename into place. */
async function assembleOutput(plan: QuantizePlan, journal: Journal, skipped: string[], beforeRename: (staging: string) => Promise<void>): Promise<void> {
  const { src } = plan;
  const staging = path.join(journal.workDir, "final");
  fs.rmSync(staging, { recursive: true, force: true });
  const writer = new ShardedWriter(staging, { maxShardBytes: plan.maxShardBytes });
  try {
    for (const t of globalTensors(src)) writer.add(t);
    for (let i = 0; i < src.arch.nLayers; i++) {
      const f = Checkpoint.open(journal.blockFile(i));
      try {
        for (const n of f.names()) {
          if (n.startsWith(WORK)) continue; // the journal's working copies are not output
          const info = f.info(n);
          writer.add({ name: n, dtype: info.dtype, shape: info.shape, data: f.readRaw(n) });
        }
      } finally {
        f.close();
      }
    }
    writer.finish({ format: "pt", quantizer: "quant4" });
  } catch (e) {
    writer.abort();
    throw e;
  }
  atomicWriteFile(path.join(staging, "config.json"), JSON.stringify(outputConfig(plan, skipped), null, 2) + "\n");
  for (const [name, content] of Object.entries(plan.format.sidecarFiles(plan.settings, skipped, overridesOf(plan.rules ?? []))))
    atomicWriteFile(path.join(staging, name), content);
  for (const f of companionFiles(src.dir)) fs.copyFileSync(path.join(src.dir, f), path.join(staging, f));
  await beforeRename(staging);
  journal.assertLocked(); // only the lock holder moves its output into place
  try {
    // Without --overwrite the rename itself refuses a non-empty directory, so an output that appeared
    // after the CLI's checks is never replaced.
    if (plan.overwrite && fs.existsSync(plan.outDir)) fs.rmSync(plan.outDir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(path.resolve(plan.outDir)), { recursive: true });
    fs.renameSync(staging, plan.outDir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTEMPTY" || code === "EEXIST")
      throw new OutputError(plan.outDir, `appeared while this run was writing it and is not empty; the finished blocks are kept: rerun with --resume --overwrite to replace it`);
    throw new OutputError(plan.outDir, `could not move the finished output into place: ${(e as Error).message}`);
  }
}
