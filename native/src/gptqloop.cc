// GPTQ's per-column work inside one sub-block of the lazy-batch column loop, bit-identical to the
// TypeScript reference in algorithms/gptq.ts (gptqColumnsTs). The TypeScript computes in float64 and
// rounds to float32 where it stores into a Float32Array or calls Math.fround; every expression below
// does the same operations in the same order: in float64 where the TypeScript keeps a number, in
// float32 where it rounds a float64 +, −, ×, ÷ of two float32 values with Math.fround (the same
// result: float64 carries more than 2·24 + 2 bits, so rounding twice equals rounding once). Sums stay
// in the reference's order, and no contraction into fused multiply-adds may happen: the pragma below
// turns it off for this file (GCC's default is -ffp-contract=fast), nothing here is built with
// -ffast-math, and the per-element loops are compiled for baseline x86-64 and for AVX2 without FMA
// (runtime dispatch; setSimd(false) / QUANT4_NO_SIMD=1 select the baseline), both vectorized by the
// compiler under these rules.
//
// The same exact quantizer also serves AWQ's searches: rtnFakeQuant (RTN of W·diag(s), dequantized,
// ÷ s) and sumSquaredDiff (their output errors, a fixed summation order).
//
// Exports (registered by Register, called from quant4_native.cc's Init):
//   gptqColumns(Wt, U, qt, err, sT, zT, ot|null, vt|null, perm|null, n, out, bits, sym, groupSize,
//               staticGroups, tau, state, i1, s1, s2) -> 0 | 1 | 2
//     0 done; 1 a group holds a non-finite weight; 2 a scale overflows float16 (the caller throws).
//   rtnFakeQuant(W, out, in, bits, groupSize, sym, s|null, Y) -> 0 | 1 | 2
//   sumSquaredDiff(a, b) -> number
//   columnSumSquaredDiff(a, b, rows, cols, acc) -> undefined   (acc[c] = Σ_r (a − b)²[r, c], rows in order)

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "gptqloop.h"
#include "qkernels.h"  // q4::SimdInUse: the packed kernels' AVX2 switch (setSimd, QUANT4_NO_SIMD) applies here too

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace q4gptq {

namespace {

// ---- float16 rounding, as src/io/dtype.ts f32BitsToF16 / f16BitsToF32 (round to nearest even).

uint16_t F32BitsToF16(uint32_t x) {
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  const uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(mant ? (sign | 0x7e00u | (mant >> 13)) : (sign | 0x7c00u));
  const int e = static_cast<int>(exp) - 112;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    const uint32_t full = mant | 0x800000u;
    const int shift = 14 - e;
    uint32_t r = full >> shift;
    const uint32_t rem = full & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
  return static_cast<uint16_t>(sign | r);
}

float F16BitsToF32(uint16_t h) {
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0) return static_cast<float>(sign * mant * std::ldexp(1.0, -24));
  if (exp == 0x1f) return mant ? NAN : static_cast<float>(sign * INFINITY);
  return static_cast<float>(sign * (1.0 + mant / 1024.0) * std::ldexp(1.0, exp - 15));
}

float RoundToF16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  return F16BitsToF32(F32BitsToF16(bits));
}

// algorithms/quantizer.ts roundHalfEven.
double RoundHalfEven(double x) {
  const double f = std::floor(x);
  const double d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}

