// Text arguments (`eval-ppl --text`, `quantize --calib`) are decoded strictly (issue 10 item 8):
// bytes that are not valid UTF-8 are an error naming the file and the byte offset of the first invalid
// sequence (never U+FFFD replacements that turned /dev/urandom into "perplexity 5e9, exit 0"), a NUL
// byte means a binary file, and --text-encoding latin1|utf16le opts in to another encoding.
//
// Cost: eval-ppl on the vendored stories260K with 2 windows of 64 tokens; quantize only --dry-run
// (which resolves and tokenizes the calibration text, then stops).

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { decodeText, firstInvalidUtf8, resolveText } from "../src/calibration/texts.js";
import { FileFormatError } from "../src/util/errors.js";
import { makeTmpDir, removeTmpDirs, rng, runCli, STORIES_VENDORED, stderrLines, type CliResult } from "./helpers.js";

afterAll(removeTmpDirs);

const MODEL = STORIES_VENDORED;
const dir = makeTmpDir("quant4-text-");

function write(name: string, bytes: Uint8Array | string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, bytes);
  return f;
}

/** Exit 2 with one stderr line "quant4: error: <file>: ..." and no stack; returns the line. */
function expectFileError(r: CliResult, file: string): string {
  expect(r.code, r.stderr).toBe(2);
  const lines = stderrLines(r);
  expect(lines, r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at |internal error/);
  expect(lines[0]!.startsWith(`quant4: error: ${file}: `), lines[0]).toBe(true);
  return lines[0]!;
}

const fatal = new TextDecoder("utf-8", { fatal: true });
const decodes = (b: Uint8Array): boolean => {
  try {
    fatal.decode(b);
    return true;
  } catch {
    return false;
  }
};

/** The offset in "... at byte offset N ..." of a reported error. */
function reportedOffset(line: string): number {
  const m = /at byte offset (\d+)/.exec(line);
  expect(m, line).not.toBeNull();
  return Number(m![1]);
}

/**
 * Check a reported offset against the bytes with the platform's strict decoder (independently of
 * firstInvalidUtf8): everything before it is valid UTF-8 without NUL, and the bytes from it are
 * either a NUL (binary) or a sequence no valid continuation can fix (the 4 bytes from it do not decode).
 */
function expectFirstProblemAt(bytes: Uint8Array, line: string): number {
  const k = reportedOffset(line);
  expect(decodes(bytes.subarray(0, k)), `bytes before ${k} are valid UTF-8`).toBe(true);
  expect(bytes.subarray(0, k).includes(0), "no NUL before the offset").toBe(false);
  if (/NUL byte/.test(line)) expect(bytes[k]).toBe(0);
  else {
    expect(line).toMatch(/not valid UTF-8: invalid byte 0x[0-9a-f]{2} at byte offset/);
    expect(line).toContain(`0x${bytes[k]!.toString(16).padStart(2, "0")}`);
    expect(decodes(bytes.subarray(0, Math.min(bytes.length, k + 4)))).toBe(false);
  }
  return k;
}

/** Deterministic "random" bytes (seeded), optionally without zeros. */
function randomBytes(n: number, seed: number, noZero = false): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => (noZero ? 1 + Math.floor(r() * 255) : Math.floor(r() * 256)));
}

// A few hundred tokens of story with non-ASCII Latin-1 characters (2 bytes each in UTF-8, 1 in latin1).
const STORY = Array.from({ length: 12 }, (_, i) =>
  `Once upon a time, in a little café, Zoë and her friend René ate crème brûlée number ${i}. ` +
  `They were très happy and said "¡olé!" to the garçon, who smiled at the naïve señor.`,
).join("\n");

async function evalPpl(file: string, extra: string[] = []): Promise<CliResult> {
  return runCli(["eval-ppl", MODEL, "--text", file, "--seqlen", "64", "--max-windows", "2", "--threads", "1", "--json", ...extra]);
}

function calibDryRun(file: string, extra: string[] = []): Promise<CliResult> {
  const out = path.join(makeTmpDir("quant4-text-out-"), "out");
  return runCli([
    "quantize", MODEL, out, "--method", "gptq", "--group-size", "-1", "--format", "compressed-tensors",
    "--calib", file, "--nsamples", "4", "--seqlen", "64", "--threads", "1", "--dry-run", "--json", ...extra,
  ]);
}

