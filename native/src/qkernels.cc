// quant4 runtime kernels: see qkernels.h for the layout. AVX2/FMA(/F16C) versions, and AVX-512 (F/BW/VL)
// ones of the 2- and 4-bit GEMV, are compiled per function with __attribute__((target(...))) and chosen at
// run time (__builtin_cpu_supports), so the addon itself stays baseline x86-64 and loads on any CPU; every
// kernel has a portable scalar version (QUANT4_NO_SIMD=1 or QUANT4_SIMD=scalar forces it, QUANT4_SIMD=avx2
// the AVX2 level).

#include "qkernels.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#ifdef __linux__
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define Q4_X86 1
#include <immintrin.h>
#endif

#ifdef QUANT4_ACCELERATE
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif

namespace q4 {

void FreeDeleter::operator()(void* p) const { std::free(p); }

namespace {

/** A non-negative integer tuning knob from the environment (benchmarks); dflt when unset or invalid. */
int EnvInt(const char* name, int dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return *end == '\0' && x >= 0 && x <= (1L << 30) ? static_cast<int>(x) : dflt;
}

/**
 * 64-byte aligned memory; a large block is 2 MiB aligned and advised as huge pages (Linux THP "madvise"
 * mode), so streaming a layer's codes does not walk a page table every 4 KiB.
 */
void* AlignedAlloc(size_t bytes) {
  const size_t kHuge = size_t(2) << 20;
  if (bytes >= 2 * kHuge) {
    const size_t n = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, n);
#ifdef __linux__
    if (p && EnvInt("QUANT4_HUGEPAGES", 1) == 1) madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
  }
  size_t n = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
  return std::aligned_alloc(64, n);
}

// ---------------------------------------------------------------------------------------------
// Run-time choices

bool CpuHasAvx2() {
#ifdef Q4_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

/** AVX-512 F/DQ/BW/VL (libgcc also checks that the OS saves the zmm state) on top of AVX2/FMA/F16C. */
bool CpuHasAvx512() {
#ifdef Q4_X86
  __builtin_cpu_init();
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// SIMD levels: 0 scalar, 1 AVX2/FMA/F16C, 2 AVX-512 (F/DQ/BW/VL) for the 2- and 4-bit GEMV and the block
// ops' attention, SiLU and row log-sum-exp (everything else runs the AVX2 kernels at level 2). The highest level this CPU has; QUANT4_SIMD=avx512|avx2|scalar starts
// lower (a higher request is capped), QUANT4_NO_SIMD=1 starts on scalar.
const int g_maxLevel = CpuHasAvx512() ? 2 : CpuHasAvx2() ? 1 : 0;
bool EnvNoSimd() {
  const char* v = std::getenv("QUANT4_NO_SIMD");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}
int EnvLevel() {
  if (EnvNoSimd()) return 0;
  const char* v = std::getenv("QUANT4_SIMD");
  if (v == nullptr || v[0] == '\0') return g_maxLevel;
  const int want = std::strcmp(v, "scalar") == 0 ? 0 : std::strcmp(v, "avx2") == 0 ? 1 : 2;  // unknown: the best
  return std::min(want, g_maxLevel);
}
std::atomic<int> g_level{EnvLevel()};
int Level() { return g_level.load(std::memory_order_relaxed); }

// Rows up to which a multi-row call runs the GEMV (above: dequantized tiles + sgemm).
const int g_gemvMaxRows = EnvInt("QUANT4_GEMV_MAX_ROWS", 16);
// 2..g_gemvMaxRows rows in one pass over the weights (QUANT4_GEMV_MULTI=0: once per row, as before).
const bool g_multiRow = EnvInt("QUANT4_GEMV_MULTI", 1) != 0;
// fp32 bytes of one dequantized GEMM tile, and its fewest rows (sgemm is slow on narrow N).
const int64_t g_tileBytes = static_cast<int64_t>(EnvInt("QUANT4_TILE_KB", 4096)) * 1024;
const int64_t g_tileMinRows = EnvInt("QUANT4_TILE_MIN_ROWS", 256);
// Weights (out·in) below which a call stays on one thread (waking a worker costs more).
const int64_t g_parallelMin = EnvInt("QUANT4_PARALLEL_MIN", 1 << 16);
// Microseconds a pool worker spins for the next job before sleeping.
const int g_spinUs = EnvInt("QUANT4_SPIN_US", 200);
// Fall back to one thread while workers keep arriving late (see Pool::Adapt).
const bool g_adaptive = EnvInt("QUANT4_ADAPTIVE_THREADS", 1) != 0;

// ---------------------------------------------------------------------------------------------
// A small thread pool with dynamic chunks: a job is cut into chunks that the caller and the workers claim
// one at a time, so the caller never waits for a worker the OS has not scheduled (the machine may be
// shared) beyond the chunk that worker already holds. Workers spin briefly for the next job (decoding
// calls come back-to-back), then sleep. A claim is a CAS on (generation, next chunk): a worker waking
// late for a finished job sees another generation and claims nothing, so it never touches a job whose
// caller has returned.

class Pool {
 public:
  void SetThreads(int n) { threads_.store(std::max(1, std::min(n, 256))); }
  int Threads() const { return threads_.load(); }

  /**
   * Runs fn(chunk, chunks) for every chunk in [0, chunks), on up to Threads() threads. spinAfter: the
   * workers spin for the next job (back-to-back GEMV calls) rather than sleeping at once (the block ops,
   * which a BLAS call follows: a spinning worker would take a core from BLAS's threads).
   */
  void Run(int chunks, const std::function<void(int, int)>& fn, bool spinAfter = true) {
    const int threads = Threads();
    if (chunks <= 1 || threads <= 1 || Serial()) {
      for (int c = 0; c < chunks; c++) fn(c, chunks);
      return;
    }
    std::lock_guard<std::mutex> run(runM_);  // one job at a time
    Ensure(threads - 1);
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn;
      chunks_ = chunks;
      spin_.store(spinAfter, std::memory_order_relaxed);
      completed_.store(0, std::memory_order_relaxed);
      gen = (word_.load() >> 32) + 1;
      word_.store(gen << 32, std::memory_order_release);
    }
    cv_.notify_all();
    Work(gen);
    const auto t1 = std::chrono::steady_clock::now();
    while (completed_.load(std::memory_order_acquire) < chunks) Pause();
    Adapt(t1 - t0, std::chrono::steady_clock::now() - t1);
  }

 private:
  // Adaptive fallback for a shared machine: when another process holds the other cores, a worker is
  // descheduled while it holds a chunk and the caller waits for the rest of its time slice (ms), which
  // makes a 2-thread GEMV slower than a 1-thread one (measured on the 2-core dev machine). When the
  // caller keeps waiting long after finishing its own chunks (3 jobs in a row, > 1/4 of the job),
  // the next kSerialJobs jobs run on the caller alone, then threads are tried again.
  // QUANT4_ADAPTIVE_THREADS=0 turns this off.
  static constexpr int kSerialJobs = 512;
  bool Serial() {
    int left = serialLeft_.load(std::memory_order_relaxed);
    while (left > 0)
      if (serialLeft_.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) return true;
    return false;
  }
  void Adapt(std::chrono::steady_clock::duration own, std::chrono::steady_clock::duration wait) {
    if (!g_adaptive) return;
    if (wait > own / 3 && wait > std::chrono::microseconds(50)) {
      if (++strikes_ >= 3) {
        strikes_ = 0;
        serialLeft_ = kSerialJobs;
      }
    } else if (strikes_ > 0) {
      strikes_--;
    }  // (under runM_: one caller at a time)
  }

 private:
  static void Pause() {
#ifdef Q4_X86
    _mm_pause();
#else
    std::this_thread::yield();
#endif
  }

  /** Claims and runs chunks of generation `gen` until none is left. */
  void Work(uint64_t gen) {
    uint64_t w = word_.load(std::memory_order_acquire);
    for (;;) {
      if ((w >> 32) != gen) return;
      const int next = static_cast<int>(w & 0xffffffffu);
      if (next >= chunks_) return;
      if (!word_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel)) continue;
      (*job_)(next, chunks_);
      completed_.fetch_add(1, std::memory_order_acq_rel);
      w = word_.load(std::memory_order_acquire);
    }
  }

  void Ensure(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const uint64_t seen = word_.load() >> 32;
      workers_.emplace_back([this, seen] { Loop(seen); });
      workers_.back().detach();
    }
  }