// algorithms/quantizer.ts paramsFromRanges over `count` lanes. Returns 0, 1 (non-finite range) or 2
// (the scale overflows float16), checked in the reference's order (all ranges first).
int ParamsFromRanges(const float* mins, const float* maxs, int64_t count, int bits, bool sym, float* scales,
                     uint8_t* zeros, float* xminL) {
  const double maxq = static_cast<double>((1 << bits) - 1);
  const double symZero = (maxq + 1) / 2;
  for (int64_t k = 0; k < count; k++) {
    // Math.min(v, 0) / Math.max(v, 0); ±0 and NaN cannot change the result below (NaN never reaches
    // here: the ranges come from < and > comparisons, which skip it).
    double xmin = mins[k] < 0 ? static_cast<double>(mins[k]) : 0.0;
    double xmax = maxs[k] > 0 ? static_cast<double>(maxs[k]) : 0.0;
    if (!std::isfinite(xmin) || !std::isfinite(xmax)) return 1;
    if (sym) {
      const double a = std::fabs(xmin);
      xmax = a > xmax ? a : xmax;
      if (xmin < 0) xmin = -xmax;
    }
    if (xmin == 0 && xmax == 0) {
      xmin = -1;
      xmax = 1;
    }
    xminL[k] = static_cast<float>(xmin);
    const float range = static_cast<float>(xmax - xmin);
    scales[k] = static_cast<float>(static_cast<double>(range) / maxq);
  }
  for (int64_t k = 0; k < count; k++) scales[k] = RoundToF16(scales[k]);
  for (int64_t k = 0; k < count; k++) {
    float s = scales[k];
    if (s == 0) s = scales[k] = static_cast<float>(std::ldexp(1.0, -24));
    if (!std::isfinite(s)) return 2;
    if (sym) {
      zeros[k] = static_cast<uint8_t>(symZero);
    } else {
      const double z = RoundHalfEven(static_cast<float>(-static_cast<double>(xminL[k]) / static_cast<double>(s)));
      zeros[k] = static_cast<uint8_t>(z < 0 ? 0 : z > maxq ? maxq : z);
    }
  }
  return 0;
}


// ---- the two per-element loops, compiled twice (baseline x86-64 / AVX2 without FMA) for the vectorizer.
// Every element is independent: the float64 sum of squared errors is left to the caller, in order.

// Quantize one column of `out` rows: codes, kept value (float32), error (float64) and scaled error.
// Float32 division, addition and multiplication here give exactly what the TypeScript's float64
// operation followed by Math.fround gives (float64 has more than 2·24 + 2 bits: no double rounding).
#define Q4_QUANT_BODY                                                                                     \
  for (int64_t r = 0; r < out; r++) {                                                                     \
    const float w = wp[r];                                                                                \
    const float sr = s[r];                                                                                \
    const float zr = static_cast<float>(z[r]);                                                            \
    float t = w / sr;                                                                                     \
    t = t > 4194304.0f ? 4194304.0f : t < -4194304.0f ? -4194304.0f : t;                                  \
    float q = ((t + 12582912.0f) - 12582912.0f) + zr; /* exact: an integer (or NaN) */                    \
    q = q < 0.0f ? 0.0f : q > maxq ? maxq : q;                                                            \
    q8[r] = q == q ? static_cast<uint8_t>(q) : static_cast<uint8_t>(0); /* a Uint8Array stores NaN as 0 */ \
    kept[r] = sr * (q - zr);                                                                              \
  }

#define Q4_ERR_BODY                                                                                       \
  for (int64_t r = 0; r < out; r++) {                                                                     \
    const double diff = static_cast<double>(wp[r]) - static_cast<double>(kept[r]);                         \
    dif[r] = diff;                                                                                        \
    e[r] = static_cast<float>(diff / dd);                                                                 \
  }

// wc[r] -= e[r]·h in float64 (the product of two float32 values is exact there), rounded to float32.
#define Q4_UPDATE_BODY \
  for (int64_t r = 0; r < out; r++) wc[r] = static_cast<float>(static_cast<double>(wc[r]) - static_cast<double>(e[r]) * hd);

