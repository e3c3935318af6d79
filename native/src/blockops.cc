// quant4 block ops (see blockops.h): norms, RoPE, causal attention, activations, residual add.
// Scalar versions are the portable fallback and the exact transcription of the TypeScript reference; the
// AVX2/FMA ones (__attribute__((target)), chosen at run time) keep the same float64 steps where the
// reference rounds in float64, so they differ from it only where a sum's order differs. At the avx512
// level attention, SiLU and the row log-sum-exp run AVX-512 versions that reproduce the AVX2 ones bit for
// bit (every value from the same operations in the same order; test/blockops.test.ts compares the levels),
// so no calibrated result depends on the level.
//
// No FMA contraction in the scalar code: it is compiled for baseline x86-64 (no FMA instructions). The
// vector functions spell their multiplies and adds with intrinsics, but GCC's default -ffp-contract=fast
// still fuses an intrinsic multiply into a following add (ExpPd: every product is fused); the AVX-512
// ports are written the same way so that the same pairs fuse (checked in the generated code), and the
// AVX2 code they must match is left as it was.

#include "blockops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "qkernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define Q4B_X86 1
#include <immintrin.h>
#define Q4_AVX2 __attribute__((target("avx2,fma,f16c")))
#define Q4_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")))
// Around the AVX-512 code: GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() (a self-initialized
// variable) as the unused merge source, which -Wmaybe-uninitialized reports at every inlined call; spurious.
#if defined(__GNUC__) && !defined(__clang__)
#define Q4_AVX512_BEGIN \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define Q4_AVX512_END _Pragma("GCC diagnostic pop")
#else
#define Q4_AVX512_BEGIN
#define Q4_AVX512_END
#endif
#endif

namespace q4 {

namespace {

// ---------------------------------------------------------------------------------------------
// Threads

// Elements below which a row-wise op stays on the calling thread (a pool hand-off costs a few µs).
constexpr int64_t kParallelElems = 1 << 14;

int EnvThreads() {
  const char* v = std::getenv("QUANT4_BLOCKOPS_THREADS");
  if (!v || !*v) return 0;
  const int n = std::atoi(v);
  return n > 0 ? n : 0;
}
// At most this many threads for the block ops (0: the kernel pool's count, i.e. --threads).
const int g_maxThreads = EnvThreads();

int OpThreads() { return g_maxThreads > 0 ? std::min(g_maxThreads, Threads()) : Threads(); }

/** fn(r0, r1) over row ranges, on the pool when the call is large enough. */
template <typename F>
void ForRows(int64_t rows, int64_t elemsPerRow, F&& fn) {
  const int threads = OpThreads();
  if (threads <= 1 || rows < 2 || rows * elemsPerRow < kParallelElems) {
    fn(int64_t(0), rows);
    return;
  }
  const int chunks = static_cast<int>(std::min<int64_t>(rows, 4 * threads));
  ParallelFor(chunks, [&](int p, int n) {
    const int64_t lo = rows * p / n, hi = rows * (p + 1) / n;
    if (lo < hi) fn(lo, hi);
  });
}

bool Simd() {
#ifdef Q4B_X86
  return SimdInUse();
#else
  return false;
#endif
}
// The SIMD level in use (qkernels.h: 0 scalar, 1 AVX2, 2 AVX-512): the ops with AVX-512 versions.
int Level() {
#ifdef Q4B_X86
  return SimdLevel();
#else
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// exp: the reference's float64 e^x (src/model/ops.ts fastExp), bit for bit.

// 2^(j/64), j = 0..63, correctly rounded (the reference computes them exactly with BigInt).
constexpr uint64_t kExpTBits[64] = {
    0x3ff0000000000000ULL, 0x3ff02c9a3e778061ULL, 0x3ff059b0d3158574ULL, 0x3ff0874518759bc8ULL, 0x3ff0b5586cf9890fULL,
    0x3ff0e3ec32d3d1a2ULL, 0x3ff11301d0125b51ULL, 0x3ff1429aaea92de0ULL, 0x3ff172b83c7d517bULL, 0x3ff1a35beb6fcb75ULL,
    0x3ff1d4873168b9aaULL, 0x3ff2063b88628cd6ULL, 0x3ff2387a6e756238ULL, 0x3ff26b4565e27cddULL, 0x3ff29e9df51fdee1ULL,
    0x3ff2d285a6e4030bULL, 0x3ff306fe0a31b715ULL, 0x3ff33c08b26416ffULL, 0x3ff371a7373aa9cbULL, 0x3ff3a7db34e59ff7ULL,
    0x3ff3dea64c123422ULL, 0x3ff4160a21f72e2aULL, 0x3ff44e086061892dULL, 0x3ff486a2b5c13cd0ULL, 0x3ff4bfdad5362a27ULL,
    0x3ff4f9b2769d2ca7ULL, 0x3ff5342b569d4f82ULL, 0x3ff56f4736b527daULL, 0x3ff5ab07dd485429ULL, 0x3ff5e76f15ad2148ULL,
    0x3ff6247eb03a5585ULL, 0x3ff6623882552225ULL, 0x3ff6a09e667f3bcdULL, 0x3ff6dfb23c651a2fULL, 0x3ff71f75e8ec5f74ULL,
    0x3ff75feb564267c9ULL, 0x3ff7a11473eb0187ULL, 0x3ff7e2f336cf4e62ULL, 0x3ff82589994cce13ULL, 0x3ff868d99b4492edULL,
    0x3ff8ace5422aa0dbULL, 0x3ff8f1ae99157736ULL, 0x3ff93737b0cdc5e5ULL, 0x3ff97d829fde4e50ULL, 0x3ff9c49182a3f090ULL,
    0x3ffa0c667b5de565ULL, 0x3ffa5503b23e255dULL, 0x3ffa9e6b5579fdbfULL, 0x3ffae89f995ad3adULL, 0x3ffb33a2b84f15fbULL,
    0x3ffb7f76f2fb5e47ULL, 0x3ffbcc1e904bc1d2ULL, 0x3ffc199bdd85529cULL, 0x3ffc67f12e57d14bULL, 0x3ffcb720dcef9069ULL,
    0x3ffd072d4a07897cULL, 0x3ffd5818dcfba487ULL, 0x3ffda9e603db3285ULL, 0x3ffdfc97337b9b5fULL, 0x3ffe502ee78b3ff6ULL,
    0x3ffea4afa2a490daULL, 0x3ffefa1bee615a27ULL, 0x3fff50765b6e4540ULL, 0x3fffa7c1819e90d8ULL};

struct ExpTable {
  alignas(64) double t[64];
  ExpTable() { std::memcpy(t, kExpTBits, sizeof t); }
};
const ExpTable g_expT;

constexpr double kExpInv = 64.0 / 0.6931471805599453;  // 64 / Math.LN2
constexpr double kExpShift = 6755399441055744.0;       // 1.5·2^52
constexpr double kExpHi = 6.93147180369123816490e-1 / 64;
constexpr double kExpLo = 1.90821492927058770002e-10 / 64;

double Pow2(int e) {  // 2^e for a normal result (|e| ≤ 1022)
  const uint64_t bits = static_cast<uint64_t>(e + 1023) << 52;
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}

double ExpScalar(double x) {
  if (!(x > -700 && x < 700)) return std::exp(x);
  const double k = x * kExpInv + kExpShift - kExpShift;  // rounds to an integer (IEEE: never reassociated)
  const double r = x - k * kExpHi - k * kExpLo;
  const int ki = static_cast<int>(k);
  const double r2 = r * r;
  const double q = r + r2 * (0.5 + r * (1.0 / 6) + r2 * (1.0 / 24 + r * (1.0 / 120)));
  const double t = g_expT.t[ki & 63];
  return (t + t * q) * Pow2(ki >> 6);
}

// ---------------------------------------------------------------------------------------------
// Scalar ops (the reference transcribed)

void RmsNormRowsScalar(const float* x, int64_t r0, int64_t r1, int64_t dim, const float* w, double eps, float* out) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; i++) ss += static_cast<double>(xr[i]) * xr[i];
    const double inv = 1 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; i++) o[i] = static_cast<float>(xr[i] * inv) * w[i];
  }
}

