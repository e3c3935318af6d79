import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DTYPES, DTYPE_SIZE, type DType, type TensorToWrite } from "../src/io/types.js";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, toFloat32, typedView } from "../src/io/dtype.js";
import { MAX_TENSORS, SafetensorsFile, assertFinite } from "../src/io/safetensors.js";
import { Checkpoint } from "../src/io/checkpoint.js";
import { ShardedWriter, atomicWriteFile, writeSafetensors } from "../src/io/writer.js";
import { FileFormatError, ModelError, OutputError } from "../src/util/errors.js";
import { mulberry32 } from "../src/calibration/sampler.js";
import { BROWN, STORIES_SHARED, STORIES_VENDORED, hasShared, runCli, stderrLines, withShared } from "./helpers.js";

const SINGLE = "model.safetensors";

let root: string;
let counter = 0;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-st-"));
});
afterAll(() => {
  fs.rmSync(root, { recursive: true, force: true });
});
function freshDir(): string {
  const d = path.join(root, `case-${counter++}`);
  fs.mkdirSync(d);
  return d;
}


function randomTensor(name: string, dtype: DType, shape: number[], rnd: () => number): TensorToWrite {
  const n = shape.reduce((a, b) => a * b, 1);
  const gauss = (): number => (rnd() + rnd() + rnd() - 1.5) * 4;
  let data: ArrayBufferView;
  switch (dtype) {
    case "F64": data = Float64Array.from({ length: n }, gauss); break;
    case "F32": data = Float32Array.from({ length: n }, gauss); break;
    case "F16": data = f32ToF16(Float32Array.from({ length: n }, gauss)); break;
    case "BF16": data = f32ToBf16(Float32Array.from({ length: n }, gauss)); break;
    case "I64": data = BigInt64Array.from({ length: n }, () => BigInt(Math.floor((rnd() - 0.5) * 2 ** 40))); break;
    case "I32": data = Int32Array.from({ length: n }, () => Math.floor((rnd() - 0.5) * 2 ** 31)); break;
    case "I16": data = Int16Array.from({ length: n }, () => Math.floor((rnd() - 0.5) * 2 ** 16)); break;
    case "I8": data = Int8Array.from({ length: n }, () => Math.floor((rnd() - 0.5) * 256)); break;
    case "U8": data = Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256)); break;
    case "BOOL": data = Uint8Array.from({ length: n }, () => (rnd() < 0.5 ? 1 : 0)); break;
  }
  return { name, dtype, shape, data };
}

const bytes = (v: ArrayBufferView): Uint8Array => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

/** Write a hand-made safetensors file: header JSON (object or raw string) + `dataLen` zero bytes. */
function craft(file: string, header: unknown, dataLen: number, headerLenOverride?: number): string {
  const json = Buffer.from(typeof header === "string" ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerLenOverride ?? json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(dataLen)]));
  return file;
}

function expectFormatError(fn: () => unknown, file: string, ...parts: (string | RegExp)[]): FileFormatError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(FileFormatError);
  const err = caught as FileFormatError;
  expect(err.file).toBe(file);
  expect(err.message.startsWith(`${file}: `)).toBe(true);
  for (const p of parts) expect(err.message).toMatch(p);
  return err;
}

function tempLeftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.includes(".tmp-"));
}

// ---------------------------------------------------------------------------------------------