void QuantBase(const float* __restrict wp, const float* __restrict s, const uint8_t* __restrict z, float maxq, int64_t out,
               uint8_t* __restrict q8, float* __restrict kept) {
  Q4_QUANT_BODY
}
void ErrBase(const float* __restrict wp, const float* __restrict kept, double dd, int64_t out, double* __restrict dif,
             float* __restrict e) {
  Q4_ERR_BODY
}
void UpdateBase(float* __restrict wc, const float* __restrict e, double hd, int64_t out) {
  Q4_UPDATE_BODY
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(QUANT4_ACCELERATE)
#define Q4_GPTQ_AVX2 1
// AVX2 only: no "fma" in the target, so no fused multiply-add can be emitted here either.
__attribute__((target("avx2"))) void QuantAvx2(const float* __restrict wp, const float* __restrict s, const uint8_t* __restrict z,
                                               float maxq, int64_t out, uint8_t* __restrict q8, float* __restrict kept) {
  Q4_QUANT_BODY
}
__attribute__((target("avx2"))) void ErrAvx2(const float* __restrict wp, const float* __restrict kept, double dd, int64_t out,
                                             double* __restrict dif, float* __restrict e) {
  Q4_ERR_BODY
}
__attribute__((target("avx2"))) void UpdateAvx2(float* __restrict wc, const float* __restrict e, double hd, int64_t out) {
  Q4_UPDATE_BODY
}
bool UseAvx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 && q4::SimdInUse();
}
#endif

void Quant(const float* wp, const float* s, const uint8_t* z, float maxq, int64_t out, uint8_t* q8, float* kept) {
#ifdef Q4_GPTQ_AVX2
  if (UseAvx2()) return QuantAvx2(wp, s, z, maxq, out, q8, kept);
#endif
  QuantBase(wp, s, z, maxq, out, q8, kept);
}
void Err(const float* wp, const float* kept, double dd, int64_t out, double* dif, float* e) {
#ifdef Q4_GPTQ_AVX2
  if (UseAvx2()) return ErrAvx2(wp, kept, dd, out, dif, e);
#endif
  ErrBase(wp, kept, dd, out, dif, e);
}
void Update(float* wc, const float* e, double hd, int64_t out) {
#ifdef Q4_GPTQ_AVX2
  if (UseAvx2()) return UpdateAvx2(wc, e, hd, out);
#endif
  UpdateBase(wc, e, hd, out);
}

}  // namespace

