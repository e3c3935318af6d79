// Safetensors reader: validates the header up front, then serves tensors with positioned reads.
// The file is never read whole; the descriptor stays open until close().
//
// Format: u64 little-endian header length N, N bytes of UTF-8 JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {str: str}}, then the data
// region; offsets are relative to the start of the data region (byte 8 + N).

import * as fs from "node:fs";
import { DTYPES, DTYPE_SIZE, type DType, type TensorInfo } from "./types.js";
import { toFloat32, typedView, type TypedArray } from "./dtype.js";
import { FileFormatError, ModelError } from "../util/errors.js";

/** Largest header we accept (the reference implementation uses the same limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * Most tensors one file may declare. Real checkpoints hold at most tens of thousands per file; a header
 * near the size limit could otherwise declare ~2 million entries and take seconds and gigabytes to index.
 */
export const MAX_TENSORS = 1_000_000;

/** Largest single readSync call (Node rejects lengths ≥ 2 GiB). */
const READ_CHUNK = 1 << 30;

/** The header is read (and its entries counted) in pieces of this size. */
const HEADER_CHUNK = 4 << 20;

function fmtShape(shape: number[]): string {
  return shape.length <= 16 ? `[${shape.join(", ")}]` : `[${shape.slice(0, 16).join(", ")}, ... (${shape.length} dims)]`;
}

/** Read exactly `len` bytes at `position` into `dst` (starting at dstOffset). Returns bytes actually read. */
function readFully(fd: number, dst: Uint8Array, dstOffset: number, len: number, position: number): number {
  let done = 0;
  while (done < len) {
    const n = fs.readSync(fd, dst, dstOffset + done, Math.min(len - done, READ_CHUNK), position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: Map<string, TensorInfo>;
  /** Total file size in bytes at open time. */
  readonly size: number;
  /** Absolute offset of the data region (8 + header length). */
  readonly dataStart: number;
  private fd: number | null;

  private constructor(
    path: string,
    fd: number,
    size: number,
    dataStart: number,
    metadata: Record<string, string>,
    tensors: Map<string, TensorInfo>,
  ) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.dataStart = dataStart;
    this.metadata = metadata;
    this.tensors = tensors;
  }

  /** Open and validate `path`. Throws FileFormatError (naming the file) for anything malformed. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); no effect on regular files.
      fd = fs.openSync(path, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why =
        code === "ENOENT" ? "file not found"
        : code === "EACCES" || code === "EPERM" ? "permission denied"
        : code === "EISDIR" ? "is a directory, expected a .safetensors file"
        : code === "ENOTDIR" ? "a component of the path is not a directory"
        : `cannot open (${(e as Error).message})`;
      throw new FileFormatError(path, why);
    }
    try {
      // On Linux a directory opens fine and only the first read fails (EISDIR), so ask what it is.
      const st = fs.fstatSync(fd);
      if (st.isDirectory()) throw new FileFormatError(path, "is a directory, expected a .safetensors file");
      if (!st.isFile()) throw new FileFormatError(path, "is not a regular file (a device, FIFO or socket), expected a .safetensors file");
      const { dataStart, metadata, tensors } = parseHeader(path, fd, st.size);
      return new SafetensorsFile(path, fd, st.size, dataStart, metadata, tensors);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Names in header order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Info for `name`; throws ModelError naming the file if the tensor is absent. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`${this.path}: no tensor named "${name}" (file has ${this.tensors.size} tensors)`);
    return t;
  }

  /** The tensor's raw little-endian bytes, in a fresh buffer starting at byteOffset 0. */
  readRaw(name: string): Uint8Array {
    const t = this.info(name);
    const fd = this.requireOpen();
    const len = t.end - t.begin;
    const out = new Uint8Array(len);
    const got = readFully(fd, out, 0, len, t.begin);
    if (got !== len) {
      throw new FileFormatError(
        this.path,
        `tensor "${name}": unexpected end of file after ${got} of ${len} bytes (was the file truncated while open?)`,
      );
    }
    return out;
  }

  /** The tensor converted to float32 (F16/BF16/F64/integer dtypes are converted). */
  readF32(name: string): Float32Array {
    const t = this.info(name);
    return toFloat32(t.dtype, this.readRaw(name));
  }

  /** The tensor in its natural typed array (F16/BF16 → Uint16Array of raw bits, BOOL → Uint8Array). */
  readTyped(name: string): TypedArray {
    const t = this.info(name);
    return typedView(t.dtype, this.readRaw(name));
  }

  get closed(): boolean {
    return this.fd === null;
  }

  /** Release the file descriptor. Idempotent. */
  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      fs.closeSync(fd);
    }
  }

  private requireOpen(): number {
    if (this.fd === null) throw new Error(`${this.path}: SafetensorsFile used after close()`);
    return this.fd;
  }
}

