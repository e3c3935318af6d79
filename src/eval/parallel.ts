// Data-parallel perplexity (issue 15 item 5): with --threads N ≥ 2, N evaluators of one thread each score
// disjoint batches of windows instead of one evaluator whose GEMMs use N threads. A small model's GEMMs
// are too short to keep several BLAS threads busy (each hands work to the other threads and back, and
// the block ops, NLLs and JavaScript between them run on one core); whole evaluators side by side keep
// every core busy (brown-llama, 2 threads: ~10,900 tokens/s against ~9,200; bench/README.md).
//
// The parent evaluates too, so the threads' start-up and model load overlap with useful work. Batches
// are claimed from a shared counter (a work queue: an evaluator that starts late or runs slow takes
// fewer; at the end the parent also scores batches a thread still holds), and every evaluator writes
// its windows' numbers into shared arrays; the parent sums them in window order (combineWindows), so
// the result has the same bits as one evaluator's. Worker threads rather than child processes: the
// same speed (measured), and shared memory makes the queue and the results plain arrays.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import type { Backend } from "../compute/backend.js";
import { availableMemory, BUDGET_FRACTION, readMemoryFacts, type MemoryFacts } from "../pipeline/memory.js";
import type { Model } from "../model/model.js";
import { fmtBytes } from "../util/format.js";
import { BackendError, ModelError, Quant4Error, UsageError } from "../util/errors.js";
import { combineWindows, evalBatching, newWindowResults, windowCount, WindowScorer, type PplOptions, type PplResult, type WindowResults } from "./perplexity.js";

/** What an evaluator thread gets (structured clone: the typed arrays on SharedArrayBuffers are shared). */
export interface EvalWorkerData {
  id: number;
  modelDir: string;
  klBaseDir: string | null;
  dequantize: boolean;
  tokens: Int32Array;
  seqlen: number;
  windows: number;
  batchRows: number | undefined;
  res: WindowResults;
  /** Batch b is windows [starts[b], starts[b + 1]) (workBatches). */
  starts: Int32Array;
  /** [0]: the next unclaimed batch. */
  claim: Int32Array;
  /** Per batch: 1 once its numbers are in `res`. */
  done: Int32Array;
  /** Per evaluator: the batch it is scoring, or −1. */
  current: Int32Array;
  /** Tests (ParallelOptions.exitAtBatch, stallMs). */
  exitAtBatch: number | null;
  stallMs: number;
}

export type EvalWorkerMessage =
  | { kind: "batch"; batch: number; first: boolean }
  | { kind: "finished" }
  | { kind: "error"; batch: number; error: { name: string; message: string; stack: string; code: string | null } };

/** Where the evaluators load the models from (the parent's are already loaded; each thread loads its own copy). */
export interface ModelSpec {
  modelDir: string;
  klBaseDir?: string;
  dequantize: boolean;
}

export interface ParallelOptions {
  /** Evaluators in all, this thread included (≥ 2). */
  evaluators: number;
  spec: ModelSpec;
  /** The backend the parent's model runs on: one thread (process-wide) while the evaluators run. */
  backend: Pick<Backend, "setThreads" | "getThreads">;
  /** Tests: false leaves every batch to the threads. */
  parentEvaluates?: boolean;
  /** Tests: a thread ends (process.exit in the thread, no message) when it claims this batch. */
  exitAtBatch?: number;
  /** Tests: a thread spins this long after claiming its first batch (a straggler). */
  stallMs?: number;
  /** Filled in when given: batches this thread scored again because a thread still held them. */
  stats?: { redone: number };
}

/** Bytes a worker thread costs besides the model data: a V8 isolate, the modules, the transpiler (measured ~60 MiB). */
export const EVALUATOR_OVERHEAD_BYTES = 96 * 2 ** 20;

/**
 * Memory one more evaluator needs: its copy of the weights (and of the KL base), the activations of one
 * batch and the LM head's logits buffers, and a thread's own overhead.
 */
export function evaluatorBytes(model: Model, klBase: Model | undefined, seqlen: number, batchRows?: number): number {
  const work = (m: Model) => {
    const a = m.arch;
    const { windowsPerBatch, windowsPerHead } = evalBatching(a, seqlen, batchRows);
    const inter = Math.max(0, ...a.linears.map((l) => Math.max(l.in, l.out)));
    return m.weightMemory().total + 4 * windowsPerBatch * seqlen * (8 * a.hidden + 3 * inter) + 4 * windowsPerHead * seqlen * a.vocabSize;
  };
  return EVALUATOR_OVERHEAD_BYTES + work(model) + (klBase ? work(klBase) : 0);
}

/**
 * Floating-point work of scoring `windows` windows of `seqlen` (per token: 2 × the block Linears' and the
 * LM head's weights, and the causal attention's 2 × seqlen × heads × headDim per block), base included.
 */