void LayerNormRowsScalar(const float* x, int64_t r0, int64_t r1, int64_t dim, const float* w, const float* b, double eps, float* out) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    double mean = 0;
    for (int64_t i = 0; i < dim; i++) mean += xr[i];
    mean /= dim;
    double v = 0;
    for (int64_t i = 0; i < dim; i++) {
      const double d = xr[i] - mean;
      v += d * d;
    }
    const double inv = 1 / std::sqrt(v / dim + eps);
    for (int64_t i = 0; i < dim; i++) o[i] = static_cast<float>((xr[i] - mean) * inv * w[i] + (b ? static_cast<double>(b[i]) : 0.0));
  }
}

void RopeHeadScalar(float* x, const float* c, const float* s, int64_t i0, int64_t half) {
  for (int64_t i = i0; i < half; i++) {
    const double a = x[i], b = x[i + half];
    x[i] = static_cast<float>(a * c[i] - b * s[i]);
    x[i + half] = static_cast<float>(b * c[i] + a * s[i]);
  }
}

float SiluScalar(float v) { return static_cast<float>(v / (1 + ExpScalar(-static_cast<double>(v)))); }

/** erf as the reference computes it (Maclaurin series below 2.5, a continued fraction above). */
double ErfRef(double x) {
  const double ax = std::fabs(x);
  if (ax < 2.5) {
    double sum = x, term = x;
    const double x2 = x * x;
    for (int n = 1; n < 60; n++) {
      term *= -x2 / n;
      const double add = term / (2 * n + 1);
      sum += add;
      if (std::fabs(add) < 1e-17 * std::fabs(sum)) break;
    }
    return (2 / std::sqrt(M_PI)) * sum;
  }
  double f = 0;
  for (int n = 60; n >= 1; n--) f = n / 2.0 / (ax + f);
  const double erfc = std::exp(-ax * ax) / std::sqrt(M_PI) / (ax + f);
  return x > 0 ? 1 - erfc : erfc - 1;
}

float ActScalar(int kind, float v) {
  switch (kind) {
    case kSilu: return SiluScalar(v);
    case kRelu: return v < 0 ? 0.0f : v;
    case kGeluNew: {
      const double c = std::sqrt(2 / M_PI);
      const double d = v;
      return static_cast<float>(0.5 * d * (1 + std::tanh(c * (d + 0.044715 * d * d * d))));
    }
    default: return static_cast<float>(0.5 * v * (1 + ErfRef(v / M_SQRT2)));
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2

#ifdef Q4B_X86
Q4_AVX2 inline double HsumPd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

Q4_AVX2 inline float HsumPs(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/** The 4 horizontal sums of a0..a3 as one vector (lane j = Σ aj). */
Q4_AVX2 inline __m128 Hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 s01 = _mm256_hadd_ps(a0, a1);
  const __m256 s23 = _mm256_hadd_ps(a2, a3);
  const __m256 s = _mm256_hadd_ps(s01, s23);
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/** ExpScalar on 4 lanes (same operations, so the same bits); lanes outside (−700, 700) go to ExpScalar. */
Q4_AVX2 inline __m256d ExpPd(__m256d x) {
  const __m256d inRange = _mm256_and_pd(_mm256_cmp_pd(x, _mm256_set1_pd(-700), _CMP_GT_OQ), _mm256_cmp_pd(x, _mm256_set1_pd(700), _CMP_LT_OQ));
  if (_mm256_movemask_pd(inRange) != 0xf) {
    alignas(32) double v[4];
    _mm256_store_pd(v, x);
    for (double& e : v) e = ExpScalar(e);
    return _mm256_load_pd(v);
  }
  const __m256d shift = _mm256_set1_pd(kExpShift);
  const __m256d k = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(x, _mm256_set1_pd(kExpInv)), shift), shift);
  const __m256d r = _mm256_sub_pd(_mm256_sub_pd(x, _mm256_mul_pd(k, _mm256_set1_pd(kExpHi))), _mm256_mul_pd(k, _mm256_set1_pd(kExpLo)));
  const __m128i ki = _mm256_cvtpd_epi32(k);  // k is an integer: exact
  const __m256d r2 = _mm256_mul_pd(r, r);
  // q = r + r2·((0.5 + r/6) + r2·(1/24 + r/120)), each operation rounded as in the reference
  const __m256d inner = _mm256_add_pd(_mm256_set1_pd(1.0 / 24), _mm256_mul_pd(r, _mm256_set1_pd(1.0 / 120)));
  const __m256d poly = _mm256_add_pd(_mm256_add_pd(_mm256_set1_pd(0.5), _mm256_mul_pd(r, _mm256_set1_pd(1.0 / 6))), _mm256_mul_pd(r2, inner));
  const __m256d q = _mm256_add_pd(r, _mm256_mul_pd(r2, poly));
  const __m256d t = _mm256_mask_i32gather_pd(_mm256_setzero_pd(), g_expT.t, _mm_and_si128(ki, _mm_set1_epi32(63)), _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), 8);
  const __m256i e = _mm256_slli_epi64(_mm256_cvtepi32_epi64(_mm_add_epi32(_mm_srai_epi32(ki, 6), _mm_set1_epi32(1023))), 52);
  return _mm256_mul_pd(_mm256_add_pd(t, _mm256_mul_pd(t, q)), _mm256_castsi256_pd(e));
}

