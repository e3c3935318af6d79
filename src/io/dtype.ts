// Element-type conversions for safetensors data. All multi-byte data is little-endian (the safetensors
// spec and every platform Node runs on); views are used where the bytes are aligned, copies otherwise.

import { ModelError } from "../util/errors.js";
import { DTYPE_SIZE, type DType } from "./types.js";

export type TypedArray =
  | Float32Array
  | Float64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | BigInt64Array
  | Uint16Array;

// ---------------------------------------------------------------------------------------------
// float16

let F16_TABLE: Float32Array | null = null;

function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** All 65536 half-precision values as float32 (built on first use, 256 KiB). */
function f16Table(): Float32Array {
  if (F16_TABLE === null) {
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32(h);
    F16_TABLE = t;
  }
  return F16_TABLE;
}

/** A native half → float32 decoder (returns false when it converted nothing), or none. */
type F16Decoder = (src: Uint16Array, dst: Float32Array) => boolean;
let nativeF16: F16Decoder | null = null;
/** Below this many values the table loop is as fast as a native call. */
const NATIVE_F16_MIN = 4096;

/**
 * Installs the CPU backend's F16C decoder (same values as the table: every half is exactly a float32;
 * a NaN stays a NaN). src/io loads no native code itself: the backend hands it over when its addon loads.
 */
export function useNativeF16Decoder(fn: F16Decoder | null): void {
  nativeF16 = fn;
}

/** Decode IEEE half-precision bit patterns into float32. `dst` (if given) must hold src.length values. */
export function f16ToF32(src: Uint16Array, dst?: Float32Array): Float32Array {
  const out = dst ?? new Float32Array(src.length);
  if (out.length < src.length) throw new RangeError(`f16ToF32: dst holds ${out.length} values, need ${src.length}`);
  if (nativeF16 && src.length >= NATIVE_F16_MIN && nativeF16(src, out.length === src.length ? out : out.subarray(0, src.length))) return out;
  const table = f16Table();
  const n = src.length;
  for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
  return out;
}

/** float32 bits (as unsigned 32-bit integer) → half bits, round-to-nearest-even. */
function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) {
    // Inf stays Inf; NaN stays a (quiet) NaN, keeping the top payload bits.
    return mant ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00;
  }
  const e = exp - 112; // re-biased exponent for half (127 - 15)
  if (e >= 0x1f) return sign | 0x7c00; // overflow → inf
  if (e <= 0) {
    // Half subnormal (or zero). Value = full * 2^(exp-150); half mantissa unit is 2^-24.
    if (e < -10) return sign; // below half of the smallest subnormal → ±0
    const full = mant | 0x800000;
    const shift = 14 - e; // 14..24
    let r = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r; // a carry into bit 10 correctly yields the smallest normal
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) r++; // a carry may reach 0x7c00 = inf, as IEEE requires
  return sign | r;
}

/** Encode float32 values as IEEE half-precision bits (round-to-nearest-even; overflow → ±inf; NaN kept). */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16(bits[i]!);
  return out;
}

/** f32ToF16 that refuses values float16 cannot hold (|x| > 65504, Inf, NaN), naming `what`. */
export function toF16Checked(values: Float32Array, what: string): Uint16Array {
  const h = f32ToF16(values);
  for (let i = 0; i < h.length; i++) {
    if ((h[i]! & 0x7c00) === 0x7c00) throw new ModelError(`${what}: value ${values[i]} at index ${i} is not finite in float16 (largest 65504)`);
  }
  return h;
}

// ---------------------------------------------------------------------------------------------
// bfloat16

/** Decode bfloat16 bit patterns into float32 (exact). */
export function bf16ToF32(src: Uint16Array, dst?: Float32Array): Float32Array {
  const out = dst ?? new Float32Array(src.length);
  if (out.length < src.length) throw new RangeError(`bf16ToF32: dst holds ${out.length} values, need ${src.length}`);
  const bits = new Uint32Array(out.buffer, out.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  return out;
}

/** Encode float32 values as bfloat16 bits (round-to-nearest-even; NaN kept quiet). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) {
      out[i] = (x >>> 16) | 0x40; // NaN: keep sign/payload top bits, force quiet
    } else {
      // x + 0x7fff + lsb stays below 2^32 for every non-NaN x, so >>> is exact.
      out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// generic views

function aligned(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.byteOffset % size === 0) return bytes;
  return bytes.slice(); // a fresh copy starts at offset 0
}

function checkLength(dtype: DType, bytes: Uint8Array): number {
  const size = DTYPE_SIZE[dtype];
  if (size === undefined) throw new RangeError(`unknown dtype "${String(dtype)}"`);
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`);
  }
  return size;
}

/**
 * A typed array over `bytes` in the natural JS type of `dtype`: F16 and BF16 → Uint16Array (raw bits),
 * BOOL → Uint8Array, I64 → BigInt64Array. A view sharing memory with `bytes` when aligned, else a copy.
 */
export function typedView(dtype: DType, bytes: Uint8Array): TypedArray {
  const size = checkLength(dtype, bytes);
  const b = aligned(bytes, size);
  const n = b.byteLength / size;
  switch (dtype) {
    case "F64": return new Float64Array(b.buffer, b.byteOffset, n);
    case "F32": return new Float32Array(b.buffer, b.byteOffset, n);
    case "F16":
    case "BF16": return new Uint16Array(b.buffer, b.byteOffset, n);
    case "I64": return new BigInt64Array(b.buffer, b.byteOffset, n);
    case "I32": return new Int32Array(b.buffer, b.byteOffset, n);
    case "I16": return new Int16Array(b.buffer, b.byteOffset, n);
    case "I8": return new Int8Array(b.buffer, b.byteOffset, n);
    case "U8":
    case "BOOL": return new Uint8Array(b.buffer, b.byteOffset, n);
  }
}

/**
 * Convert raw little-endian `bytes` of `dtype` to float32. For F32 input the result may be a view
 * sharing memory with `bytes` (when aligned); every other dtype yields a new array.
 * I64 values beyond 2^24 lose precision, as float32 must.
 */
export function toFloat32(dtype: DType, bytes: Uint8Array): Float32Array {
  const v = typedView(dtype, bytes);
  switch (dtype) {
    case "F32": return v as Float32Array;
    case "F16": return f16ToF32(v as Uint16Array);
    case "BF16": return bf16ToF32(v as Uint16Array);
    case "I64": {
      const src = v as BigInt64Array;
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]!);
      return out;
    }
    default: return new Float32Array(v as Exclude<TypedArray, BigInt64Array>);
  }
}