  void Loop(uint64_t seen) {
    for (;;) {
      uint64_t g = word_.load(std::memory_order_acquire) >> 32;
      if (g == seen) {
        const auto t0 = std::chrono::steady_clock::now();
        int spins = 0;
        while ((g = word_.load(std::memory_order_acquire) >> 32) == seen) {
          Pause();
          if (!spin_.load(std::memory_order_relaxed) || (++spins % 256 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(g_spinUs))) {
            std::unique_lock<std::mutex> lk(m_);
            cv_.wait(lk, [&] { return (word_.load() >> 32) != seen; });
            g = word_.load() >> 32;
            break;
          }
        }
      }
      seen = g;
      Work(g);
    }
  }

  std::mutex runM_, m_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> word_{0};  // generation << 32 | next chunk
  std::atomic<int> completed_{0};
  std::atomic<bool> spin_{true};  // spin for the next job after this one
  const std::function<void(int, int)>* job_ = nullptr;
  int chunks_ = 0;
  std::atomic<int> threads_{static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
  int strikes_ = 0;  // under runM_
  std::atomic<int> serialLeft_{0};
};

Pool& ThePool() {
  static Pool* pool = new Pool();  // never destroyed (detached workers sleep in it at exit)
  return *pool;
}

/** [lo, hi) of part p of n items split into `parts`, boundaries multiples of `align`. */
void Split(int64_t n, int p, int parts, int64_t align, int64_t* lo, int64_t* hi) {
  int64_t units = (n + align - 1) / align;
  *lo = std::min(n, units * p / parts * align);
  *hi = std::min(n, units * (p + 1) / parts * align);
}

// ---------------------------------------------------------------------------------------------
// fp16 <-> fp32 (scalar)

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        man <<= 1;
        e++;
      } while ((man & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | man << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------
// Scalar kernels (the portable fallback; also the reference the SIMD ones are tested against)

inline int CodeAt(const uint8_t* row, int64_t stride, int cw, int64_t c) {
  const int bw = 64 / cw;
  const uint8_t byte = row[c / bw * stride + (c % 8)];
  const int k = static_cast<int>(c % bw) / 8;
  return (byte >> (k * cw)) & ((1 << cw) - 1);
}

/** y[r] for r in [r0, r1): dense part only. xp: group-ordered, padded input. Subtracts z per weight. */
void GemvScalar(const PackedLinear& L, const float* xp, int64_t r0, int64_t r1, float* y) {
  const int cw = L.cw, K = 8 / cw, bw = 64 / cw, mask = (1 << cw) - 1;
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* row = L.RowBase(r);
    const int64_t stride = L.ChunkStride(r);
    float tot = 0;
    for (int g = 0; g < L.nG; g++) {
      const int64_t cs = L.segStart[g], ce = L.segStart[g + 1];
      if (cs == ce) continue;
      const float z = static_cast<float>(L.zeros[r * L.nG + g]);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t c = cs; c < ce; c += bw) {
        const uint8_t* blk = row + c / bw * stride;
        for (int k = 0; k < K; k++) {
          const float* xk = xp + c + 8 * k;
          for (int j = 0; j < 8; j++) acc[j] += (static_cast<float>((blk[j] >> (k * cw)) & mask) - z) * xk[j];
        }
      }
      float a = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      tot += L.scales[r * L.nG + g] * a;
    }
    y[r] = tot;
  }
}

void GemvF16Scalar(const PackedLinear& L, const float* x, int64_t r0, int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; r++) {
    const uint16_t* w = L.half.get() + r * L.in;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= L.in; i += 8)
      for (int j = 0; j < 8; j++) acc[j] += HalfToFloat(w[i + j]) * x[i + j];
    for (; i < L.in; i++) acc[0] += HalfToFloat(w[i]) * x[i];
    y[r] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