Q4_AVX2 void RmsNormRowsAvx2(const float* x, int64_t r0, int64_t r1, int64_t dim, const float* w, double eps, float* out) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= dim; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      a0 = _mm256_fmadd_pd(lo, lo, a0);  // x² is exact in float64: fused or not, the same sum
      a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    double ss = HsumPd(_mm256_add_pd(a0, a1));
    for (; i < dim; i++) ss += static_cast<double>(xr[i]) * xr[i];
    const double inv = 1 / std::sqrt(ss / dim + eps);
    const __m256d iv = _mm256_set1_pd(inv);
    i = 0;
    for (; i + 8 <= dim; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), iv));
      const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), iv));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_set_m128(hi, lo), _mm256_loadu_ps(w + i)));
    }
    for (; i < dim; i++) o[i] = static_cast<float>(xr[i] * inv) * w[i];
  }
}

Q4_AVX2 void RopeHeadAvx2(float* x, const float* c, const float* s, int64_t half) {
  int64_t i = 0;
  for (; i + 4 <= half; i += 4) {
    const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(x + i + half));
    const __m256d cv = _mm256_cvtps_pd(_mm_loadu_ps(c + i)), sv = _mm256_cvtps_pd(_mm_loadu_ps(s + i));
    _mm_storeu_ps(x + i, _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_mul_pd(a, cv), _mm256_mul_pd(b, sv))));
    _mm_storeu_ps(x + i + half, _mm256_cvtpd_ps(_mm256_add_pd(_mm256_mul_pd(b, cv), _mm256_mul_pd(a, sv))));
  }
  RopeHeadScalar(x, c, s, i, half);
}

/**
 * gate[i] = float(silu(gate[i])) · up[i] (up null: silu only), 4 lanes of float64. Not inlined: SiluAvx512
 * hands it the blocks it does not take, which then run this very code.
 */
Q4_AVX2 __attribute__((noinline)) void SiluAvx2(float* gate, const float* up, int64_t n) {
  const __m256d one = _mm256_set1_pd(1.0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(gate + i));
    const __m256d e = ExpPd(_mm256_sub_pd(_mm256_setzero_pd(), v));
    __m128 f = _mm256_cvtpd_ps(_mm256_div_pd(v, _mm256_add_pd(one, e)));
    if (up) f = _mm_mul_ps(f, _mm_loadu_ps(up + i));
    _mm_storeu_ps(gate + i, f);
  }
  for (; i < n; i++) gate[i] = up ? SiluScalar(gate[i]) * up[i] : SiluScalar(gate[i]);
}

Q4_AVX512_BEGIN

/** Whether every lane is inside (−700, 700), where ExpPd takes its vector path. */
Q4_AVX512 inline bool ExpInRange512(__m512d x) {
  return (_mm512_cmp_pd_mask(x, _mm512_set1_pd(-700), _CMP_GT_OQ) & _mm512_cmp_pd_mask(x, _mm512_set1_pd(700), _CMP_LT_OQ)) == 0xff;
}

/**
 * ExpPd's vector path on 8 lanes, all in range (ExpInRange512): the same operations written the same way,
 * so the compiler contracts the same products into FMAs (GCC's default -ffp-contract=fast) and every lane
 * has ExpPd's bits.
 */
Q4_AVX512 inline __m512d ExpPd512(__m512d x) {
  const __m512d shift = _mm512_set1_pd(kExpShift);
  const __m512d k = _mm512_sub_pd(_mm512_add_pd(_mm512_mul_pd(x, _mm512_set1_pd(kExpInv)), shift), shift);
  const __m512d r = _mm512_sub_pd(_mm512_sub_pd(x, _mm512_mul_pd(k, _mm512_set1_pd(kExpHi))), _mm512_mul_pd(k, _mm512_set1_pd(kExpLo)));
  const __m256i ki = _mm512_cvtpd_epi32(k);  // k is an integer: exact
  const __m512d r2 = _mm512_mul_pd(r, r);
  const __m512d inner = _mm512_add_pd(_mm512_set1_pd(1.0 / 24), _mm512_mul_pd(r, _mm512_set1_pd(1.0 / 120)));
  const __m512d poly = _mm512_add_pd(_mm512_add_pd(_mm512_set1_pd(0.5), _mm512_mul_pd(r, _mm512_set1_pd(1.0 / 6))), _mm512_mul_pd(r2, inner));
  const __m512d q = _mm512_add_pd(r, _mm512_mul_pd(r2, poly));
  const __m512d t = _mm512_i32gather_pd(_mm256_and_si256(ki, _mm256_set1_epi32(63)), g_expT.t, 8);
  const __m512i e = _mm512_slli_epi64(_mm512_cvtepi32_epi64(_mm256_add_epi32(_mm256_srai_epi32(ki, 6), _mm256_set1_epi32(1023))), 52);
  return _mm512_mul_pd(_mm512_add_pd(t, _mm512_mul_pd(t, q)), _mm512_castsi512_pd(e));
}

/**
 * v, as a value the compiler cannot look through: a product computed before it is never contracted (FMA)
 * with a sum after it. SiluAvx2's ExpPd result reaches 1 + e through its out-of-range branch, so that
 * multiply and add stay separate there; without the branch GCC would fuse them here.
 */
Q4_AVX512 inline __m512d Opaque512(__m512d v) {
  asm("" : "+v"(v));
  return v;
}

/**
 * SiluAvx2 8 lanes at a time; the last n mod 8 go to SiluAvx2 (the same elements as its scalar tail), and
 * so does the rest of the range from a block with a lane out of ExpPd's range on (|x| ≥ 700: never in a
 * working model; SiluAvx2 takes such lanes through ExpScalar 4 at a time, so this keeps its bits).
 */
Q4_AVX512 void SiluAvx512(float* gate, const float* up, int64_t n) {
  const __m512d one = _mm512_set1_pd(1.0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(gate + i));
    const __m512d x = _mm512_sub_pd(_mm512_setzero_pd(), v);
    if (!ExpInRange512(x)) break;
    __m256 f = _mm512_cvtpd_ps(_mm512_div_pd(v, _mm512_add_pd(one, Opaque512(ExpPd512(x)))));
    if (up) f = _mm256_mul_ps(f, _mm256_loadu_ps(up + i));
    _mm256_storeu_ps(gate + i, f);
  }
  if (i == n) return;
  if (up) SiluAvx2(gate + i, up + i, n - i);
  else SiluAvx2(gate + i, nullptr, n - i);  // (a constant null, as in Activate's call: the same clone of it)
}

Q4_AVX512_END
#endif  // Q4B_X86

// ---------------------------------------------------------------------------------------------
// Attention

/** Query rows per attention task. */
constexpr int64_t kQChunk = 32;

struct AttnArgs {
  const float* q;
  const float* kS;  // K rows: row j of sequence b at kS + (kRow0(b) + j)·kvDim
  const float* vS;
  int64_t kRowStride;  // rows between sequences (T without a cache, 0 with)
  int64_t T, nH, nKv, d, pos0, qDim, kvDim, G;
  float scale;
  float* out;
};

