// SentencePiece `tokenizer.model` (a serialized ModelProto) -> HF tokenizer.json structure.
//
// We parse the protobuf with a tiny wire-format reader (no protobuf dependency) and then build the
// same JSON that HF's LlamaConverter ("LlamaTokenizerFast") produces, which @huggingface/tokenizers
// executes. Only BPE models are supported (Llama, llama2.c, brown-llama); unigram models error out.

import { FileFormatError } from "../util/errors.js";
import type { TokenizerJson } from "./engine.js";
import { mergesNeverCrossWordStart, SPIECE_UNDERLINE, wordSplitPreTokenizer } from "./wordsplit.js";

/** SentencePiece piece types (ModelProto.SentencePiece.Type). */
export const PieceType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

export interface SentencePiecePiece {
  piece: string;
  score: number;
  type: number;
}

export interface SentencePieceModel {
  pieces: SentencePiecePiece[];
  /** TrainerSpec.model_type: 1 UNIGRAM (the proto default), 2 BPE, 3 WORD, 4 CHAR. */
  modelType: number;
  unkId: number;
  /** -1 when the model has no BOS / EOS / PAD. */
  bosId: number;
  eosId: number;
  padId: number;
  byteFallback: boolean;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
  /** NormalizerSpec.precompiled_charsmap (empty for the "identity" rule). */
  precompiledCharsmap: Uint8Array;
}

// ---------------------------------------------------------------------------------------------
// Minimal protobuf wire-format reader.

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

class ProtoReader {
  pos: number;
  private readonly view: DataView;

  constructor(
    private readonly buf: Uint8Array,
    private readonly file: string,
    start = 0,
    readonly end = buf.length,
  ) {
    this.pos = start;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  private fail(what: string): never {
    throw new FileFormatError(
      this.file,
      `not a valid SentencePiece model: ${what} at byte ${this.pos} (file truncated or corrupt?)`,
    );
  }

  /** Reads a varint; returns its low 32 bits as a signed int32 (protobuf int32/enum/bool semantics). */
  varint32(): number {
    let low = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail("truncated varint");
      const b = this.buf[this.pos++]!;
      if (i < 5) low |= (b & 0x7f) << (7 * i); // bits beyond 32 fall off, as int32 wants
      if ((b & 0x80) === 0) return low | 0;
    }
    this.fail("varint longer than 10 bytes");
  }

