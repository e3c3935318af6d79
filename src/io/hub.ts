// Models from the Hugging Face Hub (issue 11 item 6). Owns: telling a Hub id `org/name[@revision]`
// from a local path, resolving the revision to a commit, choosing the files a loader reads (config,
// tokenizer, safetensors weights; never .bin/.pt/.h5/.msgpack/onnx), and fetching them into the
// standard HF cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub:
// models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/<revision>}),
// so the Python tools share it. Downloads resume: each blob is written to `<blob>.incomplete` and an
// interrupted one continues with an HTTP Range request, then is checked against its etag (sha256 of
// an LFS file, git blob id of a small one) and renamed. A complete cached snapshot is used without
// network, and HF_HUB_OFFLINE=1 (or an unreachable endpoint) uses whatever usable snapshot is cached.
// Metadata (revision -> commit, file list) comes from @huggingface/hub; the transfer itself is done
// here because the library neither resumes nor reports progress. Env: HF_ENDPOINT, HF_TOKEN (else
// HF_TOKEN_PATH or $HF_HOME/token), HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE. Nothing here writes to stdout.

import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { copyFile, mkdir, open, rename, rm, symlink, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import type { ListFileEntry } from "@huggingface/hub";
import { INDEX_FILE, SINGLE_FILE } from "./checkpoint.js";
import { HubError, NetworkError, Quant4Error, UsageError } from "../util/errors.js";
import { fmtBytes } from "../util/format.js";
import { progressMode, startProgress, type ProgressMode } from "../util/progress.js";

export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** Small files a loader may read, fetched when the repo has them (top level only). */
export const HUB_META_FILES = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "LICENSE",
  "LICENSE.md",
  "LICENSE.txt",
  "README.md",
] as const;

const TOKENIZER_NAMES = ["tokenizer.json", "tokenizer.model", "vocab.json"];
const OTHER_WEIGHTS = /\.(bin|pt|pth|h5|msgpack|ckpt|onnx|gguf)$/;
const COMMIT = /^[0-9a-f]{40}$/;
const HUB_ID = /^([\w.-]+)\/([\w.-]+)(?:@([\w./-]+))?$/;

export interface HubId {
  /** `org/name` */
  repo: string;
  /** Branch, tag or commit; "main" when the spec names none. */
  revision: string;
}

/** `org/name[@revision]` as a Hub id, or null when the string cannot be one (`./x`, `../x`, `a/b/c`...). */
export function parseHubId(spec: string): HubId | null {
  const m = HUB_ID.exec(spec);
  if (!m) return null;
  const [, org, name, rev] = m as unknown as [string, string, string, string | undefined];
  // Hub names never start or end with "."; such strings are relative paths.
  if ([org, name].some((s) => s.startsWith(".") || s.endsWith("."))) return null;
  if (rev !== undefined && rev.split("/").some((p) => p === "" || p === "." || p === "..")) return null;
  return { repo: `${org}/${name}`, revision: rev ?? "main" };
}

/** A model argument is a Hub id only when no such path exists and it has the Hub id shape. */
export function isHubSpec(spec: string): boolean {
  return !existsSync(spec) && parseHubId(spec) !== null;
}

/**
 * The local directory for a model argument: an existing path (or anything that is not a Hub id) as
 * given, else the HF-cache snapshot of the Hub repo, downloaded as needed.
 */
export async function resolveModelSpec(spec: string, opts: { json?: boolean } = {}): Promise<string> {
  if (existsSync(spec)) return spec;
  const id = parseHubId(spec);
  if (!id) return spec;
  return fetchHubModel(spec, id, opts);
}

// ---------------------------------------------------------------------------------------------
// Environment

interface HubEnv {
  endpoint: string;
  endpointFromEnv: boolean;
  token: string | undefined;
  cacheDir: string;
  offline: boolean;
}

function truthy(v: string | undefined): boolean {
  return v !== undefined && ["1", "on", "yes", "true"].includes(v.trim().toLowerCase());
}

function hfHome(): string {
  return process.env["HF_HOME"] || path.join(process.env["XDG_CACHE_HOME"] || path.join(os.homedir(), ".cache"), "huggingface");
}