/** Scores row t (local), keys [0, n): S[j] = scale · q·k_j (fp32). */
void ScoresScalar(const float* qr, const float* K, int64_t kvDim, int64_t d, int64_t n, float scale, float* S) {
  for (int64_t j = 0; j < n; j++) {
    const float* kr = K + j * kvDim;
    float acc = 0;
    for (int64_t i = 0; i < d; i++) acc += qr[i] * kr[i];
    S[j] = acc * scale;
  }
}

/** e^(S − max) over [0, n) in place (fp32 storage, float64 exp), zeros on [n, nFill); returns 1/Σ. */
double SoftmaxScalar(float* S, int64_t n, int64_t nFill) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) m = std::max(m, S[j]);
  double sum = 0;
  for (int64_t j = 0; j < n; j++) {
    const float e = static_cast<float>(ExpScalar(static_cast<double>(S[j]) - m));
    S[j] = e;
    sum += e;
  }
  for (int64_t j = n; j < nFill; j++) S[j] = 0;
  return 1 / sum;
}

/** o[c] = Σ_j P[j]·V[j, c] for one row, scaled by inv (float64) at the end. */
void PvScalar(const float* P, const float* V, int64_t kvDim, int64_t d, int64_t n, double inv, float* o) {
  for (int64_t c = 0; c < d; c++) {
    float acc = 0;
    for (int64_t j = 0; j < n; j++) acc += P[j] * V[j * kvDim + c];
    o[c] = static_cast<float>(acc * inv);
  }
}

#ifdef Q4B_X86
/** S rows for query rows qa (and qb when given) over keys [0, n): 2 rows × 4 keys per step. d % 8 == 0. */
Q4_AVX2 void Scores2Avx2(const float* qa, const float* qb, const float* K, int64_t kvDim, int64_t d, int64_t n, float scale, float* Sa, float* Sb) {
  const __m128 sc = _mm_set1_ps(scale);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k0 = K + j * kvDim;
    const float* k1 = k0 + kvDim;
    const float* k2 = k1 + kvDim;
    const float* k3 = k2 + kvDim;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t i = 0; i < d; i += 8) {
      const __m256 x0 = _mm256_loadu_ps(k0 + i), x1 = _mm256_loadu_ps(k1 + i), x2 = _mm256_loadu_ps(k2 + i), x3 = _mm256_loadu_ps(k3 + i);
      const __m256 qv = _mm256_loadu_ps(qa + i);
      a0 = _mm256_fmadd_ps(qv, x0, a0);
      a1 = _mm256_fmadd_ps(qv, x1, a1);
      a2 = _mm256_fmadd_ps(qv, x2, a2);
      a3 = _mm256_fmadd_ps(qv, x3, a3);
      if (qb) {
        const __m256 qw = _mm256_loadu_ps(qb + i);
        b0 = _mm256_fmadd_ps(qw, x0, b0);
        b1 = _mm256_fmadd_ps(qw, x1, b1);
        b2 = _mm256_fmadd_ps(qw, x2, b2);
        b3 = _mm256_fmadd_ps(qw, x3, b3);
      }
    }
    _mm_storeu_ps(Sa + j, _mm_mul_ps(Hsum4(a0, a1, a2, a3), sc));
    if (qb) _mm_storeu_ps(Sb + j, _mm_mul_ps(Hsum4(b0, b1, b2, b3), sc));
  }
  for (; j < n; j++) {
    const float* kr = K + j * kvDim;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (int64_t i = 0; i < d; i += 8) {
      const __m256 x = _mm256_loadu_ps(kr + i);
      a = _mm256_fmadd_ps(_mm256_loadu_ps(qa + i), x, a);
      if (qb) b = _mm256_fmadd_ps(_mm256_loadu_ps(qb + i), x, b);
    }
    Sa[j] = HsumPs(a) * scale;
    if (qb) Sb[j] = HsumPs(b) * scale;
  }
}

/**
 * e^x in fp32 for x ≤ 0 (softmax arguments), 8 lanes: x = n·ln2 + r (Cody–Waite, FMA), a degree-7
 * polynomial for e^r (Cephes expf), 2^n through the exponent bits; within 2 ulp of the correctly rounded
 * value (the float64 reference's e^x rounded to fp32), arguments below −87 give 2^−126·e^(…) ≈ 0.
 */
Q4_AVX2 inline __m256 ExpNegPs(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(r, r), p, r), _mm256_set1_ps(1.0f));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(pow2n));
}

/** max of S[0, n) (8 lanes, then the lanes, then the tail: the order matters only for NaN). */
Q4_AVX2 inline float MaxPs(const float* S, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(S + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float m = _mm_cvtss_f32(m4);
  for (; j < n; j++) m = std::max(m, S[j]);
  return m;
}

/** Softmax after its 8-wide chunks: the last 1..7 of [j, n) (added to s one by one), zeros, 1/Σ. */
Q4_AVX2 inline double SoftmaxEnd(float* S, int64_t j, int64_t n, int64_t nFill, float m, double s) {
  if (j < n) {  // the same kernel on a padded vector
    alignas(32) float t[8];
    for (int i = 0; i < 8; i++) t[i] = j + i < n ? S[j + i] - m : -100.0f;
    _mm256_store_ps(t, ExpNegPs(_mm256_load_ps(t)));
    for (int64_t i = 0; j + i < n; i++) {
      S[j + i] = t[i];
      s += t[i];
    }
  }
  for (j = n; j < nFill; j++) S[j] = 0;
  return 1 / s;
}

/** Softmax numerators e^(s − max) (fp32) over [0, n) in place, zeros on [n, nFill); returns 1/Σ (float64 sum). */
Q4_AVX2 double SoftmaxAvx2(float* S, int64_t n, int64_t nFill) {
  const float m = MaxPs(S, n);
  const __m256 mvv = _mm256_set1_ps(m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = ExpNegPs(_mm256_sub_ps(_mm256_loadu_ps(S + j), mvv));
    _mm256_storeu_ps(S + j, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  return SoftmaxEnd(S, j, n, nFill, m, HsumPd(_mm256_add_pd(s0, s1)));
}

/**
 * R rows (R ≤ 4) of O = P·V over keys [0, n): P rows at P + r·ldp, V row j at V + j·kvDim; 16 (or 8)
 * output columns per pass; each row scaled by inv[r] in float64 at the end. d % 8 == 0.
 */
template <int R>
Q4_AVX2 void PvAvx2(const float* P, int64_t ldp, const float* V, int64_t kvDim, int64_t d, int64_t n, const double* inv, float* o, int64_t ldo) {
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
      const float* vr = V + j * kvDim + c;
      const __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
      for (int r = 0; r < R; r++) {
        const __m256 p = _mm256_broadcast_ss(P + r * ldp + j);
        acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; r++) {
      const __m256d iv = _mm256_set1_pd(inv[r]);
      float* orow = o + r * ldo + c;
      for (int h = 0; h < 2; h++) {
        const __m256 a = acc[r][h];
        const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)), iv));
        const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)), iv));
        _mm256_storeu_ps(orow + 8 * h, _mm256_set_m128(hi, lo));
      }
    }
  }
  for (; c < d; c += 8) {
    __m256 acc[R];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
      const __m256 v0 = _mm256_loadu_ps(V + j * kvDim + c);
      for (int r = 0; r < R; r++) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(P + r * ldp + j), v0, acc[r]);
    }
    for (int r = 0; r < R; r++) {
      const __m256d iv = _mm256_set1_pd(inv[r]);
      const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc[r])), iv));
      const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(acc[r], 1)), iv));
      _mm256_storeu_ps(o + r * ldo + c, _mm256_set_m128(hi, lo));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 attention (the avx512 level): the same fp32 and float64 values as the AVX2 kernels above, bit for
