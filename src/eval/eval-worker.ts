// One evaluator thread of a data-parallel eval-ppl (src/eval/parallel.ts): loads its own copy of the
// model(s), then claims batches of windows from the shared counter until none is left, scoring each with
// the same WindowScorer as the single evaluator and writing the numbers into the shared WindowResults.
// BLAS and the kernel pool run on this thread alone (the parent set both to one thread process-wide).

import { parentPort, workerData } from "node:worker_threads";
import { getBackend } from "../compute/index.js";
import { Model } from "../model/model.js";
import { Quant4Error } from "../util/errors.js";
import { WindowScorer } from "./perplexity.js";
import type { EvalWorkerData, EvalWorkerMessage } from "./parallel.js";

const d = workerData as EvalWorkerData;
const post = (m: EvalWorkerMessage) => parentPort!.postMessage(m);

function describe(e: unknown): Extract<EvalWorkerMessage, { kind: "error" }>["error"] {
  const err = e instanceof Error ? e : new Error(String(e));
  return { name: err.name, message: err.message, stack: err.stack ?? "", code: e instanceof Quant4Error ? e.code : null };
}

let batch = -1;
try {
  const backend = getBackend("cpu");
  backend.setThreads(1);
  const model = Model.load(d.modelDir, backend, undefined, { dequantize: d.dequantize });
  const base = d.klBaseDir !== null ? Model.load(d.klBaseDir, backend, undefined, { dequantize: d.dequantize }) : undefined;
  const scorer = new WindowScorer(model, d.tokens, d.seqlen, d.windows, base, d.batchRows);
  const batches = d.starts.length - 1;
  for (;;) {
    batch = Atomics.add(d.claim, 0, 1);
    if (batch >= batches) break;
    Atomics.store(d.current, d.id, batch);
    if (batch === d.exitAtBatch) process.exit(7); // tests: a thread that dies mid-batch without a word
    for (const t = Date.now() + d.stallMs; Date.now() < t; d.stallMs = 0); // tests: a straggler (spins, so terminate() stops it)
    scorer.score(d.starts[batch]!, d.starts[batch + 1]!, d.res);
    // The parent may have scored it too (a straggler's batch, src/eval/parallel.ts): the first to finish reports it.
    const first = Atomics.compareExchange(d.done, batch, 0, 1) === 0;
    Atomics.store(d.current, d.id, -1);
    post({ kind: "batch", batch, first });
  }
  post({ kind: "finished" });
} catch (e) {
  post({ kind: "error", batch: batch >= 0 && batch < d.done.length ? batch : -1, error: describe(e) });
}
