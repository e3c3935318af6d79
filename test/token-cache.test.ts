// The token cache (src/tokenizer/cache.ts): where it lives, hit and miss, corrupt files ignored and
// rewritten, turned off, its key following the tokenizer (and nothing else), and eval-ppl using it.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { resolveText } from "../src/calibration/texts.js";
import { encodeCached, loadTokenizer, parseSentencePieceModel, sentencePieceToTokenizerJson, tokenCacheDir, tokenCacheKey, type TokenCacheOutcome } from "../src/tokenizer/index.js";
import { STORIES_VENDORED, makeTmpDir, removeTmpDirs, runCli } from "./helpers.js";

afterAll(removeTmpDirs);

const TEXT = resolveText("tinystories").text.slice(0, 20_000);

/** encodeCached into `dir`, returning the ids and what the cache did. */
function run(tokDir: string, dir: string | null, text = TEXT): { ids: number[]; outcome: TokenCacheOutcome } {
  let outcome: TokenCacheOutcome = "off";
  const ids = encodeCached(loadTokenizer(tokDir), text, { dir, onOutcome: (o) => (outcome = o) });
  return { ids, outcome };
}

const entries = (dir: string): string[] => (fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []);

describe("tokenCacheDir", () => {
  it("QUANT4_CACHE_DIR, then XDG_CACHE_HOME, then ~/.cache; QUANT4_NO_CACHE turns it off", () => {
    expect(tokenCacheDir({ QUANT4_CACHE_DIR: "/c", XDG_CACHE_HOME: "/x" })).toBe(path.join("/c", "tokens"));
    expect(tokenCacheDir({ XDG_CACHE_HOME: "/x" })).toBe(path.join("/x", "quant4", "tokens"));
    expect(tokenCacheDir({ XDG_CACHE_HOME: "relative/x" })).toBe(path.join(os.homedir(), ".cache", "quant4", "tokens"));
    expect(tokenCacheDir({})).toBe(path.join(os.homedir(), ".cache", "quant4", "tokens"));
    expect(tokenCacheDir({ QUANT4_NO_CACHE: "1", QUANT4_CACHE_DIR: "/c" })).toBeNull();
    expect(tokenCacheDir({ QUANT4_NO_CACHE: "0", QUANT4_CACHE_DIR: "/c" })).toBe(path.join("/c", "tokens"));
  });
});

