// The quantization methods the pipeline runs, as data (the algorithm registry beside the format
// registry): what each needs from calibration and which steps it takes. The pipeline asks these flags;
// nothing else switches on a method's name.

export interface MethodSpec {
  /** One line for --help and the README. */
  description: string;
  /** Needs calibration activations to quantize at all (RTN only uses them to measure output errors). */
  needsCalibration: boolean;
  /** AWQ's activation-aware scaling and clipping before quantizing (src/pipeline/awq.ts). */
  awq: boolean;
  /** GPTQ's Hessian-based error compensation (else each weight is rounded to the nearest grid point). */
  gptq: boolean;
}

import { AWQ_CLIP_TOKENS, AWQ_SCALE_TOKENS } from "./awq.js";

const awqSample = `the scale search runs on the first ≤ ${AWQ_SCALE_TOKENS.toLocaleString("en-US")} calibration tokens (whole windows; --awq-tokens), the clip search on ${AWQ_CLIP_TOKENS} of them`;

export const METHODS = {
  rtn: { description: "round to nearest: no calibration needed", needsCalibration: false, awq: false, gptq: false },
  gptq: { description: "GPTQ: second-order error compensation from calibration Hessians", needsCalibration: true, awq: false, gptq: true },
  awq: { description: `AWQ: activation-aware scaling and clipping, then rounding; ${awqSample}`, needsCalibration: true, awq: true, gptq: false },
  "awq-gptq": { description: "AWQ's scaling and clipping, then GPTQ on the scaled weights", needsCalibration: true, awq: true, gptq: true },
} as const satisfies Record<string, MethodSpec>;

export type MethodName = keyof typeof METHODS;
export const METHOD_NAMES = Object.keys(METHODS) as MethodName[];
