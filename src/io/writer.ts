// Atomic safetensors writers. Output is written under a temporary name, fsynced, then renamed, so a
// crash or error never leaves a half-written file under the final name. Every failure surfaces as an
// OutputError naming the destination, with temporary files removed.

import * as fs from "node:fs";
import * as nodePath from "node:path";
import { DTYPES, DTYPE_SIZE, type DType, type TensorToWrite } from "./types.js";
import { OutputError } from "../util/errors.js";

/** Largest single write/read call (Node rejects lengths ≥ 2 GiB). */
const IO_CHUNK = 1 << 30;
/** Buffer size used when copying shard data out of the temporary data file. */
const COPY_CHUNK = 16 << 20;

const tmpName = (path: string): string => `${path}.tmp-${process.pid}`;

/** Translate a Node fs error into a user-facing detail. */
function describeFsError(e: unknown, path: string): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case "ENOSPC": return "out of disk space";
    case "EDQUOT": return "disk quota exceeded";
    case "EACCES":
    case "EPERM": return "permission denied";
    case "EROFS": return "read-only file system";
    case "ENOENT": return `directory ${nodePath.dirname(path)} does not exist`;
    case "ENOTDIR": return `a component of ${nodePath.dirname(path)} is not a directory`;
    case "EISDIR": return "is a directory";
    case "EMFILE":
    case "ENFILE": return "too many open files";
    case "EIO": return "I/O error";
    default: return err.code ? `${err.code}: ${err.message}` : String(err?.message ?? e);
  }
}

function toOutputError(e: unknown, path: string): OutputError {
  if (e instanceof OutputError) return e;
  return new OutputError(path, describeFsError(e, path));
}

function tryUnlink(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch {
    /* already gone */
  }
}

function tryClose(fd: number | null): void {
  if (fd === null) return;
  try {
    fs.closeSync(fd);
  } catch {
    /* ignore */
  }
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** Write all of `data` at `position` (or at the current position when null). */
function writeFully(fd: number, data: Uint8Array, position: number | null): void {
  let done = 0;
  while (done < data.byteLength) {
    const len = Math.min(data.byteLength - done, IO_CHUNK);
    const n = fs.writeSync(fd, data, done, len, position === null ? null : position + done);
    if (n <= 0) throw Object.assign(new Error("short write"), { code: "EIO" });
    done += n;
  }
}

/** Best-effort fsync of a directory so renames are durable. */
function syncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch {
    /* not supported everywhere */
  } finally {
    tryClose(fd);
  }
}

/** Validate a tensor for writing; returns its byte size. Throws OutputError naming `dest`. */
function checkTensor(dest: string, t: TensorToWrite): number {
  if (typeof t.name !== "string" || t.name === "" || t.name === "__metadata__") {
    throw new OutputError(dest, `invalid tensor name ${JSON.stringify(t.name)}`);
  }
  if (!(DTYPES as readonly string[]).includes(t.dtype)) {
    throw new OutputError(dest, `tensor "${t.name}": unknown dtype "${String(t.dtype)}"`);
  }
  let numel = 1;
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new OutputError(dest, `tensor "${t.name}": invalid shape [${t.shape.join(", ")}]`);
    }
    numel *= d;
  }
  const size = numel * DTYPE_SIZE[t.dtype as DType];
  if (t.data.byteLength !== size) {
    throw new OutputError(
      dest,
      `tensor "${t.name}": shape [${t.shape.join(", ")}] ${t.dtype} needs ${size} bytes but data has ${t.data.byteLength}`,
    );
  }
  return size;
}

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  size: number;
}

/** The 8-byte length prefix plus the JSON header, padded with spaces so data starts 8-aligned. */
function encodeHeader(entries: HeaderEntry[], metadata?: Record<string, string>): Uint8Array {
  // No prototype: a tensor named "__proto__" must become a key, not replace the prototype.
  const obj: Record<string, unknown> = Object.create(null);
  if (metadata && Object.keys(metadata).length > 0) obj.__metadata__ = { ...metadata };
  let offset = 0;
  for (const e of entries) {
    obj[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.size] };
    offset += e.size;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  const padded = Math.ceil(json.byteLength / 8) * 8 || 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

function checkMetadata(dest: string, metadata?: Record<string, string>): void {
  if (!metadata) return;
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") throw new OutputError(dest, `metadata "${k}" must be a string, got ${typeof v}`);
  }
}

