// Bit packing of small unsigned integers into int32 words, shared by every format (one loop pair,
// parameterised by strides, so a format only states which axis it packs along and how words fill).
//
// A "line" is the run of values that is packed together (e.g. one output column's input channels
// for GPTQ qweight). Within a line, value k is placed LSB first:
//   - "stream": a contiguous little-endian bitstream, value k at bit k·bits; a value may straddle
//     two words. For 2/4/8 bits this is 32/bits values per word; for 3 bits it is AutoGPTQ's
//     32-values-in-3-words layout (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py pack()).
//   - "word": floor(32/bits) values per word, value k in word floor(k/pf) at bit (k mod pf)·bits,
//     unused high bits and a padded last word are 0 (compressed-tensors pack_quantized.py pack_to_int32).
//     An optional `slots` permutation interleaves the values within each word (AutoAWQ GEMM).

import { ModelError } from "../src/util/errors.js";

export type PackScheme = "stream" | "word";

/** Where values come from and where words go, as strides into flat row-major arrays. */
export interface PackLayout {
  /** Number of independent lines. */
  lines: number;
  /** Values per line. */
  lineLen: number;
  /** Source index of value k of line l = l·srcLineStride + k·srcElemStride. */
  srcLineStride: number;
  srcElemStride: number;
  /** Destination index of word w of line l = l·dstLineStride + w·dstWordStride. */
  dstLineStride: number;
  dstWordStride: number;
  /**
   * "word" scheme only: value k of a line sits in slot slots[k mod pf] of its word (bit slots[k mod pf]·bits)
   * instead of slot k mod pf; a permutation of 0..pf−1. AutoAWQ's GEMM interleave for 4 bits is
   * [0, 4, 1, 5, 2, 6, 3, 7] (its pack order [0, 2, 4, 6, 1, 3, 5, 7] inverted).
   */
  slots?: readonly number[];
}

/** int32 words needed to hold `n` values of `bits` bits with `scheme`. */
export function packedWords(n: number, bits: number, scheme: PackScheme): number {
  if (scheme === "stream") return Math.ceil((n * bits) / 32);
  return Math.ceil(n / Math.floor(32 / bits));
}

/** Word index and bit shift of every value of a line (computed once per call, not per value). */
function positions(n: number, bits: number, scheme: PackScheme, slots?: readonly number[]): { word: Int32Array; shift: Uint8Array } {
  const word = new Int32Array(n);
  const shift = new Uint8Array(n);
  const pf = Math.floor(32 / bits);
  if (slots) checkSlots(slots, pf, scheme);
  for (let k = 0; k < n; k++) {
    if (scheme === "stream") {
      const bit = k * bits;
      word[k] = Math.floor(bit / 32);
      shift[k] = bit % 32;
    } else {
      word[k] = Math.floor(k / pf);
      shift[k] = (slots ? slots[k % pf]! : k % pf) * bits;
    }
  }
  return { word, shift };
}

function checkSlots(slots: readonly number[], pf: number, scheme: PackScheme): void {
  const sorted = [...slots].sort((a, b) => a - b);
  if (scheme !== "word" || slots.length !== pf || sorted.some((v, i) => v !== i)) {
    throw new Error(`internal: slots [${slots.join(", ")}] are not a permutation of the ${pf} slots of a "word" scheme word`);
  }
}

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < 1 || bits > 8) throw new ModelError(`cannot pack ${bits}-bit values (1..8 supported)`);
}

/**
 * Pack `src` values (each must be < 2^bits) into `dst` (zeroed by the caller or fresh).
 * `what` names the data in the error thrown for an out-of-range value.
 */
export function packBits(
  src: Uint8Array,
  dst: Int32Array,
  bits: number,
  scheme: PackScheme,
  L: PackLayout,
  what: string,
): void {
  checkBits(bits);
  const max = (1 << bits) - 1;
  const { word, shift } = positions(L.lineLen, bits, scheme, L.slots);
  const { lines, lineLen, srcLineStride, srcElemStride, dstLineStride, dstWordStride } = L; // locals for the hot loop
  if (scheme === "word" || 32 % bits === 0) {
    // No value straddles two words: gather each word's values in a register, one store per word.
    const pf = Math.floor(32 / bits);
    for (let l = 0; l < lines; l++) {
      const s0 = l * srcLineStride;
      const d0 = l * dstLineStride;
      for (let k0 = 0; k0 < lineLen; k0 += pf) {
        const k1 = Math.min(lineLen, k0 + pf);
        let acc = 0;
        for (let k = k0; k < k1; k++) {
          const v = src[s0 + k * srcElemStride]!;
          if (v > max) throw new ModelError(`${what}: value ${v} at line ${l}, index ${k} does not fit in ${bits} bits`);
          acc |= v << shift[k]!;
        }
        const di = d0 + word[k0]! * dstWordStride;
        dst[di] = dst[di]! | acc;
      }
    }
    return;
  }
  for (let l = 0; l < lines; l++) {
    const s0 = l * srcLineStride;
    const d0 = l * dstLineStride;
    for (let k = 0; k < lineLen; k++) {
      const v = src[s0 + k * srcElemStride]!;
      if (v > max) throw new ModelError(`${what}: value ${v} at line ${l}, index ${k} does not fit in ${bits} bits`);
      const sh = shift[k]!;
      const di = d0 + word[k]! * dstWordStride;
      dst[di] = dst[di]! | (v << sh); // bits above 31 fall off (int32 arithmetic)
      if (sh + bits > 32) {
        const dn = di + dstWordStride;
        dst[dn] = dst[dn]! | (v >>> (32 - sh));
      }
    }
  }
}

/** Inverse of packBits: fill `dst` values (at the source strides of `L`) from packed `src` words. */
export function unpackBits(
  src: Int32Array,
  dst: Uint8Array,
  bits: number,
  scheme: PackScheme,
  L: PackLayout,
): void {
  checkBits(bits);
  const mask = (1 << bits) - 1;
  const { word, shift } = positions(L.lineLen, bits, scheme, L.slots);
  const { lines, lineLen, srcLineStride, srcElemStride, dstLineStride, dstWordStride } = L;
  for (let l = 0; l < lines; l++) {
    const w0 = l * dstLineStride;
    const v0 = l * srcLineStride;
    for (let k = 0; k < lineLen; k++) {
      const sh = shift[k]!;
      const si = w0 + word[k]! * dstWordStride;
      let v = src[si]! >>> sh;
      if (sh + bits > 32) v |= src[si + dstWordStride]! << (32 - sh);
      dst[v0 + k * srcElemStride] = v & mask;
    }
  }
}