  /** A varint that must be a non-negative length/tag that fits in 31 bits. */
  uvarint(): number {
    const start = this.pos;
    let value = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail("truncated varint");
      const b = this.buf[this.pos++]!;
      value += (b & 0x7f) * 2 ** (7 * i);
      if ((b & 0x80) === 0) {
        if (value > 0x7fffffff) {
          this.pos = start;
          this.fail(`varint ${value} out of range`);
        }
        return value;
      }
    }
    this.fail("varint longer than 10 bytes");
  }

  tag(): { field: number; wire: number } {
    const t = this.uvarint();
    const field = Math.floor(t / 8);
    if (field === 0) this.fail("field number 0");
    return { field, wire: t & 7 };
  }

  float32(): number {
    if (this.pos + 4 > this.end) this.fail("truncated float");
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** Sub-reader over a length-delimited field. */
  sub(): ProtoReader {
    const len = this.uvarint();
    if (this.pos + len > this.end) this.fail(`length-delimited field of ${len} bytes overruns its message`);
    const r = new ProtoReader(this.buf, this.file, this.pos, this.pos + len);
    this.pos += len;
    return r;
  }

  bytes(): Uint8Array {
    const r = this.sub();
    return this.buf.subarray(r.pos, r.end);
  }

  string(): string {
    try {
      return utf8.decode(this.bytes());
    } catch {
      this.fail("invalid UTF-8 in a string field");
    }
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint32();
        return;
      case WIRE_I64:
        if (this.pos + 8 > this.end) this.fail("truncated fixed64");
        this.pos += 8;
        return;
      case WIRE_LEN:
        this.sub();
        return;
      case WIRE_I32:
        if (this.pos + 4 > this.end) this.fail("truncated fixed32");
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wire}`);
    }
  }

  expect(wire: number, want: number, field: string): void {
    if (wire !== want) this.fail(`field ${field} has wire type ${wire}, expected ${want}`);
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

// ---------------------------------------------------------------------------------------------

/** Parses a serialized SentencePiece ModelProto. `file` is only used in error messages. */
export function parseSentencePieceModel(bytes: Uint8Array, file: string): SentencePieceModel {
  const m: SentencePieceModel = {
    pieces: [],
    modelType: 1,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    byteFallback: false,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
    precompiledCharsmap: new Uint8Array(0),
  };
  const r = new ProtoReader(bytes, file);
  let sawTrainerSpec = false;
  while (!r.done()) {
    const { field, wire } = r.tag();
    if (field === 1) {
      r.expect(wire, WIRE_LEN, "pieces");
      m.pieces.push(parsePiece(r.sub()));
    } else if (field === 2) {
      r.expect(wire, WIRE_LEN, "trainer_spec");
      parseTrainerSpec(r.sub(), m);
      sawTrainerSpec = true;
    } else if (field === 3) {
      r.expect(wire, WIRE_LEN, "normalizer_spec");
      parseNormalizerSpec(r.sub(), m);
    } else {
      r.skip(wire);
    }
  }
  if (m.pieces.length === 0) throw new FileFormatError(file, "not a valid SentencePiece model: it has no pieces");
  // Serializers write pieces (field 1) before trainer_spec (field 2): a file cut at a piece
  // boundary parses but lacks it, and without it the model type would silently default to UNIGRAM.
  if (!sawTrainerSpec) throw new FileFormatError(file, "not a valid SentencePiece model: no trainer_spec (file truncated?)");
  return m;
}

function parsePiece(r: ProtoReader): SentencePiecePiece {
  const p: SentencePiecePiece = { piece: "", score: 0, type: PieceType.NORMAL };
  while (!r.done()) {
    const { field, wire } = r.tag();
    if (field === 1) {
      r.expect(wire, WIRE_LEN, "piece");
      p.piece = r.string();
    } else if (field === 2) {
      r.expect(wire, WIRE_I32, "score");
      p.score = r.float32();
    } else if (field === 3) {
      r.expect(wire, WIRE_VARINT, "type");
      p.type = r.varint32();
    } else {
      r.skip(wire);
    }
  }
  return p;
}

function parseTrainerSpec(r: ProtoReader, m: SentencePieceModel): void {
  while (!r.done()) {
    const { field, wire } = r.tag();
    const intField = (): number => {
      r.expect(wire, WIRE_VARINT, `trainer_spec.${field}`);
      return r.varint32();
    };
    switch (field) {
      case 3:
        m.modelType = intField();
        break;
      case 35:
        m.byteFallback = intField() !== 0;
        break;
      case 40:
        m.unkId = intField();
        break;
      case 41:
        m.bosId = intField();
        break;
      case 42:
        m.eosId = intField();
        break;
      case 43:
        m.padId = intField();
        break;
      default:
        r.skip(wire);
    }
  }
}

function parseNormalizerSpec(r: ProtoReader, m: SentencePieceModel): void {
  while (!r.done()) {
    const { field, wire } = r.tag();
    const boolField = (): boolean => {
      r.expect(wire, WIRE_VARINT, `normalizer_spec.${field}`);
      return r.varint32() !== 0;
    };
    switch (field) {
      case 2:
        r.expect(wire, WIRE_LEN, "normalizer_spec.precompiled_charsmap");
        m.precompiledCharsmap = r.bytes();
        break;
      case 3:
        m.addDummyPrefix = boolField();
        break;
      case 4:
        m.removeExtraWhitespaces = boolField();
        break;
      case 5:
        m.escapeWhitespaces = boolField();
        break;
      default:
        r.skip(wire);
    }
  }
}

// ---------------------------------------------------------------------------------------------

export interface ConvertedSentencePiece {
  json: TokenizerJson;
  /**
   * SentencePiece merge priority per merge (same order as json.model.merges): pieces with equal
   * scores share a rank, so the engine breaks their ties leftmost-first exactly as SentencePiece's
   * BPE does. The JSON merge list alone can only express distinct ranks (HF's approximation).
   */
  mergeRanks: number[];
  /** Ids of CONTROL pieces (<s>, </s>, pad): SentencePiece decodes them to nothing. */
  controlIds: number[];
  bosId: number | null;
  eosId: number | null;
}

/**
 * Converts a parsed SentencePiece BPE model into the tokenizer.json HF's LlamaConverter writes:
 * BPE model (vocab = piece -> id, merges from every two-piece split of each piece, byte_fallback,
 * fuse_unk), normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, decoder
 * Replace("▁", " ") / ByteFallback / Fuse / Strip(" ", 1, 0), control/unknown pieces as special
 * added tokens.
 *
 * Where needed we go slightly beyond HF, always to match SentencePiece's own output:
 * remove_extra_whitespaces (e.g. llama2.c's stories models) adds regex normalizers that drop
 * leading/trailing spaces and collapse runs of spaces, and merges are ordered by score (Llama-2's
 * "▁▁" piece has id 259 but score -1e9, so SentencePiece merges it last), equal-score merges tie
 * (mergeRanks), and an exact word-splitting pre-tokenizer is added for speed (wordsplit.ts).
 */
export function sentencePieceToTokenizerJson(m: SentencePieceModel, file: string): ConvertedSentencePiece {
  if (m.modelType !== 2) {
    const kind = ({ 1: "UNIGRAM", 3: "WORD", 4: "CHAR" } as Record<number, string>)[m.modelType] ?? `type ${m.modelType}`;
    throw new FileFormatError(file, `SentencePiece ${kind} model is not supported (only BPE models, e.g. Llama's, are)`);
  }
  const n = m.pieces.length;
  const validId = (id: number): number | null => (id >= 0 && id < n ? id : null);
  const unkId = validId(m.unkId);
  if (unkId === null) throw new FileFormatError(file, `unk_id ${m.unkId} is outside the ${n} pieces`);

  const vocab: Record<string, number> = Object.create(null) as Record<string, number>;
  for (let id = 0; id < n; id++) {
    const { piece, type } = m.pieces[id]!;
    if (Object.hasOwn(vocab, piece)) throw new FileFormatError(file, `duplicate piece ${JSON.stringify(piece)} (ids ${vocab[piece]} and ${id})`);
    if (type < 1 || type > 6) throw new FileFormatError(file, `piece ${id} has unknown type ${type}`);
    vocab[piece] = id;
  }

  // Pieces SentencePiece's BPE can produce by merging ("pieces_" in model_interface.cc): normal,
  // user-defined and unused. Control, unknown and byte pieces never take part in merges.
  const mergeable = new Set<string>();
  for (const p of m.pieces) {
    if (p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED) mergeable.add(p.piece);
  }
  // Merge targets in SentencePiece priority order: higher score first, ties by id.
  const targets: number[] = [];
  for (let id = 0; id < n; id++) if (m.pieces[id]!.type === PieceType.NORMAL) targets.push(id);
  targets.sort((a, b) => m.pieces[b]!.score - m.pieces[a]!.score || a - b);

  const merges: [string, string][] = [];
  const mergeRanks: number[] = [];
  let rank = -1;
  let prevScore = NaN;
  for (const id of targets) {
    const { piece, score } = m.pieces[id]!;
    if (score !== prevScore) {
      rank++;
      prevScore = score;
    }
    const chars = Array.from(piece);
    let left = "";
    for (let i = 1; i < chars.length; i++) {
      left += chars[i - 1];
      const right = piece.slice(left.length);
      if (mergeable.has(left) && mergeable.has(right)) {
        merges.push([left, right]);
        mergeRanks.push(rank);
      }
    }
  }

  const controlIds: number[] = [];
  const addedTokens: TokenizerJson["added_tokens"] = [];
  for (let id = 0; id < n; id++) {
    const { piece, type } = m.pieces[id]!;
    if (type === PieceType.CONTROL) controlIds.push(id);
    if (type === PieceType.CONTROL || type === PieceType.UNKNOWN || type === PieceType.USER_DEFINED) {
      const special = type !== PieceType.USER_DEFINED;
      addedTokens.push({ id, content: piece, single_word: false, lstrip: false, rstrip: false, normalized: !special, special });
    }
  }

  const normalizers: unknown[] = [];
  if (m.precompiledCharsmap.length > 0) {
    // Only reached for non-"identity" normalization rules (e.g. nmt_nfkc); the engine approximates
    // the charsmap with NFKC plus whitespace/control-character mapping.
    normalizers.push({ type: "Precompiled", precompiled_charsmap: Buffer.from(m.precompiledCharsmap).toString("base64") });
  }
  if (m.removeExtraWhitespaces) {
    normalizers.push({ type: "Replace", pattern: { Regex: "\\A +| +\\z" }, content: "" });
    normalizers.push({ type: "Replace", pattern: { Regex: " {2,}" }, content: " " });
  }
  if (m.addDummyPrefix) normalizers.push({ type: "Prepend", prepend: SPIECE_UNDERLINE });
  if (m.escapeWhitespaces) normalizers.push({ type: "Replace", pattern: { String: " " }, content: SPIECE_UNDERLINE });

  // Exact word split for speed (see wordsplit.ts): only when merges never cross a word start.
  const preTokenizer =
    m.escapeWhitespaces && mergesNeverCrossWordStart(targets.map((id) => m.pieces[id]!.piece)) ? wordSplitPreTokenizer() : null;

  const decoders: unknown[] = [
    { type: "Replace", pattern: { String: SPIECE_UNDERLINE }, content: " " },
    { type: "ByteFallback" },
    { type: "Fuse" },
  ];
  if (m.addDummyPrefix) decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });

  const json: TokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: normalizers.length > 0 ? { type: "Sequence", normalizers } : null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: "Sequence", decoders },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: m.pieces[unkId]!.piece,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: m.byteFallback,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  return { json, mergeRanks, controlIds, bosId: validId(m.bosId), eosId: validId(m.eosId) };
}
