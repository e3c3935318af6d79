// GPT-2-style byte-level BPE files (`encoder.json` + `vocab.bpe`, or HF's `vocab.json` + `merges.txt`)
// -> HF tokenizer.json structure (ByteLevel pre-tokenizer without prefix space, ByteLevel decoder).

import { FileFormatError } from "../util/errors.js";
import type { TokenizerJson } from "./engine.js";

/** Parses the vocabulary JSON ({token: id}). */
export function parseByteLevelVocab(text: string, file: string): Record<string, number> {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new FileFormatError(file, `invalid JSON: ${(e as Error).message}`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new FileFormatError(file, "expected a JSON object mapping tokens to ids");
  }
  const vocab = Object.create(null) as Record<string, number>;
  for (const [token, id] of Object.entries(obj)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw new FileFormatError(file, `token ${JSON.stringify(token)} has invalid id ${JSON.stringify(id)}`);
    }
    vocab[token] = id;
  }
  if (Object.keys(vocab).length === 0) throw new FileFormatError(file, "empty vocabulary");
  return vocab;
}

/** Parses a merges file: optional "#version" header, then one "left right" pair per line. */
export function parseByteLevelMerges(text: string, file: string, vocab: Record<string, number>): [string, string][] {
  const merges: [string, string][] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.length === 0 || (i === 0 && line.startsWith("#version"))) continue;
    const parts = line.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new FileFormatError(file, `line ${i + 1}: expected "left right", got ${JSON.stringify(line.slice(0, 80))}`);
    }
    const [a, b] = parts as [string, string];
    if (!Object.hasOwn(vocab, a + b)) {
      throw new FileFormatError(file, `line ${i + 1}: merge result ${JSON.stringify(a + b)} is not in the vocabulary`);
    }
    merges.push([a, b]);
  }
  return merges;
}

/**
 * tokenizer.json for GPT-2 byte-level BPE. `specialTokens` (e.g. "<|endoftext|>", OPT's "</s>")
 * become special added tokens when present in the vocabulary.
 */
export function byteLevelBpeTokenizerJson(
  vocab: Record<string, number>,
  merges: [string, string][],
  specialTokens: readonly string[],
): TokenizerJson {
  const added: TokenizerJson["added_tokens"] = [];
  const seen = new Set<string>();
  for (const content of specialTokens) {
    if (seen.has(content) || !Object.hasOwn(vocab, content)) continue;
    seen.add(content);
    added.push({ id: vocab[content]!, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  }
  added.sort((a, b) => a.id - b.id);
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}
