// Tokenizer loading. Every format is turned into an HF tokenizer.json object and run by
// @huggingface/tokenizers (see engine.ts); this file only finds files and resolves BOS/EOS.
//
// Lookup order in a directory:
//   1. tokenizer.json (+ tokenizer_config.json / special_tokens_map.json for BOS/EOS)
//   2. tokenizer.model (SentencePiece BPE protobuf, converted like HF's LlamaTokenizerFast)
//   3. vocab.json + merges.txt, or encoder.json + vocab.bpe (GPT-2 byte-level BPE)

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { FileFormatError } from "../util/errors.js";
import { tokenizerFingerprint } from "./cache.js";
import { EngineTokenizer, type Tokenizer, type TokenizerJson } from "./engine.js";
import { byteLevelBpeTokenizerJson, parseByteLevelMerges, parseByteLevelVocab } from "./gpt2.js";
import { parseSentencePieceModel, sentencePieceToTokenizerJson } from "./sentencepiece.js";
import { withWordSplit } from "./wordsplit.js";

export type { Tokenizer, TokenizerJson } from "./engine.js";
export { EngineTokenizer } from "./engine.js";
export { parseSentencePieceModel, sentencePieceToTokenizerJson, PieceType } from "./sentencepiece.js";
export type { SentencePieceModel, SentencePiecePiece, ConvertedSentencePiece } from "./sentencepiece.js";
export { byteLevelBpeTokenizerJson, parseByteLevelMerges, parseByteLevelVocab } from "./gpt2.js";
export { withWordSplit } from "./wordsplit.js";
export { encodeCached, tokenCacheDir, tokenCacheKey, tokenizerFingerprint, type TokenCacheOutcome } from "./cache.js";

/** Files loadTokenizer looks for, in order of preference. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer.model",
  "vocab.json + merges.txt",
  "encoder.json + vocab.bpe",
] as const;

/**
 * Loads the tokenizer in `dir` (synchronously). Throws FileFormatError naming the directory when no
 * tokenizer file is there, or naming the file when it is malformed.
 */
export function loadTokenizer(dir: string): Tokenizer {
  return logged(() => loadTokenizerIn(dir));
}

function loadTokenizerIn(dir: string): Tokenizer {
  const at = (name: string): string => path.join(dir, name);
  const has = (name: string): boolean => existsSync(at(name));

  if (has("tokenizer.json")) return loadTokenizerJson(dir);
  if (has("tokenizer.model")) return loadSentencePiece(at("tokenizer.model"), readSpecialTokens(dir));
  if (has("vocab.json") && has("merges.txt")) return loadByteLevel(at("vocab.json"), at("merges.txt"), readSpecialTokens(dir));
  if (has("encoder.json") && has("vocab.bpe")) return loadByteLevel(at("encoder.json"), at("vocab.bpe"), readSpecialTokens(dir));
  throw new FileFormatError(dir, `no tokenizer found (looked for ${TOKENIZER_FILES.join(", ")})`);
}

/** Loads a SentencePiece `tokenizer.model` file directly. */
export function loadSentencePiece(file: string, special: SpecialTokens = {}): Tokenizer {
  return logged(() => loadSentencePieceFile(file, special));
}

function loadSentencePieceFile(file: string, special: SpecialTokens): Tokenizer {
  const model = parseSentencePieceModel(readBytes(file), file);
  const conv = sentencePieceToTokenizerJson(model, file);
  const engineOpts = {
    bosId: conv.bosId,
    eosId: conv.eosId,
    skipIds: conv.controlIds,
    mergeRanks: conv.mergeRanks,
    blankEncodesEmpty: model.removeExtraWhitespaces,
  };
  // tokenizer_config.json / special_tokens_map.json may name the BOS/EOS pieces.
  const look = lookupFromJson(conv.json);
  const src = special.source ?? file;
  const bosId = special.bos !== undefined ? resolveToken(look, special.bos, src, "bos_token") : conv.bosId;
  const eosId = special.eos !== undefined ? resolveToken(look, special.eos, src, "eos_token") : conv.eosId;
  return new EngineTokenizer(conv.json, {}, file, { ...engineOpts, bosId, eosId, fingerprint: fingerprintSoFar() });
}

