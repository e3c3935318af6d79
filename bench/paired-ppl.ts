// Paired comparison of eval-ppl results on the same windows (each from `eval-ppl --json --kl-base <source>
// --per-window`): per model its perplexity, ln(ppl / source ppl) and mean KL from the source, each ± one
// standard error over windows; then each model against a reference model window by window (the mean of
// NLL_model − NLL_ref over windows ± its standard error: a difference within about two errors is noise);
// and, when the text is a calibration text, that difference split between the eval windows that overlap
// the model's calibration windows and those that do not (is a calibrated model better or worse on the
// text it was fitted to?).
//
//   node --import tsx bench/paired-ppl.ts --ref <label>=<eval.json> [--calib c4 --model <dir> --nsamples 128
//        --seqlen 512 --fit-windows 16] <label>=<eval.json>[@<calibration seed>] ...
//
// --fit-windows: how many of the first calibration windows the model was fitted on (AWQ's scale search:
// --awq-tokens / seqlen; 0 = all --nsamples). The calibration windows are re-drawn with the quantize
// command's own sampler (src/calibration/sampler.ts) from the seed after "@".

import fs from "node:fs";
import { mulberry32 } from "../src/calibration/sampler.js";
import { resolveText } from "../src/calibration/texts.js";
import { encodeCached } from "../src/tokenizer/cache.js";
import { loadTokenizer } from "../src/tokenizer/index.js";

interface EvalJson {
  ppl: number;
  windows: number;
  seqlen: number;
  text: string;
  kl?: { meanKl: number; meanKlStderr: number | null; lnPplRatio: number; lnPplRatioStderr: number | null };
  perWindow?: { nll: number[]; baseNll: number[] | null };
}

const args = process.argv.slice(2);
const opt = (name: string, dflt?: string): string | undefined => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const ref = opt("--ref");
const calib = opt("--calib");
const modelDir = opt("--model");
const nsamples = Number(opt("--nsamples", "128"));
const calSeqlen = Number(opt("--seqlen", "512"));
const fitWindows = Number(opt("--fit-windows", "0")) || nsamples;
if (!ref) throw new Error("--ref <label>=<eval.json> is required");

const load = (spec: string): { label: string; j: EvalJson; seed: number | null } => {
  const [label, rest] = spec.split("=", 2) as [string, string];
  const [file, seed] = rest.split("@");
  const j = JSON.parse(fs.readFileSync(file!, "utf8")) as EvalJson;
  if (!j.perWindow || !j.kl) throw new Error(`${file}: needs eval-ppl --json --kl-base <source> --per-window`);
  return { label, j, seed: seed === undefined ? null : Number(seed) };
};
const R = load(ref);
const models = args.map(load);

const ms = (v: number[]): { m: number; se: number } => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  return { m, se: Math.sqrt(v.reduce((a, x) => a + (x - m) ** 2, 0) / (v.length - 1) / v.length) };
};
const pm = (x: { m: number; se: number }, d = 5): string => `${x.m >= 0 ? "+" : ""}${x.m.toFixed(d)} ± ${x.se.toFixed(d)}`;

// Eval windows that overlap a model's fitted calibration windows (eval token i = text token i − 1 after BOS).
let overlaps: ((seed: number) => boolean[]) | null = null;
if (calib && modelDir) {
  const ids = encodeCached(loadTokenizer(modelDir), resolveText(calib).text);
  overlaps = (seed) => {
    const rand = mulberry32(seed);
    const span = ids.length - calSeqlen;
    const hit = new Array<boolean>(R.j.windows).fill(false);
    for (let s = 0; s < nsamples; s++) {
      const start = Math.floor(rand() * span); // the sampler's draw, in order
      if (s >= fitWindows) continue;
      const a = start + 1, b = start + calSeqlen + 1; // eval positions [a, b)
      for (let w = Math.floor(a / R.j.seqlen); w * R.j.seqlen < b && w < R.j.windows; w++) hit[w] = true;
    }
    return hit;
  };
}

console.log(`text ${R.j.text}, ${R.j.windows} windows × ${R.j.seqlen}; ± one standard error over windows`);
console.log("\n| model | ppl | ln(ppl / source ppl) | mean KL from source | NLL − NLL(" + R.label + ") per window |" + (overlaps ? " in fitted windows | elsewhere |" : ""));
console.log("|---|---|---|---|---|" + (overlaps ? "---|---|" : ""));
for (const { label, j, seed } of [R, ...models]) {
  if (j.windows !== R.j.windows || j.seqlen !== R.j.seqlen) throw new Error(`${label}: another protocol than the reference (windows/seqlen)`);
  const k = j.kl!;
  const d = j.perWindow!.nll.map((x, w) => x - R.j.perWindow!.nll[w]!);
  let split = " |";
  if (overlaps) {
    if (seed === null || j === R.j) split = " | – | – |";
    else {
      const hit = overlaps(seed);
      const inFit = d.filter((_, w) => hit[w]);
      const out = d.filter((_, w) => !hit[w]);
      split = ` | ${pm(ms(inFit))} (${inFit.length}) | ${pm(ms(out))} (${out.length}) |`;
    }
  }
  console.log(
    `| ${label} | ${j.ppl.toFixed(4)} | ${pm({ m: k.lnPplRatio, se: k.lnPplRatioStderr ?? NaN })} | ${k.meanKl.toExponential(4)} ± ${(k.meanKlStderr ?? NaN).toExponential(1)} | ` +
      (j === R.j ? "–" : pm(ms(d))) + split,
  );
}
