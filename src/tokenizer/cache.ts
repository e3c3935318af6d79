// Token cache: a text's token ids, computed once per (text, tokenizer) and kept on disk, because
// tokenizing WikiText-2 (1.3 MB) takes seconds, longer than evaluating a small model on part of it.
//
// Where: $QUANT4_CACHE_DIR/tokens, else $XDG_CACHE_HOME/quant4/tokens, else ~/.cache/quant4/tokens.
// QUANT4_NO_CACHE=1 turns it off (nothing read or written). One file per key, <sha256 key>.tokens:
//
//   "Q4TOKv1\n" | key (32 bytes) | count (uint32 LE) | ids (count × int32 LE) | sha256 of the ids (32 bytes)
//
// The key is the sha256 of the text (UTF-8) and of the tokenizer's fingerprint: the bytes of the files
// that decide encode() (tokenizer.json or tokenizer.model or the BPE files, tokenizer_config.json,
// special_tokens_map.json), the tokenizer code of this quant4 (src/tokenizer/*) and the engine's version.
// The ids are encode()'s output without BOS (callers prepend it), so the BOS setting cannot go stale.
// Files are written to a temp name and renamed (a reader never sees half a file); on read, length,
// header, key and the ids' hash are checked, and a file failing any check is ignored and rewritten.
// The cache is an optimisation only: a directory that cannot be written is skipped silently.

import crypto from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Tokenizer } from "./engine.js";

const MAGIC = Buffer.from("Q4TOKv1\n", "latin1");
const HEADER = MAGIC.length + 32 + 4;

/** The token cache directory for this environment, or null when caching is off (QUANT4_NO_CACHE). */
export function tokenCacheDir(env: NodeJS.ProcessEnv = process.env): string | null {
  const off = env["QUANT4_NO_CACHE"];
  if (off !== undefined && off !== "" && off !== "0") return null;
  const own = env["QUANT4_CACHE_DIR"];
  if (own) return path.join(own, "tokens");
  const xdg = env["XDG_CACHE_HOME"];
  // XDG: a relative value is invalid and must be ignored.
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), ".cache");
  return path.join(base, "quant4", "tokens");
}

let codeHash: string | null = null;
/** sha256 of quant4's tokenizer code (this directory's modules) and the engine package's version. */
function tokenizerCodeHash(): string {
  if (codeHash !== null) return codeHash;
  const h = crypto.createHash("sha256");
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const f of fs.readdirSync(here).filter((f) => /\.(ts|js|mjs|cjs)$/.test(f) && !f.endsWith(".d.ts")).sort()) {
    h.update(`${f}\0`).update(fs.readFileSync(path.join(here, f))).update("\0");
  }
  try {
    const main = createRequire(import.meta.url).resolve("@huggingface/tokenizers");
    const pkg = JSON.parse(fs.readFileSync(path.join(path.dirname(main), "..", "package.json"), "utf8")) as { version?: string };
    h.update(`@huggingface/tokenizers@${pkg.version}`);
  } catch {
    h.update("@huggingface/tokenizers@unknown");
  }
  return (codeHash = h.digest("hex"));
}

/**
 * A tokenizer's fingerprint for the token cache: the files it was built from (name and bytes, in the
 * given order) and the tokenizer code that turned them into a tokenizer.
 */
export function tokenizerFingerprint(files: readonly { name: string; bytes: Uint8Array }[]): string {
  const h = crypto.createHash("sha256").update("quant4 tokenizer\0").update(tokenizerCodeHash());
  for (const f of files) h.update(`\0${f.name}\0${f.bytes.length}\0`).update(f.bytes);
  return h.digest("hex");
}

/** The cache key of `text` under a tokenizer fingerprint (hex sha256). */
export function tokenCacheKey(fingerprint: string, text: string): string {
  const textHash = crypto.createHash("sha256").update(text, "utf8").digest();
  return crypto.createHash("sha256").update("quant4 tokens v1\0").update(fingerprint).update("\0").update(textHash).digest("hex");
}

/** The ids stored in `file` for `key`, or null when it is absent or fails any check. */
function readEntry(file: string, key: string): number[] | null {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch {
    return null;
  }
  if (b.length < HEADER + 32 || !b.subarray(0, MAGIC.length).equals(MAGIC)) return null;
  if (b.subarray(MAGIC.length, MAGIC.length + 32).toString("hex") !== key) return null;
  const n = b.readUInt32LE(MAGIC.length + 32);
  if (b.length !== HEADER + 4 * n + 32) return null;
  const payload = b.subarray(HEADER, HEADER + 4 * n);
  if (!crypto.createHash("sha256").update(payload).digest().equals(b.subarray(HEADER + 4 * n))) return null;
  const ids = new Array<number>(n);
  for (let i = 0; i < n; i++) ids[i] = payload.readInt32LE(4 * i);
  return ids;
}

/**
 * mkdir -p, one level at a time: Node's own `mkdirSync(dir, { recursive: true })` spins forever on some
 * unwritable trees (e.g. under /proc, where mkdir answers ENOENT for a parent it reports existing).
 */
function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let d = path.resolve(dir); !fs.existsSync(d); d = path.dirname(d)) {
    missing.push(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of missing.reverse()) fs.mkdirSync(d);
}

/** Write `ids` under `key` atomically (temp file + rename); false when the directory cannot be written. */
function writeEntry(dir: string, file: string, key: string, ids: readonly number[]): boolean {
  const payload = Buffer.alloc(4 * ids.length);
  for (let i = 0; i < ids.length; i++) payload.writeInt32LE(ids[i]!, 4 * i);
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  Buffer.from(key, "hex").copy(head, MAGIC.length);
  head.writeUInt32LE(ids.length, MAGIC.length + 32);
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`;
  try {
    makeDirs(dir);
    fs.writeFileSync(tmp, Buffer.concat([head, payload, crypto.createHash("sha256").update(payload).digest()]));
    fs.renameSync(tmp, file);
    return true;
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // never created
    }
    if (process.env["QUANT4_DEBUG"]) process.stderr.write(`quant4: token cache not written (${(e as Error).message})\n`);
    return false;
  }
}

/** What encodeCached did, for tests and diagnostics. */
export type TokenCacheOutcome = "hit" | "miss" | "off";

/**
 * tok.encode(text) (no BOS), read from the token cache when an entry for this text and tokenizer is
 * there and valid, else computed and stored. A tokenizer without a fingerprint is never cached.
 */
export function encodeCached(tok: Tokenizer, text: string, opts: { dir?: string | null; onOutcome?: (o: TokenCacheOutcome) => void } = {}): number[] {
  const dir = opts.dir !== undefined ? opts.dir : tokenCacheDir();
  if (dir === null || tok.fingerprint === undefined) {
    opts.onOutcome?.("off");
    return tok.encode(text);
  }
  const key = tokenCacheKey(tok.fingerprint, text);
  const file = path.join(dir, `${key}.tokens`);
  const cached = readEntry(file, key);
  if (cached !== null) {
    opts.onOutcome?.("hit");
    return cached;
  }
  const ids = tok.encode(text);
  writeEntry(dir, file, key, ids);
  opts.onOutcome?.("miss");
  return ids;
}
