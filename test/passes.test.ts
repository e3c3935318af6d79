// Resumable block forward (src/model/forward.ts stages) and the pipeline's calibration passes that resume
// from the previous group's cached stage (src/pipeline/passes.ts): a state paused at any stage, kept as
// stageCarry says and resumed, gives the block output bit for bit; a quantize run with the caches (in
// memory or spilled) writes byte-identical files to one whose passes all restart from the block input,
// while running the attention once per batch and block instead of once per pass.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { getFormat } from "../formats/index.js";
import { mulberry32, sampleWindows } from "../src/calibration/sampler.js";
import { resolveText } from "../src/calibration/texts.js";
import type { Backend } from "../src/compute/backend.js";
import { getBackend } from "../src/compute/index.js";
import { Stage, advanceBlock, blockForward, createContext, resumeState, stageCarry, type Stage as StageT } from "../src/model/forward.js";
import { loadBlockWeights, openModel } from "../src/model/model.js";
import { runQuantize, type QuantizePlan } from "../src/pipeline/quantize.js";
import { batchWindows } from "../src/pipeline/passes.js";
import { loadTokenizer } from "../src/tokenizer/index.js";
import { BROWN, hasShared, makeTmpDir, removeTmpDirs, STORIES_VENDORED, withShared, writeSyntheticModel } from "./helpers.js";

afterAll(removeTmpDirs);

const bytes = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

describe("block forward stages", () => {
  const models = () => [
    STORIES_VENDORED,
    ...(["opt", "gpt2", "qwen2", "llama3"] as const).map((k, i) => writeSyntheticModel(path.join(makeTmpDir(`quant4-st-${k}-`), "model"), k, 3 + i).dir),
  ];
  it("a state paused at any stage, kept as stageCarry says and resumed, gives blockForward's output bit for bit (every architecture)", () => {
    const backend = getBackend("cpu");
    for (const dir of models()) {
      const src = openModel(dir);
      const a = src.arch;
      const ctx = createContext(a, backend);
      const w = loadBlockWeights(src, 1);
      const B = 2;
      const T = 16;
      const rand = mulberry32(9);
      const x = new Float32Array(B * T * a.hidden).map(() => rand() * 2 - 1);
      const y = blockForward(ctx, w, x.slice(), B, T).slice();
      for (const stage of [Stage.attnIn, Stage.oIn, Stage.mlpIn, Stage.downIn] as StageT[]) {
        const s = advanceBlock(ctx, w, resumeState(ctx, w, Stage.attnIn, x.slice(), null, B * T), stage, B, T);
        expect(s.stage).toBe(stage);
        const carry = stageCarry(a, stage);
        // Only what stageCarry names survives the pause (copies: the forward's scratch is reused).
        const residual = carry.residual === 0 ? x.slice() : s.residual.slice();
        const input = carry.inputWidth > 0 ? s.input!.slice() : null;
        if (input) expect(input.length).toBe(B * T * carry.inputWidth);
        blockForward(ctx, w, new Float32Array(x.length).fill(0.5), B, T); // clobber the scratch buffers
        const out = advanceBlock(ctx, w, resumeState(ctx, w, stage, residual, input, B * T), Stage.out, B, T);
        expect(bytes(out.residual).equals(bytes(y)), `${a.modelType} resumed at stage ${stage}`).toBe(true);
      }
      src.ckpt.close();
    }
  });
});

/** Counts Backend.attention calls (one per batch of windows per forward through the attention). */
function countingBackend(be: Backend): { backend: Backend; attention: () => number } {
  let n = 0;
  const backend = new Proxy(be, {
    get(t, k) {
      const v = Reflect.get(t, k, t) as unknown;
      if (typeof v !== "function") return v;
      if (k === "attention") return (...args: unknown[]) => (n++, (v as (...a: unknown[]) => unknown).apply(t, args));
      return (v as (...a: unknown[]) => unknown).bind(t);
    },
  });
  return { backend, attention: () => n };
}

