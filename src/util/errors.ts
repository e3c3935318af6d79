// Typed errors that cross every layer. The CLI prints `error: <message>` once and exits non-zero;
// messages name the file (and tensor, option, ...) so a user can act on them without a stack trace.

export class Quant4Error extends Error {
  readonly code: string;
  /** The process exit code when this error ends a command: 2 (bad input, usage, I/O) unless a subclass says otherwise. */
  readonly exitCode: number = 2;
  constructor(code: string, message: string) {
    super(message);
    this.name = "Quant4Error";
    this.code = code;
  }
}

/** A file on disk is malformed (corrupt/truncated safetensors, bad JSON, bad tokenizer...). */
export class FileFormatError extends Quant4Error {
  constructor(readonly file: string, detail: string) {
    super("E_FILE_FORMAT", `${file}: ${detail}`);
    this.name = "FileFormatError";
  }
}

/** The checkpoint is well-formed but not something we can run (unknown architecture, shape mismatch, NaN...). */
export class ModelError extends Quant4Error {
  constructor(message: string) {
    super("E_MODEL", message);
    this.name = "ModelError";
  }
}

/** A user-supplied option or config is invalid. */
export class UsageError extends Quant4Error {
  constructor(message: string) {
    super("E_USAGE", message);
    this.name = "UsageError";
  }
}

/** The native compute addon is missing or failed. */
export class BackendError extends Quant4Error {
  constructor(message: string) {
    super("E_BACKEND", message);
    this.name = "BackendError";
  }
}

/** Writing output failed (unwritable directory, out of disk...). */
export class OutputError extends Quant4Error {
  constructor(readonly file: string, detail: string) {
    super("E_OUTPUT", `${file}: ${detail}`);
    this.name = "OutputError";
  }
}

/** The user pressed Ctrl-C: the command stops cleanly (exit 130) and says how to continue. */
export class InterruptedError extends Quant4Error {
  override readonly exitCode = 130;
  constructor(message: string) {
    super("E_INTERRUPTED", message);
    this.name = "InterruptedError";
  }
}

/** A network transfer failed (endpoint unreachable, connection cut mid-download...). */
export class NetworkError extends Quant4Error {
  constructor(message: string) {
    super("E_NETWORK", message);
    this.name = "NetworkError";
  }
}

/** The Hugging Face Hub answered, but with a problem (unknown repo or revision, no access, no safetensors...). */
export class HubError extends Quant4Error {
  constructor(readonly repo: string, detail: string) {
    super("E_HUB", `${repo}: ${detail}`);
    this.name = "HubError";
  }
}
