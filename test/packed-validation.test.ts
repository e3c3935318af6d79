// Issue 10 reproductions, each made into a test through the CLI: damaged packed (and fp) checkpoints
// must give exit 2 and one `quant4: error:` line naming the file and the tensor, from every command
// (eval-ppl, generate, inspect), never a NaN perplexity or a stack trace.
//
// Cost: the vendored stories260K is quantized twice with RTN (under a second each) in beforeAll; every
// case copies one of the outputs (≈ 0.5 MB), damages it and runs one or a few CLI commands.

import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { copyModel, makeTmpDir, removeTmpDirs, runCli, STORIES_VENDORED, stderrLines, type CliResult, expectOneLineError as oneLineError } from "./helpers.js";

const L0 = "model.layers.0.self_attn.q_proj";
const EVAL = ["--text", "tinystories", "--seqlen", "128", "--max-windows", "2", "--max-ppl", "1000", "--threads", "1"];
const GEN = ["--max-tokens", "4", "--threads", "1"];
const quantize = (out: string, extra: string[]) => [
  "quantize", STORIES_VENDORED, out, "--method", "rtn", "--calib", "tinystories", "--nsamples", "8", "--seqlen", "128", "--threads", "1", ...extra,
];

// ---------------------------------------------------------------------------------------------
// safetensors surgery (written here from the format spec, not with the project's reader)

interface Header {
  [name: string]: { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>;
}

function readSt(file: string): { header: Header; data: Buffer } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString("utf8")), data: buf.subarray(8 + n) };
}

function entry(h: Header, name: string): { dtype: string; shape: number[]; data_offsets: [number, number] } {
  const e = h[name];
  if (!e || !("data_offsets" in e)) throw new Error(`test setup: no tensor ${name}`);
  return e as { dtype: string; shape: number[]; data_offsets: [number, number] };
}

/** Rewrite the header (data bytes kept, so offsets stay valid). */
function editHeader(file: string, edit: (h: Header) => void): void {
  const { header, data } = readSt(file);
  edit(header);
  writeFileSync(file, Buffer.concat([stHeader(header), data]));
}

/** Remove a tensor: its header entry and its bytes (the data of the others is packed again, no gaps). */
function removeTensor(file: string, name: string): void {
  const { header, data } = readSt(file);
  entry(header, name);
  const out: Header = {};
  if (header["__metadata__"]) out["__metadata__"] = header["__metadata__"];
  const parts: Buffer[] = [];
  let off = 0;
  const kept = Object.keys(header).filter((k) => k !== "__metadata__" && k !== name);
  kept.sort((a, b) => entry(header, a).data_offsets[0] - entry(header, b).data_offsets[0]);
  for (const k of kept) {
    const e = entry(header, k);
    const bytes = data.subarray(e.data_offsets[0], e.data_offsets[1]);
    out[k] = { ...e, data_offsets: [off, off + bytes.length] };
    parts.push(bytes);
    off += bytes.length;
  }
  writeFileSync(file, Buffer.concat([stHeader(out), ...parts]));
}

/** Length prefix and JSON of a header, padded to 8 bytes. */
function stHeader(h: Header): Buffer {
  let json = JSON.stringify(h);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([len, Buffer.from(json, "utf8")]);
}

/** Change the bytes of one tensor in place. */
function editTensor(file: string, name: string, edit: (bytes: Buffer) => void): void {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const e = entry(JSON.parse(buf.subarray(8, 8 + n).toString("utf8")), name);
  edit(buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]));
  writeFileSync(file, buf);
}

function editConfig(dir: string, edit: (c: any) => void): void {
  const file = path.join(dir, "config.json");
  const c = JSON.parse(readFileSync(file, "utf8"));
  edit(c);
  writeFileSync(file, JSON.stringify(c, null, 2));
}


/** One error line, and no perplexity printed before it. */
function expectOneLineError(r: CliResult, ...mustContain: (string | RegExp)[]): string {
  expect(r.stdout).not.toMatch(/perplexity/i);
  return oneLineError(r, ...mustContain);
}

// ---------------------------------------------------------------------------------------------

let gptqDir = "";
let ctDir = "";

beforeAll(async () => {
  const tmp = makeTmpDir();
  gptqDir = path.join(tmp, "q-gptq");
  ctDir = path.join(tmp, "q-ct");
  const [g, c] = await Promise.all([
    runCli(quantize(gptqDir, ["--group-size", "32", "--format", "gptq"])),
    runCli(quantize(ctDir, ["--group-size", "-1", "--asym", "--format", "compressed-tensors"])),
  ]);
  expect(g.code, g.stderr).toBe(0);
  expect(c.code, c.stderr).toBe(0);
});

afterAll(removeTmpDirs);

