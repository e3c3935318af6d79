// Safetensors reader: validates the header up front, then serves tensors with positioned reads.
// The file is never read whole; the descriptor stays open until close().
//
// Format: u64 little-endian header length N, N bytes of UTF-8 JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {str: str}}, then the data
// region; offsets are relative to the start of the data region (byte 8 + N).

import * as fs from "node:fs";
import { z } from "zod";
import { DTYPES, DTYPE_SIZE, type DType, type TensorInfo } from "./types.js";
import { toFloat32, typedView, type TypedArray } from "./dtype.js";
import { FileFormatError, ModelError } from "../util/errors.js";

/** Largest header we accept (the reference implementation uses the same limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Largest single readSync call (Node rejects lengths ≥ 2 GiB). */
const READ_CHUNK = 1 << 30;

const nonNegInt = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

const EntrySchema = z.object({
  dtype: z.string(),
  shape: z.array(nonNegInt),
  data_offsets: z.tuple([nonNegInt, nonNegInt]),
});

const MetadataSchema = z.record(z.string(), z.string());

function zodDetail(err: z.ZodError): string {
  return err.issues
    .map((i) => (i.path.length ? `${i.path.join(".")}: ${i.message}` : i.message))
    .join("; ");
}

function fmtShape(shape: number[]): string {
  return `[${shape.join(", ")}]`;
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
      fd = fs.openSync(path, "r");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why =
        code === "ENOENT" ? "file not found"
        : code === "EACCES" || code === "EPERM" ? "permission denied"
        : code === "EISDIR" ? "is a directory, expected a .safetensors file"
        : `cannot open (${(e as Error).message})`;
      throw new FileFormatError(path, why);
    }
    try {
      const { size, dataStart, metadata, tensors } = parseHeader(path, fd);
      return new SafetensorsFile(path, fd, size, dataStart, metadata, tensors);
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

function parseHeader(
  path: string,
  fd: number,
): { size: number; dataStart: number; metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  function fail(detail: string): never {
    throw new FileFormatError(path, detail);
  }
  const size = fs.fstatSync(fd).size;
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

  const headerBytes = new Uint8Array(headerLen);
  if (readFully(fd, headerBytes, 0, headerLen, 8) !== headerLen) fail("cannot read header");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail(`header is not a JSON object (got ${Array.isArray(json) ? "array" : json === null ? "null" : typeof json})`);
  }

  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];

  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      const m = MetadataSchema.safeParse(raw);
      if (!m.success) fail(`"__metadata__" must be an object mapping strings to strings (${zodDetail(m.error)})`);
      metadata = m.data;
      continue;
    }
    const r = EntrySchema.safeParse(raw);
    if (!r.success) fail(`tensor "${name}": invalid header entry (${zodDetail(r.error)})`);
    const e = r.data;
    if (!(DTYPES as readonly string[]).includes(e.dtype)) {
      fail(`unknown dtype "${e.dtype}" for tensor "${name}" (supported: ${DTYPES.join(", ")})`);
    }
    const dtype = e.dtype as DType;
    const [begin, end] = e.data_offsets;
    if (end < begin) fail(`tensor "${name}" has data_offsets [${begin}, ${end}) with end before begin`);
    let numel = 1;
    for (const d of e.shape) numel *= d;
    const expected = numel * DTYPE_SIZE[dtype];
    if (!Number.isSafeInteger(expected)) fail(`tensor "${name}" shape ${fmtShape(e.shape)} is too large`);
    if (end - begin !== expected) {
      fail(
        `tensor "${name}" has shape ${fmtShape(e.shape)} ${dtype} (${expected} bytes) ` +
          `but data_offsets [${begin}, ${end}) span ${end - begin} bytes`,
      );
    }
    if (end > dataLen) {
      fail(`tensor "${name}" data [${begin}, ${end}) extends past end of file (${dataLen} bytes of data)`);
    }
    tensors.set(name, { name, dtype, shape: [...e.shape], file: path, begin: dataStart + begin, end: dataStart + end });
    if (end > begin) spans.push({ name, begin, end });
  }

  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!;
    const cur = spans[i]!;
    if (cur.begin < prev.end) {
      fail(
        `tensors "${prev.name}" and "${cur.name}" overlap ` +
          `(data [${prev.begin}, ${prev.end}) and [${cur.begin}, ${cur.end}))`,
      );
    }
  }
  return { size, dataStart, metadata, tensors };
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
