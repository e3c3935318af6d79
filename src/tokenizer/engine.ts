// The one tokenization engine: @huggingface/tokenizers (pure JS) driven by a tokenizer.json object.
// Everything in src/tokenizer builds such an object and hands it to `EngineTokenizer`.

import { Tokenizer as HfTokenizerClass } from "@huggingface/tokenizers";
import { FileFormatError } from "../util/errors.js";

/** The public tokenizer contract the rest of quant4 codes against. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  /** Token ids of `text`; BOS is prepended only with `addBos: true` (and only if the model has one). */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Text of `ids`, skipping BOS/EOS (and other SentencePiece control tokens). */
  decode(ids: number[]): string;
  /** What decides encode() (its files and code, hashed; see cache.ts): the token cache's key. Absent: never cached. */
  readonly fingerprint?: string;
}

/** The subset of HF's tokenizer.json we build or read (other keys pass through untouched). */
export interface TokenizerJson {
  version?: string;
  truncation?: unknown;
  padding?: unknown;
  added_tokens: {
    id: number;
    content: string;
    single_word?: boolean;
    lstrip?: boolean;
    rstrip?: boolean;
    normalized?: boolean;
    special?: boolean;
  }[];
  normalizer: unknown;
  pre_tokenizer: unknown;
  post_processor: unknown;
  decoder: unknown;
  model: { type: string; vocab?: unknown; merges?: unknown; [key: string]: unknown };
  [key: string]: unknown;
}

// The package's .d.ts files use extensionless relative imports that do not resolve under
// `moduleResolution: nodenext`, so its types collapse to `any`. We type the part we use here.
interface HfEngine {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  model: { vocab: (string | undefined)[]; bpe_ranks?: unknown } | null;
}
const HfTokenizer = HfTokenizerClass as unknown as new (json: object, config: object) => HfEngine;

export interface EngineOptions {
  bosId: number | null;
  eosId: number | null;
  /** Extra ids decode() drops besides BOS/EOS (SentencePiece control pieces). */
  skipIds?: readonly number[];
  /**
   * Replacement BPE priorities, one per entry of json.model.merges (see sentencepiece.ts): lets
   * equal-priority merges tie, which the JSON merge list cannot express.
   */
  mergeRanks?: readonly number[];
  /** SentencePiece remove_extra_whitespaces: whitespace-only text encodes to nothing. */
  blankEncodesEmpty?: boolean;
  /** See Tokenizer.fingerprint. */
  fingerprint?: string;
}

export class EngineTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly fingerprint?: string;
  private readonly engine: HfEngine;
  private readonly vocab: readonly (string | undefined)[];
  private readonly skip: Set<number>;
  private readonly blankEncodesEmpty: boolean;

  /** `file` names the source in error messages; `config` is tokenizer_config.json's content (or {}). */
  constructor(json: TokenizerJson, config: Record<string, unknown>, file: string, opts: EngineOptions) {
    try {
      // We add BOS ourselves and never want HF's "clean up tokenization spaces" (it breaks round trips).
      this.engine = new HfTokenizer(json, { ...config, clean_up_tokenization_spaces: false });
    } catch (e) {
      throw new FileFormatError(file, `tokenizer cannot be built: ${(e as Error).message}`);
    }
    const model = this.engine.model;
    if (model === null) throw new FileFormatError(file, "tokenizer has no model");
    if (opts.mergeRanks) applyMergeRanks(model, json, opts.mergeRanks);
    this.vocab = model.vocab;
    this.vocabSize = model.vocab.length;
    const check = (id: number | null, what: string): number | null => {
      if (id !== null && (!Number.isInteger(id) || id < 0 || id >= this.vocabSize)) {
        throw new FileFormatError(file, `${what} id ${id} is outside the vocabulary (size ${this.vocabSize})`);
      }
      return id;
    };
    this.bosId = check(opts.bosId, "BOS");
    this.eosId = check(opts.eosId, "EOS");
    this.skip = new Set(opts.skipIds ?? []);
    if (this.bosId !== null) this.skip.add(this.bosId);
    if (this.eosId !== null) this.skip.add(this.eosId);
    this.blankEncodesEmpty = opts.blankEncodesEmpty ?? false;
    if (opts.fingerprint !== undefined) this.fingerprint = opts.fingerprint;
  }

  encode(text: string, opts?: { addBos?: boolean }): number[] {
    const ids =
      text.length === 0 || (this.blankEncodesEmpty && /^ *$/.test(text))
        ? []
        : this.engine.encode(text, { add_special_tokens: false }).ids;
    if (opts?.addBos && this.bosId !== null) ids.unshift(this.bosId);
    return ids;
  }

  decode(ids: number[]): string {
    const kept: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.vocab[id] === undefined) {
        throw new RangeError(`token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
      }
      if (!this.skip.has(id)) kept.push(id);
    }
    if (kept.length === 0) return ""; // the engine throws on an empty list
    return this.engine.decode(kept, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** Token string of an id (debugging, tests). */
  idToToken(id: number): string | undefined {
    return this.engine.id_to_token(id);
  }

  /** Id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.engine.token_to_id(token);
  }
}

function applyMergeRanks(model: { bpe_ranks?: unknown }, json: TokenizerJson, ranks: readonly number[]): void {
  const merges = json.model.merges as [string, string][];
  const table = model.bpe_ranks;
  // The engine keys its rank table by JSON.stringify([left, right]). If its internals ever differ
  // from that, keep the JSON merge order (HF's behaviour; differs from SentencePiece only on ties).
  if (!(table instanceof Map) || table.size !== merges.length || ranks.length !== merges.length) return;
  const keys = merges.map((m) => JSON.stringify(m));
  if (!keys.every((k) => table.has(k))) return;
  keys.forEach((k, i) => table.set(k, ranks[i]));
}
