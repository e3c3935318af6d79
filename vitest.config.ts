import { defineConfig } from "vitest/config";

// Tests run real models; a 2-core CI machine needs generous per-test limits and no file parallelism
// beyond the cores it has.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    maxWorkers: 2,
    // Tests never read or write the user's token cache (test/token-cache.test.ts uses temp dirs).
    env: { QUANT4_NO_CACHE: "1" },
    // A worker that dies (native crash, OOM killer) is named with the test it was in (test/worker-trail.ts).
    globalSetup: ["test/worker-trail.ts"],
    setupFiles: ["test/worker-trail.ts"],
  },
});
