// Shared CLI plumbing: option parsing with zod, backend selection, one-line errors with exit codes.
// Exit codes: 0 ok, 1 a quality gate failed, 2 an error (bad input, bad option, I/O failure),
// 3 an internal error (a bug: the message asks for a report), 130 interrupted by Ctrl-C.

import { z } from "zod";
import { getBackend } from "../compute/index.js";
import type { Backend } from "../compute/backend.js";
import { InterruptedError, OutputError, Quant4Error, UsageError } from "../util/errors.js";

export const EXIT_OK = 0;
export const EXIT_GATE = 1;
export const EXIT_ERROR = 2;
export const EXIT_INTERNAL = 3;
export const EXIT_INTERRUPTED = 130;

const REPORT_HINT = "this is a bug in quant4; please report it with the command line and this message";

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

/** Run a command action: a Quant4Error prints one line and exits 2; anything else is an internal error (exit 3). */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (e) {
      if (e instanceof InterruptedError) {
        process.stderr.write(`quant4: ${e.message}\n`);
        process.exitCode = e.exitCode;
      } else if (e instanceof Quant4Error) {
        process.stderr.write(`quant4: error: ${e.message}\n`);
        process.exitCode = e.exitCode;
      } else {
        const err = e as Error;
        const stack = process.env["QUANT4_DEBUG"] ? `\n${err?.stack ?? ""}` : " (QUANT4_DEBUG=1 shows the stack trace)";
        process.stderr.write(`quant4: internal error: ${err?.message ?? String(e)}; ${REPORT_HINT}${stack}\n`);
        process.exitCode = EXIT_INTERNAL;
      }
    }
  };
}

/** stdout failed: a closed pipe is the reader's choice (exit 0); anything else (ENOSPC, EIO) is one error line. */
export function reportStdoutError(e: NodeJS.ErrnoException): void {
  if (e.code === "EPIPE") process.exit(EXIT_OK);
  const why = e.code === "ENOSPC" ? "no space left on device" : e.message;
  process.stderr.write(`quant4: error: cannot write to standard output: ${why}\n`);
  process.exit(EXIT_ERROR);
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

/** Write to stdout; a synchronous failure (stdout redirected to a full file) becomes an OutputError. */
export function writeStdout(text: string): void {
  try {
    process.stdout.write(text);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new OutputError("standard output", err.code === "ENOSPC" ? "no space left on device" : err.message);
  }
}

export function printJson(obj: unknown): void {
  writeStdout(JSON.stringify(obj, null, 2) + "\n");
}

export { fmtBytes } from "../util/format.js";