function readToken(): string | undefined {
  for (const v of [process.env["HF_TOKEN"], process.env["HUGGING_FACE_HUB_TOKEN"]]) {
    if (v !== undefined) return v.trim() || undefined;
  }
  try {
    return readFileSync(process.env["HF_TOKEN_PATH"] || path.join(hfHome(), "token"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

function hubEnv(): HubEnv {
  const raw = process.env["HF_ENDPOINT"]?.trim();
  const endpoint = (raw || DEFAULT_ENDPOINT).replace(/\/+$/, "");
  try {
    const u = new URL(endpoint);
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("not http(s)");
  } catch {
    throw new UsageError(`HF_ENDPOINT=${raw}: not an http(s) URL`);
  }
  // As huggingface_hub (and @huggingface/hub's getHFHubCachePath), but an empty variable counts as unset.
  const cacheDir = process.env["HF_HUB_CACHE"] || process.env["HUGGINGFACE_HUB_CACHE"] || path.join(hfHome(), "hub");
  return { endpoint, endpointFromEnv: Boolean(raw), token: readToken(), cacheDir: path.resolve(cacheDir), offline: truthy(process.env["HF_HUB_OFFLINE"]) };
}

// ---------------------------------------------------------------------------------------------
// Cache

function repoFolder(cacheDir: string, repo: string): string {
  return path.join(cacheDir, "models--" + repo.split("/").join("--"));
}

/** The cached snapshot dir for a revision (a commit, or a ref recorded in refs/), or null. */
function cachedSnapshot(storage: string, revision: string): string | null {
  let commit: string | null = COMMIT.test(revision) ? revision : null;
  if (!commit) {
    try {
      const c = readFileSync(path.join(storage, "refs", revision), "utf8").trim();
      if (COMMIT.test(c)) commit = c;
    } catch {
      // no ref recorded
    }
  }
  if (!commit) return null;
  const dir = path.join(storage, "snapshots", commit);
  return existsSync(dir) ? dir : null;
}

/** config.json and every weight file the checkpoint loader would open are present (links resolve). */
function snapshotUsable(dir: string): boolean {
  if (!existsSync(path.join(dir, "config.json"))) return false;
  const index = path.join(dir, INDEX_FILE);
  if (existsSync(index)) {
    try {
      const map = (JSON.parse(readFileSync(index, "utf8")) as { weight_map?: Record<string, string> }).weight_map ?? {};
      const shards = new Set(Object.values(map));
      return shards.size > 0 && [...shards].every((s) => existsSync(path.join(dir, s)));
    } catch {
      return false;
    }
  }
  if (existsSync(path.join(dir, SINGLE_FILE))) return true;
  try {
    return readdirSync(dir).some((f) => f.endsWith(".safetensors") && existsSync(path.join(dir, f)));
  } catch {
    return false;
  }
}

/** Usable and with a tokenizer: what a finished download leaves (weights are fetched last). */
function snapshotComplete(dir: string): boolean {
  return snapshotUsable(dir) && TOKENIZER_NAMES.some((t) => existsSync(path.join(dir, t)));
}

// ---------------------------------------------------------------------------------------------
// Download

/** Endpoint unreachable (as opposed to an answer from it): a usable cached snapshot is used instead. */
class HubUnreachable extends NetworkError {}

interface Ctx {
  spec: string;
  repo: string;
  revision: string;
  env: HubEnv;
  fetch: typeof fetch;
  /** X-Error-Code of the last failed response (RepoNotFound, RevisionNotFound, GatedRepo...). */
  lastErrorCode: string | null;
}

function causeOf(e: unknown): string {
  const c = (e as { cause?: { code?: string; message?: string } })?.cause;
  const msg = c?.code && c.message && !c.message.includes(c.code) ? `${c.code} ${c.message}` : (c?.message ?? c?.code ?? (e as Error)?.message ?? String(e));
  return msg.replace(/\s+/g, " ").trim();
}

function makeFetch(ctx: Omit<Ctx, "fetch">): typeof fetch {
  const f = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const headers = new Headers(init?.headers);
    if (ctx.env.token && !headers.has("authorization")) headers.set("Authorization", `Bearer ${ctx.env.token}`);
    let res: Response;
    try {
      res = await fetch(input, { ...init, headers });
    } catch (e) {
      const where = ctx.env.endpointFromEnv ? "HF_ENDPOINT" : "the default; set HF_ENDPOINT for a mirror";
      throw new HubUnreachable(
        `${ctx.spec}: cannot reach the Hugging Face Hub at ${ctx.env.endpoint} (${where}): ${causeOf(e)}; ` +
          `the model is not (fully) in the cache (${ctx.env.cacheDir}) either — a local model directory works offline`,
      );
    }
    if (!res.ok) (ctx as Ctx).lastErrorCode = res.headers.get("x-error-code");
    return res;
  };
  return f as typeof fetch;
}

/** One-line error for a non-OK answer of the Hub. */
function statusError(ctx: Ctx, status: number, what: string): HubError {
  const { endpoint, token } = ctx.env;
  const code = ctx.lastErrorCode;
  const page = `${endpoint}/${ctx.repo}`;
  if (status === 401) {
    return new HubError(
      ctx.spec,
      token
        ? `the Hub at ${endpoint} refused HF_TOKEN (401): check the token, and that its account can read this repo (${page})`
        : `not found or needs a token (401 from ${endpoint}): if the repo is private or gated, set HF_TOKEN to an access token (${DEFAULT_ENDPOINT}/settings/tokens)`,
    );
  }
  if (status === 403) {
    return new HubError(
      ctx.spec,
      token
        ? `access denied (403 from ${endpoint}${code ? `, ${code}` : ""}): the repo is gated or private; accept its terms at ${page} with the account of HF_TOKEN`
        : `access denied (403 from ${endpoint}): the repo is gated or private; set HF_TOKEN to an access token of an account that accepted its terms at ${page}`,
    );
  }
  if (status === 404 && code === "RevisionNotFound") {
    return new HubError(ctx.spec, `revision "${ctx.revision}" not found in ${ctx.repo} (404 from ${endpoint})`);
  }
  if (status === 404 && what === "repo") {
    return new HubError(ctx.spec, `not a local path, and the Hub at ${endpoint} has no model repo "${ctx.repo}" (404)`);
  }
  return new HubError(ctx.spec, `${what}: the Hub at ${endpoint} answered HTTP ${status}`);
}

/** Map a library error (HubApiError) to ours; anything else passes through. */
function apiError(ctx: Ctx, e: unknown, what: string): unknown {
  if (e instanceof Quant4Error) return e;
  const status = (e as { statusCode?: unknown })?.statusCode;
  if (typeof status === "number") return statusError(ctx, status, what);
  return e;
}

async function fetchHubModel(spec: string, id: HubId, opts: { json?: boolean }): Promise<string> {
  const env = hubEnv();
  const storage = repoFolder(env.cacheDir, id.repo);
  const cached = cachedSnapshot(storage, id.revision);
  if (cached && snapshotComplete(cached)) return cached;
  if (env.offline) {
    if (cached && snapshotUsable(cached)) return cached;
    throw new HubError(spec, `not (fully) in the cache (${storage}) and HF_HUB_OFFLINE is set; run once online, or give a local model directory`);
  }
  const base: Omit<Ctx, "fetch"> = { spec, repo: id.repo, revision: id.revision, env, lastErrorCode: null };
  const ctx: Ctx = Object.assign(base, { fetch: makeFetch(base) });
  try {
    return await download(ctx, storage, opts);
  } catch (e) {
    if (e instanceof HubUnreachable && cached && snapshotUsable(cached)) return cached;
    throw e;
  }
}

async function download(ctx: Ctx, storage: string, opts: { json?: boolean }): Promise<string> {
  const hub = await import("@huggingface/hub");
  const { endpoint } = ctx.env;
  const repoDesignation = { type: "model" as const, name: ctx.repo };

  // Revision -> commit.
  let sha: string;
  try {
    const info = await hub.modelInfo({ name: ctx.repo, revision: ctx.revision, additionalFields: ["sha"], hubUrl: endpoint, fetch: ctx.fetch });
    sha = String(info.sha);
  } catch (e) {
    const err = apiError(ctx, e, "repo");
    // A 404 without the Hub's error code: tell an unknown revision from an unknown repo.
    if (err instanceof HubError && ctx.lastErrorCode === null && ctx.revision !== "main" && /\(404\)$/.test(err.message)) {
      const repoExists = await hub.modelInfo({ name: ctx.repo, hubUrl: endpoint, fetch: ctx.fetch }).then(() => true, () => false);
      if (repoExists) throw new HubError(ctx.spec, `revision "${ctx.revision}" not found in ${ctx.repo} (404 from ${endpoint})`);
    }
    throw err;
  }
  if (!COMMIT.test(sha)) throw new HubError(ctx.spec, `the Hub at ${endpoint} gave no commit for revision "${ctx.revision}"`);
  if (ctx.revision !== sha) {
    const ref = path.join(storage, "refs", ctx.revision);
    await mkdir(path.dirname(ref), { recursive: true });
    await writeFile(ref, sha);
  }
  const snapshot = path.join(storage, "snapshots", sha);
  if (snapshotComplete(snapshot)) return snapshot;

  // The file list at that commit.
  const files = new Map<string, ListFileEntry>();
  try {
    for await (const e of hub.listFiles({ repo: repoDesignation, revision: sha, recursive: true, hubUrl: endpoint, fetch: ctx.fetch })) {
      if (e.type === "file") files.set(e.path, e);
    }
  } catch (e) {
    throw apiError(ctx, e, "listing files");
  }

  const remote = (p: string): RemoteFile => {
    const e = files.get(p)!;
    const etag = e.lfs?.oid ?? e.oid ?? "";
    if (!/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(etag)) throw new HubError(ctx.spec, `${p}: the Hub listed no usable hash (oid) for it`);
    return { path: p, size: e.lfs?.size ?? e.size, etag };
  };
  if (!files.has("config.json")) {
    throw new HubError(ctx.spec, `no config.json at revision "${ctx.revision}"; not a transformers model checkpoint`);
  }

  // Which weights: the loader's preference (src/io/checkpoint.ts): index + its shards, model.safetensors,
  // else every top-level *.safetensors.
  const dl = new Downloader(ctx, storage, snapshot, sha);
  let weights: string[];
  if (files.has(INDEX_FILE)) {
    await dl.fetchAll([remote(INDEX_FILE)], "off");
    let map: Record<string, string>;
    try {
      map = (JSON.parse(readFileSync(path.join(snapshot, INDEX_FILE), "utf8")) as { weight_map: Record<string, string> }).weight_map;
      if (!map || typeof map !== "object") throw new Error("no weight_map");
    } catch (e) {
      throw new HubError(ctx.spec, `${INDEX_FILE}: not a valid shard index (${(e as Error).message})`);
    }
    weights = [...new Set(Object.values(map))];
    for (const s of weights) {
      if (typeof s !== "string" || path.isAbsolute(s) || s.split(/[\\/]/).includes("..") || !files.has(s)) {
        throw new HubError(ctx.spec, `${INDEX_FILE} references shard "${String(s)}", which is not a file of the repo`);
      }
    }
  } else if (files.has(SINGLE_FILE)) {
    weights = [SINGLE_FILE];
  } else {
    weights = [...files.keys()].filter((p) => !p.includes("/") && p.endsWith(".safetensors")).sort();
  }
  if (weights.length === 0) {
    const other = [...files.keys()].filter((p) => OTHER_WEIGHTS.test(p));
    const found = other.length ? `only ${other.slice(0, 3).join(", ")}${other.length > 3 ? ", ..." : ""}` : "no weight files";
    throw new HubError(
      ctx.spec,
      `has no safetensors weights at revision "${ctx.revision}" (${found}); quant4 needs *.safetensors — ` +
        `pick a revision that has them, or convert the checkpoint (save_pretrained(..., safe_serialization=True)) and pass its local directory`,
    );
  }

  const meta = HUB_META_FILES.filter((f) => files.has(f)).map(remote);
  await dl.fetchAll([...meta, ...weights.map(remote)], progressMode(Boolean(opts.json)));
  return snapshot;
}

interface RemoteFile {
  path: string;
  size: number;
  /** Blob name in the cache: the LFS sha256, or the git blob oid for small files (as huggingface_hub). */
  etag: string;
}

class Downloader {
  constructor(
    private readonly ctx: Ctx,
    private readonly storage: string,
    private readonly snapshot: string,
    private readonly sha: string,
  ) {}

  private blobPath(f: RemoteFile): string {
    return path.join(this.storage, "blobs", f.etag);
  }

  private pointerPath(f: RemoteFile): string {
    return path.join(this.snapshot, ...f.path.split("/"));
  }

  /** Fetch the files not already in the snapshot, in order, with one bar for their bytes. */
  async fetchAll(list: RemoteFile[], mode: ProgressMode): Promise<void> {
    const todo = list.filter((f) => !existsSync(this.pointerPath(f)));
    const need = todo.filter((f) => !existsSync(this.blobPath(f)));
    const total = need.reduce((s, f) => s + f.size, 0);
    let done = need.reduce((s, f) => s + Math.min(f.size, sizeOf(this.blobPath(f) + ".incomplete")), 0);
    const progress = startProgress(
      total > 0 ? mode : "off",
      `download ${this.ctx.repo}`,
      total,
      "{bar} {percentage}% | {done}/{size} | {file} | ETA {eta_formatted}",
      { done: fmtBytes(done), size: fmtBytes(total), file: "" },
      (p) => `${p["done"]} of ${p["size"]} (${p["file"]})`,
    );
    progress.update(done);
    try {
      for (const f of todo) {
        const blob = this.blobPath(f);
        if (!existsSync(blob)) {
          await this.fetchBlob(f, blob, (n) => {
            done += n;
            progress.update(done, { done: fmtBytes(done), size: fmtBytes(total), file: f.path });
          });
        }
        await linkPointer(blob, this.pointerPath(f));
      }
    } finally {
      progress.stop();
    }
  }

  private async fetchBlob(f: RemoteFile, blob: string, onBytes: (n: number) => void): Promise<void> {
    const { ctx } = this;
    const part = `${blob}.incomplete`;
    await mkdir(path.dirname(blob), { recursive: true });
    let have = sizeOf(part);
    if (have > f.size) {
      await rm(part, { force: true });
      have = 0;
    }
    // The etag is the content hash: sha256 of an LFS file, or git's blob id (sha1 of "blob <size>\0" + bytes).
    const lfs = /^[0-9a-f]{64}$/.test(f.etag);
    const newHash = (): Hash => (lfs ? createHash("sha256") : createHash("sha1").update(`blob ${f.size}\0`));
    let hash = newHash();
    if (have > 0) await hashFile(part, hash);

    if (have < f.size) {
      const url = `${ctx.env.endpoint}/${ctx.repo}/resolve/${this.sha}/${f.path.split("/").map(encodeURIComponent).join("/")}`;
      const res = await ctx.fetch(url, { headers: have > 0 ? { Range: `bytes=${have}-` } : {} });
      if (res.status === 206) {
        const start = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1];
        if (Number(start) !== have) {
          await res.body?.cancel();
          throw new NetworkError(`${ctx.spec}: ${f.path}: the server resumed at byte ${start ?? "?"} instead of ${have}; run the command again`);
        }
      } else if (res.ok) {
        if (have > 0) {
          // The server ignored the Range request: start over.
          onBytes(-have);
          have = 0;
          hash = newHash();
        }
      } else {
        await res.body?.cancel();
        throw statusError(ctx, res.status, f.path);
      }
      if (!res.body) throw new NetworkError(`${ctx.spec}: ${f.path}: empty response from ${ctx.env.endpoint}`);
      const fh = await open(part, have > 0 ? "a" : "w");
      try {
        for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
          await fh.write(chunk);
          hash.update(chunk);
          have += chunk.length;
          onBytes(chunk.length);
        }
      } catch (e) {
        throw new NetworkError(
          `${ctx.spec}: download of ${f.path} interrupted after ${fmtBytes(have)} of ${fmtBytes(f.size)} (${causeOf(e)}); run the command again to resume`,
        );
      } finally {
        await fh.close();
      }
    }
    if (have < f.size) {
      throw new NetworkError(
        `${ctx.spec}: download of ${f.path} interrupted after ${fmtBytes(have)} of ${fmtBytes(f.size)} (connection closed early); run the command again to resume`,
      );
    }
    if (have > f.size || hash.digest("hex") !== f.etag) {
      await rm(part, { force: true });
      throw new HubError(
        ctx.spec,
        `${f.path}: the downloaded bytes do not match the Hub's ${have > f.size ? "size" : lfs ? "sha256" : "git blob id"}; the partial file was removed, run the command again`,
      );
    }
    await rename(part, blob);
  }
}

function sizeOf(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

function hashFile(file: string, hash: Hash): Promise<void> {
  return new Promise((resolve, reject) => {
    createReadStream(file)
      .on("data", (d) => hash.update(d))
      .on("end", () => resolve())
      .on("error", reject);
  });
}

/** snapshots/<commit>/<file> -> ../../blobs/<etag> (a copy where symlinks are not allowed). */
async function linkPointer(blob: string, pointer: string): Promise<void> {
  await mkdir(path.dirname(pointer), { recursive: true });
  await unlink(pointer).catch(() => undefined); // a dangling link left by a removed blob
  try {
    await symlink(path.relative(path.dirname(pointer), blob), pointer);
  } catch {
    await copyFile(blob, pointer);
  }
}