/** Row r of the fp32 weight into dst[in] (group-ordered codes scattered back to their columns). */
void DequantRowScalar(const PackedLinear& L, int64_t r, float* dst) {
  if (L.kind == PackedLinear::F16) {
    const uint16_t* w = L.half.get() + r * L.in;
    for (int64_t i = 0; i < L.in; i++) dst[i] = HalfToFloat(w[i]);
    return;
  }
  const uint8_t* row = L.RowBase(r);
  const int64_t stride = L.ChunkStride(r);
  for (int g = 0; g < L.nG; g++) {
    const float s = L.scales[r * L.nG + g];
    const float z = static_cast<float>(L.zeros[r * L.nG + g]);
    for (int64_t c = L.segStart[g]; c < L.segStart[g + 1]; c++) {
      const int64_t col = L.identity ? c : L.srcCol[c];
      if (col < 0) continue;
      dst[col] = s * (static_cast<float>(CodeAt(row, stride, L.cw, c)) - z);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 / FMA / F16C kernels

#ifdef Q4_X86
#define Q4_AVX2 __attribute__((target("avx2,fma,f16c")))

Q4_AVX2 inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/** Column vector k (8 columns) of an 8-byte chunk already widened to 8 × u32 lanes, as int32 codes. */
template <int CW, int k>
Q4_AVX2 inline __m256i SlotInt(__m256i d, __m256i mask) {
  constexpr int K = 8 / CW;
  if (K == 1) return d;
  if (k == K - 1) return _mm256_srli_epi32(d, k * CW);
  if (k == 0) return _mm256_and_si256(d, mask);
  return _mm256_and_si256(_mm256_srli_epi32(d, k * CW), mask);
}

template <int CW, int k>
Q4_AVX2 inline __m256 Slot(__m256i d, __m256i mask) {
  return _mm256_cvtepi32_ps(SlotInt<CW, k>(d, mask));
}

/**
 * acc += (q − z)·x for column vector k of R rows. q − z is formed exactly in int32 (the integer ALU),
 * then converted: no cancellation (Σq·x − z·Σx loses up to 1e-5 relative on inputs with a large mean),
 * and no extra floating-point operation per weight.
 */
template <int CW, int k, int R>
Q4_AVX2 inline void SlotFma(const __m256i* d, __m256i mask, const __m256i* zi, __m256 xv, __m256* acc) {
  for (int j = 0; j < R; j++) acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(SlotInt<CW, k>(d[j], mask), zi[j])), xv, acc[j]);
}

// Software prefetch distance (bytes) of the 4-row GEMV stream; 0 = off.
const int64_t kPrefetch = EnvInt("QUANT4_PREFETCH", 2048);

/** R rows starting at r: y[r..r+R) (dense part): Σ_g scale·Σ_{i∈g} (q − z)·x, scaled once per group. */
template <int CW, int R>
Q4_AVX2 void GemvBlockAvx2(const PackedLinear& L, const float* xp, int64_t r, float* y) {
  constexpr int K = 8 / CW;
  constexpr int BW = 8 * K;
  const __m256i mask = _mm256_set1_epi32((1 << CW) - 1);
  // R = 4: a 4-row block (chunks interleaved, stride 32); R = 1: any row.
  const uint8_t* rows[R];
  for (int j = 0; j < R; j++) rows[j] = L.RowBase(r + j);
  const int64_t stride = L.ChunkStride(r);
  const int nG = L.nG;
  __m256 tot[R];
  for (int j = 0; j < R; j++) tot[j] = _mm256_setzero_ps();
  for (int g = 0; g < nG; g++) {
    const int64_t cs = L.segStart[g], ce = L.segStart[g + 1];
    if (cs == ce) continue;
    __m256i zi[R];
    __m256 acc[R];
    for (int j = 0; j < R; j++) {
      zi[j] = _mm256_set1_epi32(L.zeros[(r + j) * nG + g]);
      acc[j] = _mm256_setzero_ps();
    }
    if (R == 4 && kPrefetch > 0)
      for (int64_t pf = cs / BW * 32; pf < ce / BW * 32; pf += 64) _mm_prefetch(reinterpret_cast<const char*>(rows[0] + pf + kPrefetch), _MM_HINT_T0);
    for (int64_t c = cs; c < ce; c += BW) {
      const int64_t bo = c / BW * stride;
      __m256i d[R];
      for (int j = 0; j < R; j++) d[j] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[j] + bo)));
      SlotFma<CW, 0, R>(d, mask, zi, _mm256_loadu_ps(xp + c), acc);
      if constexpr (K > 1) SlotFma<CW, 1, R>(d, mask, zi, _mm256_loadu_ps(xp + c + 8), acc);
      if constexpr (K > 2) {
        SlotFma<CW, 2, R>(d, mask, zi, _mm256_loadu_ps(xp + c + 16), acc);
        SlotFma<CW, 3, R>(d, mask, zi, _mm256_loadu_ps(xp + c + 24), acc);
      }
    }
    for (int j = 0; j < R; j++) tot[j] = _mm256_fmadd_ps(acc[j], _mm256_set1_ps(L.scales[(r + j) * nG + g]), tot[j]);
  }
  for (int j = 0; j < R; j++) y[r + j] = Hsum(tot[j]);
}

/**
 * Several input rows in one pass over the weights: RW weight rows (a pair of a 4-row block, or one tail
 * row) × NX input rows xs[0..NX) (group-ordered, padded). Each weight vector is dequantized once and
 * multiplied into every input row; per input row the operations and their order are exactly the
 * single-row GEMV's, so the results are bit-identical to running GemvBlockAvx2 once per input row.
 */
/** acc[i] += (q − z)·x_i for column vector k of one weight row and NX input rows. */
template <int CW, int k, int NX>
Q4_AVX2 inline void MultiSlot(__m256i d, __m256i mask, __m256i zi, const float* const* xs, int64_t c, __m256* acc) {
  const __m256 w = _mm256_cvtepi32_ps(_mm256_sub_epi32(SlotInt<CW, k>(d, mask), zi));
  for (int i = 0; i < NX; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xs[i] + c + 8 * k), acc[i]);
}

template <int CW, int RW, int NX>
Q4_AVX2 void GemvMultiAvx2(const PackedLinear& L, const float* const* xs, int64_t r, float* const* ys, bool prefetch) {
  constexpr int K = 8 / CW;
  constexpr int BW = 8 * K;
  const __m256i mask = _mm256_set1_epi32((1 << CW) - 1);
  const uint8_t* rows[RW];
  for (int j = 0; j < RW; j++) rows[j] = L.RowBase(r + j);
  const int64_t stride = L.ChunkStride(r);
  const int nG = L.nG;
  __m256 tot[RW][NX];
  for (int j = 0; j < RW; j++)
    for (int i = 0; i < NX; i++) tot[j][i] = _mm256_setzero_ps();
  for (int g = 0; g < nG; g++) {
    const int64_t cs = L.segStart[g], ce = L.segStart[g + 1];
    if (cs == ce) continue;
    __m256i zi[RW];
    __m256 acc[RW][NX];
    for (int j = 0; j < RW; j++) {
      zi[j] = _mm256_set1_epi32(L.zeros[(r + j) * nG + g]);
      for (int i = 0; i < NX; i++) acc[j][i] = _mm256_setzero_ps();
    }
    if (prefetch && kPrefetch > 0 && stride == 32) {  // the 4-row block's stream, as the single-row GEMV
      const uint8_t* base = rows[0] - (r % 4) * 8;
      for (int64_t pf = cs / BW * 32; pf < ce / BW * 32; pf += 64) _mm_prefetch(reinterpret_cast<const char*>(base + pf + kPrefetch), _MM_HINT_T0);
    }
    for (int64_t c = cs; c < ce; c += BW) {
      const int64_t bo = c / BW * stride;
      for (int j = 0; j < RW; j++) {
        const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[j] + bo)));
        MultiSlot<CW, 0, NX>(d, mask, zi[j], xs, c, acc[j]);
        if constexpr (K > 1) MultiSlot<CW, 1, NX>(d, mask, zi[j], xs, c, acc[j]);
        if constexpr (K > 2) {
          MultiSlot<CW, 2, NX>(d, mask, zi[j], xs, c, acc[j]);
          MultiSlot<CW, 3, NX>(d, mask, zi[j], xs, c, acc[j]);
        }
      }
    }
    for (int j = 0; j < RW; j++) {
      const __m256 sc = _mm256_set1_ps(L.scales[(r + j) * nG + g]);
      for (int i = 0; i < NX; i++) tot[j][i] = _mm256_fmadd_ps(acc[j][i], sc, tot[j][i]);
    }
  }
  for (int j = 0; j < RW; j++)
    for (int i = 0; i < NX; i++) ys[i][r + j] = Hsum(tot[j][i]);
}