int Columns(const ColumnsJob& j, int64_t i1, int64_t s1, int64_t s2) {
  const int64_t n = j.n;
  const int64_t out = j.out;
  const float maxq = static_cast<float>((1 << j.bits) - 1);
  const bool grouped = j.groupSize != -1;
  const int64_t gs = grouped ? j.groupSize : n;
  float* const Wt = j.Wt;
  const float* const U = j.U;
  uint8_t* const ot = j.ot;
  double loss = j.state[0];
  double left = j.state[1];
  std::vector<float> mins, maxs, xminL;
  std::vector<float> kept(out);
  std::vector<double> dif(out);

  for (int64_t p = s1; p < s2; p++) {
    int64_t base = 0;
    if (grouped) {
      if (j.staticGroups) {
        base = ((j.perm ? j.perm[p] : p) / gs) * out;
      } else {
        const int64_t g = p / gs;
        base = g * out;
        if (p % gs == 0) {
          // find_params on the (current) weights of this group's columns.
          if (mins.empty()) {
            mins.resize(out);
            maxs.resize(out);
            xminL.resize(out);
          }
          for (int64_t r = 0; r < out; r++) {
            mins[r] = INFINITY;
            maxs[r] = -INFINITY;
          }
          const int64_t p1 = p + gs < n ? p + gs : n;
          if (ot && left > 0) {
            for (int64_t c = p; c < p1 && left > 0; c++) {
              const double d = U[c * n + c];
              const double dd = d * d;
              for (int64_t r = 0; r < out && left > 0; r++) {
                const double w = Wt[c * out + r];
                if ((w * w) / dd >= j.tau) {
                  ot[c * out + r] = 1;
                  left--;
                }
              }
            }
          }
          for (int64_t c = p; c < p1; c++) {
            const float* wc = Wt + c * out;
            const uint8_t* oc = ot ? ot + c * out : nullptr;
            for (int64_t r = 0; r < out; r++) {
              if (oc && oc[r]) continue;
              const float v = wc[r];
              if (v < mins[r]) mins[r] = v;
              if (v > maxs[r]) maxs[r] = v;
            }
          }
          for (int64_t r = 0; r < out; r++)
            if (mins[r] == INFINITY) mins[r] = maxs[r] = 0;  // a row of outliers only
          const int rc = ParamsFromRanges(mins.data(), maxs.data(), out, j.bits, j.sym, j.sT + base, j.zT + base, xminL.data());
          if (rc != 0) {
            j.state[0] = loss;
            j.state[1] = left;
            return rc;
          }
        }
      }
    }

    const float d = U[p * n + p];
    const double dd = d;
    const int64_t rowOff = p * out;
    const float* const wp = Wt + rowOff;
    float* const e = j.err + (p - i1) * out;
    // q = clamp(round_half_even(w / s) + z, 0, maxq), as the reference (adding and removing 1.5·2^23
    // in float32 rounds |t| ≤ 2^22 to an integer, half to even); outliers keep their fp16 value.
    Quant(wp, j.sT + base, j.zT + base, maxq, out, j.qt + rowOff, kept.data());
    if (ot) {
      const uint8_t* const op = ot + rowOff;
      for (int64_t r = 0; r < out; r++)
        if (op[r]) kept[r] = j.vt[rowOff + r] = RoundToF16(wp[r]);
    }
    Err(wp, kept.data(), dd, out, dif.data(), e);
    double lsum = 0;
    for (int64_t r = 0; r < out; r++) lsum += dif[r] * dif[r];  // in row order, as the reference
    loss += lsum / (dd * dd) / 2;

    // W1[:, c] -= err · Hinv[p, c] for the rest of the sub-block (rank-1 update, row by row).
    const float* const uRow = U + p * n;
    for (int64_t c = p + 1; c < s2; c++) {
      const float h = uRow[c];
      if (h == 0) continue;
      Update(Wt + c * out, e, static_cast<double>(h), out);
    }
  }
  j.state[0] = loss;
  j.state[1] = left;
  return 0;
}


// ---------------------------------------------------------------------------------------------
// RTN fake quantization (AWQ's scale candidates and clip search): y = dequant(Q(W·diag(s)))·diag(1/s)
// row by row, bit-identical to algorithms/rtn.ts quantizeRtn(W·diag(s)).dequant followed by the
// division of algorithms/awq.ts scaledFakeQuant (s absent: plain RTN). Same float32 operations as the
// TypeScript's Math.fround'ed float64 ones, same parameters (ParamsFromRanges), same rounding as Quant.