function loadTokenizerJson(dir: string): Tokenizer {
  const file = path.join(dir, "tokenizer.json");
  const json = readJson(file);
  if (json === null || typeof json !== "object" || Array.isArray(json) || !("model" in json)) {
    throw new FileFormatError(file, "not a tokenizer.json (no \"model\" object)");
  }
  let tj = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json } as TokenizerJson;
  tj.added_tokens = Array.isArray(tj.added_tokens) ? tj.added_tokens : [];
  tj = withWordSplit(tj);
  const configFile = path.join(dir, "tokenizer_config.json");
  const config = existsSync(configFile) ? asObject(readJson(configFile), configFile) : {};
  const special = readSpecialTokens(dir);
  const look = lookupFromJson(tj);
  let bos = special.bos !== undefined ? resolveToken(look, special.bos, special.source ?? file, "bos_token") : null;
  let eos = special.eos !== undefined ? resolveToken(look, special.eos, special.source ?? file, "eos_token") : null;
  if (special.bos === undefined || special.eos === undefined) {
    // No token names: fall back to the model's config.json ids, if there is one.
    const ids = readConfigIds(dir);
    if (special.bos === undefined) bos = ids.bos;
    if (special.eos === undefined) eos = ids.eos;
  }
  return new EngineTokenizer(tj, config, file, { bosId: bos, eosId: eos, fingerprint: fingerprintSoFar() });
}

function loadByteLevel(vocabFile: string, mergesFile: string, special: SpecialTokens): Tokenizer {
  const vocab = parseByteLevelVocab(readText(vocabFile), vocabFile);
  const merges = parseByteLevelMerges(readText(mergesFile), mergesFile, vocab);
  const names = [special.bos, special.eos, special.unk, special.pad, ...(special.additional ?? [])].filter(
    (t): t is string => typeof t === "string",
  );
  const json = byteLevelBpeTokenizerJson(vocab, merges, ["<|endoftext|>", ...names]);
  const eot = Object.hasOwn(vocab, "<|endoftext|>") ? vocab["<|endoftext|>"]! : null;
  const look = lookupFromJson(json);
  const src = special.source ?? vocabFile;
  const bos = special.bos !== undefined ? resolveToken(look, special.bos, src, "bos_token") : eot;
  const eos = special.eos !== undefined ? resolveToken(look, special.eos, src, "eos_token") : eot;
  return new EngineTokenizer(json, {}, vocabFile, { bosId: bos, eosId: eos, fingerprint: fingerprintSoFar() });
}

// ---------------------------------------------------------------------------------------------

export interface SpecialTokens {
  /** undefined: not specified; null: explicitly none. */
  bos?: string | null;
  eos?: string | null;
  unk?: string | null;
  pad?: string | null;
  additional?: string[];
  /** The file the names came from (for error messages). */
  source?: string;
}

/** BOS/EOS/... token names from tokenizer_config.json, else special_tokens_map.json. */
function readSpecialTokens(dir: string): SpecialTokens {
  const out: SpecialTokens = {};
  for (const name of ["tokenizer_config.json", "special_tokens_map.json"]) {
    const file = path.join(dir, name);
    if (!existsSync(file)) continue;
    const cfg = asObject(readJson(file), file);
    const take = (key: "bos" | "eos" | "unk" | "pad"): void => {
      const k = `${key}_token`;
      if (out[key] === undefined && k in cfg) out[key] = tokenName(cfg[k], file, k);
    };
    take("bos");
    take("eos");
    take("unk");
    take("pad");
    const extra = cfg["additional_special_tokens"];
    if (out.additional === undefined && Array.isArray(extra)) {
      out.additional = extra.map((t, i) => tokenName(t, file, `additional_special_tokens[${i}]`)).filter((t): t is string => t !== null);
    }
    if ((out.bos !== undefined || out.eos !== undefined) && out.source === undefined) out.source = file;
  }
  return out;
}

