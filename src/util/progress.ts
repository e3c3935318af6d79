// Progress on stderr, never on stdout (which stays clean for results and --json):
//  - "bar": cli-progress bars on an interactive terminal (not with --json);
//  - "lines": without a terminal (CI logs, files), one plain line at most every ~10 s as work advances,
//    so a long job shows signs of life without flooding the log;
//  - "off": nothing (QUANT4_PROGRESS=off, or --json on a terminal).
// QUANT4_PROGRESS=bar|lines|off overrides the choice. The pipeline is synchronous between its yields, so
// everything is drawn from update() calls, not from timers.

import cliProgress from "cli-progress";

export type ProgressMode = "bar" | "lines" | "off";

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void;
  stop(): void;
}

const NOOP: Progress = { update() {}, stop() {} };

/** Seconds between two plain progress lines. */
export const LINE_INTERVAL_S = 10;

export function progressMode(json: boolean): ProgressMode {
  const forced = process.env["QUANT4_PROGRESS"];
  if (forced === "bar" || forced === "lines" || forced === "off") return forced;
  const tty = Boolean(process.stderr.isTTY) && !process.env["CI"];
  if (tty) return json ? "off" : "bar";
  return "lines";
}

function fmtSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** The shared clock of one command's plain progress lines (so nested progress does not double the rate). */
class LineClock {
  private last = performance.now();
  due(): boolean {
    const now = performance.now();
    if (now - this.last < LINE_INTERVAL_S * 1000) return false;
    this.last = now;
    return true;
  }
}

function lineProgress(clock: LineClock, label: string, total: number, describe?: (p: Record<string, string | number>) => string): Progress {
  const t0 = performance.now();
  let payload: Record<string, string | number> = {};
  return {
    update(value, p) {
      if (p) payload = { ...payload, ...p };
      if (!clock.due()) return;
      const el = (performance.now() - t0) / 1000;
      const eta = value > 0 ? (el / value) * (total - value) : NaN;
      const extra = describe ? describe(payload) : "";
      process.stderr.write(
        `quant4: ${label} ${value}/${total} (${Math.floor((100 * value) / Math.max(1, total))}%)${extra ? `, ${extra}` : ""}, elapsed ${fmtSeconds(el)}, ETA ${fmtSeconds(eta)}\n`,
      );
    },
    stop() {},
  };
}

/**
 * A bar for `total` units; `format` may use {bar} {percentage} {value} {total} {eta_formatted} and payload
 * keys. `describe` renders the payload for plain lines (e.g. tokens/s).
 */
export function startProgress(
  mode: ProgressMode,
  label: string,
  total: number,
  format = "{bar} {percentage}% | {value}/{total} | ETA {eta_formatted}",
  payload: Record<string, string | number> = {},
  describe?: (p: Record<string, string | number>) => string,
): Progress {
  if (mode === "off") return NOOP;
  if (mode === "lines") return lineProgress(new LineClock(), label, total, describe);
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

export function startDualProgress(mode: ProgressMode, outerLabel: string, outerTotal: number): DualProgress {
  if (mode === "off") return { outer: NOOP, inner: () => NOOP, stop() {} };
  if (mode === "lines") {
    // One line names the block count and the current layer: the inner progress feeds the outer line.
    const clock = new LineClock();
    let blocksDone = 0;
    const outer = lineProgress(clock, outerLabel, outerTotal, (p) => String(p["info"] ?? ""));
    return {
      outer: { update: (v, p) => { blocksDone = v; outer.update(v, p); }, stop() {} },
      inner: (label, total) => ({
        update: (v, p) => outer.update(blocksDone, { info: `${label}: ${v}/${total}${p?.["info"] ? ` ${p["info"]}` : ""}` }),
        stop() {},
      }),
      stop() {},
    };
  }
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

/**
 * A one-line status on a terminal ("⠹ tokenizing calibration text…") for steps without a count, such as
 * loading and tokenizing; each set() advances the spinner and replaces the text; stop() clears the line.
 * Silent outside "bar" mode (plain logs get the real progress lines instead).
 */
export interface Status {
  set(text: string): void;
  stop(): void;
}

const FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

export function startStatus(mode: ProgressMode): Status {
  if (mode !== "bar") return { set() {}, stop() {} };
  let frame = 0;
  let shown = false;
  return {
    set(text) {
      process.stderr.write(`\r\x1b[2K${FRAMES[frame++ % FRAMES.length]} ${text}`);
      shown = true;
    },
    stop() {
      if (shown) process.stderr.write("\r\x1b[2K");
      shown = false;
    },
  };
}

/** Show the terminal cursor again (a bar hides it; an abrupt exit must not leave it hidden). */
export function restoreCursor(): void {
  if (process.stderr.isTTY) process.stderr.write("\x1b[?25h");
}