// bit (test/blockops.test.ts compares the levels), with 512-bit vectors and 32 registers. Every score, P·V
// element and softmax sum goes through the same operations in the same order as in the AVX2 kernel;
// only how the work is laid out across lanes and registers changes.

Q4_AVX512_BEGIN

/** _mm256_hadd_ps on each 128-bit lane: [a1 + a0, a3 + a2, b1 + b0, b3 + b2] (HADDPS's operand order). */
Q4_AVX512 inline __m512 Hadd512(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
}

/**
 * Scores of P query-row pairs (P ≤ 4) over keys [0, n[P−1]); pair p = task rows 2p, 2p+1 (one row if
 * lone), Scores2Avx2's pairs. The AVX2 kernel keeps one 8-lane partial sum per (row, key); here the two rows
 * of a pair share a zmm (Qp: the pair's q values, row 2p in the low 256 bits, step s of 8 at Qp + 16s) and
 * each key's 8 values are broadcast to both halves, so 4 pairs × 4 keys are 16 accumulators, 8 loads per
 * 16 FMAs. Each lane sees the same FMA sequence over the head dim. Then the AVX2 kernel's horizontal sums:
 * for the keys it took 4 at a time (below n[p] rounded down to 4) Hsum4 (three hadd levels, low + high 128
 * bits), done here for 4 keys × 8 rows at once; for its last 1..3 keys HsumPs. Keys past a pair's n (the
 * block runs to the last pair's) are computed and dropped; K rows past the block's n are not read.
 */
template <int P>
Q4_AVX512 void ScoresBlockAvx512(const float* Qp, int64_t d, const float* K, int64_t kvDim, const int64_t* n, bool lone, float scale, float* S, int64_t Lc) {
  const int64_t steps = d / 8, nMax = n[P - 1];
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < nMax; j += 4) {
    const float* kr[4];
    for (int k = 0; k < 4; k++) kr[k] = K + std::min(j + k, nMax - 1) * kvDim;
    __m512 acc[P][4];
    for (int p = 0; p < P; p++)
      for (int k = 0; k < 4; k++) acc[p][k] = _mm512_setzero_ps();
    for (int64_t s = 0; s < steps; s++) {
      __m512 kv[4];
      for (int k = 0; k < 4; k++) kv[k] = _mm512_broadcast_f32x8(_mm256_loadu_ps(kr[k] + 8 * s));
      for (int p = 0; p < P; p++) {
        const __m512 qv = _mm512_loadu_ps(Qp + (p * steps + s) * 16);
        for (int k = 0; k < 4; k++) acc[p][k] = _mm512_fmadd_ps(qv, kv[k], acc[p][k]);
      }
    }
    // Hsum4 of every pair: 128-bit lane 0 of h[p] holds row 2p's sums of lanes 0..3 for the 4 keys, lane 1
    // its lanes 4..7, lanes 2, 3 row 2p+1's; then (lane 0 + lane 1) · scale, two pairs per vector.
    __m512 h[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) h[p] = Hadd512(Hadd512(acc[p][0], acc[p][1]), Hadd512(acc[p][2], acc[p][3]));
#pragma GCC unroll 2
    for (int p = 0; p < P; p += 2) {
      const __m512 b = p + 1 < P ? h[p + 1] : h[p];
      const __m512 lo = _mm512_shuffle_f32x4(h[p], b, _MM_SHUFFLE(2, 0, 2, 0)), hi = _mm512_shuffle_f32x4(h[p], b, _MM_SHUFFLE(3, 1, 3, 1));
      const __m512 r = _mm512_mul_ps(_mm512_add_ps(lo, hi), sc);  // rows 2p, 2p+1, 2p+2, 2p+3: keys j..j+3
      if (j + 4 <= (n[p] & ~int64_t(3))) {
        _mm_storeu_ps(S + 2 * p * Lc + j, _mm512_castps512_ps128(r));
        if (!(lone && p == P - 1)) _mm_storeu_ps(S + (2 * p + 1) * Lc + j, _mm512_extractf32x4_ps(r, 1));
      }
      if (p + 1 < P && j + 4 <= (n[p + 1] & ~int64_t(3))) {
        _mm_storeu_ps(S + (2 * p + 2) * Lc + j, _mm512_extractf32x4_ps(r, 2));
        if (!(lone && p + 1 == P - 1)) _mm_storeu_ps(S + (2 * p + 3) * Lc + j, _mm512_extractf32x4_ps(r, 3));
      }
    }
    // A pair's last 1..3 keys: HsumPs per row and key (once per pair and block).
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
      if (j + 4 <= (n[p] & ~int64_t(3)) || j >= n[p]) continue;
      alignas(64) float t[4][16];
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) _mm512_store_ps(t[k], acc[p][k]);
      for (int i = 0; i < (lone && p == P - 1 ? 1 : 2); i++)
        for (int k = 0; j + k < n[p]; k++) S[(2 * p + i) * Lc + j + k] = HsumPs(_mm256_load_ps(t[k] + 8 * i)) * scale;
    }
  }
}

/** All score rows of a task (tc rows, Scores2Avx2's pairs and key counts), 4 pairs per block. */
Q4_AVX512 void ScoresAvx512(const float* Q, int64_t qDim, int64_t tc, const float* K, int64_t kvDim, int64_t d, int64_t visible0, float scale, float* S, int64_t Lc) {
  thread_local std::vector<float> QpBuf;
  const int64_t pairs = (tc + 1) / 2, steps = d / 8;
  QpBuf.resize(static_cast<size_t>(pairs * steps * 16));
  float* Qp = QpBuf.data();
  int64_t n[(kQChunk + 1) / 2];
  for (int64_t p = 0; p < pairs; p++) {
    const int64_t last = std::min(2 * p + 1, tc - 1);
    n[p] = visible0 + last;
    for (int64_t s = 0; s < steps; s++)
      for (int i = 0; i < 2; i++) std::memcpy(Qp + (p * steps + s) * 16 + 8 * i, Q + std::min(2 * p + i, last) * qDim + 8 * s, 32);
  }
  for (int64_t p = 0; p < pairs; p += 4) {
    const int np = static_cast<int>(std::min<int64_t>(4, pairs - p));
    const bool lone = p + np == pairs && tc % 2 == 1;
    const float* qp = Qp + p * steps * 16;
    float* Sp = S + 2 * p * Lc;
    if (np == 4) ScoresBlockAvx512<4>(qp, d, K, kvDim, &n[p], lone, scale, Sp, Lc);
    if (np == 3) ScoresBlockAvx512<3>(qp, d, K, kvDim, &n[p], lone, scale, Sp, Lc);
    if (np == 2) ScoresBlockAvx512<2>(qp, d, K, kvDim, &n[p], lone, scale, Sp, Lc);
    if (np == 1) ScoresBlockAvx512<1>(qp, d, K, kvDim, &n[p], lone, scale, Sp, Lc);
  }
}