export function evalFlops(model: Model, klBase: Model | undefined, seqlen: number, windows: number): number {
  const perToken = (m: Model) => {
    const a = m.arch;
    const linear = a.linears.reduce((s, l) => s + l.in * l.out, 0);
    return a.nLayers * (2 * linear + 2 * seqlen * a.nHeads * a.headDim) + 2 * a.hidden * a.vocabSize;
  };
  return windows * seqlen * (perToken(model) + (klBase ? perToken(klBase) : 0));
}

/**
 * A one-thread evaluator's rate for the size estimate, GFLOP/s: brown-llama runs at ~75, stories260K ~40
 * on this project's 2-core machine; the lower figure errs toward evaluating in parallel.
 */
export const EVAL_GFLOPS_PER_THREAD = 40;
/**
 * Estimated seconds of work each evaluator must have: a worker thread's start-up (isolate, modules, model
 * load: ~0.5 s) and its first batch on cold JIT code slow the others while they run, which a short
 * evaluation does not win back (stories260K's 60 windows of 256, ~0.35 s: 27–38k tokens/s with two
 * evaluators against 39–48k with one).
 */
export const MIN_SECONDS_PER_EVALUATOR = 1;

export interface EvaluatorPlan {
  /** 1: one evaluator with `threads` BLAS/kernel threads (today's path); > 1: that many one-thread evaluators. */
  evaluators: number;
  /** Why, in words (--json: evaluatorPlan). */
  why: string;
}

export interface EvalWork {
  /** --threads (or the default: all cores). */
  threads: number;
  /** evaluatorBytes. */
  perEvaluatorBytes: number;
  /** Batches of windowsPerBatch windows (no more evaluators than these). */
  batches: number;
  /** evalFlops. */
  flops: number;
}

/**
 * How many evaluators eval-ppl runs: one per thread, one thread each — no more than there are batches,
 * and each with at least MIN_SECONDS_PER_EVALUATOR of estimated work — when the extra copies of the model
 * fit in BUDGET_FRACTION of the available memory (src/pipeline/memory.ts); else one evaluator on
 * `threads` threads (today's path). QUANT4_EVAL_WORKERS=0 forces one evaluator; =n (≥ 2) asks for n
 * whatever the threads and the work (the memory check still applies). `facts` and `env` are injectable.
 */
export function planEvaluators(work: EvalWork, facts: MemoryFacts = readMemoryFacts(), env: NodeJS.ProcessEnv = process.env): EvaluatorPlan {
  const { threads, perEvaluatorBytes, batches, flops } = work;
  const forced = env["QUANT4_EVAL_WORKERS"];
  if (forced !== undefined && forced !== "" && !/^\d+$/.test(forced)) throw new UsageError(`QUANT4_EVAL_WORKERS must be a whole number (0: one evaluator), got "${forced}"`);
  const asked = forced ? Number(forced) : undefined;
  if (asked !== undefined && asked <= 1) return { evaluators: 1, why: `QUANT4_EVAL_WORKERS=${forced}: one evaluator on ${threads} thread${threads > 1 ? "s" : ""}` };
  let n: number;
  if (asked !== undefined) n = Math.min(asked, batches);
  else {
    if (threads < 2) return { evaluators: 1, why: `--threads ${threads}` };
    const seconds = flops / (EVAL_GFLOPS_PER_THREAD * 1e9);
    n = Math.min(threads, batches, Math.floor(seconds / MIN_SECONDS_PER_EVALUATOR));
    if (n < 2)
      return { evaluators: 1, why: `a short evaluation (~${seconds.toFixed(1)} s of work for one thread, ${batches} batch${batches > 1 ? "es" : ""}): one evaluator on ${threads} threads` };
  }
  if (n < 2) return { evaluators: 1, why: `one batch of windows` };
  const avail = availableMemory(facts);
  const need = (n - 1) * perEvaluatorBytes;
  const budget = BUDGET_FRACTION * avail.bytes;
  if (need > budget)
    return {
      evaluators: 1,
      why: `${n - 1} more copies of the model need ${fmtBytes(need)}, over ${Math.round(BUDGET_FRACTION * 100)}% of ${fmtBytes(avail.bytes)} available (${avail.source}): one evaluator on ${threads} threads`,
    };
  return { evaluators: n, why: `${n} one-thread evaluators (${fmtBytes(perEvaluatorBytes)} each)${asked !== undefined ? ` (QUANT4_EVAL_WORKERS=${forced})` : ""}` };
}