/**
 * Output rows [r0, r1) (r0 a multiple of 4) for nx input rows: one 4-row block at a time, every input
 * row (4 at a time) while the block's codes are in L1, so the weights stream from memory once.
 */
template <int CW>
Q4_AVX2 void GemvMultiAvx2T(const PackedLinear& L, const float* const* xs, int nx, int64_t r0, int64_t r1, float* const* ys) {
  const int64_t blocked = std::min(r1, L.out / 4 * 4);
  int64_t r = r0;
  for (; r + 4 <= blocked; r += 4) {
    int i = 0;
    for (; i + 4 <= nx; i += 4) {  // 2 weight rows × 4 input rows: 8 accumulators
      GemvMultiAvx2<CW, 2, 4>(L, xs + i, r, ys + i, i == 0);
      GemvMultiAvx2<CW, 2, 4>(L, xs + i, r + 2, ys + i, false);
    }
    switch (nx - i) {
      case 3:
        GemvMultiAvx2<CW, 2, 3>(L, xs + i, r, ys + i, i == 0);
        GemvMultiAvx2<CW, 2, 3>(L, xs + i, r + 2, ys + i, false);
        break;
      case 2: GemvMultiAvx2<CW, 4, 2>(L, xs + i, r, ys + i, i == 0); break;
      case 1: GemvMultiAvx2<CW, 4, 1>(L, xs + i, r, ys + i, i == 0); break;
      default: break;
    }
  }
  for (; r < r1; r++) {
    int i = 0;
    for (; i + 4 <= nx; i += 4) GemvMultiAvx2<CW, 1, 4>(L, xs + i, r, ys + i, false);
    switch (nx - i) {
      case 3: GemvMultiAvx2<CW, 1, 3>(L, xs + i, r, ys + i, false); break;
      case 2: GemvMultiAvx2<CW, 1, 2>(L, xs + i, r, ys + i, false); break;
      case 1: GemvMultiAvx2<CW, 1, 1>(L, xs + i, r, ys + i, false); break;
      default: break;
    }
  }
}

Q4_AVX2 void GemvMultiAvx2Dispatch(const PackedLinear& L, const float* const* xs, int nx, int64_t r0, int64_t r1, float* const* ys) {
  switch (L.cw) {
    case 2: GemvMultiAvx2T<2>(L, xs, nx, r0, r1, ys); break;
    case 4: GemvMultiAvx2T<4>(L, xs, nx, r0, r1, ys); break;
    default: GemvMultiAvx2T<8>(L, xs, nx, r0, r1, ys); break;
  }
}

template <int CW>
Q4_AVX2 void GemvAvx2T(const PackedLinear& L, const float* xp, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) GemvBlockAvx2<CW, 4>(L, xp, r, y);
  for (; r < r1; r++) GemvBlockAvx2<CW, 1>(L, xp, r, y);
}

Q4_AVX2 void GemvAvx2(const PackedLinear& L, const float* xp, int64_t r0, int64_t r1, float* y) {
  switch (L.cw) {
    case 2: GemvAvx2T<2>(L, xp, r0, r1, y); break;
    case 4: GemvAvx2T<4>(L, xp, r0, r1, y); break;
    default: GemvAvx2T<8>(L, xp, r0, r1, y); break;
  }
}

Q4_AVX2 void GemvF16Avx2(const PackedLinear& L, const float* x, int64_t r0, int64_t r1, float* y) {
  const int64_t in = L.in;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const uint16_t* w[4];
    __m256 acc[4];
    for (int j = 0; j < 4; j++) {
      w[j] = L.half.get() + (r + j) * in;
      acc[j] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 8 <= in; i += 8) {
      const __m256 xv = _mm256_loadu_ps(x + i);
      for (int j = 0; j < 4; j++)
        acc[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[j] + i))), xv, acc[j]);
    }
    for (int j = 0; j < 4; j++) {
      float s = Hsum(acc[j]);
      for (int64_t t = i; t < in; t++) s += HalfToFloat(w[j][t]) * x[t];
      y[r + j] = s;
    }
  }
  for (; r < r1; r++) {
    const uint16_t* w = L.half.get() + r * in;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= in; i += 8)
      acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))), _mm256_loadu_ps(x + i), acc);
    float s = Hsum(acc);
    for (; i < in; i++) s += HalfToFloat(w[i]) * x[i];
    y[r] = s;
  }
}

/** Identity-layout row dequantization (the common case), 8 columns per slot. */
template <int CW>
Q4_AVX2 void DequantRowAvx2T(const PackedLinear& L, int64_t r, float* dst) {
  constexpr int K = 8 / CW;
  constexpr int BW = 8 * K;
  const __m256i mask = _mm256_set1_epi32((1 << CW) - 1);
  const uint8_t* row = L.RowBase(r);
  const int64_t stride = L.ChunkStride(r);
  for (int g = 0; g < L.nG; g++) {
    const __m256 sv = _mm256_set1_ps(L.scales[r * L.nG + g]);
    const __m256 zv = _mm256_set1_ps(static_cast<float>(L.zeros[r * L.nG + g]));
    for (int64_t c = L.segStart[g]; c < L.segStart[g + 1]; c += BW) {
      const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / BW * stride)));
      _mm256_storeu_ps(dst + c, _mm256_mul_ps(sv, _mm256_sub_ps(Slot<CW, 0>(d, mask), zv)));
      if constexpr (K > 1) _mm256_storeu_ps(dst + c + 8, _mm256_mul_ps(sv, _mm256_sub_ps(Slot<CW, 1>(d, mask), zv)));
      if constexpr (K > 2) {
        _mm256_storeu_ps(dst + c + 16, _mm256_mul_ps(sv, _mm256_sub_ps(Slot<CW, 2>(d, mask), zv)));
        _mm256_storeu_ps(dst + c + 24, _mm256_mul_ps(sv, _mm256_sub_ps(Slot<CW, 3>(d, mask), zv)));
      }
    }
  }
}

Q4_AVX2 void DequantRowF16Avx2(const PackedLinear& L, int64_t r, float* dst) {
  const uint16_t* w = L.half.get() + r * L.in;
  int64_t i = 0;
  for (; i + 8 <= L.in; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))));
  for (; i < L.in; i++) dst[i] = HalfToFloat(w[i]);
}

Q4_AVX2 void DequantRowAvx2(const PackedLinear& L, int64_t r, float* dst) {
  if (L.kind == PackedLinear::F16) return DequantRowF16Avx2(L, r, dst);
  // Group order ≠ column order (act-order, padding): dequantize in group order, then scatter.
  thread_local std::vector<float> tmp;
  float* d = dst;
  if (!L.identity) {
    tmp.resize(L.inP);
    d = tmp.data();
  }
  switch (L.cw) {
    case 2: DequantRowAvx2T<2>(L, r, d); break;
    case 4: DequantRowAvx2T<4>(L, r, d); break;
    default: DequantRowAvx2T<8>(L, r, d); break;
  }
  if (!L.identity)
    for (int64_t c = 0; c < L.inP; c++)
      if (L.srcCol[c] >= 0) dst[L.srcCol[c]] = d[c];
}

