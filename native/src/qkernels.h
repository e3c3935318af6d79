// quant4 runtime kernels for packed (INT2..8) and fp16 Linear weights: Y[rows, out] = X[rows, in] · Wᵀ (+ b).
// Pure C++ (no N-API); quant4_native.cc wraps it.
//
// One runtime layout, repacked once at load from the format-neutral QuantizedLinear (codes [out*in] u8,
// scales/zeros [out*nGroups], optional act-order g_idx, optional CSR outliers):
//   - the input columns are ordered by group (stable: a column's original order within its group), each
//     group padded with zero codes to a multiple of the block width BW, so every group is one contiguous,
//     block-aligned segment [segStart[g], segStart[g+1]) shared by all rows. Without act-order and with
//     block-aligned groups this order is the identity (no gather of x at run time); otherwise srcCol maps a
//     padded position to its original column (−1 = padding) and x is gathered once per call.
//   - codes of one output row are packed along the input dim in 8-byte chunks of BW = 64/cw columns: byte j
//     of a chunk holds column j + 8k at bit k·cw (k < 8/cw), so one 8-byte load widened to eight 32-bit
//     lanes gives 8/cw vectors of 8 consecutive columns with a shift and a mask each.
//     Code width cw: 4 for 3/4-bit layers, 2 for 2-bit, 8 for 8-bit. Rows go in blocks of 4 whose chunks
//     are interleaved (chunk b of rows 4i..4i+3 in 32 consecutive bytes), so the GEMV, which runs 4 rows
//     at a time, reads the whole matrix as one sequential stream (a plain row of 2 KiB is too short a
//     stream for hardware prefetchers); the last out mod 4 rows are plain.
//   - per (row, group): fp32 scale and u8 zero point; w = scale·(q − zero), exactly the formats' dequantize.
//   - outliers: CSR by row with the original column, the exact value (GEMM tiles) and value − grid weight
//     (the GEMV adds delta·x after the dense part).
// GEMV (one input row): the codes are dequantized in registers (q − z exact in int32, converted, FMA with
// x; with AVX-512, 2- and 4-bit codes go through a per-group lookup table of q − z instead, see qkernels.cc),
// Σ(q − z)·x per group scaled once per group; rows split over the kernel threads. GEMM (several rows): tiles of output rows are dequantized into an
// fp32 buffer (bit-identical to dequantize()) and multiplied with BLAS sgemm.

#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace q4 {

struct FreeDeleter {
  void operator()(void* p) const;
};

/** One Linear in the runtime layout: packed integer codes, or fp16 (kind == F16, dense [out, in]). */
struct PackedLinear {
  enum Kind { INT = 0, F16 = 1 };
  Kind kind = INT;
  int64_t out = 0, in = 0;
  int bits = 0;      // stored bits (2, 3, 4, 8); 16 for F16
  int cw = 0;        // runtime code width (2, 4, 8)
  int64_t inP = 0;   // padded, group-ordered width
  int64_t rowBytes = 0;
  int nG = 0;
  bool identity = true;
  std::vector<int32_t> segStart;  // nG+1
  std::vector<int32_t> srcCol;    // inP (−1 = padding); empty when identity
  std::unique_ptr<uint8_t, FreeDeleter> codes;  // out*rowBytes, 64-byte aligned
  std::vector<float> scales;      // out*nG
  std::vector<uint8_t> zeros;     // out*nG
  std::vector<int32_t> olPtr;     // out+1 (empty: no outliers)
  std::vector<int32_t> olIdx;     // nnz, original column
  std::vector<float> olVal;       // nnz, exact value
  std::vector<float> olDelta;     // nnz, value − scale·(q − zero)
  std::unique_ptr<uint16_t, FreeDeleter> half;  // F16: out*in, 64-byte aligned
  size_t Bytes() const;
  /** Chunk 0 of row r, and the byte distance between its chunks (32 in a 4-row block, 8 for the tail rows). */
  const uint8_t* RowBase(int64_t r) const {
    const int64_t blocked = out / 4 * 4;
    return r < blocked ? codes.get() + (r / 4) * 4 * rowBytes + (r % 4) * 8 : codes.get() + r * rowBytes;
  }
  int64_t ChunkStride(int64_t r) const { return r < out / 4 * 4 ? 32 : 8; }
};

struct PackInput {
  int64_t out, in;
  int bits, groupSize;             // groupSize −1: one group per row
  const uint8_t* codes;            // out*in
  const float* scales;             // out*nG
  const uint8_t* zeros;            // out*nG
  int64_t nG;
  const int32_t* gIdx;             // in, or null
  const int32_t* olPtr;            // out+1, or null
  const int32_t* olIdx;            // nnz
  const float* olVal;              // nnz
};

/** Repack; on bad input returns null and sets *err. */
std::unique_ptr<PackedLinear> Pack(const PackInput& in, std::string* err);
/** fp16 dense [out, in] (raw IEEE half bits); null when out of memory. */
std::unique_ptr<PackedLinear> PackF16(const uint16_t* w, int64_t out, int64_t in);

/** mode: 0 auto, 1 GEMV per row, 2 GEMM tiles. bias may be null. Y must not alias X. */
void Linear(const PackedLinear& L, const float* x, int64_t rows, float* y, const float* bias, int mode);

/** The dense fp32 [out, in] weight (for tests: must equal the formats' dequantize bit for bit). */
void Dequantize(const PackedLinear& L, float* w);

/** Rows r0..r1 of the fp32 weight into dst [(r1−r0), in] (the GEMM tile; embeddings' row lookup). */
void DequantRows(const PackedLinear& L, int64_t r0, int64_t r1, float* dst);

/**
 * Runs fn(chunk, chunks) for every chunk in [0, chunks) on the kernel pool (the caller takes part; chunks
 * are claimed dynamically; one job at a time). Used by the block ops (blockops.cc); after such a job the
 * workers sleep at once instead of spinning for the next one (a BLAS call usually follows and needs the
 * cores; QUANT4_BLOCKOPS_SPIN=1 lets them spin).
 */
void ParallelFor(int chunks, const std::function<void(int, int)>& fn);

/** Kernel threads (the GEMV/dequant pool and the block ops; BLAS threads are set separately). */
void SetThreads(int n);
int Threads();
/**
 * SIMD levels: 0 scalar, 1 AVX2/FMA/F16C, 2 AVX-512 F/BW/VL (the 2- and 4-bit GEMV; the rest stays AVX2).
 * SetSimd(true) selects the highest level the CPU has, SetSimd(false) scalar; returns whether AVX2 or
 * more is in use. SetSimdLevel caps the level at the CPU's and returns the level in use. The process
 * starts on the highest level, or QUANT4_SIMD=avx512|avx2|scalar (capped), or scalar with QUANT4_NO_SIMD=1.
 */
bool SetSimd(bool on);
int SetSimdLevel(int level);
int SimdLevel();
int MaxSimdLevel();
/** AVX2 or more available / in use (the block ops and GPTQ's loops run AVX2 at levels 1 and 2). */
bool SimdAvailable();
bool SimdInUse();

}  // namespace q4
