// A checkpoint directory: one `model.safetensors`, a sharded set described by
// `model.safetensors.index.json`, or any other `*.safetensors` file(s). Presents one flat tensor namespace.

import * as fs from "node:fs";
import * as nodePath from "node:path";
import { z } from "zod";
import type { StoredTensor, TensorInfo } from "./types.js";
import type { TypedArray } from "./dtype.js";
import { SafetensorsFile } from "./safetensors.js";
import { FileFormatError, ModelError } from "../util/errors.js";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

const IndexSchema = z.object({
  metadata: z.record(z.string(), z.unknown()).nullish(),
  weight_map: z.record(z.string(), z.string()),
});

const EXPECTED =
  `expected ${SINGLE_FILE}, a sharded ${INDEX_FILE} with its shards, or a *.safetensors file. ` +
  `PyTorch .bin/.pt checkpoints are not supported; convert them to safetensors first ` +
  `(e.g. safetensors.torch.save_file, or save_pretrained(..., safe_serialization=True))`;

export class Checkpoint {
  readonly dir: string;
  /** Full paths of the safetensors files backing this checkpoint. */
  readonly files: string[];
  private readonly shards: Map<string, SafetensorsFile>;
  private readonly index: Map<string, TensorInfo>;

  private constructor(dir: string, shards: Map<string, SafetensorsFile>, index: Map<string, TensorInfo>) {
    this.dir = dir;
    this.shards = shards;
    this.files = [...shards.keys()];
    this.index = index;
  }