namespace {

#define Q4_FQ_BODY                                                                                       \
  for (int64_t c = 0; c < n; c++) {                                                                      \
    float t = x[c] / sc;                                                                                 \
    t = t > 4194304.0f ? 4194304.0f : t < -4194304.0f ? -4194304.0f : t;                                 \
    float q = ((t + 12582912.0f) - 12582912.0f) + zf;                                                    \
    q = q < 0.0f ? 0.0f : q > maxq ? maxq : q;                                                           \
    y[c] = sc * (q - zf);                                                                                \
  }

#define Q4_DIV_BODY \
  for (int64_t c = 0; c < n; c++) y[c] = y[c] / s[c];

#define Q4_MUL_BODY \
  for (int64_t c = 0; c < n; c++) y[c] = w[c] * s[c];

void FqBase(const float* __restrict x, float sc, float zf, float maxq, int64_t n, float* __restrict y) { Q4_FQ_BODY }
void DivBase(float* __restrict y, const float* __restrict s, int64_t n) { Q4_DIV_BODY }
void MulBase(const float* __restrict w, const float* __restrict s, int64_t n, float* __restrict y) { Q4_MUL_BODY }
#ifdef Q4_GPTQ_AVX2
__attribute__((target("avx2"))) void FqAvx2(const float* __restrict x, float sc, float zf, float maxq, int64_t n, float* __restrict y) {
  Q4_FQ_BODY
}
__attribute__((target("avx2"))) void DivAvx2(float* __restrict y, const float* __restrict s, int64_t n) { Q4_DIV_BODY }
__attribute__((target("avx2"))) void MulAvx2(const float* __restrict w, const float* __restrict s, int64_t n, float* __restrict y) {
  Q4_MUL_BODY
}
#endif

// One row: `x` the (scaled) row, `y` its fake-quantized values; 0, 1 (non-finite group) or 2 (fp16 overflow).
int FakeQuantRow(const float* w, const float* s, int64_t inF, int bits, int64_t gs, bool sym, float* x, float* y,
                 std::vector<float>& mins, std::vector<float>& maxs, std::vector<float>& xminL, std::vector<float>& scales,
                 std::vector<uint8_t>& zeros) {
#ifdef Q4_GPTQ_AVX2
  const bool avx2 = UseAvx2();
#endif
  if (s) {
#ifdef Q4_GPTQ_AVX2
    if (avx2) MulAvx2(w, s, inF, x); else
#endif
    MulBase(w, s, inF, x);
  } else {
    x = const_cast<float*>(w);  // read only below
  }
  const int64_t nG = (inF + gs - 1) / gs;
  for (int64_t g = 0; g < nG; g++) {
    const int64_t c1 = (g + 1) * gs < inF ? (g + 1) * gs : inF;
    float mn = INFINITY, mx = -INFINITY;
    bool nan = false;
    for (int64_t c = g * gs; c < c1; c++) {
      const float v = x[c];
      mn = v < mn ? v : mn;
      mx = v > mx ? v : mx;
      nan |= v != v;
    }
    if (nan) return 1;
    mins[g] = mn;
    maxs[g] = mx;
  }
  const int rc = ParamsFromRanges(mins.data(), maxs.data(), nG, bits, sym, scales.data(), zeros.data(), xminL.data());
  if (rc != 0) return rc;
  const float maxq = static_cast<float>((1 << bits) - 1);
  for (int64_t g = 0; g < nG; g++) {
    const int64_t c0 = g * gs;
    const int64_t n = ((g + 1) * gs < inF ? (g + 1) * gs : inF) - c0;
#ifdef Q4_GPTQ_AVX2
    if (avx2) FqAvx2(x + c0, scales[g], static_cast<float>(zeros[g]), maxq, n, y + c0); else
#endif
    FqBase(x + c0, scales[g], static_cast<float>(zeros[g]), maxq, n, y + c0);
  }
  if (s) {
#ifdef Q4_GPTQ_AVX2
    if (avx2) DivAvx2(y, s, inF); else
#endif
    DivBase(y, s, inF);
  }
  return 0;
}

}  // namespace

int FakeQuant(const float* W, int64_t out, int64_t inF, int bits, int64_t groupSize, bool sym, const float* s, float* Y) {
  const int64_t gs = groupSize == -1 ? inF : groupSize;
  const int64_t nG = (inF + gs - 1) / gs;
  const int chunks = static_cast<int>(out < 64 ? 1 : out / 32 < 256 ? out / 32 : 256);
  std::vector<int64_t> firstBad(chunks, out);
  std::vector<int> codeOf(chunks, 0);
  q4::ParallelFor(chunks, [&](int p, int np) {
    const int64_t r0 = out * p / np, r1 = out * (p + 1) / np;
    std::vector<float> mins(nG), maxs(nG), xminL(nG), scales(nG), x(s ? inF : 0);
    std::vector<uint8_t> zeros(nG);
    for (int64_t r = r0; r < r1; r++) {
      const int rc = FakeQuantRow(W + r * inF, s, inF, bits, gs, sym, x.data(), Y + r * inF, mins, maxs, xminL, scales, zeros);
      if (rc != 0) {
        firstBad[p] = r;
        codeOf[p] = rc;
        return;
      }
    }
  });
  // The reference throws at the first failing row.
  for (int p = 0; p < chunks; p++)
    if (codeOf[p] != 0) return codeOf[p];
  return 0;
}