// ---------------------------------------------------------------------------------------------
// AVX-512 (F/BW/VL) GEMV for 2- and 4-bit codes, on the same packed layout.
//
// Per 16 weights: one 8-byte chunk of a row is broadcast to all eight 64-bit lanes (a load, no shuffle),
// a variable shift (VPSRLVD) moves a different code into the low bits of each 32-bit lane, and VPERMPS
// looks the code up in a 16-entry fp32 table of (code − zero) of that (row, group): the table lookup does
// the masking (VPERMPS reads only the index's low 4 bits; a 2-bit table is repeated 4 times), the integer
// subtraction and the conversion in one instruction, exactly (small integers). Then one FMA with x.
// The AVX2 path needs widen + mask/shift + subtract + convert + FMA per 8 weights. The lanes hold the
// chunk's columns in a fixed order other than 0..15 (the shifts), so x is permuted once per call into
// that order (x is shared by all rows; O(in) against O(out·in)). Numerically the same operations as the
// AVX2 path: Σ (q − z)·x in fp32 FMAs per group (16 lanes instead of 8), scaled once per group.

#define Q4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() (a self-initialized variable) as the unused
// merge source, which -Wuninitialized reports at every inlined call; the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

/** The lane order of the 2- and 4-bit AVX-512 GEMV: for vector v (of BW/16 per chunk) and lane l, the
 *  right shift of the lane's 32-bit word of the broadcast chunk and the column (within the chunk) it brings
 *  to the low bits. */
struct LaneOrder {
  uint32_t shift[32];
  int32_t col[32];
};
LaneOrder MakeLaneOrder(int cw) {
  LaneOrder o{};
  const int nv = 64 / cw / 16;
  for (int v = 0; v < nv; v++)
    for (int l = 0; l < 16; l++) {
      const int d = l & 1, i = l >> 1;            // 32-bit word d of the chunk (bytes 4d..4d+3)
      const int p = cw == 4 ? 4 * i : 16 * v + 2 * i;  // bit within that word
      const int byte = 4 * d + p / 8, k = (p % 8) / cw;
      o.shift[16 * v + l] = static_cast<uint32_t>(p);
      o.col[16 * v + l] = byte + 8 * k;  // byte j holds column j + 8k at bit k·cw
    }
  return o;
}
const LaneOrder g_order4 = MakeLaneOrder(4);
const LaneOrder g_order2 = MakeLaneOrder(2);

/** Whether the AVX-512 GEMV takes this layer at this level (2- and 4-bit codes; 8-bit stays on AVX2). */
bool Use512(const PackedLinear& L, int level) { return level >= 2 && L.kind == PackedLinear::INT && (L.cw == 4 || L.cw == 2); }

/** x (original column order) → dst[inP]: group-ordered, padded (as GatherX) and permuted into the lane order. */
void PermuteX512(const PackedLinear& L, const float* x, float* dst) {
  const LaneOrder& o = L.cw == 4 ? g_order4 : g_order2;
  const int bw = 64 / L.cw;
  for (int64_t c0 = 0; c0 < L.inP; c0 += bw)
    for (int t = 0; t < bw; t++) {
      const int64_t c = c0 + o.col[t];
      if (L.identity) {
        dst[c0 + t] = x[c];
      } else {
        const int32_t s = L.srcCol[c];
        dst[c0 + t] = s >= 0 ? x[s] : 0.0f;
      }
    }
}

Q4_AVX512 inline float Hsum512(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/** The 16-entry table index → float(index mod 2^cw) (the table of a group subtracts its zero point). */
template <int CW>
Q4_AVX512 inline __m512 BaseTable512() {
  return _mm512_cvtepi32_ps(_mm512_and_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32((1 << CW) - 1)));
}

Q4_AVX512 inline __m512i Bcast8(const uint8_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return _mm512_set1_epi64(v);
}

/** R rows starting at r (R = 4: a 4-row block; R = 1: any row): y[r..r+R) (dense part). xq: PermuteX512. */
template <int CW, int R>
Q4_AVX512 void GemvBlock512(const PackedLinear& L, const float* xq, int64_t r, float* y) {
  constexpr int BW = 64 / CW, NV = BW / 16;
  const LaneOrder& o = CW == 4 ? g_order4 : g_order2;
  __m512i sh[NV];
  for (int v = 0; v < NV; v++) sh[v] = _mm512_loadu_si512(o.shift + 16 * v);
  const __m512 base = BaseTable512<CW>();
  const uint8_t* rows[R];
  for (int j = 0; j < R; j++) rows[j] = L.RowBase(r + j);
  const int64_t stride = L.ChunkStride(r);
  const int nG = L.nG;
  __m512 tot[R];
  for (int j = 0; j < R; j++) tot[j] = _mm512_setzero_ps();
  for (int g = 0; g < nG; g++) {
    const int64_t cs = L.segStart[g], ce = L.segStart[g + 1];
    if (cs == ce) continue;
    __m512 tab[R], acc[R];
    for (int j = 0; j < R; j++) {
      tab[j] = _mm512_sub_ps(base, _mm512_set1_ps(static_cast<float>(L.zeros[(r + j) * nG + g])));
      acc[j] = _mm512_setzero_ps();
    }
    if (R == 4 && kPrefetch > 0)
      for (int64_t pf = cs / BW * 32; pf < ce / BW * 32; pf += 64) _mm_prefetch(reinterpret_cast<const char*>(rows[0] + pf + kPrefetch), _MM_HINT_T0);
    for (int64_t c = cs; c < ce; c += BW) {
      const int64_t bo = c / BW * stride;
      __m512 xv[NV];
      for (int v = 0; v < NV; v++) xv[v] = _mm512_loadu_ps(xq + c + 16 * v);
      for (int j = 0; j < R; j++) {
        const __m512i q = Bcast8(rows[j] + bo);
        for (int v = 0; v < NV; v++) acc[j] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srlv_epi32(q, sh[v]), tab[j]), xv[v], acc[j]);
      }
    }
    for (int j = 0; j < R; j++) tot[j] = _mm512_fmadd_ps(acc[j], _mm512_set1_ps(L.scales[(r + j) * nG + g]), tot[j]);
  }
  for (int j = 0; j < R; j++) y[r + j] = Hsum512(tot[j]);
}

template <int CW>
Q4_AVX512 void Gemv512T(const PackedLinear& L, const float* xq, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  const int64_t blocked = std::min(r1, L.out / 4 * 4);
  for (; r + 4 <= blocked; r += 4) GemvBlock512<CW, 4>(L, xq, r, y);
  for (; r < r1; r++) GemvBlock512<CW, 1>(L, xq, r, y);
}