describe("encodeCached", () => {
  it("misses, stores one file atomically, then hits with the same ids", () => {
    const dir = makeTmpDir();
    const want = loadTokenizer(STORIES_VENDORED).encode(TEXT);
    const first = run(STORIES_VENDORED, dir);
    expect(first.outcome).toBe("miss");
    expect(first.ids).toEqual(want);
    const files = entries(dir);
    expect(files).toHaveLength(1); // no temp file left behind
    expect(files[0]).toMatch(/^[0-9a-f]{64}\.tokens$/);
    expect(fs.statSync(path.join(dir, files[0]!)).size).toBe(8 + 32 + 4 + 4 * want.length + 32);
    const second = run(STORIES_VENDORED, dir);
    expect(second.outcome).toBe("hit");
    expect(second.ids).toEqual(want);
    // Another text: another entry.
    expect(run(STORIES_VENDORED, dir, TEXT.slice(0, 5000)).outcome).toBe("miss");
    expect(entries(dir)).toHaveLength(2);
  });

  it("ignores and rewrites a corrupt entry: truncated, a flipped id, a wrong header, another key's file", () => {
    const dir = makeTmpDir();
    const want = run(STORIES_VENDORED, dir).ids;
    const file = path.join(dir, entries(dir)[0]!);
    const good = fs.readFileSync(file);
    const damage: [string, (b: Buffer) => Buffer][] = [
      ["truncated", (b) => b.subarray(0, b.length - 7)],
      ["empty", () => Buffer.alloc(0)],
      ["flipped id", (b) => {
        const c = Buffer.from(b);
        c[44 + 4 * 10] ^= 0x01; // id 10, the stored hash no longer matches
        return c;
      }],
      ["wrong magic", (b) => Buffer.concat([Buffer.from("XXXXXXXX"), b.subarray(8)])],
      ["count too large", (b) => {
        const c = Buffer.from(b);
        c.writeUInt32LE(want.length + 1, 40);
        return c;
      }],
      ["another key's entry", (b) => {
        const c = Buffer.from(b);
        c[8] ^= 0xff;
        return c;
      }],
    ];
    for (const [what, f] of damage) {
      fs.writeFileSync(file, f(good));
      const r = run(STORIES_VENDORED, dir);
      expect(r.outcome, what).toBe("miss");
      expect(r.ids, what).toEqual(want);
      expect(fs.readFileSync(file).equals(good), `${what}: rewritten`).toBe(true);
      expect(run(STORIES_VENDORED, dir).outcome, what).toBe("hit");
    }
  });

  it("off: nothing read or written; an unwritable directory only costs the cache", () => {
    const dir = makeTmpDir();
    const off = run(STORIES_VENDORED, null);
    expect(off.outcome).toBe("off");
    const blocked = path.join(dir, "a-file");
    fs.writeFileSync(blocked, "not a directory");
    const r = run(STORIES_VENDORED, path.join(blocked, "tokens"));
    expect(r.outcome).toBe("miss");
    expect(r.ids).toEqual(off.ids);
    expect(entries(dir)).toEqual(["a-file"]);
    // Nested directories that do not exist yet are created.
    const nested = path.join(dir, "x", "y", "tokens");
    expect(run(STORIES_VENDORED, nested).outcome).toBe("miss");
    expect(entries(nested)).toHaveLength(1);
  });

  it.skipIf(!fs.existsSync("/proc/self"))("a directory under /proc (where Node's recursive mkdir never returns) is skipped, not hung", () => {
    const r = run(STORIES_VENDORED, "/proc/quant4-no-such/tokens");
    expect(r.outcome).toBe("miss");
    expect(r.ids.length).toBeGreaterThan(1000);
  }, 20_000);

  it("the key follows the tokenizer's files, not the directory or config.json", () => {
    const a = makeTmpDir();
    const b = makeTmpDir();
    fs.copyFileSync(path.join(STORIES_VENDORED, "tokenizer.model"), path.join(a, "tokenizer.model"));
    fs.copyFileSync(path.join(STORIES_VENDORED, "tokenizer.model"), path.join(b, "tokenizer.model"));
    fs.writeFileSync(path.join(b, "config.json"), JSON.stringify({ bos_token_id: 1, quantization_config: { bits: 4 } }));
    const fa = loadTokenizer(a).fingerprint!;
    expect(fa).toMatch(/^[0-9a-f]{64}$/);
    expect(loadTokenizer(b).fingerprint).toBe(fa); // a quantized copy shares its source's cache entries
    expect(loadTokenizer(STORIES_VENDORED).fingerprint).toBe(fa);
    fs.writeFileSync(path.join(b, "tokenizer_config.json"), JSON.stringify({ bos_token: "<s>", eos_token: "</s>" }));
    expect(loadTokenizer(b).fingerprint).not.toBe(fa);
    expect(tokenCacheKey(fa, TEXT)).not.toBe(tokenCacheKey(loadTokenizer(b).fingerprint!, TEXT));
    expect(tokenCacheKey(fa, TEXT)).not.toBe(tokenCacheKey(fa, TEXT + " "));
  });

  it("a changed tokenizer.json never gets the old tokenizer's ids", () => {
    const file = path.join(STORIES_VENDORED, "tokenizer.model");
    const conv = sentencePieceToTokenizerJson(parseSentencePieceModel(new Uint8Array(fs.readFileSync(file)), file), file);
    const t1 = makeTmpDir();
    fs.writeFileSync(path.join(t1, "tokenizer.json"), JSON.stringify(conv.json));
    // The same vocabulary without its merges: BPE then stops at single characters (other ids, more of them).
    const t2 = makeTmpDir();
    fs.writeFileSync(path.join(t2, "tokenizer.json"), JSON.stringify({ ...conv.json, model: { ...conv.json.model, merges: [] } }));
    const cache = makeTmpDir();
    const r1 = run(t1, cache);
    expect(r1.outcome).toBe("miss");
    expect(run(t1, cache).outcome).toBe("hit");
    const r2 = run(t2, cache);
    expect(r2.outcome).toBe("miss");
    expect(r2.ids).toEqual(loadTokenizer(t2).encode(TEXT));
    expect(r2.ids.length).toBeGreaterThan(r1.ids.length);
    expect(entries(cache)).toHaveLength(2);
  });
});

describe("eval-ppl and the token cache", () => {
  it("tokenizes once: the second run reads the cache and reports the same result; QUANT4_NO_CACHE=1 writes nothing", async () => {
    const cache = makeTmpDir();
    const args = ["eval-ppl", STORIES_VENDORED, "--text", "tinystories", "--seqlen", "128", "--max-windows", "3", "--json"];
    const env = { QUANT4_NO_CACHE: "", QUANT4_CACHE_DIR: cache };
    const r1 = await runCli(args, { env });
    expect(r1.code, r1.stderr).toBe(0);
    expect(entries(path.join(cache, "tokens"))).toHaveLength(1);
    const r2 = await runCli(args, { env });
    expect(r2.code, r2.stderr).toBe(0);
    const [j1, j2] = [JSON.parse(r1.stdout), JSON.parse(r2.stdout)];
    expect(j2.ppl).toBe(j1.ppl);
    expect(j2.protocol).toEqual(j1.protocol); // tokensSha256 included
    const off = makeTmpDir();
    const r3 = await runCli(args, { env: { QUANT4_NO_CACHE: "1", QUANT4_CACHE_DIR: off } });
    expect(JSON.parse(r3.stdout).ppl).toBe(j1.ppl);
    expect(entries(off)).toEqual([]);
  }, 120_000);
});
