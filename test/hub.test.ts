// Models from the Hugging Face Hub (src/io/hub.ts), end to end through the CLI against a local
// stand-in for the Hub (node:http on 127.0.0.1) serving the vendored models/stories260K in the Hub's
// URL layout: GET /api/models/{repo}/revision/{rev} (commit sha), GET /api/models/{repo}/tree/{sha}
// (file list with git oids and LFS sha256/size), GET /{repo}/resolve/{rev}/{path} (bytes, with Range,
// ETag, X-Repo-Commit), and the Hub's 401/404 answers with X-Error-Code. HF_ENDPOINT points the CLI
// at it and HF_HOME at a temp dir per test.

import { createHash } from "node:crypto";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isHubSpec, parseHubId } from "../src/io/hub.js";
import { writeSafetensors } from "../src/io/writer.js";
import { makeTmpDir, removeTmpDirs, runCli, stderrLines, STORIES_VENDORED, type CliResult, expectOneLineError } from "./helpers.js";

const TOKEN = "hf_test_token_1234";

interface ServedFile {
  path: string;
  data: Buffer;
  lfs: boolean;
}

interface ServedRepo {
  /** Branch/tag name -> commit. */
  refs: Record<string, string>;
  trees: Record<string, ServedFile[]>;
  private?: boolean;
}

interface Seen {
  method: string;
  url: string;
  range: string | undefined;
  auth: string | undefined;
}

const sha1 = (b: Buffer | string): string => createHash("sha1").update(b).digest("hex");
const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
const gitOid = (b: Buffer): string => sha1(Buffer.concat([Buffer.from(`blob ${b.length}\0`), b]));
const etagOf = (f: ServedFile): string => (f.lfs ? sha256(f.data) : gitOid(f.data));

/** A minimal Hub: enough of its API for @huggingface/hub's modelInfo/listFiles and a resolve download. */
class FakeHub {
  readonly repos = new Map<string, ServedRepo>();
  readonly seen: Seen[] = [];
  /** "repo/path" -> bytes after which the next response for it is cut (once). */
  readonly cutOnce = new Map<string, number>();
  /** "repo/path" served with its first byte flipped (the listing keeps the true hashes). */
  readonly corrupt = new Set<string>();
  private server = http.createServer((req, res) => this.handle(req, res));
  url = "";

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }

  requests(prefix: string): Seen[] {
    return this.seen.filter((s) => s.url.startsWith(prefix));
  }

  private json(res: http.ServerResponse, status: number, body: unknown, errorCode?: string): void {
    res.writeHead(status, { "Content-Type": "application/json", ...(errorCode ? { "X-Error-Code": errorCode } : {}) });
    res.end(JSON.stringify(body));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const u = new URL(req.url!, this.url);
    this.seen.push({ method: req.method!, url: u.pathname, range: req.headers.range, auth: req.headers.authorization });
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree)\/([^/]+)$/.exec(u.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(u.pathname);
    const m = api ?? resolve;
    if (!m) return this.json(res, 404, { error: "Not Found" });
    const repoName = m[1]!;
    const repo = this.repos.get(repoName);
    // As the Hub: an unknown repo is a 401 without a token (it could be private), a 404 with one.
    if (!repo) return this.json(res, req.headers.authorization ? 404 : 401, { error: "Repository not found" }, "RepoNotFound");
    if (repo.private && req.headers.authorization !== `Bearer ${TOKEN}`) {
      return this.json(res, 401, { error: "Invalid credentials in Authorization header" });
    }
    const rev = decodeURIComponent(api ? m[3]! : m[2]!);
    const sha = repo.trees[rev] ? rev : repo.refs[rev];
    if (!sha) return this.json(res, 404, { error: `Invalid rev id: ${rev}` }, "RevisionNotFound");
    const tree = repo.trees[sha]!;
    if (api?.[2] === "revision") {
      return this.json(res, 200, { _id: sha1(repoName), id: repoName, sha, private: !!repo.private, siblings: tree.map((f) => ({ rfilename: f.path })) });
    }
    if (api) {
      return this.json(res, 200, tree.map((f) => ({
        type: "file", path: f.path, size: f.data.length, oid: gitOid(f.data),
        ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 134 } } : {}),
      })));
    }
    const file = tree.find((f) => f.path === decodeURIComponent(m[3]!));
    if (!file) return this.json(res, 404, { error: "Entry not found" }, "EntryNotFound");
    const headers: http.OutgoingHttpHeaders = {
      "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", ETag: `"${etagOf(file)}"`, "X-Repo-Commit": sha,
    };
    let body = file.data;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range) {
      const start = Number(range[1]);
      if (start >= file.data.length) {
        res.writeHead(416, { "Content-Range": `bytes */${file.data.length}` });
        return void res.end();
      }
      body = file.data.subarray(start);
      res.writeHead(206, { ...headers, "Content-Length": body.length, "Content-Range": `bytes ${start}-${file.data.length - 1}/${file.data.length}` });
    } else {
      res.writeHead(200, { ...headers, "Content-Length": body.length });
    }
    if (req.method === "HEAD") return void res.end();
    const key = `${repoName}/${file.path}`;
    if (this.corrupt.has(key)) body = Buffer.concat([Buffer.from([body[0]! ^ 0xff]), body.subarray(1)]);
    const cut = this.cutOnce.get(key);
    if (cut !== undefined) {
      // Send part of the body, then drop the connection.
      this.cutOnce.delete(key);
      res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 50));
      return;
    }
    res.end(body);
  }
}