/** ExpNegPs on 16 lanes: the same operations, so the same bits per lane. */
Q4_AVX512 inline __m512 ExpNegPs512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r), _mm512_set1_ps(1.0f));
  const __m512i pow2n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(e, _mm512_castsi512_ps(pow2n));
}

/**
 * SoftmaxAvx2 with 16-lane e^x. Its float64 sum adds lanes 0..3 of each 8-value chunk into s0 and lanes 4..7
 * into s1, chunk after chunk: here one 8-lane accumulator whose low half is s0 and high half s1.
 */
Q4_AVX512 double SoftmaxAvx512(float* S, int64_t n, int64_t nFill) {
  const float m = MaxPs(S, n);
  const __m512 mv = _mm512_set1_ps(m);
  __m512d s01 = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = ExpNegPs512(_mm512_sub_ps(_mm512_loadu_ps(S + j), mv));
    _mm512_storeu_ps(S + j, e);
    s01 = _mm512_add_pd(s01, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    s01 = _mm512_add_pd(s01, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
  }
  if (j + 8 <= n) {
    const __m256 e = ExpNegPs(_mm256_sub_ps(_mm256_loadu_ps(S + j), _mm512_castps512_ps256(mv)));
    _mm256_storeu_ps(S + j, e);
    s01 = _mm512_add_pd(s01, _mm512_cvtps_pd(e));
    j += 8;
  }
  return SoftmaxEnd(S, j, n, nFill, m, HsumPd(_mm256_add_pd(_mm512_castpd512_pd256(s01), _mm512_extractf64x4_pd(s01, 1))));
}

/** float(acc · inv) per lane (float64 product), as PvAvx2's end. */
Q4_AVX512 inline __m512 ScalePs512(__m512 acc, __m512d iv) {
  const __m256 lo = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(acc)), iv));
  const __m256 hi = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(acc, 1)), iv));
  return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}

/**
 * PvAvx2<R> with 64 output columns (16 accumulators) per pass, then 16, then PvAvx2's 8: each output element
 * is the same fp32 FMA chain over the keys in order; d = 64 reads P once instead of 4 times.
 */
template <int R>
Q4_AVX512 void PvAvx512(const float* P, int64_t ldp, const float* V, int64_t kvDim, int64_t d, int64_t n, const double* inv, float* o, int64_t ldo) {
  int64_t c = 0;
  for (; c + 64 <= d; c += 64) {
    __m512 acc[R][4];
    for (int r = 0; r < R; r++)
      for (int h = 0; h < 4; h++) acc[r][h] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
      const float* vr = V + j * kvDim + c;
      __m512 v[4];
      for (int h = 0; h < 4; h++) v[h] = _mm512_loadu_ps(vr + 16 * h);
      for (int r = 0; r < R; r++) {
        const __m512 p = _mm512_set1_ps(P[r * ldp + j]);
        for (int h = 0; h < 4; h++) acc[r][h] = _mm512_fmadd_ps(p, v[h], acc[r][h]);
      }
    }
    for (int r = 0; r < R; r++)
      for (int h = 0; h < 4; h++) _mm512_storeu_ps(o + r * ldo + c + 16 * h, ScalePs512(acc[r][h], _mm512_set1_pd(inv[r])));
  }
  for (; c + 16 <= d; c += 16) {
    __m512 acc[R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j++) {
      const __m512 v = _mm512_loadu_ps(V + j * kvDim + c);
      for (int r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(P[r * ldp + j]), v, acc[r]);
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(o + r * ldo + c, ScalePs512(acc[r], _mm512_set1_pd(inv[r])));
  }
  if (c < d) PvAvx2<R>(P, ldp, V + c, kvDim, d - c, n, inv, o + c, ldo);
}

Q4_AVX512_END

#endif  // Q4B_X86

/** One task: sequence b, query head h, query rows [t0, t0 + tc). */
void AttnTask(const AttnArgs& a, int64_t b, int64_t h, int64_t t0, int64_t tc, int level) {
  thread_local std::vector<float> Sbuf;
  thread_local std::vector<double> invBuf;
  const int64_t d = a.d;
  const int64_t kh = h / a.G;
  const int64_t Lc = a.pos0 + t0 + tc;  // keys visible to the chunk's last row
  Sbuf.resize(static_cast<size_t>(tc * Lc));
  invBuf.resize(static_cast<size_t>(tc));
  float* S = Sbuf.data();
  double* inv = invBuf.data();
  const float* K = a.kS + b * a.kRowStride * a.kvDim + kh * d;
  const float* V = a.vS + b * a.kRowStride * a.kvDim + kh * d;
  const float* Q = a.q + (b * a.T + t0) * a.qDim + h * d;
  float* O = a.out + (b * a.T + t0) * a.qDim + h * d;
  auto visible = [&](int64_t t) { return a.pos0 + t0 + t + 1; };
#ifdef Q4B_X86
  if (level >= 2 && d % 8 == 0) {
    ScoresAvx512(Q, a.qDim, tc, K, a.kvDim, d, visible(0), a.scale, S, Lc);
    for (int64_t t = 0; t < tc; t++) inv[t] = SoftmaxAvx512(S + t * Lc, visible(t), std::min(Lc, visible(t / 4 * 4 + 3)));
    int64_t t = 0;
    for (; t + 4 <= tc; t += 4) PvAvx512<4>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 3), inv + t, O + t * a.qDim, a.qDim);
    const int64_t rest = tc - t;
    if (rest == 3) PvAvx512<3>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 2), inv + t, O + t * a.qDim, a.qDim);
    if (rest == 2) PvAvx512<2>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 1), inv + t, O + t * a.qDim, a.qDim);
    if (rest == 1) PvAvx512<1>(S + t * Lc, Lc, V, a.kvDim, d, visible(t), inv + t, O + t * a.qDim, a.qDim);
    return;
  }
  if (level >= 1 && d % 8 == 0) {
    int64_t t = 0;
    for (; t + 2 <= tc; t += 2)
      Scores2Avx2(Q + t * a.qDim, Q + (t + 1) * a.qDim, K, a.kvDim, d, visible(t + 1), a.scale, S + t * Lc, S + (t + 1) * Lc);
    if (t < tc) Scores2Avx2(Q + t * a.qDim, nullptr, K, a.kvDim, d, visible(t), a.scale, S + t * Lc, nullptr);
    // Row t's softmax covers its visible keys; zeros up to the last key its 4-row P·V pass reads.
    for (t = 0; t < tc; t++) inv[t] = SoftmaxAvx2(S + t * Lc, visible(t), std::min(Lc, visible(t / 4 * 4 + 3)));
    t = 0;
    for (; t + 4 <= tc; t += 4) PvAvx2<4>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 3), inv + t, O + t * a.qDim, a.qDim);
    const int64_t rest = tc - t;
    if (rest == 3) PvAvx2<3>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 2), inv + t, O + t * a.qDim, a.qDim);
    if (rest == 2) PvAvx2<2>(S + t * Lc, Lc, V, a.kvDim, d, visible(t + 1), inv + t, O + t * a.qDim, a.qDim);
    if (rest == 1) PvAvx2<1>(S + t * Lc, Lc, V, a.kvDim, d, visible(t), inv + t, O + t * a.qDim, a.qDim);
    return;
  }