/** Create `path` atomically: `write` fills a temp file, which is fsynced and renamed; on failure it is removed. */
function writeAtomically(path: string, write: (fd: number) => void): void {
  const tmp = tmpName(path);
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, "w");
    write(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, path);
  } catch (e) {
    tryClose(fd);
    tryUnlink(tmp);
    throw toOutputError(e, path);
  }
  syncDir(nodePath.dirname(path));
}

/**
 * Write `data` to `path` atomically (temp file + fsync + rename). For JSON configs, READMEs, etc.
 * Throws OutputError naming `path`; the temp file is removed on failure.
 */
export function atomicWriteFile(path: string, data: string | Uint8Array): void {
  writeAtomically(path, (fd) => writeFully(fd, typeof data === "string" ? new TextEncoder().encode(data) : data, null));
}

/**
 * Write one safetensors file atomically: tensors contiguous in the given order, header padded to a
 * multiple of 8 bytes. Throws OutputError naming `path` (e.g. "out of disk space", "permission denied").
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  checkMetadata(path, metadata);
  const seen = new Set<string>();
  const entries: HeaderEntry[] = tensors.map((t) => {
    const size = checkTensor(path, t);
    if (seen.has(t.name)) throw new OutputError(path, `duplicate tensor name "${t.name}"`);
    seen.add(t.name);
    return { name: t.name, dtype: t.dtype, shape: [...t.shape], size };
  });
  const header = encodeHeader(entries, metadata);
  writeAtomically(path, (fd) => {
    writeFully(fd, header, null);
    for (const t of tensors) writeFully(fd, bytesOf(t.data), null);
  });
}

export interface ShardedWriterOptions {
  /** Start a new shard when the next tensor would push the current one past this many data bytes. Default 4e9. */
  maxShardBytes?: number;
  /** File name stem: `<baseName>.safetensors` or `<baseName>-00001-of-0000N.safetensors`. Default "model". */
  baseName?: string;
}

interface PendingTensor extends HeaderEntry {
  /** Byte offset in the temporary data file. */
  tmpOffset: number;
}

/**
 * Streaming, atomic, optionally sharded safetensors writer. add() appends each tensor's bytes to a
 * temporary data file in `outDir` (memory stays bounded by the tensor being added); finish() writes the
 * final shard files (plus `<baseName>.safetensors.index.json` when there are several) under temporary
 * names and renames them all into place, removing stale outputs of a previous run with the same baseName.
 */
export class ShardedWriter {
  readonly outDir: string;
  readonly maxShardBytes: number;
  readonly baseName: string;
  private readonly dataPath: string;
  private fd: number | null = null;
  private dataBytes = 0;
  private readonly shards: PendingTensor[][] = [];
  private shardBytes = 0;
  private readonly names = new Set<string>();
  private readonly tmpOutputs: string[] = [];
  private state: "open" | "finished" | "aborted" = "open";

  constructor(outDir: string, opts: ShardedWriterOptions = {}) {
    this.outDir = outDir;
    this.maxShardBytes = opts.maxShardBytes ?? 4e9;
    this.baseName = opts.baseName ?? "model";
    if (!(this.maxShardBytes > 0)) throw new OutputError(outDir, `maxShardBytes must be positive, got ${this.maxShardBytes}`);
    if (this.baseName === "" || /[\\/]/.test(this.baseName)) {
      throw new OutputError(outDir, `invalid baseName "${this.baseName}"`);
    }
    this.dataPath = nodePath.join(outDir, `.${this.baseName}.data.tmp-${process.pid}`);
  }

  /** Number of tensors added so far. */
  get count(): number {
    return this.names.size;
  }