describe("dtype conversion", () => {
  const h2f = (h: number): number => f16ToF32(Uint16Array.of(h))[0]!;
  const f2h = (f: number): number => f32ToF16(Float32Array.of(f))[0]!;
  const bitsToF32 = (u: number): number => new Float32Array(Uint32Array.of(u).buffer)[0]!;

  it("decodes and encodes known f16 bit patterns", () => {
    expect(h2f(0x3c00)).toBe(1);
    expect(h2f(0xbc00)).toBe(-1);
    expect(h2f(0x7bff)).toBe(65504);
    expect(h2f(0x0001)).toBe(2 ** -24);
    expect(h2f(0x0400)).toBe(2 ** -14);
    expect(h2f(0x03ff)).toBe(1023 * 2 ** -24);
    expect(h2f(0x7c00)).toBe(Infinity);
    expect(h2f(0xfc00)).toBe(-Infinity);
    expect(h2f(0x7e00)).toBeNaN();
    expect(Object.is(h2f(0x8000), -0)).toBe(true);

    expect(f2h(1)).toBe(0x3c00);
    expect(f2h(-2)).toBe(0xc000);
    expect(f2h(65504)).toBe(0x7bff);
    expect(f2h(2 ** -24)).toBe(0x0001);
    expect(f2h(2 ** -14)).toBe(0x0400);
    expect(f2h(-0)).toBe(0x8000);
    expect(f2h(1e6)).toBe(0x7c00);
    expect(f2h(-1e6)).toBe(0xfc00);
    expect(f2h(Infinity)).toBe(0x7c00);
    expect(f2h(-Infinity)).toBe(0xfc00);
    const nan = f2h(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
    expect(f2h(1e-10)).toBe(0);
  });

  it("rounds f32 → f16 to nearest, ties to even", () => {
    expect(f2h(1 + 2 ** -11)).toBe(0x3c00); // tie, 0x3c00 is even
    expect(f2h(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, rounds up to even
    expect(f2h(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // just above the tie
    expect(f2h(65519)).toBe(0x7bff);
    expect(f2h(65520)).toBe(0x7c00); // tie at the top rounds to inf
    expect(f2h(2 ** -25)).toBe(0x0000); // subnormal tie to even (0)
    expect(f2h(3 * 2 ** -25)).toBe(0x0002); // subnormal tie to even (2)
    expect(f2h(1.5 * 2 ** -25)).toBe(0x0001);
    expect(f2h(2 ** -14 - 2 ** -25)).toBe(0x0400); // rounds up from subnormal into the smallest normal
  });

  it("f16 round-trips every bit pattern and matches a nearest-value reference", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f = f16ToF32(all);
    const back = f32ToF16(f);
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNaN) {
        if ((back[h]! & 0x7c00) !== 0x7c00 || (back[h]! & 0x3ff) === 0) expect.fail(`NaN 0x${h.toString(16)} lost`);
      } else if (back[h] !== h) expect.fail(`bit pattern 0x${h.toString(16)} round-tripped to 0x${back[h]!.toString(16)}`);
    }
    // Reference: for random finite f32 in half range, result must be a nearest half value.
    const positives = Array.from({ length: 0x7c00 }, (_, h) => f[h]!); // sorted ascending
    const rnd = mulberry32(7);
    for (let k = 0; k < 20000; k++) {
      const x = Math.fround(2 ** (rnd() * 40 - 26) * (1 + rnd()));
      if (x >= 65520) continue;
      const h = f2h(x);
      const y = h2f(h);
      let lo = 0;
      let hi = positives.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (positives[mid]! <= x) lo = mid;
        else hi = mid;
      }
      const best = Math.min(Math.abs(positives[lo]! - x), Math.abs(positives[hi]! - x));
      if (Math.abs(y - x) !== best) expect.fail(`f32ToF16(${x}) = ${y}, not nearest`);
    }
  });

  it("f16ToF32 fills a supplied destination", () => {
    const dst = new Float32Array(3);
    const out = f16ToF32(Uint16Array.of(0x3c00, 0x4000, 0xc200), dst);
    expect(out).toBe(dst);
    expect([...dst]).toEqual([1, 2, -3]);
  });

  it("converts bf16 with round-to-nearest-even", () => {
    const fromBits = (u: number): number => f32ToBf16(Float32Array.of(bitsToF32(u)))[0]!;
    expect(f32ToBf16(Float32Array.of(1))[0]).toBe(0x3f80);
    expect(fromBits(0x3f808000)).toBe(0x3f80); // tie → even
    expect(fromBits(0x3f818000)).toBe(0x3f82); // tie → even (up)
    expect(fromBits(0x3f808001)).toBe(0x3f81); // above tie
    expect(fromBits(0x3f807fff)).toBe(0x3f80); // below tie
    expect(fromBits(0x7f7fffff)).toBe(0x7f80); // max float rounds to inf
    expect(f32ToBf16(Float32Array.of(Infinity))[0]).toBe(0x7f80);
    expect(f32ToBf16(Float32Array.of(-Infinity))[0]).toBe(0xff80);
    const nan = f32ToBf16(Float32Array.of(NaN))[0]!;
    expect((nan & 0x7f80) === 0x7f80 && (nan & 0x7f) !== 0).toBe(true);
    const dec = bf16ToF32(Uint16Array.of(0x3f80, 0xc040, 0x7f80, 0x7fc0));
    expect(dec[0]).toBe(1);
    expect(dec[1]).toBe(-3);
    expect(dec[2]).toBe(Infinity);
    expect(dec[3]).toBeNaN();
  });

  it("toFloat32 handles every numeric dtype, including unaligned input", () => {
    const cases: [DType, ArrayBufferView, number[]][] = [
      ["F64", Float64Array.of(1.5, -2), [1.5, -2]],
      ["F32", Float32Array.of(0.25, 7), [0.25, 7]],
      ["F16", Uint16Array.of(0x3c00, 0xc000), [1, -2]],
      ["BF16", Uint16Array.of(0x3f80, 0x4040), [1, 3]],
      ["I64", BigInt64Array.of(-5n, 1n << 40n), [-5, 2 ** 40]],
      ["I32", Int32Array.of(-7, 123456), [-7, 123456]],
      ["I16", Int16Array.of(-300, 300), [-300, 300]],
      ["I8", Int8Array.of(-128, 127), [-128, 127]],
      ["U8", Uint8Array.of(0, 255), [0, 255]],
      ["BOOL", Uint8Array.of(1, 0), [1, 0]],
    ];
    for (const [dtype, data, want] of cases) {
      expect([...toFloat32(dtype, bytes(data))]).toEqual(want);
      // Shift by one byte to force the unaligned path.
      const shifted = new Uint8Array(data.byteLength + 1);
      shifted.set(bytes(data), 1);
      const unaligned = shifted.subarray(1);
      expect([...toFloat32(dtype, unaligned)]).toEqual(want);
      expect(typedView(dtype, unaligned).length).toBe(want.length);
    }
    expect(typedView("F16", bytes(Uint16Array.of(1)))).toBeInstanceOf(Uint16Array);
    expect(typedView("I64", bytes(BigInt64Array.of(1n)))).toBeInstanceOf(BigInt64Array);
    expect(() => toFloat32("F32", new Uint8Array(3))).toThrow(/not a whole number/);
  });
});

// ---------------------------------------------------------------------------------------------

describe("writeSafetensors + SafetensorsFile", () => {
  it("round-trips every dtype with metadata and an 8-aligned, space-padded header", () => {
    const dir = freshDir();
    const file = path.join(dir, "all.safetensors");
    const rnd = mulberry32(42);
    const shapes: number[][] = [[3, 5], [7], [2, 3, 4], [1, 1], [13], [4, 4], [5, 3], [9], [2, 2, 2], [11]];
    const tensors = DTYPES.map((dt, i) => randomTensor(`t.${dt.toLowerCase()}`, dt, shapes[i]!, rnd));
    tensors.push({ name: "empty", dtype: "F32", shape: [0, 4], data: new Float32Array(0) });
    tensors.push({ name: "scalar", dtype: "F32", shape: [], data: Float32Array.of(3.5) });
    const meta = { format: "pt", quant4: JSON.stringify({ bits: 4, group_size: 128 }), "ünïcode": "✓" };
    writeSafetensors(file, tensors, meta);
    expect(tempLeftovers(dir)).toEqual([]);

    const raw = fs.readFileSync(file);
    const hlen = Number(raw.readBigUInt64LE(0));
    expect(hlen % 8).toBe(0);
    const headerText = raw.subarray(8, 8 + hlen).toString("utf8");
    expect(headerText.trimEnd().endsWith("}")).toBe(true);
    expect(/^ *$/.test(headerText.slice(headerText.trimEnd().length))).toBe(true);
    const total = tensors.reduce((a, t) => a + t.data.byteLength, 0);
    expect(raw.length).toBe(8 + hlen + total);

    const f = SafetensorsFile.open(file);
    try {
      expect(f.path).toBe(file);
      expect(f.metadata).toEqual(meta);
      expect([...f.tensors.keys()]).toEqual(tensors.map((t) => t.name));
      let offset = 8 + hlen;
      for (const t of tensors) {
        const info = f.tensors.get(t.name)!;
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        expect(info.file).toBe(file);
        expect(info.begin).toBe(offset); // contiguous in the given order
        expect(info.end - info.begin).toBe(t.data.byteLength);
        offset = info.end;
        expect(f.readRaw(t.name)).toEqual(bytes(t.data));
        const typed = f.readTyped(t.name);
        expect(bytes(typed)).toEqual(bytes(t.data));
        const f32 = f.readF32(t.name);
        expect(f32.length).toBe(t.data.byteLength / DTYPE_SIZE[t.dtype]);
      }
      expect(f.readTyped("t.f16")).toBeInstanceOf(Uint16Array);
      expect(f.readTyped("t.i64")).toBeInstanceOf(BigInt64Array);
      expect([...f.readF32("t.f32")]).toEqual([...(tensors[1]!.data as Float32Array)]);
      expect([...f.readF32("t.f16")]).toEqual([...f16ToF32(tensors[2]!.data as Uint16Array)]);
      expect([...f.readF32("t.bf16")]).toEqual([...bf16ToF32(tensors[3]!.data as Uint16Array)]);
      expect([...f.readF32("t.f64")]).toEqual([...(tensors[0]!.data as Float64Array)].map(Math.fround));
      expect([...f.readF32("scalar")]).toEqual([3.5]);
      expect(() => f.readRaw("nope")).toThrow(ModelError);
    } finally {
      f.close();
    }
    f.close(); // idempotent
    expect(() => f.readRaw("t.f32")).toThrow(/after close/);
  });

  it("writes a file without metadata and an empty file", () => {
    const dir = freshDir();
    const a = path.join(dir, "a.safetensors");
    writeSafetensors(a, [{ name: "x", dtype: "F32", shape: [2], data: Float32Array.of(1, 2) }]);
    const f = SafetensorsFile.open(a);
    expect(f.metadata).toEqual({});
    expect([...f.readF32("x")]).toEqual([1, 2]);
    f.close();
    const b = path.join(dir, "b.safetensors");
    writeSafetensors(b, []);
    const g = SafetensorsFile.open(b);
    expect(g.tensors.size).toBe(0);
    g.close();
  });

  it("rejects bad input to the writer without leaving files", () => {
    const dir = freshDir();
    const p = path.join(dir, "bad.safetensors");
    expect(() => writeSafetensors(p, [{ name: "x", dtype: "F32", shape: [3], data: new Float32Array(2) }])).toThrow(
      /needs 12 bytes but data has 8/,
    );
    const t = { name: "x", dtype: "F32" as const, shape: [1], data: new Float32Array(1) };
    expect(() => writeSafetensors(p, [t, t])).toThrow(/duplicate tensor name "x"/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("assertFinite names the file, tensor and index", () => {
    expect(() => assertFinite("w", Float32Array.of(1, 2, 3), "m.safetensors")).not.toThrow();
    expect(() => assertFinite("w", Float32Array.of(1, NaN), "m.safetensors")).toThrow(
      'm.safetensors: tensor "w" contains NaN/Inf at index 1',
    );
    expect(() => assertFinite("w", Float32Array.of(0, 0, -Infinity), "m.safetensors")).toThrow(ModelError);
  });
});

// ---------------------------------------------------------------------------------------------

describe("ShardedWriter + Checkpoint", () => {
  it("writes ≥3 shards with an index and reads them back identically", () => {
    const dir = freshDir();
    const rnd = mulberry32(1234);
    const tensors: TensorToWrite[] = [];
    for (let i = 0; i < 8; i++) tensors.push(randomTensor(`layer.${i}.weight`, i % 2 ? "F16" : "F32", [16, 8 + i], rnd));
    tensors.push(randomTensor("big", "F32", [40, 40], rnd)); // 6400 bytes > limit: gets its own shard
    tensors.push(randomTensor("tail.bias", "BF16", [5], rnd));
    const w = new ShardedWriter(dir, { maxShardBytes: 1500 });
    for (const t of tensors) w.add(t);
    expect(() => w.add(tensors[0]!)).toThrow(/duplicate tensor name "layer.0.weight"/);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors"))).toEqual([]); // nothing final yet
    const res = w.finish({ format: "pt" });
    expect(res.files.length).toBeGreaterThanOrEqual(3);
    const n = String(res.files.length).padStart(5, "0");
    res.files.forEach((f, i) => expect(path.basename(f)).toBe(`model-${String(i + 1).padStart(5, "0")}-of-${n}.safetensors`));
    expect(res.index).toBe(path.join(dir, "model.safetensors.index.json"));
    expect(fs.readdirSync(dir).sort()).toEqual([...res.files.map((f) => path.basename(f)), "model.safetensors.index.json"].sort());

    const index = JSON.parse(fs.readFileSync(res.index!, "utf8"));
    const total = tensors.reduce((a, t) => a + t.data.byteLength, 0);
    expect(index.metadata.total_size).toBe(total);
    expect(Object.keys(index.weight_map)).toEqual(tensors.map((t) => t.name));

    // Shard sizes respect the limit except for the oversized tensor, which is alone.
    for (const f of res.files) {
      const sf = SafetensorsFile.open(f);
      const sizes = [...sf.tensors.values()].map((t) => t.end - t.begin);
      const sum = sizes.reduce((a, b) => a + b, 0);
      if (sf.tensors.has("big")) expect(sf.tensors.size).toBe(1);
      else expect(sum).toBeLessThanOrEqual(1500);
      expect(sf.metadata).toEqual({ format: "pt" });
      sf.close();
    }

    const ck = Checkpoint.open(dir);
    try {
      expect(ck.dir).toBe(dir);
      expect(ck.files).toEqual(res.files);
      expect(ck.names()).toEqual(tensors.map((t) => t.name));
      for (const t of tensors) {
        expect(ck.has(t.name)).toBe(true);
        expect(ck.info(t.name).shape).toEqual(t.shape);
        expect(ck.info(t.name).dtype).toBe(t.dtype);
        expect(ck.readRaw(t.name)).toEqual(bytes(t.data));
        expect(bytes(ck.readTyped(t.name))).toEqual(bytes(t.data));
      }
      expect(ck.readF32("layer.0.weight")).toEqual(tensors[0]!.data);
      expect(ck.has("missing")).toBe(false);
      expect(() => ck.info("missing")).toThrow(ModelError);
      expect(() => ck.readF32("0.weight")).toThrow(/checkpoint has no tensor "0.weight"/);
      expect(() => ck.readF32("model.layer.3.weight")).toThrow(/did you mean "layer.3.weight"/);
    } finally {
      ck.close();
    }
  });

  it("writes a single model.safetensors when everything fits, replacing a previous sharded output", () => {
    const dir = freshDir();
    const rnd = mulberry32(9);
    const first = new ShardedWriter(dir, { maxShardBytes: 100 });
    for (let i = 0; i < 3; i++) first.add(randomTensor(`a${i}`, "F32", [30], rnd));
    expect(first.finish().files.length).toBe(3);

    const tensors = [randomTensor("x", "F32", [4, 4], rnd), randomTensor("y", "I8", [3], rnd)];
    const w = new ShardedWriter(dir);
    for (const t of tensors) w.add(t);
    const res = w.finish();
    expect(res).toEqual({ files: [path.join(dir, "model.safetensors")] });
    expect(fs.readdirSync(dir)).toEqual(["model.safetensors"]); // stale shards + index removed
    const ck = Checkpoint.open(dir);
    expect(ck.names()).toEqual(["x", "y"]);
    expect(ck.readRaw("y")).toEqual(bytes(tensors[1]!.data));
    ck.close();
    expect(() => w.add(tensors[0]!)).toThrow(OutputError);
  });

  it("abort() removes every temporary file", () => {
    const dir = freshDir();
    const w = new ShardedWriter(dir, { baseName: "q" });
    w.add({ name: "x", dtype: "F32", shape: [2], data: Float32Array.of(1, 2) });
    expect(fs.readdirSync(dir).length).toBe(1); // the temp data file
    w.abort();
    w.abort();
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("opens any single *.safetensors and a file path", () => {
    const dir = freshDir();
    const p = path.join(dir, "weights.safetensors");
    writeSafetensors(p, [{ name: "w", dtype: "F32", shape: [1], data: Float32Array.of(5) }]);
    const ck = Checkpoint.open(dir);
    expect(ck.files).toEqual([p]);
    expect([...ck.readF32("w")]).toEqual([5]);
    ck.close();
    const ck2 = Checkpoint.open(p);
    expect(ck2.names()).toEqual(["w"]);
    ck2.close();
  });
});

// ---------------------------------------------------------------------------------------------

describe("vendored checkpoint", () => {
  it("stories260K opens, its tensors tile the data region exactly, and reads the same through Checkpoint", () => {
    const file = path.join(STORIES_VENDORED, SINGLE);
    const f = SafetensorsFile.open(file);
    try {
      expect(f.tensors.size).toBe(47);
      const spans = [...f.tensors.values()].sort((a, b) => a.begin - b.begin);
      expect(spans[0]!.begin).toBe(f.dataStart);
      for (let i = 1; i < spans.length; i++) expect(spans[i]!.begin).toBe(spans[i - 1]!.end);
      expect(spans.at(-1)!.end).toBe(f.size);
      const ck = Checkpoint.open(STORIES_VENDORED);
      try {
        expect(ck.files).toEqual([file]);
        for (const name of ["model.embed_tokens.weight", "model.norm.weight"]) expect(ck.readRaw(name)).toEqual(f.readRaw(name));
      } finally {
        ck.close();
      }
    } finally {
      f.close();
    }
  });
});

describe.skipIf(!hasShared)(withShared("real checkpoints"), () => {
  it("reads stories260K (fp32)", () => {
    const STORIES = path.join(STORIES_SHARED, SINGLE);
    const f = SafetensorsFile.open(STORIES);
    try {
      const info = f.tensors.get("model.embed_tokens.weight")!;
      expect(info.dtype).toBe("F32");
      expect(info.shape).toEqual([512, 64]);
      const w = f.readF32("model.embed_tokens.weight");
      expect(w.length).toBe(512 * 64);
      assertFinite("model.embed_tokens.weight", w, STORIES);
      expect(f.metadata.format).toBe("pt");
    } finally {
      f.close();
    }
    const ck = Checkpoint.open(path.dirname(STORIES));
    expect(ck.files).toEqual([STORIES]);
    expect(ck.has("model.layers.0.mlp.down_proj.weight")).toBe(true);
    expect(ck.info("model.layers.0.mlp.down_proj.weight").shape).toEqual([64, 172]);
    ck.close();
  });

  it("reads brown-llama (fp16) and decodes finite values", () => {
    const ck = Checkpoint.open(BROWN);
    try {
      expect(ck.info("model.embed_tokens.weight").shape).toEqual([4096, 256]);
      expect(ck.info("model.embed_tokens.weight").dtype).toBe("F16");
      let maxAbs = 0;
      for (const name of ck.names()) {
        const w = ck.readF32(name);
        const info = ck.info(name);
        expect(w.length).toBe(info.shape.reduce((a, b) => a * b, 1));
        assertFinite(name, w, path.join(BROWN, SINGLE));
        for (const v of w) maxAbs = Math.max(maxAbs, Math.abs(v));
      }
      expect(maxAbs).toBeGreaterThan(0);
      expect(maxAbs).toBeLessThan(65504);
      expect(ck.readTyped("lm_head.weight")).toBeInstanceOf(Uint16Array);
    } finally {
      ck.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe("corrupt files", () => {
  const good = { a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] }, b: { dtype: "F16", shape: [4], data_offsets: [16, 24] } };

  it("truncated data", () => {
    const dir = freshDir();
    const p = path.join(dir, "model.safetensors");
    writeSafetensors(p, [
      { name: "model.layers.0.mlp.up_proj.weight", dtype: "F32", shape: [32, 32], data: new Float32Array(1024) },
    ]);
    const size = fs.statSync(p).size;
    fs.truncateSync(p, size - 100);
    expectFormatError(() => SafetensorsFile.open(p), p, 'tensor "model.layers.0.mlp.up_proj.weight"', /data \[0, 4096\) extends past end of file \(3996 bytes of data\)/);
    expectFormatError(() => Checkpoint.open(dir), p, /extends past end of file/);
  });

  it("header length beyond the file", () => {
    const p = craft(path.join(freshDir(), "x.safetensors"), good, 24, 9999999);
    const size = fs.statSync(p).size;
    expectFormatError(() => SafetensorsFile.open(p), p, `header length 9999999 exceeds file size ${size}`);
    const q = craft(path.join(freshDir(), "y.safetensors"), good, 24, 2 ** 40);
    expectFormatError(() => SafetensorsFile.open(q), q, /header length 1099511627776 exceeds file size/);
  });

  it("file too small for a header", () => {
    const p = path.join(freshDir(), "tiny.safetensors");
    fs.writeFileSync(p, Buffer.from([1, 2, 3]));
    expectFormatError(() => SafetensorsFile.open(p), p, /too small/);
  });

  it("overlapping offsets", () => {
    const p = craft(path.join(freshDir(), "o.safetensors"), {
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F32", shape: [2], data_offsets: [8, 16] },
    }, 16);
    expectFormatError(() => SafetensorsFile.open(p), p, 'tensors "a" and "b" overlap');
  });

  it("unknown dtype", () => {
    const p = craft(path.join(freshDir(), "d.safetensors"), { x: { dtype: "F8", shape: [4], data_offsets: [0, 4] } }, 4);
    expectFormatError(() => SafetensorsFile.open(p), p, 'unknown dtype "F8" for tensor "x"');
  });

  it("bad JSON, non-object JSON, invalid UTF-8", () => {
    const p = craft(path.join(freshDir(), "j.safetensors"), '{"a": {"dtype": "F32",', 0);
    expectFormatError(() => SafetensorsFile.open(p), p, /header is not valid JSON: /);
    const q = craft(path.join(freshDir(), "k.safetensors"), "[1,2]", 0);
    expectFormatError(() => SafetensorsFile.open(q), q, /header does not start with "\{" \(first byte 0x5b\)/);
    const r = path.join(freshDir(), "u.safetensors");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(4n);
    fs.writeFileSync(r, Buffer.concat([len, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])]));
    expectFormatError(() => SafetensorsFile.open(r), r, /not valid UTF-8/);
  });

  it("offsets / shape size mismatch", () => {
    const p = craft(path.join(freshDir(), "s.safetensors"), { w: { dtype: "F32", shape: [3, 3], data_offsets: [0, 32] } }, 36);
    expectFormatError(() => SafetensorsFile.open(p), p, 'tensor "w"', /\[3, 3\] F32 \(36 bytes\)/, /span 32 bytes/);
  });

  it("malformed entries and metadata", () => {
    const p = craft(path.join(freshDir(), "e.safetensors"), { w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4);
    expectFormatError(() => SafetensorsFile.open(p), p, 'tensor "w"', /shape/);
    const q = craft(path.join(freshDir(), "f.safetensors"), { w: { dtype: "F32", shape: [1] } }, 4);
    expectFormatError(() => SafetensorsFile.open(q), q, 'tensor "w"', /data_offsets/);
    const r = craft(path.join(freshDir(), "g.safetensors"), { __metadata__: { n: 1 }, ...good }, 24);
    expectFormatError(() => SafetensorsFile.open(r), r, /__metadata__/);
    const s = craft(path.join(freshDir(), "h.safetensors"), { w: { dtype: "F32", shape: [1], data_offsets: [8, 4] } }, 8);
    expectFormatError(() => SafetensorsFile.open(s), s, /end before begin/);
  });

  it("shard index pointing at a missing file or lacking a tensor", () => {
    const dir = freshDir();
    const w = new ShardedWriter(dir, { maxShardBytes: 64 });
    for (let i = 0; i < 3; i++) w.add({ name: `t${i}`, dtype: "F32", shape: [16], data: new Float32Array(16) });
    const { files, index } = w.finish();
    fs.unlinkSync(files[1]!);
    expectFormatError(() => Checkpoint.open(dir), index!, new RegExp(`shard "${path.basename(files[1]!)}"`), /missing/, /"t1"/);

    const dir2 = freshDir();
    writeSafetensors(path.join(dir2, "s1.safetensors"), [{ name: "a", dtype: "F32", shape: [1], data: new Float32Array(1) }]);
    fs.writeFileSync(path.join(dir2, "model.safetensors.index.json"), JSON.stringify({ weight_map: { a: "s1.safetensors", b: "s1.safetensors" } }));
    expectFormatError(() => Checkpoint.open(dir2), path.join(dir2, "s1.safetensors"), 'tensor "b" is listed in model.safetensors.index.json but absent');

    fs.writeFileSync(path.join(dir2, "model.safetensors.index.json"), JSON.stringify({ weight_map: { a: 3 } }));
    expectFormatError(() => Checkpoint.open(dir2), path.join(dir2, "model.safetensors.index.json"), /invalid shard index/, /weight_map/);
    fs.writeFileSync(path.join(dir2, "model.safetensors.index.json"), "{nope");
    expectFormatError(() => Checkpoint.open(dir2), path.join(dir2, "model.safetensors.index.json"), /not valid JSON/);
  });

  it("directory without safetensors mentions .bin is unsupported", () => {
    const dir = freshDir();
    fs.writeFileSync(path.join(dir, "pytorch_model.bin"), "x");
    expectFormatError(() => Checkpoint.open(dir), dir, /no safetensors checkpoint found/, /pytorch_model\.bin/, /\.bin.*not supported/, /model\.safetensors/);
    const missing = path.join(root, "does-not-exist");
    expectFormatError(() => Checkpoint.open(missing), missing, /does not exist/);
    const nofile = path.join(root, "nope.safetensors");
    expectFormatError(() => SafetensorsFile.open(nofile), nofile, /file not found/);
  });
});

// ---------------------------------------------------------------------------------------------

/** Add `delta` to the u64 header length of `file` in place; returns the original length. */
function shiftHeaderLen(file: string, delta: number): number {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  b.writeBigUInt64LE(BigInt(n + delta), 0);
  fs.writeFileSync(file, b);
  return n;
}

describe("the tensors must tile the data region exactly", () => {
  it("a header length n−k that the JSON's trailing spaces absorb is refused, not read k bytes early", () => {
    const src = path.join(STORIES_VENDORED, SINGLE);
    const orig = fs.readFileSync(src);
    const n = Number(orig.readBigUInt64LE(0));
    const pad = n - orig.subarray(8, 8 + n).toString("utf8").trimEnd().length;
    expect(pad).toBe(4); // the vendored file's header ends in 4 spaces: n−1..n−4 still parse as JSON
    for (let k = 1; k <= pad; k++) {
      const p = path.join(freshDir(), SINGLE);
      fs.copyFileSync(src, p);
      shiftHeaderLen(p, -k);
      const err = expectFormatError(
        () => SafetensorsFile.open(p),
        p,
        new RegExp(`data region has ${k} trailing bytes not covered by any tensor`),
        /tensors end at data offset 1040128/,
        /wrong header length or offsets/,
      );
      expect(err.message).not.toMatch(/\n/);
      expectFormatError(() => Checkpoint.open(path.dirname(p)), p, /trailing bytes not covered/);
    }
    // One byte more and the JSON itself is cut; a longer length swallows tensor bytes into the header.
    for (const delta of [-(pad + 1), 1, 4, 8]) {
      const p = path.join(freshDir(), SINGLE);
      fs.copyFileSync(src, p);
      shiftHeaderLen(p, delta);
      expectFormatError(() => SafetensorsFile.open(p), p, /header is not valid (JSON|UTF-8)/);
    }
  });

  it("a gap between tensors names both tensors and the gap", () => {
    const p = craft(path.join(freshDir(), "gap.safetensors"), {
      a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
      b: { dtype: "F16", shape: [4], data_offsets: [20, 28] },
    }, 28);
    expectFormatError(() => SafetensorsFile.open(p), p, /gap of 4 bytes between tensors "a" \(data \[0, 16\)\) and "b" \(data \[20, 28\)\)/, /not covered by any tensor/);
  });

  it("a first tensor that does not start at offset 0", () => {
    const p = craft(path.join(freshDir(), "first.safetensors"), {
      b: { dtype: "F16", shape: [4], data_offsets: [24, 32] },
      a: { dtype: "F32", shape: [4], data_offsets: [4, 20] },
      c: { dtype: "I32", shape: [1], data_offsets: [20, 24] },
    }, 32);
    expectFormatError(() => SafetensorsFile.open(p), p, /first tensor "a" starts at data offset 4, not 0/, /4 bytes at the start of the data region are not covered/);
  });

  it("trailing bytes after the last tensor, and data with no tensors at all", () => {
    const good = { a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] }, b: { dtype: "F16", shape: [4], data_offsets: [16, 24] } };
    const p = craft(path.join(freshDir(), "tail.safetensors"), good, 27);
    expectFormatError(() => SafetensorsFile.open(p), p, /data region has 3 trailing bytes not covered by any tensor \(tensors end at data offset 24, the data region is 27 bytes/);
    const q = craft(path.join(freshDir(), "none.safetensors"), { __metadata__: { format: "pt" } }, 5);
    expectFormatError(() => SafetensorsFile.open(q), q, /5 trailing bytes not covered by any tensor \(the header lists no tensors/);
  });

  it("out-of-order entries and zero-size tensors at tensor boundaries are fine; a zero-size tensor inside another is not", () => {
    const data = Buffer.from(Array.from({ length: 24 }, (_, i) => i + 1));
    const len = (h: string): Buffer => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
      return b;
    };
    const header = JSON.stringify({
      b: { dtype: "U8", shape: [8], data_offsets: [16, 24] },
      e0: { dtype: "F32", shape: [0], data_offsets: [0, 0] },
      a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] },
      e1: { dtype: "F16", shape: [3, 0], data_offsets: [16, 16] },
      e2: { dtype: "I64", shape: [0], data_offsets: [24, 24] },
    });
    const p = path.join(freshDir(), "ok.safetensors");
    fs.writeFileSync(p, Buffer.concat([len(header), Buffer.from(header), data]));
    const f = SafetensorsFile.open(p);
    try {
      expect(f.names()).toEqual(["b", "e0", "a", "e1", "e2"]);
      expect(f.readRaw("a")).toEqual(new Uint8Array(data.subarray(0, 16)));
      expect(f.readRaw("b")).toEqual(new Uint8Array(data.subarray(16, 24)));
      expect(f.readRaw("e1").length).toBe(0);
      expect(f.readF32("e2").length).toBe(0);
    } finally {
      f.close();
    }
    const inside = JSON.stringify({
      a: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] },
      e: { dtype: "F32", shape: [0], data_offsets: [8, 8] },
      b: { dtype: "U8", shape: [8], data_offsets: [16, 24] },
    });
    const q = path.join(freshDir(), "inside.safetensors");
    fs.writeFileSync(q, Buffer.concat([len(inside), Buffer.from(inside), data]));
    expectFormatError(() => SafetensorsFile.open(q), q, /tensors "a" and "e" overlap \(data \[0, 16\) and \[8, 8\)\)/);
    // An empty tensor past the end of the data is past the end of the file.
    const past = JSON.stringify({ a: { dtype: "U8", shape: [24], data_offsets: [0, 24] }, e: { dtype: "U8", shape: [0], data_offsets: [30, 30] } });
    const r = path.join(freshDir(), "past.safetensors");
    fs.writeFileSync(r, Buffer.concat([len(past), Buffer.from(past), data]));
    expectFormatError(() => SafetensorsFile.open(r), r, /tensor "e" data \[30, 30\) extends past end of file/);
  });

  it("everything our writer produces tiles exactly: empty tensors first, between, last, and only empty tensors", () => {
    const dir = freshDir();
    const rnd = mulberry32(5);
    const empty = (name: string, dtype: DType): TensorToWrite => ({ name, dtype, shape: [0, 3], data: new Uint8Array(0) });
    const sets: TensorToWrite[][] = [
      [empty("e0", "F32"), randomTensor("a", "F32", [3, 5], rnd), empty("e1", "BF16"), randomTensor("b", "I8", [7], rnd), empty("e2", "I64")],
      [empty("only", "F16"), empty("only2", "U8")],
      [randomTensor("x", "F16", [1], rnd)],
    ];
    sets.forEach((tensors, i) => {
      const p = path.join(dir, `w${i}.safetensors`);
      writeSafetensors(p, tensors, { format: "pt" });
      const f = SafetensorsFile.open(p);
      try {
        for (const t of tensors) expect(f.readRaw(t.name)).toEqual(bytes(t.data));
      } finally {
        f.close();
      }
    });
  });
});

describe("a directory where a .safetensors file is expected", () => {
  it("SafetensorsFile.open and Checkpoint.open on a directory named model.safetensors", () => {
    const dir = freshDir();
    const p = path.join(dir, SINGLE);
    fs.mkdirSync(p);
    expectFormatError(() => SafetensorsFile.open(p), p, /^[^:]+: is a directory, expected a \.safetensors file$/);
    expectFormatError(() => Checkpoint.open(dir), p, /is a directory, expected a \.safetensors file/);
    expectFormatError(() => Checkpoint.open(p), p, /is a directory, expected a \.safetensors file/);
    expectFormatError(() => Checkpoint.open(`${p}/`), `${p}/`, /is a directory, expected a \.safetensors file/);
  });

  it("a globbed *.safetensors that is a directory", () => {
    const dir = freshDir();
    writeSafetensors(path.join(dir, "a.safetensors"), [{ name: "w", dtype: "F32", shape: [1], data: Float32Array.of(1) }]);
    fs.mkdirSync(path.join(dir, "b.safetensors"));
    expectFormatError(() => Checkpoint.open(dir), path.join(dir, "b.safetensors"), /is a directory, expected a \.safetensors file/);
  });

  it("a shard in the index that is a directory, and an index that is a directory", () => {
    const dir = freshDir();
    const w = new ShardedWriter(dir, { maxShardBytes: 64 });
    for (let i = 0; i < 3; i++) w.add({ name: `t${i}`, dtype: "F32", shape: [16], data: new Float32Array(16) });
    const { files, index } = w.finish();
    fs.unlinkSync(files[2]!);
    fs.mkdirSync(files[2]!);
    expectFormatError(() => Checkpoint.open(dir), files[2]!, /is a directory, expected a \.safetensors file/);

    const dir2 = freshDir();
    fs.mkdirSync(path.join(dir2, path.basename(index!)));
    expectFormatError(() => Checkpoint.open(dir2), path.join(dir2, path.basename(index!)), /is a directory, expected a JSON shard index/);
  });

  it.skipIf(process.platform === "win32")("a FIFO is refused at once instead of blocking", async () => {
    const { execFileSync } = await import("node:child_process");
    const p = path.join(freshDir(), SINGLE);
    try {
      execFileSync("mkfifo", [p]);
    } catch {
      return; // no mkfifo on this system
    }
    // Hold the FIFO open read-write ourselves, so a reader that forgot to refuse FIFOs gets a wrong answer
    // (and this test fails) instead of blocking the test run forever in open().
    const holder = fs.openSync(p, "r+");
    try {
      expectFormatError(() => SafetensorsFile.open(p), p, /not a regular file/);
    } finally {
      fs.closeSync(holder);
    }
  });
});

describe("duplicate keys and header hygiene", () => {
  const entry = (begin: number, end: number): string => `{"dtype":"F32","shape":[${(end - begin) / 4}],"data_offsets":[${begin},${end}]}`;

  it("a tensor listed twice is refused (JSON.parse would keep only the last)", () => {
    const p = craft(path.join(freshDir(), "dup.safetensors"), `{"a":${entry(0, 8)},"b":${entry(8, 16)},"a":${entry(0, 8)}}`, 16);
    expectFormatError(() => SafetensorsFile.open(p), p, /tensor "a" is listed twice in the header/);
    // The last copy is the consistent one here: without the check this file would open.
    const q = craft(path.join(freshDir(), "dup2.safetensors"), `{"a":${entry(8, 16)},"b":${entry(8, 16)},"a":${entry(0, 8)}}`, 16);
    expectFormatError(() => SafetensorsFile.open(q), q, /tensor "a" is listed twice/);
  });

  it("a key twice inside an entry or in __metadata__ is refused", () => {
    const p = craft(path.join(freshDir(), "k.safetensors"), `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16],"data_offsets":[0,8]},"b":${entry(8, 16)}}`, 16);
    expectFormatError(() => SafetensorsFile.open(p), p, /tensor "a": key "data_offsets" appears twice in its header entry/);
    const q = craft(path.join(freshDir(), "m.safetensors"), `{"__metadata__":{"k":"1","k":"2"},"a":${entry(0, 8)}}`, 8);
    expectFormatError(() => SafetensorsFile.open(q), q, /"__metadata__": key "k" appears twice/);
    const r = craft(path.join(freshDir(), "mm.safetensors"), `{"__metadata__":{},"a":${entry(0, 8)},"__metadata__":{}}`, 8);
    expectFormatError(() => SafetensorsFile.open(r), r, /"__metadata__" appears twice in the header/);
  });

  it("quotes, backslashes, colons and braces inside names and metadata do not confuse the duplicate check", () => {
    const dir = freshDir();
    const p = path.join(dir, "odd.safetensors");
    const names = ['we"ird:{[name]}', "back\\slash\\", "ünï:cødé", "a,b:c"];
    writeSafetensors(
      p,
      names.map((name, i) => ({ name, dtype: "I32" as const, shape: [i + 1], data: Int32Array.from({ length: i + 1 }, (_, j) => j * 7 - i) })),
      { config: JSON.stringify({ a: { b: [1, 2, { c: "d:e" }] } }), "k\"ey:": "v\\\"al" },
    );
    const f = SafetensorsFile.open(p);
    try {
      expect(f.names()).toEqual(names);
      expect(f.metadata["k\"ey:"]).toBe("v\\\"al");
      expect([...f.readTyped("a,b:c")]).toEqual([-3, 4, 11, 18]);
    } finally {
      f.close();
    }
    // "__proto__" is an ordinary tensor name to the reader (JSON.parse makes it an own key).
    const q = craft(path.join(dir, "proto.safetensors"), '{"__proto__":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"x":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}', 3);
    const g = SafetensorsFile.open(q);
    try {
      expect(g.names()).toEqual(["__proto__", "x"]);
      expect(g.info("__proto__").end - g.info("__proto__").begin).toBe(2);
    } finally {
      g.close();
    }
    const r = craft(path.join(dir, "proto2.safetensors"), '{"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1);
    expectFormatError(() => SafetensorsFile.open(r), r, /tensor "__proto__" is listed twice/);
  });

  it("a header that does not start with '{' (leading space, byte-order mark)", () => {
    const good = JSON.stringify({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } });
    const p = craft(path.join(freshDir(), "sp.safetensors"), ` ${good}`, 4);
    expectFormatError(() => SafetensorsFile.open(p), p, /header does not start with "\{" \(first byte 0x20\)/);
    const q = craft(path.join(freshDir(), "bom.safetensors"), `\ufeff${good}`, 4);
    expectFormatError(() => SafetensorsFile.open(q), q, /first byte 0xef/);
  });

  it("malformed entries get one line naming the tensor and the field, even with a newline in the name", () => {
    const cases: [unknown, RegExp][] = [
      [{ "x\ny": { dtype: "F32", shape: [1], data_offsets: [0, 4] }, z: 3 }, /tensor "z": header entry must be an object with "dtype", "shape" and "data_offsets" \(got 3\)/],
      [{ "x\ny": { shape: [1], data_offsets: [0, 4] } }, /tensor "x\\ny": header entry has no "dtype"/],
      [{ w: { dtype: 32, shape: [1], data_offsets: [0, 4] } }, /unknown dtype 32 for tensor "w"/],
      [{ w: { dtype: "toString", shape: [1], data_offsets: [0, 4] } }, /unknown dtype "toString"/],
      [{ w: { dtype: "F32", shape: [1.5], data_offsets: [0, 4] } }, /tensor "w": shape must be an array of non-negative integers \(got \[1.5\]\)/],
      [{ w: { dtype: "F32", shape: "1", data_offsets: [0, 4] } }, /tensor "w": shape must be/],
      [{ w: { dtype: "F32", shape: [1], data_offsets: [0, 4, 8] } }, /tensor "w": data_offsets must be \[begin, end\]/],
      [{ w: { dtype: "F32", shape: [1], data_offsets: [0, 2 ** 60] } }, /tensor "w": data_offsets must be/],
      [{ w: { dtype: "F32", shape: [2 ** 30, 2 ** 30, 2 ** 30], data_offsets: [0, 4] } }, /tensor "w" shape \[1073741824, 1073741824, 1073741824\] is too large/],
      [{ w: { dtype: "F32", shape: Array(40).fill(1), data_offsets: [0, 8] } }, /\[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, \.\.\. \(40 dims\)\] F32 \(4 bytes\)/],
      [{ w: { dtype: "F32", shape: [0], data_offsets: [0, 4] } }, /shape \[0\] F32 \(0 bytes\) but data_offsets \[0, 4\) span 4 bytes/],
      [{ __metadata__: ["a"], w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, /"__metadata__" must be an object mapping strings to strings \(got \["a"\]\)/],
      [{ __metadata__: { n: null }, w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, /value of "n" is null/],
    ];
    for (const [header, re] of cases) {
      const p = craft(path.join(freshDir(), "m.safetensors"), header, 4);
      const err = expectFormatError(() => SafetensorsFile.open(p), p, re);
      expect(err.message).not.toMatch(/[\n\r]/);
    }
    const q = craft(path.join(freshDir(), "nl.safetensors"), '{"a":\n tru\n}', 0);
    const err = expectFormatError(() => SafetensorsFile.open(q), q, /header is not valid JSON/);
    expect(err.message).not.toMatch(/[\n\r]/);
  });
});

describe("tensor count limit", () => {
  it(`a header declaring more than ${MAX_TENSORS} entries is refused fast, before parsing`, () => {
    const p = path.join(freshDir(), "many.safetensors");
    // 1.2M members of 5 bytes each ("":0,): the count is checked on the raw bytes, before JSON.parse.
    const header = Buffer.from(`{${'"":0,'.repeat(1_200_000)}"":0}`);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(p, Buffer.concat([len, header]));
    const t0 = performance.now();
    expectFormatError(() => SafetensorsFile.open(p), p, new RegExp(`header lists more than ${MAX_TENSORS} tensors \\(the limit per file`));
    expect(performance.now() - t0).toBeLessThan(2000); // ~60 ms here; seconds and gigabytes before the limit
  });
});

describe("CLI: a damaged checkpoint is one error line", () => {
  function snapshot(dir: string): string[] {
    return fs.readdirSync(dir, { recursive: true, encoding: "utf8" }).sort().map((f) => {
      const full = path.join(dir, f);
      const st = fs.statSync(full);
      return `${f} ${st.isDirectory() ? "dir" : `${st.size} ${st.mtimeMs}`}`;
    });
  }
  function copyVendored(): string {
    const dir = path.join(freshDir(), "stories260K");
    fs.cpSync(STORIES_VENDORED, dir, { recursive: true });
    return dir;
  }
  async function expectOneLine(dir: string, file: string, detail: RegExp): Promise<void> {
    const before = snapshot(dir);
    const r = await runCli(["inspect", dir]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    const lines = stderrLines(r);
    expect(lines).toHaveLength(1);
    expect(lines[0]!.startsWith(`quant4: error: ${file}: `)).toBe(true);
    expect(lines[0]).toMatch(detail);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stderr).not.toMatch(/internal error/);
    expect(snapshot(dir)).toEqual(before);
  }

  it("inspect on stories260K with the header length rewritten as n−4", async () => {
    const dir = copyVendored();
    const file = path.join(dir, SINGLE);
    shiftHeaderLen(file, -4);
    await expectOneLine(dir, file, /data region has 4 trailing bytes not covered by any tensor/);
  }, 60_000);

  it("inspect on stories260K whose model.safetensors is a directory", async () => {
    const dir = copyVendored();
    const file = path.join(dir, SINGLE);
    fs.rmSync(file);
    fs.mkdirSync(file);
    await expectOneLine(dir, file, /is a directory, expected a \.safetensors file$/);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------------

describe("writer failures", () => {
  const t: TensorToWrite = { name: "x", dtype: "F32", shape: [2], data: Float32Array.of(1, 2) };

  function expectOutputError(fn: () => unknown, file: string, detail: RegExp): void {
    let caught: unknown;
    try {
      fn();
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(OutputError);
    expect((caught as OutputError).file).toBe(file);
    expect((caught as OutputError).message).toMatch(detail);
  }

  it("nonexistent directory → OutputError, no temp file", () => {
    const dir = freshDir();
    const target = path.join(dir, "missing", "model.safetensors");
    expectOutputError(() => writeSafetensors(target, [t]), target, /does not exist/);
    expect(fs.readdirSync(dir)).toEqual([]);
    expectOutputError(() => atomicWriteFile(path.join(dir, "missing", "c.json"), "{}"), path.join(dir, "missing", "c.json"), /does not exist/);
  });

  it("parent is a file → OutputError, no temp file", () => {
    const dir = freshDir();
    const blocker = path.join(dir, "blocker");
    fs.writeFileSync(blocker, "");
    const target = path.join(blocker, "model.safetensors");
    expectOutputError(() => writeSafetensors(target, [t]), target, /not a directory/);
    const w = new ShardedWriter(path.join(blocker, "out"));
    expect(() => w.add(t)).toThrow(OutputError);
    expect(fs.readdirSync(dir)).toEqual(["blocker"]);
  });

  it.skipIf(process.getuid?.() === 0)("unwritable directory → permission denied", () => {
    const dir = freshDir();
    fs.chmodSync(dir, 0o555);
    try {
      const target = path.join(dir, "model.safetensors");
      expectOutputError(() => writeSafetensors(target, [t]), target, /permission denied/);
      expect(fs.readdirSync(dir)).toEqual([]);
    } finally {
      fs.chmodSync(dir, 0o755);
    }
  });

  it("atomicWriteFile writes and replaces", () => {
    const dir = freshDir();
    const p = path.join(dir, "config.json");
    atomicWriteFile(p, '{"a":1}');
    atomicWriteFile(p, new TextEncoder().encode('{"a":2}'));
    expect(fs.readFileSync(p, "utf8")).toBe('{"a":2}');
    expect(fs.readdirSync(dir)).toEqual(["config.json"]);
  });
});

describe("writer: any tensor name becomes a header key", () => {
  it('a tensor named "__proto__" round-trips (the header object has no prototype)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "quant4-proto-"));
    try {
      const file = path.join(dir, "p.safetensors");
      writeSafetensors(file, [
        { name: "__proto__", dtype: "F32", shape: [2], data: Float32Array.from([1, 2]) },
        { name: "w", dtype: "F32", shape: [1], data: Float32Array.from([3]) },
      ]);
      const f = SafetensorsFile.open(file);
      try {
        expect(f.names().sort()).toEqual(["__proto__", "w"]);
        expect(Array.from(f.readF32("__proto__"))).toEqual([1, 2]);
      } finally {
        f.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
