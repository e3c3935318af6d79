// Greedy (temperature 0) decoding with a KV cache: the reference check that the forward pass is right.

import type { Model } from "./model.js";
import { ModelError } from "../util/errors.js";

/** Refuse a logits row holding NaN/±Inf (argmax over it would pick an arbitrary token). */
function checkRow(model: Model, x: Float32Array, offset: number, n: number, what: string): void {
  for (let j = 0; j < n; j++) {
    const v = x[offset + j]!;
    if (v - v !== 0) {
      throw new ModelError(
        `${model.src.dir}: the model produced non-finite logits (${v} for token id ${j}) ${what}; its weights or activations overflow or hold NaN`,
      );
    }
  }
}

export function argmax(x: Float32Array, offset: number, n: number): number {
  let best = 0;
  let bv = -Infinity;
  for (let j = 0; j < n; j++) if (x[offset + j]! > bv) { bv = x[offset + j]!; best = j; }
  return best;
}

/** Greedy continuation of `prompt` (token ids, usually starting with BOS); returns only the new ids. */
export function generateGreedy(model: Model, prompt: number[], maxTokens: number, eosId: number | null, onToken?: (id: number) => void): number[] {
  if (prompt.length === 0) throw new ModelError("generate needs at least one prompt token (the model has no BOS token; pass --prompt)");
  const V = model.arch.vocabSize;
  const capacity = Math.min(model.arch.maxPositions, prompt.length + maxTokens);
  if (prompt.length >= model.arch.maxPositions) throw new ModelError(`the prompt has ${prompt.length} tokens; the model's context is ${model.arch.maxPositions}`);
  const cache = model.newCache(capacity);
  let logits = model.forward(prompt, 1, prompt.length, { pos0: 0, cache });
  checkRow(model, logits, (prompt.length - 1) * V, V, `predicting generated token 1 (after the ${prompt.length}-token prompt)`);
  let next = argmax(logits, (prompt.length - 1) * V, V);
  const out: number[] = [];
  let pos = prompt.length;
  while (out.length < maxTokens) {
    if (eosId !== null && next === eosId) break;
    out.push(next);
    onToken?.(next);
    // The last token needs no forward pass of its own (nor does one past the cache).
    if (out.length >= maxTokens || pos >= capacity) break;
    logits = model.forward([next], 1, 1, { pos0: pos, cache });
    pos++;
    checkRow(model, logits, 0, V, `predicting generated token ${out.length + 1}`);
    next = argmax(logits, 0, V);
  }
  return out;
}