Q4_AVX512 void Gemv512(const PackedLinear& L, const float* xq, int64_t r0, int64_t r1, float* y) {
  if (L.cw == 4) Gemv512T<4>(L, xq, r0, r1, y);
  else Gemv512T<2>(L, xq, r0, r1, y);
}

/**
 * Several input rows in one pass (as GemvMultiAvx2): RW weight rows × NX input rows (PermuteX512 each);
 * per input row the operations and their order are exactly GemvBlock512's, so the results are
 * bit-identical to the single-row AVX-512 GEMV once per input row.
 */
template <int CW, int RW, int NX>
Q4_AVX512 void GemvMulti512(const PackedLinear& L, const float* const* xs, int64_t r, float* const* ys, bool prefetch) {
  constexpr int BW = 64 / CW, NV = BW / 16;
  const LaneOrder& o = CW == 4 ? g_order4 : g_order2;
  __m512i sh[NV];
  for (int v = 0; v < NV; v++) sh[v] = _mm512_loadu_si512(o.shift + 16 * v);
  const __m512 base = BaseTable512<CW>();
  const uint8_t* rows[RW];
  for (int j = 0; j < RW; j++) rows[j] = L.RowBase(r + j);
  const int64_t stride = L.ChunkStride(r);
  const int nG = L.nG;
  __m512 tot[RW][NX];
  for (int j = 0; j < RW; j++)
    for (int i = 0; i < NX; i++) tot[j][i] = _mm512_setzero_ps();
  for (int g = 0; g < nG; g++) {
    const int64_t cs = L.segStart[g], ce = L.segStart[g + 1];
    if (cs == ce) continue;
    __m512 tab[RW], acc[RW][NX];
    for (int j = 0; j < RW; j++) {
      tab[j] = _mm512_sub_ps(base, _mm512_set1_ps(static_cast<float>(L.zeros[(r + j) * nG + g])));
      for (int i = 0; i < NX; i++) acc[j][i] = _mm512_setzero_ps();
    }
    if (prefetch && kPrefetch > 0 && stride == 32) {
      const uint8_t* b = rows[0] - (r % 4) * 8;
      for (int64_t pf = cs / BW * 32; pf < ce / BW * 32; pf += 64) _mm_prefetch(reinterpret_cast<const char*>(b + pf + kPrefetch), _MM_HINT_T0);
    }
    for (int64_t c = cs; c < ce; c += BW) {
      const int64_t bo = c / BW * stride;
      for (int v = 0; v < NV; v++) {
        __m512 xv[NX];
        for (int i = 0; i < NX; i++) xv[i] = _mm512_loadu_ps(xs[i] + c + 16 * v);
        for (int j = 0; j < RW; j++) {
          const __m512 w = _mm512_permutexvar_ps(_mm512_srlv_epi32(Bcast8(rows[j] + bo), sh[v]), tab[j]);
          for (int i = 0; i < NX; i++) acc[j][i] = _mm512_fmadd_ps(w, xv[i], acc[j][i]);
        }
      }
    }
    for (int j = 0; j < RW; j++) {
      const __m512 sc = _mm512_set1_ps(L.scales[(r + j) * nG + g]);
      for (int i = 0; i < NX; i++) tot[j][i] = _mm512_fmadd_ps(acc[j][i], sc, tot[j][i]);
    }
  }
  for (int j = 0; j < RW; j++)
    for (int i = 0; i < NX; i++) ys[i][r + j] = Hsum512(tot[j][i]);
}

template <int CW>
Q4_AVX512 void GemvMulti512T(const PackedLinear& L, const float* const* xs, int nx, int64_t r0, int64_t r1, float* const* ys) {
  const int64_t blocked = std::min(r1, L.out / 4 * 4);
  int64_t r = r0;
  for (; r + 4 <= blocked; r += 4) {
    int i = 0;
    for (; i + 4 <= nx; i += 4) GemvMulti512<CW, 4, 4>(L, xs + i, r, ys + i, i == 0);  // 16 accumulators (32 zmm registers)
    switch (nx - i) {
      case 3:
        GemvMulti512<CW, 2, 3>(L, xs + i, r, ys + i, i == 0);
        GemvMulti512<CW, 2, 3>(L, xs + i, r + 2, ys + i, false);
        break;
      case 2: GemvMulti512<CW, 4, 2>(L, xs + i, r, ys + i, i == 0); break;
      case 1: GemvMulti512<CW, 4, 1>(L, xs + i, r, ys + i, i == 0); break;
      default: break;
    }
  }
  for (; r < r1; r++) {
    int i = 0;
    for (; i + 4 <= nx; i += 4) GemvMulti512<CW, 1, 4>(L, xs + i, r, ys + i, false);
    switch (nx - i) {
      case 3: GemvMulti512<CW, 1, 3>(L, xs + i, r, ys + i, false); break;
      case 2: GemvMulti512<CW, 1, 2>(L, xs + i, r, ys + i, false); break;
      case 1: GemvMulti512<CW, 1, 1>(L, xs + i, r, ys + i, false); break;
      default: break;
    }
  }
}

