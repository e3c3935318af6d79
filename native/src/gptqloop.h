// GPTQ's per-column work inside one sub-block of the lazy-batch column loop (algorithms/gptq.ts
// gptqQuantize holds the TypeScript reference and the layouts): find_params at a dynamic group's first
// column (outlier picking included), quantize each column, its error, and the rank-1 updates of the
// rest of the sub-block. Bit-identical to the TypeScript: same float32/float64 operations in the same
// order, compiled without FP contraction.
#pragma once

#include <cstdint>

#include <napi.h>

namespace q4gptq {

struct ColumnsJob {
  float* Wt;            // [n, out] transposed, permuted weights, updated in place
  const float* U;       // [n, n] upper Cholesky factor of the damped inverse Hessian (processing order)
  uint8_t* qt;          // [n, out] codes, processing order
  float* err;           // [(s2 - i1), out] at least: the block's scaled errors, row p - i1
  float* sT;            // [nG, out] scales (transposed)
  uint8_t* zT;          // [nG, out] zeros (transposed)
  uint8_t* ot;          // [n, out] outlier mask or null
  float* vt;            // [n, out] outlier fp16 values or null
  const int32_t* perm;  // [n] act-order permutation or null
  int64_t n, out;
  int bits;
  bool sym;
  int64_t groupSize;    // -1: per row
  bool staticGroups;
  double tau;           // dynamic-group outlier saliency threshold
  double* state;        // [loss, outliers left], read and updated
};

// Columns [s1, s2) of the block starting at i1. Returns 0, or 1 (a group holds a non-finite weight),
// or 2 (a scale overflows float16): the caller throws the TypeScript reference's error.
int Columns(const ColumnsJob& job, int64_t i1, int64_t s1, int64_t s2);

// y = dequant(Q(W·diag(s)))·diag(1/s) per row (s null: plain RTN), bit-identical to algorithms/rtn.ts
// quantizeRtn(...).dequant and algorithms/awq.ts scaledFakeQuant; rows on the kernel pool. Returns 0, 1
// (a group holds a non-finite weight) or 2 (a scale overflows float16).
int FakeQuant(const float* W, int64_t out, int64_t inF, int bits, int64_t groupSize, bool sym, const float* s, float* Y);

// Σ (a − b)² in float64, element i into partial sum i mod 8, the eight added pairwise (fixed order).
double SumSquaredDiff(const float* a, const float* b, int64_t n);
// acc[c] = Σ_r (a − b)²[r, c] over [rows, cols] arrays, float64, rows in order (columns split over threads).
void ColumnSumSquaredDiff(const float* a, const float* b, int64_t rows, int64_t cols, double* acc);

// Adds gptqColumns, rtnFakeQuant, sumSquaredDiff and columnSumSquaredDiff to the addon's exports (argument lists in gptqloop.cc).
void Register(Napi::Env env, Napi::Object exports);

}  // namespace q4gptq