// ---------------------------------------------------------------------------------------------
// Repo contents

const read = (f: string): Buffer => readFileSync(path.join(STORIES_VENDORED, f));

/** stories260K's model.safetensors split into two shards plus their index (the v1 revision). */
function shardedStories(): ServedFile[] {
  const buf = read("model.safetensors");
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + hlen).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const names = Object.keys(header).filter((n) => n !== "__metadata__").sort();
  const dir = makeTmpDir("quant4-hub-shards-");
  const shardNames = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
  const weightMap: Record<string, string> = {};
  const files: ServedFile[] = shardNames.map((shard, i) => {
    const part = names.filter((_, j) => j % 2 === i);
    const tensors = part.map((name) => {
      const t = header[name]!;
      expect(t.dtype).toBe("F32");
      const bytes = buf.subarray(8 + hlen + t.data_offsets[0], 8 + hlen + t.data_offsets[1]);
      const data = new Float32Array(bytes.length / 4);
      Buffer.from(data.buffer).set(bytes);
      weightMap[name] = shard;
      return { name, dtype: "F32" as const, shape: t.shape, data };
    });
    writeSafetensors(path.join(dir, shard), tensors, { format: "pt" });
    return { path: shard, data: readFileSync(path.join(dir, shard)), lfs: true };
  });
  const config = { ...JSON.parse(read("config.json").toString("utf8")), max_position_embeddings: 256 };
  return [
    { path: "config.json", data: Buffer.from(JSON.stringify(config, null, 2)), lfs: false },
    { path: "model.safetensors.index.json", data: Buffer.from(JSON.stringify({ metadata: {}, weight_map: weightMap })), lfs: false },
    ...files,
    // A stale shard the index does not reference: never fetched.
    { path: "model-stale.safetensors", data: read("model.safetensors"), lfs: true },
    { path: "tokenizer.model", data: read("tokenizer.model"), lfs: true },
  ];
}

const SHA_MAIN = sha1("main");
const SHA_V1 = sha1("v1");

function storiesTree(): ServedFile[] {
  return [
    { path: "config.json", data: read("config.json"), lfs: false },
    { path: "model.safetensors", data: read("model.safetensors"), lfs: true },
    { path: "tokenizer.model", data: read("tokenizer.model"), lfs: true },
    { path: "greedy-reference.txt", data: read("greedy-reference.txt"), lfs: false },
    { path: "README.md", data: Buffer.from("# stories260K\n"), lfs: false },
    // What a loader must never fetch.
    { path: "pytorch_model.bin", data: Buffer.from("not a pickle"), lfs: true },
    { path: "onnx/model.onnx", data: Buffer.from("not onnx"), lfs: true },
  ];
}