/**
 * Structural counts gathered from the raw header bytes while they are read, before any decoding:
 * `top` is the number of members of the root object (tensors plus "__metadata__"), `second` the number
 * of members of the objects one level below (the entries' fields and the metadata pairs). In valid JSON
 * every ':' outside a string separates one member from its value, so counting them at each depth is exact;
 * comparing with what JSON.parse kept reveals duplicate keys (JSON.parse silently keeps the last one).
 */
interface ScanState {
  inStr: boolean;
  /** The previous byte was a backslash inside a string. */
  esc: boolean;
  depth: number;
  top: number;
  second: number;
}

/** Advance `s` over b[from, to). Plain byte scan: multi-byte UTF-8 sequences never contain ASCII bytes. */
function scanHeader(b: Uint8Array, from: number, to: number, s: ScanState): void {
  let { inStr, esc, depth, top, second } = s;
  for (let i = from; i < to; i++) {
    const c = b[i]!;
    if (inStr) {
      if (esc) esc = false;
      else if (c === 0x5c) esc = true; // backslash
      else if (c === 0x22) inStr = false; // closing quote
    } else if (c === 0x22) inStr = true;
    else if (c === 0x3a) { // ':'
      if (depth === 1) top++;
      else if (depth === 2) second++;
    } else if (c === 0x7b || c === 0x5b) depth++; // '{' '['
    else if (c === 0x7d || c === 0x5d) depth--; // '}' ']'
  }
  s.inStr = inStr;
  s.esc = esc;
  s.depth = depth;
  s.top = top;
  s.second = second;
}

/** A string for an error message: JSON-quoted (so a newline cannot split the line) and cut when huge. */
function q(s: string): string {
  const j = JSON.stringify(s);
  return j.length <= 160 ? j : `${j.slice(0, 150)}..." (${s.length} characters)`;
}

/** `s` with control and line-separator characters escaped, cut when huge. */
function oneLine(s: string): string {
  const t = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return t.length <= 300 ? t : `${t.slice(0, 290)}...`;
}

/** A JSON value for an error message, cut when long. */
function show(v: unknown): string {
  if (v === undefined) return "nothing";
  const j = JSON.stringify(v) ?? String(v);
  return j.length <= 80 ? j : `${j.slice(0, 70)}...`;
}

const isIndex = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

const DTYPE_SET: ReadonlySet<string> = new Set(DTYPES);

/** Which tensor entry (or "__metadata__") is named twice, or has a key twice: only run once the counts disagree. */
function findDuplicateKey(b: Uint8Array): { key: string; parent?: string } | undefined {
  const dec = new TextDecoder();
  let depth = 0;
  const keys1 = new Set<string>();
  let keys2: Set<string> | null = null; // keys of the current depth-2 object (null while that value is not an object)
  let parent: string | undefined;
  let expectKey = false;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c === 0x22) {
      const start = i;
      for (i++; i < b.length && b[i] !== 0x22; i++) if (b[i] === 0x5c) i++;
      if (expectKey && (depth === 1 || (depth === 2 && keys2))) {
        const key = JSON.parse(dec.decode(b.subarray(start, i + 1))) as string;
        if (depth === 1) {
          if (keys1.has(key)) return { key };
          keys1.add(key);
          parent = key;
        } else {
          if (keys2!.has(key)) return { key, parent };
          keys2!.add(key);
        }
      }
      expectKey = false;
    } else if (c === 0x7b) {
      depth++;
      expectKey = true;
      if (depth === 2) keys2 = new Set();
    } else if (c === 0x5b) {
      depth++;
      expectKey = false;
      if (depth === 2) keys2 = null;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
      expectKey = false;
    } else if (c === 0x2c) {
      expectKey = depth === 1 || (depth === 2 && keys2 !== null);
    }
  }
  return undefined;
}

