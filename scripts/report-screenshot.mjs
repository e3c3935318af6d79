#!/usr/bin/env node
// Screenshot of a quant4 report page in headless Chromium (puppeteer-core, a system browser: Debian's
// `chromium`, or QUANT4_CHROMIUM=/path): `node scripts/report-screenshot.mjs report.html out.png [width] [max-height]`
// (a page taller than max-height is cut there, to keep README images small).
// Used for the README's screenshots (docs/report-*.png); the browser test (test/report.test.ts) has its own.
import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";

const [html, png, width = "1100", maxHeight] = process.argv.slice(2);
if (!html || !png) {
  console.error("usage: node scripts/report-screenshot.mjs <report.html> <out.png> [width] [max-height]");
  process.exit(2);
}
const candidates = [process.env.QUANT4_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].filter(Boolean);
const exe = candidates.find((p) => fs.existsSync(p));
if (!exe) {
  console.error(`no Chromium found (tried ${candidates.join(", ")}); apt-get install chromium, or set QUANT4_CHROMIUM`);
  process.exit(2);
}
const browser = await puppeteer.launch({ executablePath: exe, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage();
  await page.setViewport({ width: Number(width), height: 800, deviceScaleFactor: 1 });
  await page.goto("file://" + path.resolve(html), { waitUntil: "load" });
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  if (maxHeight && height > Number(maxHeight)) await page.screenshot({ path: png, clip: { x: 0, y: 0, width: Number(width), height: Number(maxHeight) }, captureBeyondViewport: true });
  else await page.screenshot({ path: png, fullPage: true });
} finally {
  await browser.close();
}
console.error(`wrote ${png} (${(fs.statSync(png).size / 1024).toFixed(1)} KiB)`);