/**
 * The work queue's batches, as window boundaries (batch b = windows [starts[b], starts[b + 1])): whole
 * batches of `windowsPerBatch` windows (evalBatching's), shrinking toward the end (guided
 * self-scheduling: about 1/(2·evaluators) of the windows left, at least one window) so that the
 * evaluators finish close together instead of one waiting out another's last full batch.
 */
export function workBatches(windows: number, windowsPerBatch: number, evaluators: number): Int32Array {
  const starts = [0];
  for (let w = 0; w < windows; ) {
    w += Math.min(windowsPerBatch, Math.max(1, Math.ceil((windows - w) / (2 * evaluators))));
    starts.push(Math.min(w, windows));
  }
  return Int32Array.from(starts);
}

/** tsx's ESM API (its `register`), resolved from here (its package's ESM entry, not the CommonJS one). */
function tsxApiUrl(): string {
  const resolve = (import.meta as { resolve?: (s: string) => string }).resolve;
  if (typeof resolve === "function") return resolve("tsx/esm/api");
  // (vitest's module runner has no import.meta.resolve: resolve the package, then its ESM API file)
  const pkg = createRequire(import.meta.url).resolve("tsx/package.json");
  return pathToFileURL(path.join(path.dirname(pkg), "dist/esm/api/index.mjs")).href;
}

/** The worker module next to this one (.ts under tsx/vitest, .js compiled) and how to start it. */
function startWorker(data: EvalWorkerData): Worker {
  const self = import.meta.url;
  const ext = self.endsWith(".ts") ? ".ts" : ".js";
  const url = new URL(`./eval-worker${ext}`, self);
  if (ext === ".js") return new Worker(fileURLToPath(url), { workerData: data });
  // Running from TypeScript source: the thread registers tsx's loader before importing the worker
  // (Node 20 does not carry the parent's `--import tsx` hooks into a worker thread).
  const tsx = tsxApiUrl();
  const code = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(code, { eval: true, workerData: data });
}

/** An evaluator thread's error as the error class the single evaluator would have thrown (same message, exit code). */
function revive(e: Extract<EvalWorkerMessage, { kind: "error" }>["error"]): Error {
  let err: Error;
  if (e.name === "ModelError") err = new ModelError(e.message);
  else if (e.name === "UsageError") err = new UsageError(e.message);
  else if (e.name === "BackendError") err = new BackendError(e.message);
  else if (e.code !== null) {
    err = new Quant4Error(e.code, e.message);
    err.name = e.name;
  } else {
    err = new Error(e.message);
    err.name = e.name;
  }
  err.stack = e.stack;
  return err;
}

/**
 * evaluatePerplexity on `evaluators` evaluators: this thread and evaluators − 1 worker threads, each
 * with one BLAS/kernel thread (set process-wide here), over batches claimed from a shared counter. The
 * same numbers, bit for bit, as evaluatePerplexity; seconds run from the start (threads' start-up and
 * model loads included) to the last window's result. onWindow reports windows done as they arrive.
 * Errors: the one of the first failing batch in window order (as the single evaluator would throw it);
 * a thread that dies is an error naming its windows, never a hang.
 */