// ---------------------------------------------------------------------------------------------

let trees: { main: ServedFile[]; v1: ServedFile[] };
let deadEndpoint = "";

beforeAll(async () => {
  trees = { main: storiesTree(), v1: shardedStories() };
  // An endpoint nothing listens on: a server started and stopped again.
  const dead = http.createServer();
  await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
  deadEndpoint = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
  await new Promise<void>((r) => dead.close(() => r()));
});

afterAll(removeTmpDirs);

/** A fresh fake Hub per test (tests run concurrently), with its repos, stopped when the test ends. */
async function startHub(onTestFinished: (fn: () => Promise<void>) => void): Promise<FakeHub> {
  const hub = new FakeHub();
  hub.repos.set("org/stories260K", { refs: { main: SHA_MAIN, v1: SHA_V1 }, trees: { [SHA_MAIN]: trees.main, [SHA_V1]: trees.v1 } });
  hub.repos.set("org/resume", { refs: { main: SHA_MAIN }, trees: { [SHA_MAIN]: trees.main } });
  hub.repos.set("org/private", { refs: { main: SHA_MAIN }, trees: { [SHA_MAIN]: trees.main }, private: true });
  hub.repos.set("org/binonly", {
    refs: { main: SHA_MAIN },
    trees: { [SHA_MAIN]: [{ path: "config.json", data: read("config.json"), lfs: false }, { path: "pytorch_model.bin", data: Buffer.from("x"), lfs: true }] },
  });
  await hub.start();
  onTestFinished(() => hub.stop());
  return hub;
}

/** Run the CLI against the fake Hub with its own cache. */
function cli(hub: FakeHub, args: string[], home: string, env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return runCli(args, { env: { HF_ENDPOINT: hub.url, HF_HOME: home, HF_HUB_CACHE: "", HF_TOKEN: "", HF_HUB_OFFLINE: "", ...env }, timeoutMs: 30_000 });
}