#endif
  (void)level;
  for (int64_t t = 0; t < tc; t++) {
    const int64_t n = visible(t);
    ScoresScalar(Q + t * a.qDim, K, a.kvDim, d, n, a.scale, S + t * Lc);
    const double iv = SoftmaxScalar(S + t * Lc, n, n);
    PvScalar(S + t * Lc, V, a.kvDim, d, n, iv, O + t * a.qDim);
  }
}

// ---------------------------------------------------------------------------------------------
// Row log-sum-exp (perplexity): per row the max, its first index (−1 when the row holds NaN/±Inf) and
// Σ e^(x − max) in float64, summed left to right as the TypeScript reference does
// (src/eval/perplexity.ts rowLse), so the same bits.

/** Columns of e^(x − max) buffered per row before the sequential sums. */
constexpr int64_t kLseCols = 512;

void RowMaxScalar(const float* xr, int64_t V, float* mx, int32_t* top) {
  float m = -INFINITY;
  int32_t t = 0;
  bool finite = true;
  for (int64_t j = 0; j < V; j++) {
    if (xr[j] > m) m = xr[j], t = static_cast<int32_t>(j);
    finite &= std::isfinite(xr[j]);
  }
  *mx = m;
  *top = finite ? t : -1;
}

void RowLseScalar(const float* x, int64_t r0, int64_t r1, int64_t V, float* mx, double* sum, int32_t* top) {
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = x + r * V;
    RowMaxScalar(xr, V, mx + r, top + r);
    const double m = mx[r];
    double s = 0;
    for (int64_t j = 0; j < V; j++) s += ExpScalar(static_cast<double>(xr[j]) - m);
    sum[r] = s;
  }
}

#ifdef Q4B_X86
/** As RowMaxScalar: NaN never wins (max_ps returns its second operand), the first index of the max. */
Q4_AVX2 void RowMaxAvx2(const float* xr, int64_t V, float* mx, int32_t* top) {
  __m256 acc = _mm256_set1_ps(-INFINITY);
  // |x| < ∞ is false for ±∞ and NaN: ANDed over the row, all ones while every value is finite.
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
  __m256 fin = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t j = 0;
  for (; j + 8 <= V; j += 8) {
    const __m256 v = _mm256_loadu_ps(xr + j);
    acc = _mm256_max_ps(v, acc);
    fin = _mm256_and_ps(fin, _mm256_cmp_ps(_mm256_and_ps(v, absMask), inf, _CMP_LT_OQ));
  }
  bool finite = _mm256_movemask_ps(fin) == 0xff;
  alignas(32) float l[8];
  _mm256_store_ps(l, acc);
  float m = -INFINITY;
  for (float v : l) m = std::max(v, m);
  for (; j < V; j++) {
    if (xr[j] > m) m = xr[j];
    finite &= std::isfinite(xr[j]);
  }
  int32_t t = 0;
  if (!finite) t = -1;
  else if (m != -INFINITY)
    for (int64_t i = 0; i < V; i++)
      if (xr[i] == m) {
        t = static_cast<int32_t>(i);
        break;
      }
  *mx = m;
  *top = t;
}

/** e[j] = e^(x[j] − m) for j in [j0, nc): ExpPd 4 lanes at a time, ExpScalar for the last (nc − j0) mod 4. */
Q4_AVX2 inline void ExpRowAvx2Rest(const float* xr, double m, int64_t j0, int64_t nc, double* e) {
  const __m256d mv = _mm256_set1_pd(m);
  int64_t j = j0;
  for (; j + 4 <= nc; j += 4) _mm256_storeu_pd(e + j, ExpPd(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xr + j)), mv)));
  for (; j < nc; j++) e[j] = ExpScalar(static_cast<double>(xr[j]) - m);
}
Q4_AVX2 inline void ExpRowAvx2(const float* xr, double m, int64_t nc, double* e) { ExpRowAvx2Rest(xr, m, 0, nc, e); }

Q4_AVX512_BEGIN
/**
 * ExpRowAvx2 8 lanes at a time (ExpPd512); ExpRowAvx2 itself takes the last nc mod 8, and the rest of the
 * row from a block with a lane out of range on (x − max ≤ −700, e.g. a −∞ logit).
 */
Q4_AVX512 void ExpRowAvx512(const float* xr, double m, int64_t nc, double* e) {
  const __m512d mv = _mm512_set1_pd(m);
  int64_t j = 0;
  for (; j + 8 <= nc; j += 8) {
    const __m512d x = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(xr + j)), mv);
    if (!ExpInRange512(x)) break;
    _mm512_storeu_pd(e + j, ExpPd512(x));
  }
  ExpRowAvx2Rest(xr, m, j, nc, e);
}
Q4_AVX512_END

/**
 * 4 rows at a time: e^(x − max) per row (ExpRow: ExpRowAvx2, or ExpRowAvx512 at the avx512 level; ExpPd's
 * bits either way), then 4 interleaved sequential sums.
 */