  /** Append one tensor. Throws OutputError (and aborts) on I/O failure; duplicate names are rejected. */
  add(t: TensorToWrite): void {
    if (this.state !== "open") throw new OutputError(this.outDir, `ShardedWriter.add("${t.name}") after ${this.state === "finished" ? "finish()" : "abort()"}`);
    const size = checkTensor(this.outDir, t);
    if (this.names.has(t.name)) throw new OutputError(this.outDir, `duplicate tensor name "${t.name}"`);
    try {
      if (this.fd === null) {
        fs.mkdirSync(this.outDir, { recursive: true });
        this.fd = fs.openSync(this.dataPath, "w+");
      }
      writeFully(this.fd, bytesOf(t.data), this.dataBytes);
    } catch (e) {
      this.abort();
      throw toOutputError(e, nodePath.join(this.outDir, `${this.baseName}.safetensors`));
    }
    if (this.shards.length === 0 || (this.shardBytes > 0 && this.shardBytes + size > this.maxShardBytes)) {
      this.shards.push([]);
      this.shardBytes = 0;
    }
    this.shards[this.shards.length - 1]!.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], size, tmpOffset: this.dataBytes });
    this.shardBytes += size;
    this.dataBytes += size;
    this.names.add(t.name);
  }

  /**
   * Write the final files. Returns full paths of the shard files and, when sharded, of the index.
   * `metadata` is stored as `__metadata__` in every shard.
   */
  finish(metadata?: Record<string, string>): { files: string[]; index?: string } {
    if (this.state !== "open") throw new OutputError(this.outDir, `ShardedWriter.finish() after ${this.state === "finished" ? "finish()" : "abort()"}`);
    checkMetadata(this.outDir, metadata);
    const shards = this.shards.length ? this.shards : [[]];
    const n = shards.length;
    const pad = (i: number): string => String(i).padStart(5, "0");
    const names = shards.map((_, i) =>
      n === 1 ? `${this.baseName}.safetensors` : `${this.baseName}-${pad(i + 1)}-of-${pad(n)}.safetensors`,
    );
    const finals = names.map((f) => nodePath.join(this.outDir, f));
    const indexPath = n > 1 ? nodePath.join(this.outDir, `${this.baseName}.safetensors.index.json`) : undefined;
    let current = finals[0]!;
    try {
      fs.mkdirSync(this.outDir, { recursive: true });
      const buf = new Uint8Array(Math.min(COPY_CHUNK, Math.max(this.dataBytes, 1)));
      for (let s = 0; s < n; s++) {
        current = finals[s]!;
        const tmp = tmpName(current);
        this.tmpOutputs.push(tmp);
        const fd = fs.openSync(tmp, "w");
        try {
          writeFully(fd, encodeHeader(shards[s]!, metadata), null);
          for (const t of shards[s]!) this.copyData(t, fd, buf);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
      if (indexPath) {
        current = indexPath;
        const weightMap: Record<string, string> = {};
        shards.forEach((sh, i) => sh.forEach((t) => (weightMap[t.name] = names[i]!)));
        const json = JSON.stringify({ metadata: { total_size: this.dataBytes }, weight_map: weightMap }, null, 2) + "\n";
        const tmp = tmpName(indexPath);
        this.tmpOutputs.push(tmp);
        const fd = fs.openSync(tmp, "w");
        try {
          writeFully(fd, new TextEncoder().encode(json), null);
          fs.fsyncSync(fd);
        } finally {
          fs.closeSync(fd);
        }
      }
      // Remove outputs of an earlier run that would shadow or confuse the new layout, then rename.
      this.removeStale(new Set([...names, ...(indexPath ? [nodePath.basename(indexPath)] : [])]));
      for (let s = 0; s < n; s++) {
        current = finals[s]!;
        fs.renameSync(tmpName(finals[s]!), finals[s]!);
      }
      if (indexPath) {
        current = indexPath;
        fs.renameSync(tmpName(indexPath), indexPath);
      }
    } catch (e) {
      this.abort();
      throw toOutputError(e, current);
    }
    this.tmpOutputs.length = 0;
    this.closeData();
    this.state = "finished";
    syncDir(this.outDir);
    return indexPath ? { files: finals, index: indexPath } : { files: finals };
  }

  /** Discard everything written so far and remove all temporary files. Idempotent. */
  abort(): void {
    if (this.state === "finished") return;
    this.closeData();
    for (const t of this.tmpOutputs) tryUnlink(t);
    this.tmpOutputs.length = 0;
    this.state = "aborted";
  }

  private closeData(): void {
    tryClose(this.fd);
    this.fd = null;
    tryUnlink(this.dataPath);
  }

  private copyData(t: PendingTensor, outFd: number, buf: Uint8Array): void {
    const inFd = this.fd!;
    let done = 0;
    while (done < t.size) {
      const len = Math.min(buf.byteLength, t.size - done);
      let got = 0;
      while (got < len) {
        const r = fs.readSync(inFd, buf, got, len - got, t.tmpOffset + done + got);
        if (r === 0) throw Object.assign(new Error("temporary data file is shorter than expected"), { code: "EIO" });
        got += r;
      }
      writeFully(outFd, buf.subarray(0, len), null);
      done += len;
    }
  }

  private removeStale(keep: Set<string>): void {
    const b = this.baseName.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`^${b}(\\.safetensors|\\.safetensors\\.index\\.json|-\\d{5}-of-\\d{5}\\.safetensors)$`);
    for (const f of fs.readdirSync(this.outDir)) {
      if (pattern.test(f) && !keep.has(f)) fs.unlinkSync(nodePath.join(this.outDir, f));
    }
  }
}