export async function evaluatePerplexityParallel(model: Model, tokens: ArrayLike<number>, opts: PplOptions, bos: boolean, par: ParallelOptions): Promise<PplResult> {
  const { seqlen } = opts;
  const { evaluators, spec, backend } = par;
  if (!Number.isInteger(evaluators) || evaluators < 2) throw new Error(`internal: evaluatePerplexityParallel needs ≥ 2 evaluators (got ${evaluators})`);
  const windows = windowCount(model, tokens.length, seqlen, opts.maxWindows);
  const t0 = performance.now();
  const threadsBefore = backend.getThreads();
  backend.setThreads(1); // process-wide: OpenBLAS and the kernel pool run on each calling thread
  const scorer = new WindowScorer(model, tokens, seqlen, windows, opts.klBase, opts.batchRows);
  const starts = workBatches(windows, scorer.windowsPerBatch, evaluators);
  const batches = starts.length - 1;
  const res = newWindowResults(windows, seqlen, opts.klBase !== undefined, true);
  const shared = (n: number) => new Int32Array(new SharedArrayBuffer(4 * n));
  const sharedTokens = shared(windows * seqlen);
  for (let i = 0; i < sharedTokens.length; i++) sharedTokens[i] = tokens[i]!;
  const claim = shared(1);
  const done = shared(batches);
  const current = shared(evaluators).fill(-1);

  let windowsDone = 0;
  const report = (n: number) => {
    windowsDone += n;
    opts.onWindow?.(windowsDone, windows, windowsDone * seqlen);
  };
  /** Errors by batch (−1: an evaluator failed before its first batch). */
  const errors: { batch: number; error: Error }[] = [];
  const fail = (batch: number, error: Error) => {
    errors.push({ batch, error });
    Atomics.store(claim, 0, batches); // nothing more is claimed
  };
  const batchWindows = (b: number) => `windows ${starts[b]! + 1}..${starts[b + 1]} of ${windows}`;

  let wake: (() => void) | null = null;
  const poke = () => {
    wake?.();
    wake = null;
  };
  const workers: { worker: Worker; exited: boolean; stopping: boolean; said: boolean }[] = [];
  for (let id = 1; id < evaluators; id++) {
    const data: EvalWorkerData = {
      id,
      modelDir: spec.modelDir,
      klBaseDir: spec.klBaseDir ?? null,
      dequantize: spec.dequantize,
      tokens: sharedTokens,
      seqlen,
      windows,
      batchRows: opts.batchRows,
      res,
      starts,
      claim,
      done,
      current,
      exitAtBatch: par.exitAtBatch ?? null,
      stallMs: par.stallMs ?? 0,
    };
    // said: the thread reported how it ended (finished, or an error); an exit without that is a crash.
    const w = { worker: startWorker(data), exited: false, stopping: false, said: false };
    w.worker.on("message", (m: EvalWorkerMessage) => {
      if (m.kind === "batch") {
        if (m.first) report(starts[m.batch + 1]! - starts[m.batch]!);
      }
      else if (m.kind === "finished") w.said = true;
      else {
        w.said = true;
        fail(m.batch, revive(m.error));
      }
      poke();
    });
    w.worker.on("error", (e) => {
      // An exception the thread did not catch (it catches its own), e.g. out of heap.
      if (!w.said && !w.stopping) fail(Atomics.load(current, id), e instanceof Error ? e : new Error(String(e)));
      w.said = true;
      poke();
    });
    w.worker.on("exit", (code) => {
      w.exited = true;
      if (!w.said && !w.stopping) {
        const b = Atomics.load(current, id);
        fail(b, new Error(`evaluator thread ${id} stopped (exit code ${code}) ${b >= 0 ? `while scoring ${batchWindows(b)}` : "before scoring any window"}`));
      }
      poke();
    });
    workers.push(w);
  }

  /** Scores batch b on this thread; false after an error (recorded). The first to finish a batch reports it. */
  const scoreHere = (b: number): boolean => {
    try {
      scorer.score(starts[b]!, starts[b + 1]!, res);
    } catch (e) {
      fail(b, e as Error);
      return false;
    }
    if (Atomics.compareExchange(done, b, 0, 1) === 0) report(starts[b + 1]! - starts[b]!);
    return true;
  };
  const parentEvaluates = par.parentEvaluates !== false;
  try {
    // This thread's share: claim, score, let the threads' messages in (progress, errors), repeat.
    while (parentEvaluates) {
      const b = Atomics.add(claim, 0, 1);
      if (b >= batches) break;
      Atomics.store(current, 0, b);
      if (!scoreHere(b)) break;
      Atomics.store(current, 0, -1);
      await new Promise((r) => setImmediate(r));
    }
    Atomics.store(current, 0, -1);
    // Every batch is claimed (or an error stopped the claims). Those still in flight on the threads are
    // waited for while a thread lives to finish them (one that dies reports its batch: exit handler) —
    // and scored here too, once each, rather than waited for idle: a thread's first batch runs on cold
    // JIT code, the OS may deschedule a thread holding the last one, and whoever scores a window gets
    // the same bits; the first to finish counts. With an error, only the batches before the first
    // failing one matter (one of them may fail first in window order). A thread still loading holds
    // no batch and is not waited for.
    const redone = new Uint8Array(batches);
    for (;;) {
      const limit = Math.min(batches, ...errors.map((e) => e.batch));
      let pending = false;
      let steal = -1;
      for (let b = 0; b < limit; b++) {
        if (Atomics.load(done, b) !== 0) continue;
        pending = true;
        if (parentEvaluates && !redone[b]) {
          steal = b;
          break;
        }
      }
      if (!pending || workers.every((w) => w.exited)) break;
      if (steal >= 0) {
        redone[steal] = 1;
        if (par.stats) par.stats.redone++;
        scoreHere(steal);
        await new Promise((r) => setImmediate(r));
        continue;
      }
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100).unref();
      });
    }
  } finally {
    for (const w of workers) w.stopping = true;
    await Promise.all(workers.map((w) => (w.exited ? undefined : w.worker.terminate())));
    backend.setThreads(threadsBefore);
  }
  if (errors.length) throw errors.reduce((a, b) => (b.batch < a.batch ? b : a)).error;
  for (let b = 0; b < batches; b++) if (done[b] !== 1) throw new Error(`internal: ${batchWindows(b)} were never scored`);
  return combineWindows(model, res, tokens.length, (performance.now() - t0) / 1000, bos, opts.perWindow);
}
