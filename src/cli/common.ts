// Shared CLI plumbing: option parsing with zod, backend selection, one-line errors with exit codes.
// Exit codes: 0 ok, 1 a quality gate failed, 2 an error (bad input, bad option, I/O failure).

import { z } from "zod";
import { getBackend } from "../compute/index.js";
import type { Backend } from "../compute/backend.js";
import { Quant4Error, UsageError } from "../util/errors.js";

export const EXIT_GATE = 1;
export const EXIT_ERROR = 2;

/** Parse commander's raw option object with a zod schema; the first problem becomes a UsageError naming the option. */
export function parseOptions<T>(schema: z.ZodType<T>, raw: unknown): T {
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const key = issue.path.map(String).join(".");
    const flag = key ? `--${key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}` : "options";
    throw new UsageError(`${flag}: ${issue.message}`);
  }
  return r.data;
}

/** A numeric CLI option given as a string. */
export const intOpt = (min: number) => z.coerce.number().int().min(min);
export const numOpt = () => z.coerce.number().finite();

export const deviceSchema = z.enum(["cpu", "cuda"]).default("cpu");

export function setupBackend(device: "cpu" | "cuda", threads?: number): Backend {
  const b = getBackend(device);
  if (threads !== undefined) b.setThreads(threads);
  return b;
}

/** Run a command action; a Quant4Error prints one line and exits 2, anything else prints its stack. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      if (e instanceof Quant4Error) {
        process.stderr.write(`quant4: error: ${e.message}\n`);
      } else {
        process.stderr.write(`quant4: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
      }
      process.exitCode = EXIT_ERROR;
    }
  };
}

/**
 * The local directory for a model argument: a local path as given, or (issue 11 item 6, src/io/hub.ts)
 * a Hugging Face Hub id `org/name[@revision]` downloaded into the HF cache. Every command resolves its
 * model argument here, once, before opening it.
 */
export async function resolveModelArg(spec: string, opts: { json?: boolean } = {}): Promise<string> {
  // Loaded only when needed: local paths never load the Hub client.
  const { resolveModelSpec } = await import("../io/hub.js");
  return resolveModelSpec(spec, opts);
}

export function printJson(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj, null, 2) + "\n");
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const u = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}