describe("firstInvalidUtf8 / decodeText (unit)", () => {
  it("agrees with the platform's strict decoder on edge cases and random buffers", () => {
    const cases: [number[], number][] = [
      [[0x41, 0x42], -1],
      [[0xc3, 0xa9], -1], // é
      [[0xf0, 0x9f, 0x98, 0x80], -1], // 😀
      [[0x41, 0xc0, 0x80], 1], // overlong NUL
      [[0xe0, 0x80, 0x80], 0], // overlong
      [[0xed, 0xa0, 0x80], 0], // surrogate D800
      [[0xf4, 0x90, 0x80, 0x80], 0], // above U+10FFFF
      [[0x41, 0xe2, 0x82], 1], // truncated at the end
      [[0x41, 0xe2, 0x82, 0x41], 1], // truncated before ASCII
      [[0x41, 0x80], 1], // stray continuation
      [[0xff], 0],
    ];
    for (const [bytes, want] of cases) {
      const b = Uint8Array.from(bytes);
      expect(firstInvalidUtf8(b), bytes.map((x) => x.toString(16)).join(" ")).toBe(want);
      expect(decodes(b)).toBe(want === -1);
    }
    // Random buffers biased towards multi-byte sequences: valid exactly when the strict decoder accepts.
    const r = rng(7);
    const pool = [0x41, 0x7f, 0x80, 0xbf, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xa0, 0x9f, 0x90, 0x8f];
    for (let t = 0; t < 3000; t++) {
      const b = Uint8Array.from({ length: 1 + Math.floor(r() * 6) }, () => pool[Math.floor(r() * pool.length)]!);
      const k = firstInvalidUtf8(b);
      expect(k === -1, Array.from(b).join(",")).toBe(decodes(b));
      if (k >= 0) expect(decodes(b.subarray(0, k)), Array.from(b).join(",")).toBe(true);
    }
  });

  it("decodeText: NUL is binary in every encoding; utf16le checks length and surrogates; a BOM is dropped", () => {
    const err = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(FileFormatError);
        return (e as Error).message;
      }
      throw new Error("did not throw");
    };
    expect(err(() => decodeText("f.txt", Buffer.from("ab\0c"), "utf8"))).toBe("f.txt: NUL byte at byte offset 2: a binary file, not text");
    expect(err(() => decodeText("f.txt", Buffer.from("ab\0c", "latin1"), "latin1"))).toMatch(/NUL byte at byte offset 2/);
    expect(err(() => decodeText("f.txt", Buffer.from("ab\0c", "utf16le"), "utf16le"))).toMatch(/NUL character at byte offset 4/);
    expect(err(() => decodeText("f.txt", Buffer.from([0x41, 0, 0x42]), "utf16le"))).toMatch(/odd length/);
    expect(err(() => decodeText("f.txt", Buffer.from([0x41, 0, 0x00, 0xd8, 0x41, 0]), "utf16le"))).toMatch(/unpaired surrogate at byte offset 2/);
    expect(decodeText("f.txt", Buffer.from("\ufeffhé", "utf8"))).toBe("hé");
    expect(decodeText("f.txt", Buffer.from("\ufeffhé😀", "utf16le"), "utf16le")).toBe("hé😀");
    expect(decodeText("f.txt", Buffer.from([0x68, 0xe9, 0xff]), "latin1")).toBe("hé\u00ff");
  });

  it("resolveText: bundled sets stay UTF-8 whatever --text-encoding says", () => {
    expect(resolveText("tinystories", "latin1").text).toBe(resolveText("tinystories").text);
  });
});