  /**
   * Open a checkpoint directory (or, for convenience, a single .safetensors file path).
   * Preference: model.safetensors.index.json, then model.safetensors, then every *.safetensors in the dir.
   */
  static open(dir: string): Checkpoint {
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") {
        throw new FileFormatError(dir, `checkpoint directory does not exist; ${EXPECTED}`);
      }
      throw new FileFormatError(dir, `cannot access (${code === "EACCES" || code === "EPERM" ? "permission denied" : (e as Error).message})`);
    }
    if (st.isFile()) {
      if (!dir.endsWith(".safetensors")) throw new FileFormatError(dir, `not a checkpoint directory; ${EXPECTED}`);
      return Checkpoint.fromFiles(nodePath.dirname(dir), [dir]);
    }
    if (!st.isDirectory()) throw new FileFormatError(dir, `not a directory; ${EXPECTED}`);

    const indexPath = nodePath.join(dir, INDEX_FILE);
    if (fs.existsSync(indexPath)) return Checkpoint.fromIndex(dir, indexPath);

    const single = nodePath.join(dir, SINGLE_FILE);
    if (fs.existsSync(single)) return Checkpoint.fromFiles(dir, [single]);

    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch (e) {
      throw new FileFormatError(dir, `cannot list directory (${(e as Error).message})`);
    }
    const found = entries.filter((f) => f.endsWith(".safetensors")).sort();
    if (found.length === 0 && dir.replace(/[\\/]+$/, "").endsWith(".safetensors")) {
      // A directory where a .safetensors file was meant (e.g. a failed download left model.safetensors/).
      throw new FileFormatError(dir, "is a directory, expected a .safetensors file");
    }
    if (found.length === 0) {
      const bins = entries.filter((f) => /\.(bin|pt|pth)$/.test(f));
      const seen = bins.length ? ` (found ${bins.slice(0, 3).join(", ")}${bins.length > 3 ? ", ..." : ""})` : "";
      throw new FileFormatError(dir, `no safetensors checkpoint found${seen}; ${EXPECTED}`);
    }
    return Checkpoint.fromFiles(dir, found.map((f) => nodePath.join(dir, f)));
  }

  private static fromFiles(dir: string, paths: string[]): Checkpoint {
    const shards = new Map<string, SafetensorsFile>();
    const index = new Map<string, TensorInfo>();
    try {
      for (const p of paths) {
        const f = SafetensorsFile.open(p);
        shards.set(p, f);
        for (const [name, info] of f.tensors) {
          const prev = index.get(name);
          if (prev) {
            throw new FileFormatError(dir, `tensor "${name}" appears in both ${prev.file} and ${p}`);
          }
          index.set(name, info);
        }
      }
    } catch (e) {
      for (const f of shards.values()) f.close();
      throw e;
    }
    return new Checkpoint(dir, shards, index);
  }

  private static fromIndex(dir: string, indexPath: string): Checkpoint {
    let text: string;
    try {
      text = fs.readFileSync(indexPath, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new FileFormatError(
        indexPath,
        code === "EISDIR" ? "is a directory, expected a JSON shard index"
        : code === "EACCES" || code === "EPERM" ? "permission denied"
        : `cannot read (${(e as Error).message})`,
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new FileFormatError(indexPath, `not valid JSON: ${(e as Error).message}`);
    }
    const parsed = IndexSchema.safeParse(json);
    if (!parsed.success) {
      const detail = parsed.error.issues
        .map((i) => (i.path.length ? `${i.path.join(".")}: ${i.message}` : i.message))
        .join("; ");
      throw new FileFormatError(indexPath, `invalid shard index (${detail})`);
    }
    const weightMap = parsed.data.weight_map;
    if (Object.keys(weightMap).length === 0) throw new FileFormatError(indexPath, "weight_map is empty");

    // Group tensors by shard, keeping first-seen shard order.
    const byShard = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(weightMap)) {
      if (shard === "" || nodePath.isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) {
        throw new FileFormatError(indexPath, `tensor "${name}" maps to shard "${shard}", which is not a file name inside ${dir}`);
      }
      let list = byShard.get(shard);
      if (!list) byShard.set(shard, (list = []));
      list.push(name);
    }
    for (const [shard, names] of byShard) {
      if (!fs.existsSync(nodePath.join(dir, shard))) {
        throw new FileFormatError(
          indexPath,
          `shard "${shard}" (holding ${names.length} tensors, e.g. "${names[0]}") is missing from ${dir}`,
        );
      }
    }

    const shards = new Map<string, SafetensorsFile>();
    const index = new Map<string, TensorInfo>();
    try {
      for (const [shard, names] of byShard) {
        const p = nodePath.join(dir, shard);
        const f = SafetensorsFile.open(p);
        shards.set(p, f);
        for (const name of names) {
          const info = f.tensors.get(name);
          if (!info) {
            throw new FileFormatError(p, `tensor "${name}" is listed in ${INDEX_FILE} but absent from this shard`);
          }
          index.set(name, info);
        }
      }
    } catch (e) {
      for (const f of shards.values()) f.close();
      throw e;
    }
    return new Checkpoint(dir, shards, index);
  }

  /** All tensor names (header order; shard order for sharded checkpoints). */
  names(): string[] {
    return [...this.index.keys()];
  }

  has(name: string): boolean {
    return this.index.has(name);
  }

  /** Location, dtype and shape of `name`. Throws ModelError naming the checkpoint if absent. */
  info(name: string): TensorInfo {
    const t = this.index.get(name);
    if (!t) {
      const hint = this.suggest(name);
      throw new ModelError(
        `${this.dir}: checkpoint has no tensor "${name}" (${this.index.size} tensors${hint ? `; did you mean "${hint}"?` : ""})`,
      );
    }
    return t;
  }

  /** The metadata of the first shard (for single-file checkpoints, the file's __metadata__). */
  get metadata(): Record<string, string> {
    const first = this.shards.values().next();
    return first.done ? {} : first.value.metadata;
  }

  /** The tensor's dtype, shape and raw bytes, or undefined when absent (the getter packed formats read through). */
  stored(name: string): StoredTensor | undefined {
    if (!this.has(name)) return undefined;
    const { dtype, shape } = this.info(name);
    return { dtype, shape, data: this.readRaw(name) };
  }

  readRaw(name: string): Uint8Array {
    return this.fileOf(name).readRaw(name);
  }

  readF32(name: string): Float32Array {
    return this.fileOf(name).readF32(name);
  }

  readTyped(name: string): TypedArray {
    return this.fileOf(name).readTyped(name);
  }

  /** Close every shard. Idempotent. */
  close(): void {
    for (const f of this.shards.values()) f.close();
  }

  private fileOf(name: string): SafetensorsFile {
    return this.shards.get(this.info(name).file)!;
  }

  /** A known name sharing the longest suffix with `name` (catches prefix mix-ups like "model." vs none). */
  private suggest(name: string): string | undefined {
    let best: string | undefined;
    let bestLen = 0;
    for (const k of this.index.keys()) {
      let n = 0;
      while (n < k.length && n < name.length && k[k.length - 1 - n] === name[name.length - 1 - n]) n++;
      if (n > bestLen) {
        bestLen = n;
        best = k;
      }
    }
    return bestLen >= Math.min(8, name.length) && bestLen > name.length / 2 ? best : undefined;
  }
}
