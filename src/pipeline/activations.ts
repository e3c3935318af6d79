// Calibration activations between blocks: nsamples × seqlen rows of `hidden` values, kept as fp32 or
// (halving memory) fp16. Batches are materialised as fp32 for the forward pass and written back.

import { f16ToF32, f32ToF16 } from "../io/dtype.js";

export type ActDtype = "fp32" | "fp16";

export class ActivationStore {
  private readonly f32?: Float32Array;
  private readonly f16?: Uint16Array;
  constructor(readonly samples: number, readonly seqlen: number, readonly hidden: number, readonly dtype: ActDtype) {
    const n = samples * seqlen * hidden;
    if (dtype === "fp32") this.f32 = new Float32Array(n);
    else this.f16 = new Uint16Array(n);
  }

  get bytes(): number {
    return (this.f32 ?? this.f16!).byteLength;
  }

  private range(s0: number, s1: number): [number, number] {
    const per = this.seqlen * this.hidden;
    return [s0 * per, s1 * per];
  }

  /** Samples [s0, s1) as one fp32 array [(s1−s0)·seqlen, hidden]. */
  get(s0: number, s1: number): Float32Array {
    const [a, b] = this.range(s0, s1);
    return this.f32 ? this.f32.slice(a, b) : f16ToF32(this.f16!.subarray(a, b));
  }

  set(s0: number, x: Float32Array): void {
    const [a] = this.range(s0, s0);
    if (this.f32) this.f32.set(x, a);
    else this.f16!.set(f32ToF16(x), a);
  }
}
