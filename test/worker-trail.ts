// Test-run diagnostics for a test worker that dies without a word (a native crash or the OOM killer ends
// a vitest fork; vitest 4 then reports only "Worker exited unexpectedly", naming neither the file nor the
// test nor the signal). Two halves:
//  - setupFiles (this module, in every worker): before each test, the worker writes the test it is in to
//    <tmp>/quant4-test-trail-<vitest pid>/<worker pid>; after its last test it removes the file; on a normal
//    exit (process.exit included) it records the exit code.
//  - globalSetup (this module's teardown, in vitest's own process): prints every trail left behind, so the
//    log names the test that was running when its worker died, and whether it exited or was killed.

import { appendFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";

const trailDir = (vitestPid: number) => path.join(os.tmpdir(), `quant4-test-trail-${vitestPid}`);

/** globalSetup: starts an empty trail directory; teardown reports what dead workers left in it. */
export function setup(): () => void {
  const dir = trailDir(process.pid);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return () => {
    let left: string[] = [];
    try {
      left = readdirSync(dir);
    } catch {
      return;
    }
    for (const f of left) {
      const lines = readFileSync(path.join(dir, f), "utf8").trim().split("\n");
      const exit = lines.find((l) => l.startsWith("exit "));
      const test = lines.filter((l) => l.startsWith("test ")).pop()?.slice(5) ?? "(before its first test)";
      console.error(
        `quant4 tests: worker ${f} died in ${test}: ` +
          (exit ? `it exited with code ${exit.slice(5)}` : "killed by a signal (a native crash, or the OOM killer)"),
      );
    }
    rmSync(dir, { recursive: true, force: true });
  };
}

// setupFiles: runs in each worker, where vitest's hooks are available.
if (process.env["VITEST_WORKER_ID"] !== undefined) {
  const { beforeEach, afterAll } = await import("vitest");
  const file = path.join(trailDir(process.ppid), String(process.pid));
  const write = (line: string, append: boolean) => {
    try {
      (append ? appendFileSync : writeFileSync)(file, line + "\n");
    } catch {
      /* no trail directory (a run without the globalSetup): nothing to record */
    }
  };
  let inTest = false;
  beforeEach((ctx) => {
    inTest = true;
    write(`test ${ctx.task.file.name} > ${ctx.task.name}`, false);
  });
  afterAll(() => {
    inTest = false;
    rmSync(file, { force: true });
  });
  process.on("exit", (code) => {
    if (inTest) write(`exit ${code}`, true);
  });
}