const repoDir = (home: string, repo: string): string => path.join(home, "hub", `models--${repo.replace("/", "--")}`);
const resolved = (hub: FakeHub, repo: string): string[] =>
  hub.requests(`/${repo}/resolve/`).map((s) => s.url.slice(`/${repo}/resolve/`.length).replace(/^[^/]+\//, ""));

describe.concurrent("Hub ids: quant4 <cmd> org/name[@revision]", () => {
  it("inspect and generate download only the loader's files into the HF cache layout; generate matches the local model", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    const [r, local] = await Promise.all([
      cli(hub, ["inspect", "org/stories260K", "--json"], home),
      runCli(["generate", "models/stories260K", "--max-tokens", "32"]),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(local.code, local.stderr).toBe(0);
    const localGenerate = local.stdout;
    expect(r.stderr).toBe("");
    const info = JSON.parse(r.stdout);
    expect(info.modelType).toBe("llama");
    expect(info.files).toEqual(["model.safetensors"]);

    const storage = repoDir(home, "org/stories260K");
    expect(readFileSync(path.join(storage, "refs/main"), "utf8")).toBe(SHA_MAIN);
    const snap = path.join(storage, "snapshots", SHA_MAIN);
    expect(info.dir).toBe(snap);
    for (const f of storiesTree().filter((f) => ["config.json", "model.safetensors", "tokenizer.model", "README.md"].includes(f.path))) {
      const p = path.join(snap, f.path);
      expect(lstatSync(p).isSymbolicLink()).toBe(true);
      expect(readlinkSync(p)).toBe(path.join("..", "..", "blobs", etagOf(f)));
      expect(readFileSync(p).equals(f.data)).toBe(true);
    }
    expect(resolved(hub, "org/stories260K").sort()).toEqual(["README.md", "config.json", "model.safetensors", "tokenizer.model"]);
    expect(existsSync(path.join(snap, "pytorch_model.bin"))).toBe(false);

    // The cache is complete: generate makes no request at all.
    const before = hub.seen.length;
    const g = await cli(hub, ["generate", "org/stories260K", "--max-tokens", "32"], home);
    expect(g.code, g.stderr).toBe(0);
    expect(hub.seen.length).toBe(before);
    expect(g.stdout).toBe(localGenerate);
    expect(g.stdout.trim().length).toBeGreaterThan(20);
    expect(read("greedy-reference.txt").toString("utf8").startsWith(g.stdout.trimEnd())).toBe(true);

    // (b) Offline: the endpoint down, or HF_HUB_OFFLINE=1, both work from the cache.
    const down = await cli(hub, ["generate", "org/stories260K", "--max-tokens", "32"], home, { HF_ENDPOINT: deadEndpoint });
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toBe(localGenerate);
    const off = await cli(hub, ["inspect", "org/stories260K"], home, { HF_HUB_OFFLINE: "1" });
    expect(off.code, off.stderr).toBe(0);
    expect(off.stdout).toContain("llama");
    expect(hub.seen.length).toBe(before);
  });

  it("offline without a cached copy: one-line errors naming HF_HUB_OFFLINE, or HF_ENDPOINT and the local-path alternative", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    expectOneLineError(await cli(hub, ["inspect", "org/stories260K"], home, { HF_HUB_OFFLINE: "1" }), "org/stories260K", "HF_HUB_OFFLINE");
    expectOneLineError(
      await cli(hub, ["inspect", "org/stories260K"], home, { HF_ENDPOINT: deadEndpoint }),
      "org/stories260K", `cannot reach the Hugging Face Hub at ${deadEndpoint} (HF_ENDPOINT)`, "local model directory works offline",
    );
  });

  it("an interrupted download fails with one line, keeps the partial blob, and the next run resumes with a Range request", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    const weights = storiesTree().find((f) => f.path === "model.safetensors")!;
    const blob = path.join(repoDir(home, "org/resume"), "blobs", sha256(weights.data));
    hub.cutOnce.set("org/resume/model.safetensors", 300_000);

    expectOneLineError(await cli(hub, ["inspect", "org/resume"], home), "org/resume", "model.safetensors", "interrupted", "run the command again to resume");
    expect(existsSync(blob)).toBe(false);
    const partial = statSync(`${blob}.incomplete`).size;
    expect(partial).toBeGreaterThan(0);
    expect(partial).toBeLessThanOrEqual(300_000);

    const r = await cli(hub, ["inspect", "org/resume"], home);
    expect(r.code, r.stderr).toBe(0);
    const gets = hub.requests("/org/resume/resolve/").filter((s) => s.url.endsWith("/model.safetensors"));
    expect(gets.map((s) => s.range)).toEqual([undefined, `bytes=${partial}-`]);
    expect(readFileSync(blob).equals(weights.data)).toBe(true);
    expect(existsSync(`${blob}.incomplete`)).toBe(false);
  });

  it("bytes that do not match the listed hash: one-line error, nothing kept", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    hub.corrupt.add("org/resume/model.safetensors");
    expectOneLineError(await cli(hub, ["inspect", "org/resume"], home), "org/resume", "model.safetensors", "do not match the Hub's sha256");
    const blobs = path.join(repoDir(home, "org/resume"), "blobs");
    expect(readdirSync(blobs).filter((f) => f.startsWith(sha256(read("model.safetensors"))))).toEqual([]);
  });

  it("HF_TOKEN is sent as a Bearer token; without it a private repo is a one-line error naming HF_TOKEN", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    expectOneLineError(await cli(hub, ["inspect", "org/private"], home), "org/private", "401", "set HF_TOKEN");
    const r = await cli(hub, ["inspect", "org/private"], home, { HF_TOKEN: TOKEN });
    expect(r.code, r.stderr).toBe(0);
    const withToken = hub.requests("/api/models/org/private").concat(hub.requests("/org/private/")).filter((s) => s.auth);
    expect(withToken.length).toBeGreaterThanOrEqual(5); // revision, tree, and the files
    for (const s of withToken) expect(s.auth).toBe(`Bearer ${TOKEN}`);
    expectOneLineError(await cli(hub, ["inspect", "org/private"], makeTmpDir("quant4-hf-"), { HF_TOKEN: "hf_wrong" }), "org/private", "refused HF_TOKEN");
  });

  it("an unknown repo or revision is a one-line error naming it", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    expectOneLineError(await cli(hub, ["inspect", "org/missing"], home), "org/missing", "401", "HF_TOKEN");
    expectOneLineError(await cli(hub, ["inspect", "org/missing"], home, { HF_TOKEN: TOKEN }), "org/missing", 'no model repo "org/missing" (404)');
    expectOneLineError(await cli(hub, ["inspect", "org/stories260K@nope"], home), "org/stories260K@nope", 'revision "nope" not found');
  });

  it("a repo with only .bin weights: a clear error saying safetensors is needed, nothing fetched", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    expectOneLineError(await cli(hub, ["inspect", "org/binonly"], home), "org/binonly", "pytorch_model.bin", "needs *.safetensors");
    expect(resolved(hub, "org/binonly")).toEqual([]);
  });

  it("@revision selects a revision (a branch, or a commit): v1 is sharded, only the shards its index names are fetched; HF_HUB_CACHE is honoured", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    const cache = path.join(makeTmpDir("quant4-hf-cache-"), "hub-cache");
    const env = { HF_HUB_CACHE: cache };
    const r = await cli(hub, ["inspect", "org/stories260K@v1", "--json"], home, env);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.architecture.context).toBe(256);
    expect(info.files).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    const storage = path.join(cache, "models--org--stories260K");
    expect(existsSync(path.join(home, "hub"))).toBe(false);
    expect(readFileSync(path.join(storage, "refs/v1"), "utf8")).toBe(SHA_V1);
    expect(info.dir).toBe(path.join(storage, "snapshots", SHA_V1));
    expect(existsSync(path.join(storage, "snapshots", SHA_V1, "model-stale.safetensors"))).toBe(false);
    expect(hub.requests(`/org/stories260K/resolve/${SHA_V1}/model-stale`)).toEqual([]);

    const c = await cli(hub, ["inspect", `org/stories260K@${SHA_MAIN}`, "--json"], home, env);
    expect(c.code, c.stderr).toBe(0);
    expect(JSON.parse(c.stdout).architecture.context).toBe(512);
    expect(existsSync(path.join(storage, "refs", SHA_MAIN))).toBe(false);
  });

  it("what counts as a Hub id", () => {
    expect(parseHubId("org/name")).toEqual({ repo: "org/name", revision: "main" });
    expect(parseHubId("Org-1/name.v2_x@v1.0")).toEqual({ repo: "Org-1/name.v2_x", revision: "v1.0" });
    expect(parseHubId("org/name@refs/pr/3")).toEqual({ repo: "org/name", revision: "refs/pr/3" });
    for (const notId of ["name", "a/b/c", "./x", "../shared", "/abs/x", "org/name@../x", "org/name@", "org/.hidden", "org/name@a//b"]) {
      expect(parseHubId(notId), notId).toBeNull();
    }
    expect(isHubSpec("models/stories260K")).toBe(false); // it exists
    expect(isHubSpec("models/not-here")).toBe(true);
  });

  it("a local path wins over a Hub id of the same shape", async ({ onTestFinished }) => {
    const hub = await startHub(onTestFinished);
    const home = makeTmpDir("quant4-hf-");
    const before = hub.seen.length;
    const r = await cli(hub, ["inspect", "models/stories260K"], home);
    expect(r.code, r.stderr).toBe(0);
    expect(hub.seen.length).toBe(before);
  });
});