/** A token in a HF config: "<s>", {"content": "<s>", ...} or null. */
function tokenName(v: unknown, file: string, key: string): string | null {
  if (v === null) return null;
  if (typeof v === "string") return v;
  if (typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  throw new FileFormatError(file, `${key} must be a string, an object with "content", or null`);
}

type Lookup = (token: string) => number | undefined;

/** token -> id from a tokenizer.json object: added tokens, then the model vocabulary. */
function lookupFromJson(json: TokenizerJson): Lookup {
  const added = new Map(json.added_tokens.map((t) => [t.content, t.id]));
  const vocab = json.model.vocab;
  return (token) => {
    const a = added.get(token);
    if (a !== undefined) return a;
    if (Array.isArray(vocab)) {
      // Unigram: [[piece, score], ...], id = index
      const i = vocab.findIndex((e) => Array.isArray(e) && e[0] === token);
      return i >= 0 ? i : undefined;
    }
    if (vocab !== null && typeof vocab === "object" && Object.hasOwn(vocab, token)) {
      const id = (vocab as Record<string, unknown>)[token];
      return typeof id === "number" ? id : undefined;
    }
    return undefined;
  };
}

function resolveToken(look: Lookup, name: string | null, file: string, key: string): number | null {
  if (name === null) return null;
  const id = look(name);
  if (id === undefined) throw new FileFormatError(file, `${key} ${JSON.stringify(name)} is not in the vocabulary`);
  return id;
}

function readConfigIds(dir: string): { bos: number | null; eos: number | null } {
  const file = path.join(dir, "config.json");
  if (!existsSync(file)) return { bos: null, eos: null };
  const cfg = asObject(readJson(file), file);
  const id = (v: unknown): number | null => {
    if (Array.isArray(v)) v = v[0];
    return typeof v === "number" && Number.isInteger(v) && v >= 0 ? v : null;
  };
  return { bos: id(cfg["bos_token_id"]), eos: id(cfg["eos_token_id"]) };
}

// The files a load reads, in order, for the tokenizer's fingerprint (cache.ts); collected by the
// outermost loader call (loadTokenizer may call loadSentencePiece).
let readLog: { name: string; bytes: Uint8Array }[] | null = null;

function logged<T>(load: () => T): T {
  if (readLog !== null) return load();
  readLog = [];
  try {
    return load();
  } finally {
    readLog = null;
  }
}

/**
 * Fingerprint of the files read so far. config.json is left out: only its BOS/EOS ids are read, which
 * encode() does not use, and it differs between a model and its quantized copy.
 */
function fingerprintSoFar(): string | undefined {
  return readLog ? tokenizerFingerprint(readLog.filter((f) => f.name !== "config.json")) : undefined;
}

function readBytes(file: string): Uint8Array {
  let b: Uint8Array;
  try {
    b = readFileSync(file);
  } catch (e) {
    throw new FileFormatError(file, `cannot read: ${(e as Error).message}`);
  }
  readLog?.push({ name: path.basename(file), bytes: b });
  return b;
}

function readText(file: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(readBytes(file));
  } catch (e) {
    if (e instanceof FileFormatError) throw e;
    throw new FileFormatError(file, "not valid UTF-8 text");
  }
}

function readJson(file: string): unknown {
  const text = readText(file);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FileFormatError(file, `invalid JSON: ${(e as Error).message}`);
  }
}

function asObject(v: unknown, file: string): Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new FileFormatError(file, "expected a JSON object");
  return v as Record<string, unknown>;
}
