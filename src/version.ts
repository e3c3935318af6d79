// quant4's version, read once from package.json (the one place it is written), for --version, output
// configs and result files.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
/** package.json at the package root, from src/ (tsx) or dist/src/ (compiled). */
const pkgFile = [path.resolve(here, "../package.json"), path.resolve(here, "../../package.json")].find((f) => fs.existsSync(f));

export const VERSION: string = pkgFile ? (JSON.parse(fs.readFileSync(pkgFile, "utf8")) as { version: string }).version : "unknown";