// Σ (a − b)² in float64 over eight interleaved partial sums (element i goes to sum i mod 8), added
// pairwise at the end: the same order on every path (algorithms/awq.ts sumSquaredDiff is the reference).
double SumSquaredDiff(const float* a, const float* b, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const double d = static_cast<double>(a[i + k]) - static_cast<double>(b[i + k]);
      acc[k] += d * d;
    }
  for (int k = 0; i < n; i++, k++) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    acc[k] += d * d;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Per column of two [rows, cols] arrays, Σ_r (a − b)² in float64 with the rows in order: each column's sum
// is its own lane, so vectorizing across columns (and splitting the columns over threads) keeps every
// sum's order (algorithms/awq.ts columnSumSquaredDiffTs is the reference).
#define Q4_COLSSD_BODY                                                                       \
  for (int64_t c = c0; c < c1; c++) acc[c] = 0;                                             \
  for (int64_t r = 0; r < rows; r++) {                                                      \
    const float* __restrict ar = a + r * cols;                                              \
    const float* __restrict br = b + r * cols;                                              \
    for (int64_t c = c0; c < c1; c++) {                                                     \
      const double d = static_cast<double>(ar[c]) - static_cast<double>(br[c]);             \
      acc[c] += d * d;                                                                      \
    }                                                                                       \
  }

namespace {
void ColSsdBase(const float* a, const float* b, int64_t rows, int64_t cols, int64_t c0, int64_t c1, double* __restrict acc) {
  Q4_COLSSD_BODY
}
#ifdef Q4_GPTQ_AVX2
// AVX2 only (no "fma"): the multiply and the add stay two roundings, as in the reference.
__attribute__((target("avx2"))) void ColSsdAvx2(const float* a, const float* b, int64_t rows, int64_t cols, int64_t c0, int64_t c1,
                                                double* __restrict acc) {
  Q4_COLSSD_BODY
}
#endif
}  // namespace

void ColumnSumSquaredDiff(const float* a, const float* b, int64_t rows, int64_t cols, double* acc) {
  // Column blocks per thread; at least 512 columns each (a hand-off costs more than a smaller share).
  const int chunks = static_cast<int>(cols < 1024 ? 1 : cols / 512 < 64 ? cols / 512 : 64);
  q4::ParallelFor(chunks, [&](int p, int np) {
    const int64_t c0 = cols * p / np, c1 = cols * (p + 1) / np;
#ifdef Q4_GPTQ_AVX2
    if (UseAvx2()) return ColSsdAvx2(a, b, rows, cols, c0, c1, acc);
#endif
    ColSsdBase(a, b, rows, cols, c0, c1, acc);
  });
}

// ---------------------------------------------------------------------------------------------
// N-API wrapper