/** A damaged copy of a quantized (or the fp) model: its dir and its model.safetensors. */
function damaged(src: string, edit: (file: string, dir: string) => void): { dir: string; file: string } {
  const dir = copyModel(src);
  const file = path.join(dir, "model.safetensors");
  edit(file, dir);
  return { dir, file };
}

describe("undamaged checkpoints still pass", () => {
  it("inspect and eval-ppl accept the RTN gptq and compressed-tensors outputs", async () => {
    const rs = await Promise.all([runCli(["inspect", gptqDir]), runCli(["inspect", ctDir]), runCli(["eval-ppl", gptqDir, ...EVAL])]);
    for (const r of rs) expect(r.code, r.stderr).toBe(0);
    expect(rs[0]!.stdout).toMatch(/gptq, 20\/35 linears packed/);
    expect(rs[1]!.stdout).toMatch(/compressed-tensors, 35\/35 linears packed/);
    const ppl = Number(/perplexity ([\d.]+)/.exec(rs[2]!.stdout)?.[1]);
    expect(ppl).toBeGreaterThan(1);
    expect(ppl).toBeLessThan(20);
  });
});

describe("non-finite scales", () => {
  it("gptq: an fp16 NaN (0x7e00) in scales fails eval-ppl, generate and inspect, naming file, tensor and index", async () => {
    const { dir, file } = damaged(gptqDir, (f) => editTensor(f, `${L0}.scales`, (b) => b.writeUInt16LE(0x7e00, 2 * 5)));
    const rs = await Promise.all([runCli(["eval-ppl", dir, ...EVAL]), runCli(["generate", dir, ...GEN]), runCli(["inspect", dir])]);
    for (const r of rs) expectOneLineError(r, file, `tensor "${L0}.scales"`, "NaN", "index 5");
  });

  it("gptq: an fp16 Inf (0x7c00) in scales fails generate", async () => {
    const { dir, file } = damaged(gptqDir, (f) => editTensor(f, "model.layers.3.self_attn.o_proj.scales", (b) => b.writeUInt16LE(0x7c00, 2 * 70)));
    expectOneLineError(await runCli(["generate", dir, ...GEN]), file, 'tensor "model.layers.3.self_attn.o_proj.scales"', "Infinity", "index 70", "[1, 6]");
  });

  it("compressed-tensors: NaN in weight_scale fails eval-ppl, Inf (negative) fails generate", async () => {
    const nan = damaged(ctDir, (f) => editTensor(f, "model.layers.1.mlp.down_proj.weight_scale", (b) => b.writeUInt16LE(0x7e00, 2 * 9)));
    const inf = damaged(ctDir, (f) => editTensor(f, "model.layers.4.mlp.up_proj.weight_scale", (b) => b.writeUInt16LE(0xfc00, 2 * 171)));
    const [a, b] = await Promise.all([runCli(["eval-ppl", nan.dir, ...EVAL]), runCli(["generate", inf.dir, ...GEN])]);
    expectOneLineError(a, nan.file, 'tensor "model.layers.1.mlp.down_proj.weight_scale"', "NaN", "index 9");
    expectOneLineError(b, inf.file, 'tensor "model.layers.4.mlp.up_proj.weight_scale"', "-Infinity", "index 171");
  });
});

describe("float tensors must have a float dtype", () => {
  it("an F32 q_proj.weight relabelled I32 fails eval-ppl and inspect", async () => {
    const { dir, file } = damaged(STORIES_VENDORED, (f) => editHeader(f, (h) => (entry(h, "model.layers.2.self_attn.q_proj.weight").dtype = "I32")));
    const rs = await Promise.all([runCli(["eval-ppl", dir, ...EVAL]), runCli(["inspect", dir])]);
    for (const r of rs) {
      expectOneLineError(r, `${file}: tensor "model.layers.2.self_attn.q_proj.weight" has dtype I32, expected a float dtype (F32/F16/BF16)`);
    }
  });

  it("an F16 input_layernorm relabelled I16 in a packed checkpoint fails generate", async () => {
    // Same element size, so the file stays a valid safetensors file.
    const { dir, file } = damaged(ctDir, (f) => editHeader(f, (h) => (entry(h, "model.layers.0.input_layernorm.weight").dtype = "I16")));
    expectOneLineError(await runCli(["generate", dir, ...GEN]), file, 'tensor "model.layers.0.input_layernorm.weight" has dtype I16, expected a float dtype');
  });
});