function parseHeader(
  path: string,
  fd: number,
  size: number,
): { dataStart: number; metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  function fail(detail: string): never {
    throw new FileFormatError(path, detail);
  }
  if (size < 8) fail(`file is ${size} bytes, too small to be a safetensors file (needs an 8-byte header length)`);

  const lenBuf = new Uint8Array(8);
  if (readFully(fd, lenBuf, 0, 8, 0) !== 8) fail("cannot read header length");
  const headerLen64 = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    if (headerLen64 > BigInt(size - 8)) fail(`header length ${headerLen64} exceeds file size ${size}`);
    fail(`header length ${headerLen64} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLen = Number(headerLen64);
  if (headerLen > size - 8) fail(`header length ${headerLen} exceeds file size ${size}`);
  if (headerLen === 0) fail("header is empty (header length 0)");

  // Read the header in chunks, counting its entries as they arrive, so a header declaring an absurd
  // number of tensors is refused after reading part of it, before any decoding or parsing.
  const headerBytes = new Uint8Array(headerLen);
  const scan: ScanState = { inStr: false, esc: false, depth: 0, top: 0, second: 0 };
  for (let pos = 0; pos < headerLen; ) {
    const len = Math.min(HEADER_CHUNK, headerLen - pos);
    if (readFully(fd, headerBytes, pos, len, 8 + pos) !== len) fail("cannot read header (file changed while reading?)");
    if (pos === 0 && headerBytes[0] !== 0x7b) {
      fail(`header does not start with "{" (first byte 0x${headerBytes[0]!.toString(16).padStart(2, "0")}); not a safetensors file, or a corrupt header length`);
    }
    scanHeader(headerBytes, pos, pos + len, scan);
    pos += len;
    // The root object's members are the tensors plus, optionally, "__metadata__".
    if (scan.top > MAX_TENSORS + 1) {
      fail(`header lists more than ${MAX_TENSORS} tensors (the limit per file; counted in the first ${pos} of ${headerLen} header bytes)`);
    }
  }

  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    // V8 quotes a snippet of the input in some messages, raw newlines included: keep the error one line.
    return fail(`header is not valid JSON: ${oneLine((e as Error).message)}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail(`header is not a JSON object (got ${Array.isArray(json) ? "array" : json === null ? "null" : typeof json})`);
  }
  const root = json as Record<string, unknown>;
  const keys = Object.keys(root);

  function failDuplicate(): never {
    const d = findDuplicateKey(headerBytes);
    if (!d) fail("header has a duplicated key");
    if (d.parent === undefined) {
      fail(d.key === "__metadata__" ? `"__metadata__" appears twice in the header` : `tensor ${q(d.key)} is listed twice in the header`);
    }
    fail(`${d.parent === "__metadata__" ? `"__metadata__"` : `tensor ${q(d.parent)}`}: key ${q(d.key)} appears twice in its header entry`);
  }
  if (keys.length !== scan.top) failDuplicate();

  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  let secondLevelKeys = 0;

  for (const name of keys) {
    const raw = root[name];
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        fail(`"__metadata__" must be an object mapping strings to strings (got ${show(raw)})`);
      }
      const m = raw as Record<string, unknown>;
      for (const k of Object.keys(m)) {
        secondLevelKeys++;
        if (typeof m[k] !== "string") {
          fail(`"__metadata__" must be an object mapping strings to strings (value of ${q(k)} is ${show(m[k])})`);
        }
      }
      metadata = m as Record<string, string>;
      continue;
    }
    const t = `tensor ${q(name)}`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      fail(`${t}: header entry must be an object with "dtype", "shape" and "data_offsets" (got ${show(raw)})`);
    }
    const e = raw as Record<string, unknown>;
    secondLevelKeys += Object.keys(e).length;
    const { dtype, shape, data_offsets: offsets } = e;
    if (dtype === undefined || shape === undefined || offsets === undefined) {
      const missing = (["dtype", "shape", "data_offsets"] as const).filter((k) => e[k] === undefined);
      fail(`${t}: header entry has no ${missing.map((k) => `"${k}"`).join(", ")}`);
    }
    if (typeof dtype !== "string" || !DTYPE_SET.has(dtype)) {
      fail(`unknown dtype ${typeof dtype === "string" ? q(dtype) : show(dtype)} for ${t} (supported: ${DTYPES.join(", ")})`);
    }
    if (!Array.isArray(shape) || !shape.every(isIndex)) {
      fail(`${t}: shape must be an array of non-negative integers (got ${show(shape)})`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !isIndex(offsets[0]) || !isIndex(offsets[1])) {
      fail(`${t}: data_offsets must be [begin, end], two non-negative integers (got ${show(offsets)})`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(`${t} has data_offsets [${begin}, ${end}) with end before begin`);
    const dt = dtype as DType;
    let expected = DTYPE_SIZE[dt];
    for (const d of shape as number[]) {
      expected *= d;
      if (!Number.isSafeInteger(expected)) fail(`${t} shape ${fmtShape(shape as number[])} is too large`);
    }
    if (end - begin !== expected) {
      fail(
        `${t} has shape ${fmtShape(shape as number[])} ${dt} (${expected} bytes) ` +
          `but data_offsets [${begin}, ${end}) span ${end - begin} bytes`,
      );
    }
    if (end > dataLen) {
      fail(`${t} data [${begin}, ${end}) extends past end of file (${dataLen} bytes of data)`);
    }
    tensors.set(name, { name, dtype: dt, shape: shape as number[], file: path, begin: dataStart + begin, end: dataStart + end });
    spans.push({ name, begin, end });
  }
  if (secondLevelKeys !== scan.second) failDuplicate();
  if (tensors.size > MAX_TENSORS) fail(`header lists ${tensors.size} tensors, more than the limit of ${MAX_TENSORS} per file`);

  // The tensors must tile the data region exactly: sorted by offset, the first begins at 0, each begins
  // where the previous ended, the last ends at the end of the file. Anything else means wrong offsets or
  // a wrong header length, which would otherwise read every tensor from the wrong bytes.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: { name: string; begin: number; end: number } | undefined;
  for (const cur of spans) {
    if (cur.begin > pos) {
      if (!prev) {
        fail(
          `first tensor ${q(cur.name)} starts at data offset ${cur.begin}, not 0: ` +
            `${cur.begin} bytes at the start of the data region are not covered by any tensor`,
        );
      }
      fail(
        `gap of ${cur.begin - pos} bytes between tensors ${q(prev.name)} (data [${prev.begin}, ${prev.end})) ` +
          `and ${q(cur.name)} (data [${cur.begin}, ${cur.end})): bytes not covered by any tensor`,
      );
    }
    if (cur.begin < pos) {
      fail(
        `tensors ${q(prev!.name)} and ${q(cur.name)} overlap ` +
          `(data [${prev!.begin}, ${prev!.end}) and [${cur.begin}, ${cur.end}))`,
      );
    }
    pos = cur.end;
    prev = cur;
  }
  if (pos !== dataLen) {
    fail(
      `data region has ${dataLen - pos} trailing bytes not covered by any tensor ` +
        `(${spans.length ? `tensors end at data offset ${pos}` : "the header lists no tensors"}, ` +
        `the data region is ${dataLen} bytes from file offset ${dataStart}): wrong header length or offsets`,
    );
  }
  return { dataStart, metadata, tensors };
}

/**
 * Throw a ModelError if `data` holds NaN or ±Inf:
 * `<file>: tensor "<name>" contains NaN/Inf at index i`.
 */
export function assertFinite(name: string, data: Float32Array, file: string): void {
  const n = data.length;
  for (let i = 0; i < n; i++) {
    const v = data[i]!;
    // v - v is 0 for every finite v and NaN for NaN/±Inf.
    if (v - v !== 0) throw new ModelError(`${file}: tensor "${name}" contains NaN/Inf at index ${i}`);
  }
}
