// Progress bars on stderr (cli-progress), shown only on an interactive terminal and never with --json,
// so CI logs and machine-readable output stay clean.

import cliProgress from "cli-progress";

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void;
  stop(): void;
}

const NOOP: Progress = { update() {}, stop() {} };

export function progressEnabled(json: boolean): boolean {
  return !json && Boolean(process.stderr.isTTY) && !process.env["CI"];
}

/** A bar for `total` units; `format` may use {bar} {percentage} {value} {total} {eta_formatted} and payload keys. */
export function startProgress(enabled: boolean, label: string, total: number, format = "{bar} {percentage}% | {value}/{total} | ETA {eta_formatted}", payload: Record<string, string | number> = {}): Progress {
  if (!enabled) return NOOP;
  const bar = new cliProgress.SingleBar(
    { format: `${label} ${format}`, stream: process.stderr, hideCursor: true, clearOnComplete: true, etaBuffer: 20 },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, payload);
  return {
    update: (v, p) => bar.update(v, p),
    stop: () => bar.stop(),
  };
}

/** Two stacked bars (e.g. blocks and the layers of the current block). */
export interface DualProgress {
  outer: Progress;
  inner(label: string, total: number): Progress;
  stop(): void;
}

export function startDualProgress(enabled: boolean, outerLabel: string, outerTotal: number): DualProgress {
  if (!enabled) return { outer: NOOP, inner: () => NOOP, stop() {} };
  const multi = new cliProgress.MultiBar(
    { format: "{label} {bar} {value}/{total} | ETA {eta_formatted} {info}", stream: process.stderr, hideCursor: true, clearOnComplete: true, etaBuffer: 20 },
    cliProgress.Presets.shades_classic,
  );
  const outerBar = multi.create(outerTotal, 0, { label: outerLabel.padEnd(8), info: "" });
  let innerBar: cliProgress.SingleBar | null = null;
  return {
    // MultiBar redraws on a timer, which never fires while the synchronous pipeline holds the event
    // loop: redraw explicitly on every update.
    outer: { update: (v, p) => { outerBar.update(v, p); multi.update(); }, stop: () => outerBar.stop() },
    inner(label, total) {
      if (innerBar) multi.remove(innerBar);
      const bar = multi.create(total, 0, { label: label.padEnd(8), info: "" });
      innerBar = bar;
      multi.update();
      return { update: (v, p) => { bar.update(v, p); multi.update(); }, stop: () => bar.stop() };
    },
    stop: () => multi.stop(),
  };
}