async function quantizeWith(model: string, settings: QuantizePlan["settings"], nsamples: number, seqlen: number, extra: Partial<QuantizePlan>) {
  const src = openModel(model);
  const text = resolveText("c4");
  const windows = sampleWindows(loadTokenizer(model).encode(text.text), nsamples, seqlen, 0, text.name);
  const outDir = path.join(makeTmpDir("quant4-passes-"), "out");
  const { backend, attention } = countingBackend(getBackend("cpu"));
  const report = await runQuantize(
    { src, format: getFormat("compressed-tensors"), settings, windows, calibrate: true, nsamples, seqlen, actDtype: "fp32", maxMemoryBytes: null, blockSize: 128, maxShardBytes: 4e9, outDir, settingsKey: "passes", resume: false, ...extra },
    backend,
  );
  const nLayers = src.arch.nLayers;
  src.ckpt.close();
  const files = Object.fromEntries(fs.readdirSync(outDir).map((f) => [f, fs.readFileSync(path.join(outDir, f))]));
  return { report, files, attention: attention(), nLayers, batches: Math.ceil(nsamples / batchWindows(seqlen, nsamples)) };
}

function expectSameOutput(a: Awaited<ReturnType<typeof quantizeWith>>, b: Awaited<ReturnType<typeof quantizeWith>>): void {
  expect(Object.keys(b.files).sort()).toEqual(Object.keys(a.files).sort());
  for (const f of Object.keys(a.files)) if (f !== "config.json") expect(b.files[f]!.equals(a.files[f]!), f).toBe(true);
  const stat = (r: typeof a) => r.report.layers.map((l) => [l.name, l.status, l.relError, l.relErrorBefore, l.awqAlpha, l.clipShrink]);
  expect(stat(b)).toEqual(stat(a));
}

describe("calibration passes resume from the previous group's cached stage", () => {
  // Per row into compressed-tensors: every Linear of stories260K is quantized (its 172-wide MLP Linears
  // take no group size and no 8-per-int32 packing), so every group has a pass.
  const base = { bits: 4, groupSize: -1, sym: true, damp: 0.01 };
  // 6 windows of 512 tokens: batches of 4 and 2 (a ragged last batch).
  for (const [label, settings, propagate] of [
    ["GPTQ act-order, quantized propagation", { ...base, method: "gptq", actOrder: true }, "quantized"],
    ["AWQ+GPTQ, fp propagation", { ...base, method: "awq-gptq", actOrder: false }, "fp"],
    ["RTN with calibration (output errors only)", { ...base, method: "rtn", actOrder: false }, "quantized"],
  ] as const) {
    it(`stories260K, ${label}: byte-identical to restarting every pass, in memory and spilled`, async () => {
      const restart = await quantizeWith(STORIES_VENDORED, settings, 6, 512, { propagate, restartPasses: true });
      const cached = await quantizeWith(STORIES_VENDORED, settings, 6, 512, { propagate });
      const spilled = await quantizeWith(STORIES_VENDORED, settings, 6, 512, { propagate, maxMemoryBytes: 1 });
      expect(cached.report.skipped).toEqual([]);
      expectSameOutput(restart, cached);
      expectSameOutput(restart, spilled);
      // The forward through the attention: once per batch and block with the caches (the o pass; the
      // later passes and the next block's inputs resume after it), plus the fp block's forward for the
      // next block's inputs with fp propagation; restarting, the o, gate/up and down passes and the next
      // block's inputs each run it. (AWQ's capture and scale search add the same calls to both runs.)
      const fp = propagate === "fp" ? 1 : 0;
      expect(restart.attention - cached.attention).toBe(cached.nLayers * cached.batches * (4 - 1 - fp));
      if (settings.method !== "awq-gptq") expect(cached.attention).toBe(cached.nLayers * cached.batches * (1 + fp));
      expect(spilled.attention).toBe(cached.attention);
    }, 120_000);
  }

  it.skipIf(!hasShared)(withShared("brown-llama, GPTQ g128: byte-identical to restarting every pass"), async () => {
    const settings = { method: "gptq" as const, bits: 4, groupSize: 128, sym: true, actOrder: false, damp: 0.01 };
    const restart = await quantizeWith(BROWN, settings, 4, 256, { restartPasses: true });
    const cached = await quantizeWith(BROWN, settings, 4, 256, {});
    expectSameOutput(restart, cached);
    expect(cached.attention).toBe(cached.nLayers * cached.batches);
  }, 300_000);
});
