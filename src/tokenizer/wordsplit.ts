// Exact word splitting for SentencePiece-style BPE, for speed.
//
// Llama-style tokenizers (SentencePiece, and HF tokenizer.json files converted from it) have no
// pre-tokenizer: BPE runs over the whole normalized text as one "word". The engine's BPE is fine on
// words but slow on one giant string (Llama-2 on WikiText-2 test: 18.9 s instead of 0.9 s) and
// cannot use its word cache. If no merge can produce a token containing a non-"▁" character followed
// by "▁" (true for Llama-2, stories260K and brown-llama, whose pieces carry "▁" only as a prefix run),
// then no merge ever crosses such a boundary, so splitting the text there yields exactly the same
// tokens. We add that split as a pre-tokenizer.

import type { TokenizerJson } from "./engine.js";

export const SPIECE_UNDERLINE = "\u2581";

/** Split pre-tokenizer: chunks are "▁*[^▁]+" (or a trailing "▁+"), i.e. cut before a "▁" that follows a non-"▁". */
export function wordSplitPreTokenizer(u = SPIECE_UNDERLINE): Record<string, unknown> {
  return { type: "Split", pattern: { Regex: `${u}*[^${u}]+|${u}+` }, behavior: "Isolated", invert: true };
}

/** True when no merge result contains a non-"▁" character directly followed by "▁". */
export function mergesNeverCrossWordStart(mergeResults: Iterable<string>, u = SPIECE_UNDERLINE): boolean {
  for (const p of mergeResults) {
    for (let k = p.indexOf(u, 1); k > 0; k = p.indexOf(u, k + 1)) {
      if (p[k - 1] !== u) return false;
    }
  }
  return true;
}

/**
 * For a tokenizer.json read from disk: returns a copy with a pre-tokenizer that makes the engine
 * behave as HF's Rust implementation does, and fast on long texts, or the input unchanged.
 * - BPE with no pre-tokenizer (legacy Llama conversion) and merges that never cross a word start:
 *   add the exact word split above.
 * - Metaspace with `split` true (HF's default): the engine ignores `split` and keeps one word; HF
 *   splits before every "▁" (MergedWithNext), which we add explicitly.
 * - Metaspace with `split: false` (non-legacy Llama conversion): as for no pre-tokenizer.
 */
export function withWordSplit(json: TokenizerJson): TokenizerJson {
  const model = json.model;
  const pre = json.pre_tokenizer as { type?: string; replacement?: string; split?: boolean } | null | undefined;

  if (pre && pre.type === "Metaspace") {
    const u = typeof pre.replacement === "string" && pre.replacement.length > 0 ? pre.replacement : SPIECE_UNDERLINE;
    if (pre.split !== false) {
      const mergedWithNext = { type: "Split", pattern: { Regex: `${u}[^${u}]*|[^${u}]+` }, behavior: "Isolated", invert: true };
      return { ...json, pre_tokenizer: { type: "Sequence", pretokenizers: [pre, mergedWithNext] } };
    }
    if (!bpeCanSplit(model, u)) return json;
    return { ...json, pre_tokenizer: { type: "Sequence", pretokenizers: [pre, wordSplitPreTokenizer(u)] } };
  }
  if (pre === null || pre === undefined) {
    if (!bpeCanSplit(model, SPIECE_UNDERLINE)) return json;
    return { ...json, pre_tokenizer: wordSplitPreTokenizer() };
  }
  return json;
}

function bpeCanSplit(model: TokenizerJson["model"], u: string): boolean {
  if (model.type !== "BPE") return false;
  // Options under which word boundaries change the result.
  if (model["ignore_merges"] === true) return false;
  if (model["end_of_word_suffix"] || model["continuing_subword_prefix"] || model["continuing_subword_suffix"]) return false;
  if (typeof model["dropout"] === "number" && model["dropout"] > 0) return false;
  const merges = model.merges;
  if (!Array.isArray(merges)) return false;
  const results: string[] = [];
  for (const m of merges) {
    if (typeof m === "string") {
      const i = m.indexOf(" ");
      if (i < 0) return false;
      results.push(m.slice(0, i) + m.slice(i + 1));
    } else if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string" && typeof m[1] === "string") {
      results.push(m[0] + m[1]);
    } else {
      return false;
    }
  }
  return mergesNeverCrossWordStart(results, u);
}