template <void (*ExpRow)(const float*, double, int64_t, double*)>
Q4_AVX2 void RowLseAvx2(const float* x, int64_t r0, int64_t r1, int64_t V, float* mx, double* sum, int32_t* top) {
  alignas(32) double e[4][kLseCols];
  for (int64_t r = r0; r < r1; r += 4) {
    const int nr = static_cast<int>(std::min<int64_t>(4, r1 - r));
    double s[4] = {0, 0, 0, 0};
    for (int i = 0; i < nr; i++) RowMaxAvx2(x + (r + i) * V, V, mx + r + i, top + r + i);
    for (int64_t c0 = 0; c0 < V; c0 += kLseCols) {
      const int64_t nc = std::min(kLseCols, V - c0);
      for (int i = 0; i < nr; i++) {
        ExpRow(x + (r + i) * V + c0, mx[r + i], nc, e[i]);
      }
      if (nr == 4) {
        double s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
        for (int64_t j = 0; j < nc; j++) {
          s0 += e[0][j];
          s1 += e[1][j];
          s2 += e[2][j];
          s3 += e[3][j];
        }
        s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
      } else {
        for (int i = 0; i < nr; i++)
          for (int64_t j = 0; j < nc; j++) s[i] += e[i][j];
      }
    }
    for (int i = 0; i < nr; i++) sum[r + i] = s[i];
  }
}

Q4_AVX2 void F16ToF32Avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    alignas(16) uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    alignas(32) float f[8];
    for (int64_t j = i; j < n; j++) t[j - i] = src[j];
    _mm256_store_ps(f, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t))));
    for (int64_t j = i; j < n; j++) dst[j] = f[j - i];
  }
}
#endif  // Q4B_X86

}  // namespace

double FastExp(double x) { return ExpScalar(x); }

void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, double eps, float* out) {
  const bool simd = Simd();
  ForRows(rows, dim, [&](int64_t r0, int64_t r1) {
#ifdef Q4B_X86
    if (simd) return RmsNormRowsAvx2(x, r0, r1, dim, w, eps, out);
#endif
    RmsNormRowsScalar(x, r0, r1, dim, w, eps, out);
  });
  (void)simd;
}

void LayerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, double eps, float* out) {
  ForRows(rows, dim, [&](int64_t r0, int64_t r1) { LayerNormRowsScalar(x, r0, r1, dim, w, b, eps, out); });
}

void Rope(float* x, int64_t rows, int64_t T, int64_t nHeads, int64_t headDim, int64_t pos0, const float* cos, const float* sin) {
  const int64_t half = headDim / 2;
  const bool simd = Simd();
  ForRows(rows, nHeads * headDim, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const int64_t p = pos0 + r % T;
      const float* c = cos + p * half;
      const float* s = sin + p * half;
      for (int64_t h = 0; h < nHeads; h++) {
        float* xh = x + (r * nHeads + h) * headDim;
#ifdef Q4B_X86
        if (simd) {
          RopeHeadAvx2(xh, c, s, half);
          continue;
        }
#endif
        RopeHeadScalar(xh, c, s, 0, half);
      }
    }
  });
  (void)simd;
}

void Attention(const float* q, const float* k, const float* v, const AttnShape& s, float* kc, float* vc, float* out) {
  AttnArgs a;
  a.T = s.T;
  a.nH = s.nHeads;
  a.nKv = s.nKv;
  a.d = s.headDim;
  a.pos0 = s.pos0;
  a.qDim = s.nHeads * s.headDim;
  a.kvDim = s.nKv * s.headDim;
  a.G = s.nHeads / s.nKv;
  a.scale = static_cast<float>(1 / std::sqrt(static_cast<double>(s.headDim)));
  a.q = q;
  a.out = out;
  if (kc) {  // B = 1: append this call's rows at pos0, attend over the cache
    std::memcpy(kc + s.pos0 * a.kvDim, k, sizeof(float) * s.T * a.kvDim);
    std::memcpy(vc + s.pos0 * a.kvDim, v, sizeof(float) * s.T * a.kvDim);
    a.kS = kc;
    a.vS = vc;
    a.kRowStride = 0;
  } else {
    a.kS = k;
    a.vS = v;
    a.kRowStride = s.T;
  }
  const int64_t nChunks = (s.T + kQChunk - 1) / kQChunk;
  const int64_t tasks = s.B * s.nHeads * nChunks;
  const int level = Level();
  // Work ≈ Σ query rows × visible keys × d; small calls (decoding a small model) stay on this thread.
  const double work = static_cast<double>(s.B) * s.nHeads * s.T * (s.pos0 + (s.T + 1) / 2.0) * s.headDim;
  auto run = [&](int64_t task) {
    // Latest chunks (the most keys) first, so the dynamic claiming ends with short tasks.
    const int64_t c = nChunks - 1 - task % nChunks;
    const int64_t bh = task / nChunks;
    const int64_t t0 = c * kQChunk;
    AttnTask(a, bh / s.nHeads, bh % s.nHeads, t0, std::min(kQChunk, s.T - t0), level);
  };
  if (OpThreads() <= 1 || tasks < 2 || work < 65536) {
    for (int64_t t = 0; t < tasks; t++) run(t);
    return;
  }
  ParallelFor(static_cast<int>(tasks), [&](int p, int) { run(p); });
}

void Activate(int kind, float* x, int64_t n) {
  const int level = Level();
  ForRows(n, 1, [&](int64_t i0, int64_t i1) {
#ifdef Q4B_X86
    if (level >= 2 && kind == kSilu) return SiluAvx512(x + i0, nullptr, i1 - i0);
    if (level >= 1 && kind == kSilu) return SiluAvx2(x + i0, nullptr, i1 - i0);
#endif
    for (int64_t i = i0; i < i1; i++) x[i] = ActScalar(kind, x[i]);
  });
  (void)level;
}

void ActivateMul(int kind, float* gate, const float* up, int64_t n) {
  const int level = Level();
  ForRows(n, 1, [&](int64_t i0, int64_t i1) {
#ifdef Q4B_X86
    if (level >= 2 && kind == kSilu) return SiluAvx512(gate + i0, up + i0, i1 - i0);
    if (level >= 1 && kind == kSilu) return SiluAvx2(gate + i0, up + i0, i1 - i0);
#endif
    for (int64_t i = i0; i < i1; i++) gate[i] = ActScalar(kind, gate[i]) * up[i];
  });
  (void)level;
}

void RowLse(const float* x, int64_t rows, int64_t V, float* mx, double* sum, int32_t* top) {
  const int level = Level();
  ForRows(rows, V, [&](int64_t r0, int64_t r1) {
#ifdef Q4B_X86
    if (level >= 2) return RowLseAvx2<ExpRowAvx512>(x, r0, r1, V, mx, sum, top);
    if (level >= 1) return RowLseAvx2<ExpRowAvx2>(x, r0, r1, V, mx, sum, top);
#endif
    RowLseScalar(x, r0, r1, V, mx, sum, top);
  });
  (void)level;
}

bool F16ToF32(const uint16_t* src, float* dst, int64_t n) {
#ifdef Q4B_X86
  if (!Simd()) return false;
  ForRows(n, 1, [&](int64_t i0, int64_t i1) { F16ToF32Avx2(src + i0, dst + i0, i1 - i0); });
  return true;
#else
  (void)src, (void)dst, (void)n;
  return false;
#endif
}

void Add(const float* a, const float* b, float* out, int64_t n) {
  ForRows(n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) out[i] = a[i] + b[i];
  });
}

}  // namespace q4