Q4_AVX512 void GemvMulti512Dispatch(const PackedLinear& L, const float* const* xs, int nx, int64_t r0, int64_t r1, float* const* ys) {
  if (L.cw == 4) GemvMulti512T<4>(L, xs, nx, r0, r1, ys);
  else GemvMulti512T<2>(L, xs, nx, r0, r1, ys);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // Q4_X86

// ---------------------------------------------------------------------------------------------
// Dispatch

/** xp: GatherX's row, or PermuteX512's where Use512(L, level). */
void GemvRows(const PackedLinear& L, const float* xp, int64_t r0, int64_t r1, float* y, int level) {
#ifdef Q4_X86
  if (Use512(L, level)) return Gemv512(L, xp, r0, r1, y);
  if (level >= 1) {
    if (L.kind == PackedLinear::F16) GemvF16Avx2(L, xp, r0, r1, y);
    else GemvAvx2(L, xp, r0, r1, y);
    return;
  }
#endif
  (void)level;
  if (L.kind == PackedLinear::F16) GemvF16Scalar(L, xp, r0, r1, y);
  else GemvScalar(L, xp, r0, r1, y);
}

void DequantRow(const PackedLinear& L, int64_t r, float* dst) {
#ifdef Q4_X86
  if (Level() >= 1) {
    DequantRowAvx2(L, r, dst);
  } else
#endif
  {
    DequantRowScalar(L, r, dst);
  }
  if (!L.olPtr.empty())
    for (int32_t k = L.olPtr[r]; k < L.olPtr[r + 1]; k++) dst[L.olIdx[k]] = L.olVal[k];
}

void OutlierGemv(const PackedLinear& L, const float* x, int64_t r0, int64_t r1, float* y) {
  if (L.olPtr.empty()) return;
  for (int64_t r = r0; r < r1; r++) {
    float s = 0;
    for (int32_t k = L.olPtr[r]; k < L.olPtr[r + 1]; k++) s += L.olDelta[k] * x[L.olIdx[k]];
    y[r] += s;
  }
}

/** The group-ordered, padded copy of one input row (or the row itself when the layout is the identity). */
const float* GatherX(const PackedLinear& L, const float* x, std::vector<float>& buf) {
  if (L.kind == PackedLinear::F16 || L.identity) return x;
  buf.resize(L.inP);
  for (int64_t c = 0; c < L.inP; c++) {
    const int32_t s = L.srcCol[c];
    buf[c] = s >= 0 ? x[s] : 0.0f;
  }
  return buf.data();
}

void GemvOne(const PackedLinear& L, const float* x, float* y, const float* bias, std::vector<float>& xbuf, int level) {
  const float* xp;
#ifdef Q4_X86
  if (Use512(L, level)) {
    xbuf.resize(L.inP);
    PermuteX512(L, x, xbuf.data());
    xp = xbuf.data();
  } else
#endif
  {
    xp = GatherX(L, x, xbuf);
  }
  // Chunks of ≥ 64 rows (≥ ~128 KiB of 4-bit codes at 4096 inputs), about 8 per thread.
  const int chunks = L.out * L.in >= g_parallelMin ? static_cast<int>(std::min<int64_t>(8 * ThePool().Threads(), (L.out + 63) / 64)) : 1;
  ThePool().Run(chunks, [&](int p, int n) {
    int64_t lo, hi;
    Split(L.out, p, n, 16, &lo, &hi);
    if (lo >= hi) return;
    GemvRows(L, xp, lo, hi, y, level);
    OutlierGemv(L, x, lo, hi, y);
    if (bias)
      for (int64_t r = lo; r < hi; r++) y[r] += bias[r];
  });
}

#ifdef Q4_X86
/**
 * 2..16 input rows (short prompts, a few sequences) in one pass over the packed weights: each chunk of
 * output rows runs every input row (4 at a time) while its codes are in cache, so the weights stream from
 * memory once instead of once per row, and each weight is dequantized once per 4 input rows. Bit-identical
 * to GemvOne per row.
 */
void GemvMulti(const PackedLinear& L, const float* x, int64_t rows, float* y, const float* bias, int level) {
  const bool z512 = Use512(L, level);
  std::vector<float> gathered;
  std::vector<const float*> xs(rows);
  std::vector<float*> ys(rows);
  if (!L.identity || z512) gathered.resize(static_cast<size_t>(rows * L.inP));
  for (int64_t i = 0; i < rows; i++) {
    ys[i] = y + i * L.out;
    if (z512) {
      float* g = gathered.data() + i * L.inP;
      PermuteX512(L, x + i * L.in, g);
      xs[i] = g;
    } else if (L.identity) {
      xs[i] = x + i * L.in;
    } else {
      float* g = gathered.data() + i * L.inP;
      for (int64_t c = 0; c < L.inP; c++) g[c] = L.srcCol[c] >= 0 ? x[i * L.in + L.srcCol[c]] : 0.0f;
      xs[i] = g;
    }
  }
  const int chunks = L.out * L.in >= g_parallelMin ? static_cast<int>(std::min<int64_t>(8 * ThePool().Threads(), (L.out + 63) / 64)) : 1;
  ThePool().Run(chunks, [&](int p, int n) {
    int64_t lo, hi;
    Split(L.out, p, n, 16, &lo, &hi);
    if (lo >= hi) return;
    if (z512) GemvMulti512Dispatch(L, xs.data(), static_cast<int>(rows), lo, hi, ys.data());
    else GemvMultiAvx2Dispatch(L, xs.data(), static_cast<int>(rows), lo, hi, ys.data());
    for (int64_t i = 0; i < rows; i++) {
      OutlierGemv(L, x + i * L.in, lo, hi, ys[i]);
      if (bias)
        for (int64_t r = lo; r < hi; r++) ys[i][r] += bias[r];
    }
  });
}
#endif

void GemmTiles(const PackedLinear& L, const float* x, int64_t rows, float* y, const float* bias) {
  const int64_t out = L.out, in = L.in;
  if (bias)
    for (int64_t i = 0; i < rows; i++) std::memcpy(y + i * out, bias, sizeof(float) * out);
  int64_t nb = std::max<int64_t>({16, g_tileMinRows / 16 * 16, g_tileBytes / (4 * std::max<int64_t>(in, 1)) / 16 * 16});
  nb = std::min(nb, out);
  std::unique_ptr<float, FreeDeleter> tile(static_cast<float*>(AlignedAlloc(sizeof(float) * nb * in)));
  while (!tile && nb > 16) {  // out of memory: smaller tiles
    nb /= 2;
    tile.reset(static_cast<float*>(AlignedAlloc(sizeof(float) * nb * in)));
  }
  if (!tile) std::abort();
  for (int64_t r0 = 0; r0 < out; r0 += nb) {
    const int64_t n = std::min(nb, out - r0);
    float* t = tile.get();
    const int chunks = n * in >= g_parallelMin ? static_cast<int>(std::min<int64_t>(8 * ThePool().Threads(), (n + 7) / 8)) : 1;
    ThePool().Run(chunks, [&](int p, int np) {
      int64_t lo, hi;
      Split(n, p, np, 4, &lo, &hi);  // whole 4-row blocks per chunk (they share cache lines)
      for (int64_t r = lo; r < hi; r++) DequantRow(L, r0 + r, t + r * in);
    });
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(n), static_cast<int>(in),
                1.0f, x, static_cast<int>(in), t, static_cast<int>(in), bias ? 1.0f : 0.0f, y + r0, static_cast<int>(out));
  }
}

}  // namespace

size_t PackedLinear::Bytes() const {
  size_t b = 0;
  if (kind == F16) return sizeof(uint16_t) * out * in;
  b += static_cast<size_t>(out * rowBytes);
  b += scales.size() * sizeof(float) + zeros.size();
  b += (segStart.size() + srcCol.size() + olPtr.size() + olIdx.size()) * sizeof(int32_t);
  b += (olVal.size() + olDelta.size()) * sizeof(float);
  return b;
}

