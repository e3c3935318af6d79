// Seeded fuzzing of the safetensors reader (issue 10: a damaged checkpoint is an error, never a number
// that passes a gate). A small file with tensors of several dtypes, zero-size tensors, awkward names and
// metadata is written with our own writer, then mutated thousands of ways: byte flips, insertions and
// deletions in the header, header length changes, truncation, trailing garbage, and edits of the JSON
// itself (offsets shifted, swapped, overlapped; dtypes and shapes changed; entries duplicated or removed;
// no-op reformatting).
//
// The property, for every case: SafetensorsFile.open either throws a Quant4Error whose message is one
// line naming the file, or what it serves is
//   - identical: the same tensor names, dtypes, shapes and bytes as the original, or
//   - relabelled: the data region is cut into exactly the original's byte ranges, each tensor's bytes
//     are the original bytes of that range, and only labels differ (a flipped letter in a name, F32 ↔
//     I32, shape [3, 4] → [4, 3], a zero-size tensor dropped). Such files are valid safetensors that say
//     something else; no reader can tell without a checksum, so they are counted, not failed.
// Anything else (a TypeError, a RangeError, a tensor read from bytes shifted off the original ranges)
// fails the test.

import { afterAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as path from "node:path";
import { DTYPES, DTYPE_SIZE, type DType, type TensorToWrite } from "../src/io/types.js";
import { MAX_HEADER_BYTES, SafetensorsFile } from "../src/io/safetensors.js";
import { writeSafetensors } from "../src/io/writer.js";
import { Quant4Error } from "../src/util/errors.js";
import { makeTmpDir, removeTmpDirs, rng } from "./helpers.js";

const CASES = 3000;
const SEED = 20240610;

afterAll(removeTmpDirs);

interface Orig {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
  bytes: Uint8Array;
}

/** The base file: varied dtypes, zero-size tensors first/middle/last, names with JSON-significant characters. */
function baseTensors(rand: () => number): TensorToWrite[] {
  const bytesOf = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
  const specs: [string, DType, number[]][] = [
    ["empty.first", "F32", [0]],
    ["model.embed_tokens.weight", "F32", [6, 4]],
    ["model.norm.weight", "F16", [8]],
    ["ids", "I32", [2, 3]],
    ["model.empty", "F32", [0, 3]],
    ["rope.bf16", "BF16", [3]],
    ['odd "name": {x}, [y]\\', "U8", [5]],
    ["ünïcødé.weight", "I64", [2]],
    ["scalar", "F32", []],
    ["tail.empty", "I8", [0]],
  ];
  return specs.map(([name, dtype, shape]) => ({
    name, dtype, shape, data: bytesOf(shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype]),
  }));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

type Outcome = "error" | "identical" | "relabelled";

describe("safetensors header fuzzing", () => {
  it(`${CASES} seeded mutations: a clean Quant4Error or the original tensors, never shifted bytes`, () => {
    const t0 = performance.now();
    const dir = makeTmpDir("quant4-fuzz-");
    const rand = rng(SEED);
    const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;

    const basePath = path.join(dir, "base.safetensors");
    writeSafetensors(basePath, baseTensors(rand), { format: "pt", note: 'a:b {"c": [1, 2]}' });
    const orig = fs.readFileSync(basePath);
    const n = Number(orig.readBigUInt64LE(0));
    const header = orig.subarray(8, 8 + n);
    const data = orig.subarray(8 + n);
    const headerObj = JSON.parse(header.toString("utf8")) as Record<string, Record<string, unknown>>;
    const names = Object.keys(headerObj).filter((k) => k !== "__metadata__");
    const originals: Orig[] = [];
    {
      const f = SafetensorsFile.open(basePath);
      for (const t of f.tensors.values()) {
        originals.push({ name: t.name, dtype: t.dtype, shape: t.shape, begin: t.begin - f.dataStart, end: t.end - f.dataStart, bytes: f.readRaw(t.name) });
      }
      f.close();
    }
    expect(originals.length).toBe(10);
    const nonEmpty = new Map(originals.filter((o) => o.end > o.begin).map((o) => [`${o.begin}:${o.end}`, o]));

    // ---- building blocks -------------------------------------------------------------------
    const u64 = (v: bigint): Buffer => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(v);
      return b;
    };
    const assemble = (h: Buffer, len: bigint = BigInt(h.length), d: Buffer = data): Buffer => Buffer.concat([u64(len), h, d]);
    /** Header JSON text, optionally space-padded to a multiple of 8 as our writer does. */
    const encode = (text: string): Buffer => {
      const b = Buffer.from(text);
      return rand() < 0.5 ? b : Buffer.concat([b, Buffer.alloc((8 - (b.length % 8)) % 8, 0x20)]);
    };
    const clone = (): Record<string, Record<string, unknown>> => structuredClone(headerObj);
    const withObj = (o: unknown): Buffer => assemble(encode(JSON.stringify(o)));
    const offsetsOf = (o: Record<string, Record<string, unknown>>, k: string): number[] => o[k]!.data_offsets as number[];
    /** Entries as JSON text pairs, for edits JSON.stringify cannot express (duplicate keys). */
    const pairs = (o: Record<string, unknown>): string[] => Object.entries(o).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    const JSON_BYTES = Buffer.from(' \n\t\r"\\,:{}[]0123456789-.eE');

    const mutations: [string, () => Buffer][] = [
      ["header byte set", () => {
        const h = Buffer.from(header);
        const p = int(0, n - 1);
        h[p] = rand() < 0.5 ? int(0, 255) : pick([...JSON_BYTES]);
        return assemble(h, BigInt(n));
      }],
      ["bit flip (length or header)", () => {
        const b = Buffer.from(orig);
        const p = int(0, 8 + n - 1);
        b[p]! ^= 1 << int(0, 7);
        return b;
      }],
      ["header byte inserted", () => {
        const p = int(0, n);
        const byte = rand() < 0.5 ? int(0, 255) : pick([...JSON_BYTES]);
        const h = Buffer.concat([header.subarray(0, p), Buffer.of(byte), header.subarray(p)]);
        return assemble(h, BigInt(rand() < 0.5 ? n + 1 : n));
      }],
      ["header byte deleted", () => {
        const p = int(0, n - 1);
        const h = Buffer.concat([header.subarray(0, p), header.subarray(p + 1)]);
        return assemble(h, BigInt(rand() < 0.5 ? n - 1 : n));
      }],
      ["header bytes overwritten", () => {
        const h = Buffer.from(header);
        const len = int(2, 16);
        const p = int(0, n - len);
        for (let i = 0; i < len; i++) h[p + i] = int(0, 255);
        return assemble(h, BigInt(n));
      }],
      ["header length ±1..8", () => {
        const d = int(1, 8) * (rand() < 0.5 ? -1 : 1);
        return assemble(header, BigInt(n + d));
      }],
      ["header length huge", () => {
        const v = pick([2n ** 32n, 2n ** 40n + BigInt(int(0, 1000)), 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n,
          BigInt(MAX_HEADER_BYTES + 1), BigInt(orig.length - 8 + 1), BigInt(orig.length - 8), 0n]);
        return assemble(header, v);
      }],
      ["truncated", () => orig.subarray(0, int(0, orig.length - 1))],
      ["trailing garbage", () => Buffer.concat([orig, Buffer.from(Array.from({ length: int(1, 32) }, () => int(0, 255)))])],
      ["offsets of one tensor shifted", () => {
        const o = clone();
        const off = offsetsOf(o, pick(names));
        const d = int(1, 8) * (rand() < 0.5 ? -1 : 1);
        const which = int(0, 2); // both, begin only, end only
        if (which !== 2) off[0]! += d;
        if (which !== 1) off[1]! += d;
        return withObj(o);
      }],
      ["all offsets shifted", () => {
        const o = clone();
        const d = int(1, 16);
        for (const k of names) offsetsOf(o, k).forEach((_, i, a) => (a[i]! += d));
        return withObj(o);
      }],
      ["offsets swapped", () => {
        const o = clone();
        const [a, b] = [pick(names), pick(names)];
        const t = o[a]!.data_offsets;
        o[a]!.data_offsets = o[b]!.data_offsets;
        o[b]!.data_offsets = t;
        return withObj(o);
      }],
      ["offsets overlapped", () => {
        const o = clone();
        const [a, b] = [pick(names), pick(names)];
        o[a]!.data_offsets = [...offsetsOf(o, b)];
        if (rand() < 0.5) {
          o[a]!.shape = [...(o[b]!.shape as number[])];
          o[a]!.dtype = o[b]!.dtype;
        }
        return withObj(o);
      }],
      ["dtype changed", () => {
        const o = clone();
        const a = pick(names);
        if (rand() < 0.5) {
          const b = pick(names);
          [o[a]!.dtype, o[b]!.dtype] = [o[b]!.dtype, o[a]!.dtype];
        } else o[a]!.dtype = rand() < 0.9 ? pick(DTYPES) : pick(["F8_E4M3", "f32", "", 32, null]);
        return withObj(o);
      }],
      ["shape changed", () => {
        const o = clone();
        const a = pick(names);
        const s = [...(o[a]!.shape as number[])];
        switch (int(0, 6)) {
          case 0: if (s.length) s[int(0, s.length - 1)]! += rand() < 0.5 ? 1 : -1; break;
          case 1: s.push(1); break;
          case 2: s.push(int(0, 3)); break;
          case 3: s.pop(); break;
          case 4: s.reverse(); break;
          case 5: s.splice(int(0, s.length), 0, 0); break;
          case 6: o[a]!.shape = pick([[-1], [1.5], ["2"], null, 3, [2 ** 60, 2 ** 60]]); return withObj(o);
        }
        o[a]!.shape = s;
        return withObj(o);
      }],
      ["entry duplicated", () => {
        const ps = pairs(clone());
        const i = int(0, ps.length - 1);
        let copy = ps[i]!;
        if (rand() < 0.5) copy = copy.replace(/"data_offsets":\[(\d+),(\d+)\]/, (_m, b, e) => `"data_offsets":[${Number(b) + 4},${Number(e) + 4}]`);
        ps.splice(rand() < 0.5 ? i : int(0, ps.length), 0, copy);
        return assemble(encode(`{${ps.join(",")}}`));
      }],
      ["key duplicated inside an entry", () => {
        const o = clone();
        const a = pick(names);
        const e = o[a]!;
        const key = pick(["dtype", "shape", "data_offsets"]);
        const inner = `{${pairs(e).join(",")},${JSON.stringify(key)}:${JSON.stringify(e[key])}}`;
        const ps = Object.entries(o).map(([k, v]) => `${JSON.stringify(k)}:${k === a ? inner : JSON.stringify(v)}`);
        return assemble(encode(`{${ps.join(",")}}`));
      }],
      ["entry removed", () => {
        const o = clone();
        delete o[pick([...names, "__metadata__"])];
        return withObj(o);
      }],
      ["field removed or retyped", () => {
        const o = clone();
        const a = pick(names);
        const key = pick(["dtype", "shape", "data_offsets"]);
        if (rand() < 0.5) delete o[a]![key];
        else o[a]![key] = pick([null, "x", 7, {}, [], [0], [0, 1, 2], [-4, 0], [0, 1.5], [0, 2 ** 60]]);
        if (rand() < 0.2) (o as Record<string, unknown>)[a] = pick([null, 1, "s", [], [1, 2]]);
        return withObj(o);
      }],
      ["extra tensor", () => {
        const o = clone();
        const end = data.length;
        const k = int(0, 8);
        o[pick(["extra", names[0]!.toUpperCase()])] = { dtype: "U8", shape: [k], data_offsets: rand() < 0.5 ? [end, end + k] : [int(0, end), int(0, end) + k] };
        return withObj(o);
      }],
      ["metadata changed", () => {
        const o = clone() as Record<string, unknown>;
        o.__metadata__ = pick([null, "pt", [], { format: 1 }, { format: "pt", x: { y: "z" } }, {}, { a: "b" }]);
        return withObj(o);
      }],
      ["no-op reformat", () => {
        const o = clone() as Record<string, unknown>;
        let text: string;
        switch (int(0, 4)) {
          case 0: text = JSON.stringify(o, null, pick([1, 2, "\t"])); break;
          case 1: text = JSON.stringify(Object.fromEntries(Object.entries(o).reverse())); break;
          case 2: text = JSON.stringify(o).replace(/"data_offsets":\[(\d+),(\d+)\]/g, (_m, b, e) => `"data_offsets":[${b}.0,${Number(e) / 10}e1]`); break;
          case 3: {
            for (const k of names) (o[k] as Record<string, unknown>).extra_field = { any: ["thing", 1] };
            text = JSON.stringify(o);
            break;
          }
          default: {
            // Whitespace between tokens (never inside strings, never before the opening brace).
            const ws = (): string => (rand() < 0.3 ? pick([" ", "\n", "\t", "\r\n", "  "]) : "");
            const spaced = (v: unknown): string => {
              if (Array.isArray(v)) return `[${ws()}${v.map(spaced).join(`${ws()},${ws()}`)}${ws()}]`;
              if (v !== null && typeof v === "object") {
                return `{${ws()}${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}${ws()}:${ws()}${spaced(x)}`).join(`${ws()},${ws()}`)}${ws()}}`;
              }
              return JSON.stringify(v);
            };
            text = spaced(o) + ws();
          }
        }
        return assemble(encode(text));
      }],
    ];

    // ---- the property ----------------------------------------------------------------------
    const file = path.join(dir, "case.safetensors");
    const counts: Record<Outcome, number> = { error: 0, identical: 0, relabelled: 0 };
    const byKind = new Map<string, Record<Outcome, number>>();

    function check(bytes: Buffer, kind: string, i: number): Outcome {
      fs.writeFileSync(file, bytes);
      const where = `case ${i} (${kind}), seed ${SEED}`;
      let f: SafetensorsFile;
      try {
        f = SafetensorsFile.open(file);
      } catch (e) {
        if (!(e instanceof Quant4Error)) throw new Error(`${where}: threw ${(e as Error)?.name}: ${(e as Error)?.message}`);
        if (!e.message.startsWith(`${file}: `) || /[\n\r\u2028\u2029]/.test(e.message)) {
          throw new Error(`${where}: error is not one line naming the file: ${JSON.stringify(e.message)}`);
        }
        return "error";
      }
      try {
        expect(f.size, where).toBe(bytes.length);
        const got = [...f.tensors.values()].map((t) => ({
          name: t.name, dtype: t.dtype, shape: t.shape, begin: t.begin - f.dataStart, end: t.end - f.dataStart, bytes: f.readRaw(t.name),
        }));
        const same = got.length === originals.length && originals.every((o) => {
          const g = got.find((x) => x.name === o.name);
          return g !== undefined && g.dtype === o.dtype && g.shape.join() === o.shape.join() && equalBytes(g.bytes, o.bytes);
        });
        if (same) return "identical";
        // Valid but different: only the labels may differ, never where the bytes come from.
        const gotNonEmpty = got.filter((g) => g.end > g.begin);
        const bad = gotNonEmpty.find((g) => {
          const o = nonEmpty.get(`${g.begin}:${g.end}`);
          return o === undefined || !equalBytes(g.bytes, o.bytes);
        });
        if (bad || gotNonEmpty.length !== nonEmpty.size) {
          const why = !bad
            ? `${gotNonEmpty.length} non-empty tensors where the original has ${nonEmpty.size}`
            : nonEmpty.has(`${bad.begin}:${bad.end}`)
              ? `tensor ${JSON.stringify(bad.name)} reads data [${bad.begin}, ${bad.end}) but its bytes are not the original bytes there (shifted data region)`
              : `tensor ${JSON.stringify(bad.name)} reads data [${bad.begin}, ${bad.end}), not one of the original byte ranges`;
          throw new Error(
            `${where}: accepted a damaged file: ${why}; tensors ` +
              JSON.stringify(got.map((g) => [g.name, g.dtype, g.shape, g.begin, g.end])),
          );
        }
        return "relabelled";
      } finally {
        f.close();
      }
    }

    expect(check(orig, "unmodified", -1)).toBe("identical");
    for (let i = 0; i < CASES; i++) {
      const [kind, make] = mutations[i % mutations.length]!;
      const outcome = check(make(), kind, i);
      counts[outcome]++;
      const k = byKind.get(kind) ?? { error: 0, identical: 0, relabelled: 0 };
      k[outcome]++;
      byKind.set(kind, k);
    }
    const ms = performance.now() - t0;
    console.log(
      `fuzz-headers: ${CASES} cases (seed ${SEED}) in ${ms.toFixed(0)} ms: ${counts.error} clean errors, ` +
        `${counts.identical} identical reads, ${counts.relabelled} relabelled (valid, same byte ranges)\n` +
        [...byKind].map(([k, c]) => `  ${k.padEnd(32)} errors ${c.error}, identical ${c.identical}, relabelled ${c.relabelled}`).join("\n"),
    );
    expect(counts.error + counts.identical + counts.relabelled).toBe(CASES);
    // Every family of mutations that can only damage the file must have produced errors...
    for (const kind of ["header length ±1..8", "header length huge", "truncated", "trailing garbage", "all offsets shifted", "entry duplicated", "key duplicated inside an entry"]) {
      const c = byKind.get(kind)!;
      expect(c.identical + c.relabelled, kind).toBe(0);
      expect(c.error, kind).toBeGreaterThan(0);
    }
    // ...and the no-op rewrites must all read back identically.
    const noop = byKind.get("no-op reformat")!;
    expect(noop.identical, "no-op reformat").toBe(noop.error + noop.identical + noop.relabelled);
    expect(counts.identical).toBeGreaterThan(CASES / 50);
  }, 120_000);
});
