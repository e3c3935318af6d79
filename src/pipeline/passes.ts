// The calibration passes of one block: each true-sequential group needs its Linears' input over every
// calibration window, computed with the earlier groups already quantized. Instead of restarting the
// block forward from the block input for every group, a pass resumes from the stage the previous one
// stopped at (src/model/forward.ts: the attention output after q/k/v, the residual after o, the MLP
// hidden state after gate/up) and caches where it stops, so a block costs about one forward in all;
// the pass that makes the next block's inputs resumes from the last cache too. The caches hold exactly
// the fp32 values the forward computed (same code, same batches, same weights), so results are
// bit-identical to restarting; they live in ActivationStores, spilled to the work dir when over budget.

import { Stage, advanceBlock, releaseScratch, resumeState, stageCarry, type BlockState, type BlockWeights, type ForwardContext } from "../model/forward.js";
import type { ActivationStore } from "./activations.js";

/** An fp32 store of `width` values per row over the calibration windows (spilled or not, the caller's choice). */
export type CacheStoreFactory = (width: number, tag: string) => ActivationStore;

/** Windows per forward batch: enough rows for efficient GEMMs, bounded memory. */
export function batchWindows(seqlen: number, nsamples: number): number {
  return Math.max(1, Math.min(nsamples, Math.floor(2048 / seqlen)));
}

export class BlockPasses {
  /** The stage the caches hold (attnIn: nothing cached, resume from the block input). */
  private stage: Stage = Stage.attnIn;
  /** The residual stream at `stage` when it is not the block input. */
  private residual: ActivationStore | null = null;
  /** The Linears' input at `stage` when it is not a norm of the residual. */
  private input: ActivationStore | null = null;
  /** Numbers the stores (a new one may be written while the old one is read: distinct spill files). */
  private made = 0;

  /**
   * `acts`: the block inputs; `store`: makes cache stores; `restart`: never cache, every pass runs from
   * the block input (the arithmetic is the same; kept to test exactly that).
   */
  constructor(
    private readonly ctx: ForwardContext,
    private readonly w: BlockWeights,
    private readonly acts: ActivationStore,
    private readonly store: CacheStoreFactory,
    private readonly restart = false,
  ) {}

  /**
   * Run every batch up to stage `to` and hand `visit` the state there (its input is a scratch view:
   * use it before returning). With `keep`, cache the state so the next pass resumes from it.
   */
  run(to: Stage, visit: (s0: number, s1: number, state: BlockState) => void, keep: boolean): void {
    const { acts, ctx, w } = this;
    // A stage behind the cached one (an architecture whose groups are not in forward order): restart.
    if (to < this.stage || this.restart) this.drop();
    const from = this.stage;
    const fromCarry = stageCarry(ctx.arch, from);
    const carry = stageCarry(ctx.arch, to);
    keep &&= !this.restart && to !== Stage.out;
    // New stores only for what changes; the residual store is kept while the residual stream is the same.
    const residual = keep && carry.residual !== 0 ? (carry.residual === fromCarry.residual && this.residual ? this.residual : this.store(ctx.arch.hidden, `residual-${this.made++}`)) : null;
    const input = keep && carry.inputWidth > 0 ? this.store(carry.inputWidth, `input-${this.made++}`) : null;
    const T = acts.seqlen;
    const B = batchWindows(T, acts.samples);
    for (let s0 = 0; s0 < acts.samples; s0 += B) {
      const s1 = Math.min(acts.samples, s0 + B);
      const rows = (s1 - s0) * T;
      // Read-only views where nothing writes: the block inputs (the residual stream is a new array after
      // o_proj) and the Linears' inputs; the residual cache is copied (the down_proj step adds in place).
      const x = fromCarry.residual === 0 ? acts.read(s0, s1) : this.residual!.get(s0, s1);
      const start = resumeState(ctx, w, from, x, fromCarry.inputWidth > 0 ? this.input!.read(s0, s1) : null, rows);
      const state = advanceBlock(ctx, w, start, to, s1 - s0, T);
      visit(s0, s1, state);
      if (residual && residual !== this.residual) residual.set(s0, state.residual);
      if (input) input.set(s0, state.input!);
    }
    // The forward's scratch buffers are not held through the GPTQ that follows (its peak; ≈ 0.25 GiB at 7B shapes).
    releaseScratch(ctx);
    if (!keep) return this.drop();
    if (this.residual !== residual) this.residual?.close();
    this.input?.close();
    this.stage = to;
    this.residual = residual;
    this.input = input;
  }

  /** Release the caches (the block is done, or a pass restarts). */
  drop(): void {
    this.residual?.close();
    this.input?.close();
    this.residual = this.input = null;
    this.stage = Stage.attnIn;
  }
}
