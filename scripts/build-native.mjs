#!/usr/bin/env node
// Builds the native compute addon (native/ -> native/build/Release/quant4_native.node).
// Run by package.json's "install" script and by `npm run build:native`.
//
//   node scripts/build-native.mjs                            build (node-gyp rebuild in native/)
//   node scripts/build-native.mjs --print-blas-include-dirs  helper for binding.gyp: extra -I dirs
//
// node-gyp is always given --nodedir (the prefix of the running node, whose include/node holds the
// headers), so it never downloads headers. Set QUANT4_SKIP_NATIVE=1 to skip the build entirely.

import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { existsSync, readdirSync } from "node:fs";
import { cpus } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const nativeDir = path.join(root, "native");
const addonPath = path.join(nativeDir, "build", "Release", "quant4_native.node");

function fail(message) {
  console.error(`quant4: ${message}`);
  process.exit(1);
}

/** Directories that may hold OpenBLAS' cblas.h, most specific first (Linux). */
function blasIncludeCandidates() {
  const dirs = [];
  // Debian/Ubuntu: /usr/include/<multiarch>/openblas-{pthread,openmp,serial}/cblas.h
  let multiarch = [];
  try {
    multiarch = readdirSync("/usr/include").filter((d) => d.endsWith("-linux-gnu")).map((d) => path.join("/usr/include", d));
  } catch {
    /* no /usr/include */
  }
  for (const m of multiarch) {
    for (const variant of ["openblas-pthread", "openblas-openmp", "openblas-serial", "openblas"]) dirs.push(path.join(m, variant));
  }
  // Fedora/RHEL/Arch/source installs.
  dirs.push("/usr/include/openblas", "/usr/local/include/openblas", "/opt/OpenBLAS/include");
  // Generic locations (already on the compiler's default search path where they exist).
  dirs.push(...multiarch, "/usr/include", "/usr/local/include");
  return dirs;
}

function findBlasIncludeDir() {
  return blasIncludeCandidates().find((d) => existsSync(path.join(d, "cblas.h")));
}

function findOpenBlasLib() {
  const libDirs = ["/usr/lib64", "/usr/lib", "/usr/local/lib", "/opt/OpenBLAS/lib"];
  try {
    for (const d of readdirSync("/usr/lib")) if (d.endsWith("-linux-gnu")) libDirs.unshift(path.join("/usr/lib", d));
  } catch {
    /* ignore */
  }
  return libDirs.find((d) => existsSync(path.join(d, "libopenblas.so")));
}

// ---- binding.gyp helper mode: print extra include dirs (space separated, possibly none) ----------
if (process.argv.includes("--print-blas-include-dirs")) {
  const dir = process.platform === "linux" ? findBlasIncludeDir() : undefined;
  const defaults = new Set(["/usr/include", "/usr/local/include"]);
  if (dir && !defaults.has(dir) && !/^\/usr\/include\/[^/]+-linux-gnu$/.test(dir)) process.stdout.write(dir + "\n");
  process.exit(0);
}

if (process.env.QUANT4_SKIP_NATIVE === "1") {
  console.log("quant4: QUANT4_SKIP_NATIVE=1, skipping native addon build");
  process.exit(0);
}

// ---- preflight ------------------------------------------------------------------------------------
if (process.platform === "linux") {
  if (!findBlasIncludeDir() || !findOpenBlasLib()) {
    fail("OpenBLAS headers/library not found (cblas.h, libopenblas.so); install them with: apt-get install -y libopenblas-dev");
  }
} else if (process.platform !== "darwin") {
  fail(`native addon build is supported on Linux (OpenBLAS) and macOS (Accelerate), not ${process.platform}`);
}

// The running node's prefix: /usr/bin/node -> /usr, ~/.nvm/versions/node/v20.x/bin/node -> .../v20.x
const nodedir = path.resolve(path.dirname(process.execPath), "..");
if (!existsSync(path.join(nodedir, "include", "node", "node_api.h"))) {
  fail(
    `Node headers not found at ${path.join(nodedir, "include", "node")} (derived from ${process.execPath}); ` +
      "install the headers for this node (Debian: apt-get install -y libnode-dev) or use an official Node build",
  );
}

// ---- locate node-gyp --------------------------------------------------------------------------------
function findNodeGyp() {
  const candidates = [];
  try {
    // The project's own devDependency (present during `npm ci`: devDeps install before root scripts).
    candidates.push(createRequire(path.join(root, "package.json")).resolve("node-gyp/bin/node-gyp.js"));
  } catch {
    /* not installed */
  }
  // npm sets this for lifecycle scripts: the node-gyp bundled with npm.
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  // npm's bundled node-gyp next to this node.
  candidates.push(
    path.join(nodedir, "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
    path.join(path.dirname(process.execPath), "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
  );
  if (process.env.npm_execpath) {
    candidates.push(path.resolve(path.dirname(process.env.npm_execpath), "..", "node_modules", "node-gyp", "bin", "node-gyp.js"));
  }
  return candidates.find((c) => c && existsSync(c));
}

const nodeGyp = findNodeGyp();
const gypArgs = ["rebuild", "--release", `--nodedir=${nodedir}`, `--jobs=${Math.max(1, cpus().length)}`];
const [cmd, args] = nodeGyp ? [process.execPath, [nodeGyp, ...gypArgs]] : ["npx", ["--no-install", "node-gyp", ...gypArgs]];

console.log(`quant4: building native addon: ${[cmd, ...args].join(" ")} (in ${nativeDir})`);
const res = spawnSync(cmd, args, { cwd: nativeDir, stdio: "inherit", env: process.env });
if (res.error) fail(`could not run node-gyp: ${res.error.message}`);
if (res.status !== 0) fail(`native addon build failed (node-gyp exit ${res.status ?? res.signal}); see the output above`);

// ---- smoke test: the addon loads and links its BLAS -------------------------------------------------
try {
  const addon = createRequire(import.meta.url)(addonPath);
  console.log(`quant4: native addon ready: ${addonPath} (${addon.blasInfo()}, ${addon.getThreads()} threads)`);
} catch (err) {
  fail(`native addon built but failed to load (${addonPath}): ${err instanceof Error ? err.message : String(err)}`);
}