describe("binary and non-UTF-8 files are refused with the file and byte offset", () => {
  const prefix = Buffer.from("once upon a time there was a file ");
  const noNul = Buffer.concat([prefix, randomBytes(4096, 11, true)]);
  const urandom = randomBytes(4096, 12); // zeros included, like head -c 4096 /dev/urandom
  const noNulFile = write("random-no-nul.txt", noNul);
  const urandomFile = write("urandom.bin", urandom);

  it("eval-ppl --text: random bytes without NUL → the first invalid UTF-8 sequence", async () => {
    const line = expectFileError(await evalPpl(noNulFile), noNulFile);
    const k = expectFirstProblemAt(noNul, line);
    expect(k).toBeGreaterThanOrEqual(prefix.length);
    expect(line).toMatch(/--text-encoding latin1/);
  });

  it("eval-ppl --text and quantize --calib: urandom bytes → refused (invalid UTF-8 or NUL, whichever comes first)", async () => {
    const [a, b] = await Promise.all([evalPpl(urandomFile), calibDryRun(urandomFile)]);
    const la = expectFileError(a, urandomFile);
    const lb = expectFileError(b, urandomFile);
    expect(la).toBe(lb);
    expectFirstProblemAt(urandom, la);
  });

  it("quantize --calib: random bytes without NUL → the same offset as eval-ppl reports", async () => {
    const line = expectFileError(await calibDryRun(noNulFile), noNulFile);
    expectFirstProblemAt(noNul, line);
  });

  it("a NUL byte in otherwise valid UTF-8 text is refused as binary, at its offset", async () => {
    const bytes = Buffer.concat([Buffer.from(STORY.slice(0, 300), "utf8"), Buffer.from([0]), Buffer.from(STORY, "utf8")]);
    const nulAt = Buffer.byteLength(STORY.slice(0, 300), "utf8");
    const f = write("nul.txt", bytes);
    const [a, b] = await Promise.all([evalPpl(f), calibDryRun(f)]);
    for (const r of [a, b]) expect(expectFileError(r, f)).toBe(`quant4: error: ${f}: NUL byte at byte offset ${nulAt}: a binary file, not text`);
  });

  it("a .jsonl file with an invalid byte inside a document reports the offset in the file", async () => {
    const head = Buffer.from('{"text": "a fine first document"}\n{"text": "caf', "utf8");
    const bytes = Buffer.concat([head, Buffer.from([0xe9]), Buffer.from(' au lait"}\n', "utf8")]);
    const f = write("latin1-inside.jsonl", bytes);
    const line = expectFileError(await evalPpl(f), f);
    expect(line).toContain(`invalid byte 0xe9 at byte offset ${head.length}`);
  });
});

describe("--text-encoding opts in to other encodings; valid UTF-8 with multibyte characters still works", () => {
  const utf8File = write("story-utf8.txt", Buffer.from(STORY, "utf8"));
  const latin1File = write("story-latin1.txt", Buffer.from(STORY, "latin1"));
  const utf16File = write("story-utf16.txt", Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(STORY, "utf16le")]));

  it("eval-ppl: the same story in UTF-8, latin1 (--text-encoding latin1) and UTF-16LE gives the same perplexity", async () => {
    const [u8, l1default, l1, u16] = await Promise.all([
      evalPpl(utf8File),
      evalPpl(latin1File),
      evalPpl(latin1File, ["--text-encoding", "latin1"]),
      evalPpl(utf16File, ["--text-encoding", "utf16le"]),
    ]);
    expect(u8.code, u8.stderr).toBe(0);
    const ref = JSON.parse(u8.stdout);
    expect(Number.isFinite(ref.ppl) && ref.ppl > 1 && ref.ppl < 1000).toBe(true);
    // Without the option the latin1 file is refused at its first non-ASCII byte (the é of café).
    const line = expectFileError(l1default, latin1File);
    expect(line).toContain(`invalid byte 0xe9 at byte offset ${STORY.indexOf("é")}`);
    for (const r of [l1, u16]) {
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).ppl).toBe(ref.ppl);
    }
  });

  it("quantize --calib: latin1 with --text-encoding latin1 tokenizes to the same calibration as UTF-8; a bad value is refused", async () => {
    const [u8, l1, bad] = await Promise.all([
      calibDryRun(utf8File),
      calibDryRun(latin1File, ["--text-encoding", "latin1"]),
      calibDryRun(utf8File, ["--text-encoding", "ebcdic"]),
    ]);
    expect(u8.code, u8.stderr).toBe(0);
    expect(l1.code, l1.stderr).toBe(0);
    const a = JSON.parse(u8.stdout).calibration;
    const b = JSON.parse(l1.stdout).calibration;
    expect(a.tokens).toBeGreaterThan(200);
    expect(b.tokens).toBe(a.tokens);
    expect(bad.code).toBe(2);
    expect(stderrLines(bad)).toHaveLength(1);
    expect(bad.stderr).toMatch(/^quant4: error: --text-encoding/);
  });

  it("UTF-8 with 3- and 4-byte characters (CJK, emoji) is accepted", async () => {
    const f = write("emoji.txt", Buffer.from(STORY.replace(/café/g, "café ☕ 日本 😀"), "utf8"));
    const r = await evalPpl(f);
    expect(r.code, r.stderr).toBe(0);
    expect(Number.isFinite(JSON.parse(r.stdout).ppl)).toBe(true);
  });

  it("--help of both commands mentions --text-encoding", async () => {
    const [e, q] = await Promise.all([runCli(["eval-ppl", "--help"]), runCli(["quantize", "--help"])]);
    expect(e.stdout).toMatch(/--text-encoding <utf8\|latin1\|utf16le>/);
    expect(q.stdout).toMatch(/--text-encoding <utf8\|latin1\|utf16le>/);
  });
});