describe("config and tensors that disagree", () => {
  it("compressed-tensors symmetric: true with weight_zero_point tensors present", async () => {
    const { dir, file } = damaged(ctDir, (_f, d) => editConfig(d, (c) => (c.quantization_config.config_groups.group_0.weights.symmetric = true)));
    expectOneLineError(await runCli(["eval-ppl", dir, ...EVAL]), file, 'tensor "model.layers.0.self_attn.q_proj.weight_zero_point"', "symmetric: true", /disagree/);
  });

  it("compressed-tensors symmetric: false with a weight_zero_point tensor missing names it", async () => {
    const { dir, file } = damaged(ctDir, (f) => removeTensor(f, "model.layers.2.mlp.gate_proj.weight_zero_point"));
    expectOneLineError(await runCli(["generate", dir, ...GEN]), file, 'tensor "model.layers.2.mlp.gate_proj.weight_zero_point" is missing', "symmetric: false");
  });

  it("gptq sym: true with a qzeros word other than the symmetric 0x77777777", async () => {
    const { dir, file } = damaged(gptqDir, (f) => editTensor(f, "model.layers.1.self_attn.v_proj.qzeros", (b) => b.writeUInt32LE(0x77777677, 4)));
    expectOneLineError(await runCli(["eval-ppl", dir, ...EVAL]), file, 'tensor "model.layers.1.self_attn.v_proj.qzeros"', "sym: true", "stored zero 6");
  });

  it("gptq desc_act: false with a non-trivial g_idx", async () => {
    const { dir, file } = damaged(gptqDir, (f) =>
      editTensor(f, `${L0}.g_idx`, (b) => {
        b.writeInt32LE(1, 0); // channel 0 → group 1, channel 63 → group 0
        b.writeInt32LE(0, 4 * 63);
      }),
    );
    expectOneLineError(await runCli(["inspect", dir]), file, `tensor "${L0}.g_idx"`, "desc_act: false", /disagree/);
  });

  it("gptq desc_act: true with g_idx removed names the missing tensor", async () => {
    const { dir, file } = damaged(gptqDir, (f, d) => {
      removeTensor(f, `${L0}.g_idx`);
      editConfig(d, (c) => (c.quantization_config.desc_act = true));
    });
    expectOneLineError(await runCli(["generate", dir, ...GEN]), file, `tensor "${L0}.g_idx" is missing`, "desc_act: true");
  });
});

describe("inspect validates packed tensors", () => {
  it("a qweight with a wrong shape", async () => {
    const { dir, file } = damaged(gptqDir, (f) => editHeader(f, (h) => (entry(h, `${L0}.qweight`).shape = [16, 32])));
    expectOneLineError(await runCli(["inspect", dir]), file, `tensor "${L0}.qweight" has shape [16, 32], expected [8, 64]`);
  });

  it("a qzeros relabelled F32", async () => {
    const { dir, file } = damaged(gptqDir, (f) => editHeader(f, (h) => (entry(h, "model.layers.4.self_attn.k_proj.qzeros").dtype = "F32")));
    expectOneLineError(await runCli(["inspect", dir, "--json"]), file, 'tensor "model.layers.4.self_attn.k_proj.qzeros" has dtype F32, expected I32');
  });

  it("a compressed-tensors weight_packed with a wrong shape and a weight_scale relabelled I16", async () => {
    const a = damaged(ctDir, (f) => editHeader(f, (h) => (entry(h, "model.layers.0.mlp.down_proj.weight_packed").shape = [22, 64])));
    const b = damaged(ctDir, (f) => editHeader(f, (h) => (entry(h, "model.layers.0.mlp.down_proj.weight_scale").dtype = "I16")));
    const [ra, rb] = await Promise.all([runCli(["inspect", a.dir]), runCli(["inspect", b.dir, "--tensors"])]);
    expectOneLineError(ra, a.file, 'tensor "model.layers.0.mlp.down_proj.weight_packed" has shape [22, 64], expected [64, 22]');
    expectOneLineError(rb, b.file, 'tensor "model.layers.0.mlp.down_proj.weight_scale" has dtype I16, expected F16/BF16/F32');
  });
});

describe("evaluation refuses non-finite results", () => {
  it("finite but huge fp weights that overflow: eval-ppl and generate name the model dir and where", async () => {
    // 3e38 in a row of down_proj is a finite, valid float32; the matmul overflows to Inf and the logits go NaN.
    const { dir } = damaged(STORIES_VENDORED, (f) =>
      editTensor(f, "model.layers.1.mlp.down_proj.weight", (b) => {
        for (let i = 0; i < 172; i++) b.writeFloatLE(i % 2 ? 3e38 : -3e38, 4 * i);
      }),
    );
    const [e, g] = await Promise.all([runCli(["eval-ppl", dir, ...EVAL]), runCli(["generate", dir, ...GEN])]);
    expectOneLineError(e, `${dir}: the model produced non-finite logits in window 1 of 2`);
    expectOneLineError(g, `${dir}: the model produced non-finite logits`, "generated token 1");
  });
});