std::unique_ptr<PackedLinear> Pack(const PackInput& p, std::string* err) {
  auto fail = [&](const std::string& m) {
    *err = m;
    return std::unique_ptr<PackedLinear>();
  };
  if (p.out < 1 || p.in < 1) return fail("empty layer");
  if (p.bits != 2 && p.bits != 3 && p.bits != 4 && p.bits != 8) return fail("bits must be 2, 3, 4 or 8, got " + std::to_string(p.bits));
  if (p.nG < 1 || p.nG > p.in) return fail("bad group count " + std::to_string(p.nG));
  auto L = std::make_unique<PackedLinear>();
  L->kind = PackedLinear::INT;
  L->out = p.out;
  L->in = p.in;
  L->bits = p.bits;
  L->cw = p.bits == 2 ? 2 : p.bits <= 4 ? 4 : 8;
  L->nG = static_cast<int>(p.nG);
  const int bw = 64 / L->cw;
  // Group of every input column, and the group-ordered padded order.
  std::vector<int32_t> grp(p.in);
  for (int64_t i = 0; i < p.in; i++) {
    int64_t g = p.gIdx ? p.gIdx[i] : (p.groupSize <= 0 ? 0 : i / p.groupSize);
    if (g < 0 || g >= p.nG) return fail("group of input column " + std::to_string(i) + " is " + std::to_string(g) + ", outside [0, " + std::to_string(p.nG) + ")");
    grp[i] = static_cast<int32_t>(g);
  }
  std::vector<int64_t> cnt(p.nG, 0);
  for (int64_t i = 0; i < p.in; i++) cnt[grp[i]]++;
  L->segStart.assign(p.nG + 1, 0);
  for (int64_t g = 0; g < p.nG; g++) L->segStart[g + 1] = static_cast<int32_t>(L->segStart[g] + (cnt[g] + bw - 1) / bw * bw);
  L->inP = L->segStart[p.nG];
  L->rowBytes = L->inP / bw * 8;
  std::vector<int32_t> src(L->inP, -1);
  {
    std::vector<int64_t> fill(L->segStart.begin(), L->segStart.end() - 1);
    for (int64_t i = 0; i < p.in; i++) src[fill[grp[i]]++] = static_cast<int32_t>(i);
  }
  L->identity = L->inP == p.in;
  for (int64_t c = 0; L->identity && c < L->inP; c++) L->identity = src[c] == c;
  if (!L->identity) L->srcCol = std::move(src);
  // Codes.
  L->codes.reset(static_cast<uint8_t*>(AlignedAlloc(static_cast<size_t>(p.out * L->rowBytes))));
  if (!L->codes) return fail("out of memory for " + std::to_string(p.out * L->rowBytes) + " bytes of codes");
  const int maxq = (1 << p.bits) - 1;
  std::memset(L->codes.get(), 0, static_cast<size_t>(p.out * L->rowBytes));
  for (int64_t r = 0; r < p.out; r++) {
    uint8_t* row = const_cast<uint8_t*>(L->RowBase(r));
    const int64_t stride = L->ChunkStride(r);
    const uint8_t* q = p.codes + r * p.in;
    for (int64_t c = 0; c < L->inP; c++) {
      const int64_t col = L->identity ? c : L->srcCol[c];
      if (col < 0) continue;
      const int v = q[col];
      if (v > maxq) return fail("code " + std::to_string(v) + " at (" + std::to_string(r) + ", " + std::to_string(col) + ") exceeds " + std::to_string(p.bits) + " bits");
      row[c / bw * stride + (c % 8)] |= static_cast<uint8_t>(v << ((c % bw) / 8 * L->cw));
    }
  }
  L->scales.assign(p.scales, p.scales + p.out * p.nG);
  L->zeros.assign(p.zeros, p.zeros + p.out * p.nG);
  for (int64_t k = 0; k < p.out * p.nG; k++)
    if (L->zeros[k] > maxq) return fail("zero point " + std::to_string(L->zeros[k]) + " exceeds " + std::to_string(p.bits) + " bits");
  // Outliers.
  if (p.olPtr) {
    if (p.olPtr[0] != 0) return fail("outlier indptr must start at 0");
    for (int64_t r = 0; r < p.out; r++)
      if (p.olPtr[r + 1] < p.olPtr[r]) return fail("outlier indptr decreases at row " + std::to_string(r));
    const int64_t nnz = p.olPtr[p.out];
    L->olPtr.assign(p.olPtr, p.olPtr + p.out + 1);
    L->olIdx.assign(p.olIdx, p.olIdx + nnz);
    L->olVal.assign(p.olVal, p.olVal + nnz);
    L->olDelta.resize(nnz);
    for (int64_t r = 0; r < p.out; r++) {
      for (int32_t k = L->olPtr[r]; k < L->olPtr[r + 1]; k++) {
        const int32_t c = L->olIdx[k];
        if (c < 0 || c >= p.in) return fail("outlier column " + std::to_string(c) + " outside [0, " + std::to_string(p.in) + ")");
        const int64_t gi = r * p.nG + grp[c];
        const float w = L->scales[gi] * (static_cast<float>(p.codes[r * p.in + c]) - static_cast<float>(L->zeros[gi]));
        L->olDelta[k] = L->olVal[k] - w;
      }
    }
  }
  return L;
}

std::unique_ptr<PackedLinear> PackF16(const uint16_t* w, int64_t out, int64_t in) {
  auto L = std::make_unique<PackedLinear>();
  L->kind = PackedLinear::F16;
  L->out = out;
  L->in = in;
  L->bits = 16;
  L->inP = in;
  L->half.reset(static_cast<uint16_t*>(AlignedAlloc(sizeof(uint16_t) * out * in)));
  if (!L->half) return nullptr;
  std::memcpy(L->half.get(), w, sizeof(uint16_t) * out * in);
  return L;
}

void Linear(const PackedLinear& L, const float* x, int64_t rows, float* y, const float* bias, int mode) {
  if (rows <= 0) return;
  const bool gemm = mode == 2 || (mode == 0 && rows > g_gemvMaxRows);
  if (!gemm) {
    const int level = Level();  // once per call: the x copy and the kernel must agree
#ifdef Q4_X86
    if (rows > 1 && L.kind == PackedLinear::INT && g_multiRow && level >= 1) return GemvMulti(L, x, rows, y, bias, level);
#endif
    std::vector<float> xbuf;
    for (int64_t i = 0; i < rows; i++) GemvOne(L, x + i * L.in, y + i * L.out, bias, xbuf, level);
    return;
  }
  GemmTiles(L, x, rows, y, bias);
}

void Dequantize(const PackedLinear& L, float* w) { DequantRows(L, 0, L.out, w); }

void DequantRows(const PackedLinear& L, int64_t r0, int64_t r1, float* dst) {
  for (int64_t r = r0; r < r1; r++) DequantRow(L, r, dst + (r - r0) * L.in);
}

// Block ops: workers sleep right after the job unless QUANT4_BLOCKOPS_SPIN=1.
const bool g_blockOpsSpin = EnvInt("QUANT4_BLOCKOPS_SPIN", 0) != 0;
void ParallelFor(int chunks, const std::function<void(int, int)>& fn) { ThePool().Run(chunks, fn, g_blockOpsSpin); }

void SetThreads(int n) { ThePool().SetThreads(n); }
int Threads() { return ThePool().Threads(); }
bool SetSimd(bool on) { return SetSimdLevel(on ? g_maxLevel : 0) >= 1; }
int SetSimdLevel(int level) {
  g_level.store(std::max(0, std::min(level, g_maxLevel)));
  return Level();
}
int SimdLevel() { return Level(); }
int MaxSimdLevel() { return g_maxLevel; }
bool SimdAvailable() { return g_maxLevel >= 1; }
bool SimdInUse() { return Level() >= 1; }

}  // namespace q4