namespace {

// The exported function whose arguments are being checked (JavaScript calls in one thread).
const char* gFn = "gptqColumns";

void Fail(Napi::Env env, const std::string& msg) {
  Napi::Error::New(env, std::string(gFn) + ": " + msg).ThrowAsJavaScriptException();
}

template <typename T>
bool View(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, const char* name, int64_t minLen,
          bool nullable, T** data, int64_t* len) {
  Napi::Value v = info[i];
  if (nullable && v.IsNull()) {
    *data = nullptr;
    *len = 0;
    return true;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    Napi::TypeError::New(info.Env(), std::string(gFn) + ": " + name + " has the wrong type").ThrowAsJavaScriptException();
    return false;
  }
  Napi::TypedArray a = v.As<Napi::TypedArray>();
  *len = static_cast<int64_t>(a.ElementLength());
  if (*len < minLen) {
    Fail(info.Env(), std::string(name) + " has " + std::to_string(*len) + " elements, expected at least " + std::to_string(minLen));
    return false;
  }
  *data = reinterpret_cast<T*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
  return true;
}

bool Int(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi, int64_t* out) {
  if (!info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(gFn) + ": " + name + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= static_cast<double>(lo) && v <= static_cast<double>(hi)) || v != std::floor(v)) {
    Fail(info.Env(), std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                         info[i].ToString().Utf8Value());
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

Napi::Value GptqColumnsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  gFn = "gptqColumns";
  if (info.Length() < 20) {
    Napi::TypeError::New(env, "gptqColumns: expected 20 arguments, got " + std::to_string(info.Length())).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t n, out, bits, groupSize, i1, s1, s2;
  if (!Int(info, 9, "n", 1, INT32_MAX, &n) || !Int(info, 10, "out", 1, INT32_MAX, &out) || !Int(info, 11, "bits", 2, 8, &bits) ||
      !Int(info, 13, "groupSize", -1, INT32_MAX, &groupSize) || !Int(info, 17, "i1", 0, n, &i1) ||
      !Int(info, 18, "s1", i1, n, &s1) || !Int(info, 19, "s2", s1, n, &s2))
    return env.Undefined();
  if (groupSize == 0) {
    Fail(env, "groupSize must be -1 or positive");
    return env.Undefined();
  }
  if (!info[12].IsBoolean() || !info[14].IsBoolean() || !info[15].IsNumber()) {
    Napi::TypeError::New(env, "gptqColumns: sym and staticGroups must be booleans, tau a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t nG = groupSize == -1 ? 1 : (n + groupSize - 1) / groupSize;
  const int64_t nOut = n * out;
  ColumnsJob j{};
  int64_t len;
  float* U;
  double* state;
  int32_t* perm;
  if (!View(info, 0, napi_float32_array, "Wt", nOut, false, &j.Wt, &len) ||
      !View(info, 1, napi_float32_array, "U", n * n, false, &U, &len) ||
      !View(info, 2, napi_uint8_array, "qt", nOut, false, &j.qt, &len) ||
      !View(info, 3, napi_float32_array, "err", (s2 - i1) * out, false, &j.err, &len) ||
      !View(info, 4, napi_float32_array, "sT", nG * out, false, &j.sT, &len) ||
      !View(info, 5, napi_uint8_array, "zT", nG * out, false, &j.zT, &len) ||
      !View(info, 6, napi_uint8_array, "ot", nOut, true, &j.ot, &len) ||
      !View(info, 7, napi_float32_array, "vt", nOut, true, &j.vt, &len) ||
      !View(info, 8, napi_int32_array, "perm", n, true, &perm, &len) ||
      !View(info, 16, napi_float64_array, "state", 2, false, &state, &len))
    return env.Undefined();
  if ((j.ot == nullptr) != (j.vt == nullptr)) {
    Fail(env, "ot and vt must both be given or both be null");
    return env.Undefined();
  }
  j.U = U;
  j.perm = perm;
  j.n = n;
  j.out = out;
  j.bits = static_cast<int>(bits);
  j.sym = info[12].As<Napi::Boolean>().Value();
  j.groupSize = groupSize;
  j.staticGroups = info[14].As<Napi::Boolean>().Value();
  j.tau = info[15].As<Napi::Number>().DoubleValue();
  j.state = state;
  if (perm && groupSize != -1 && j.staticGroups) {
    for (int64_t p = s1; p < s2; p++)
      if (perm[p] < 0 || perm[p] >= n) {
        Fail(env, "perm holds an index out of range");
        return env.Undefined();
      }
  }
  return Napi::Number::New(env, Columns(j, i1, s1, s2));
}

// rtnFakeQuant(W, out, in, bits, groupSize, sym, s|null, Y) -> 0 | 1 | 2 (1: a group holds a non-finite
// weight, 2: a scale overflows float16; the caller throws the TypeScript reference's error).
Napi::Value RtnFakeQuantFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  gFn = "rtnFakeQuant";
  if (info.Length() < 8) {
    Fail(env, "expected 8 arguments, got " + std::to_string(info.Length()));
    return env.Undefined();
  }
  int64_t out, inF, bits, groupSize, len;
  if (!Int(info, 1, "out", 1, INT32_MAX, &out) || !Int(info, 2, "in", 1, INT32_MAX, &inF) || !Int(info, 3, "bits", 2, 8, &bits) ||
      !Int(info, 4, "groupSize", -1, INT32_MAX, &groupSize))
    return env.Undefined();
  if (groupSize == 0 || !info[5].IsBoolean()) {
    Fail(env, "groupSize must be -1 or positive and sym a boolean");
    return env.Undefined();
  }
  float *W, *s, *Y;
  if (!View(info, 0, napi_float32_array, "W", out * inF, false, &W, &len) || !View(info, 6, napi_float32_array, "s", inF, true, &s, &len) ||
      !View(info, 7, napi_float32_array, "Y", out * inF, false, &Y, &len))
    return env.Undefined();
  if (Y == W || Y == s) {
    Fail(env, "Y must not be W or s");
    return env.Undefined();
  }
  return Napi::Number::New(env, FakeQuant(W, out, inF, static_cast<int>(bits), groupSize, info[5].As<Napi::Boolean>().Value(), s, Y));
}

// sumSquaredDiff(a, b) -> Σ (a − b)² (float64, fixed order; see SumSquaredDiff)
Napi::Value SumSquaredDiffFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  gFn = "sumSquaredDiff";
  float *a, *b;
  int64_t na, nb;
  if (!View(info, 0, napi_float32_array, "a", 0, false, &a, &na) || !View(info, 1, napi_float32_array, "b", na, false, &b, &nb))
    return env.Undefined();
  if (nb != na) {
    Fail(env, "a and b must have the same length");
    return env.Undefined();
  }
  return Napi::Number::New(env, SumSquaredDiff(a, b, na));
}

// columnSumSquaredDiff(a, b, rows, cols, acc): acc[c] = Σ_r (a − b)²[r, c] (float64, rows in order)
Napi::Value ColumnSumSquaredDiffFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  gFn = "columnSumSquaredDiff";
  int64_t rows, cols;
  if (!Int(info, 2, "rows", 0, int64_t{1} << 40, &rows) || !Int(info, 3, "cols", 0, int64_t{1} << 40, &cols)) return env.Undefined();
  float *a, *b;
  double* acc;
  int64_t na, nb, nacc;
  if (!View(info, 0, napi_float32_array, "a", rows * cols, false, &a, &na) || !View(info, 1, napi_float32_array, "b", rows * cols, false, &b, &nb) ||
      !View(info, 4, napi_float64_array, "acc", cols, false, &acc, &nacc))
    return env.Undefined();
  ColumnSumSquaredDiff(a, b, rows, cols, acc);
  return env.Undefined();
}

}  // namespace

void Register(Napi::Env env, Napi::Object exports) {
  exports.Set("gptqColumns", Napi::Function::New(env, GptqColumnsFn, "gptqColumns"));
  exports.Set("rtnFakeQuant", Napi::Function::New(env, RtnFakeQuantFn, "rtnFakeQuant"));
  exports.Set("sumSquaredDiff", Napi::Function::New(env, SumSquaredDiffFn, "sumSquaredDiff"));
  exports.Set("columnSumSquaredDiff", Napi::Function::New(env, ColumnSumSquaredDiffFn, "columnSumSquaredDiff"));
}

}  // namespace q4gptq
