// quant4 native compute addon: thin N-API wrappers over BLAS / LAPACK.
//
// All matrices are dense ROW-MAJOR Float32Array, operated on in place (no copies). Every entry
// point validates its arguments and throws a JS error naming the function and the mismatch, e.g.
//   "gemm: A has 12 elements, expected M*K=16".
//
// Exports:
//   sgemm(transA, transB, M, N, K, alpha, A, B, beta, C)   C = alpha*op(A)*op(B) + beta*C
//   ssyrk(n, rows, alpha, X, beta, H[, upperOnly])         H = beta*H + alpha*X^T X, full matrix (or upper)
//   symmetrize(H, n)                                       upper triangle copied onto the lower
//   spotrf(A, n, upper) -> boolean                         in-place Cholesky, other triangle zeroed
//   inverseCholesky(A, n) -> boolean                       in place: upper U with A⁻¹ = UᵀU (potrf + trtri)
//   setThreads(n), getThreads() -> number                  BLAS threads and the kernel pool's threads
//   blasInfo() -> string
// Packed runtime weights (qkernels.h), held by an External that frees them when collected:
//   qpack(out, in, bits, groupSize, codes, scales, zeros, gIdx|null, olPtr|null, olIdx|null, olVal|null) -> handle
//   qpackF16(out, in, Uint16Array) -> handle
//   qlinear(handle, x, rows, y, bias|null, mode)           y = x·Wᵀ (+ bias); mode 0 auto, 1 GEMV, 2 GEMM
//   qdequant(handle, r0, r1, dst)                          rows r0..r1 of the fp32 weight
//   qbytes(handle) -> number                               resident bytes
//   kernelInfo() -> {simd, simdAvailable, simdLevels, threads}; setSimd(on | level) -> boolean | level
//   trimMemory() -> boolean
// Block ops (blockops.h), on the kernel pool, AVX2 or scalar with the packed kernels' switch:
//   rmsNorm(x, rows, dim, w, eps, out); layerNorm(x, rows, dim, w, b|null, eps, out)
//   rope(x, rows, T, nHeads, headDim, pos0, cos, sin)      in place, rotate_half layout
//   attention(q, k, v, B, T, nHeads, nKvHeads, headDim, pos0, kCache|null, vCache|null, out)
//   activate(kind, x); activateMul(kind, gate, up)          kind 0 silu, 1 relu, 2 gelu_new, 3 gelu
//   add(a, b, out); fastExp(x) -> number
//   f16ToF32(src, dst) -> boolean                           half → float32 (F16C; false: not converted)
// GPTQ (gptqloop.h): gptqColumns(...) -> 0|1|2, one sub-block of the column loop

#include <napi.h>

#include "blockops.h"
#include "gptqloop.h"
#include "qkernels.h"

#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <thread>

#ifdef QUANT4_ACCELERATE
#include <Accelerate/Accelerate.h>
typedef __LAPACK_int lapack_int;
#define QUANT4_FORTRAN_STRLEN
#define QUANT4_FORTRAN_STRLEN2
#else
#include <cblas.h>
typedef blasint lapack_int;
// No LAPACKE header on a stock OpenBLAS install: declare the Fortran LAPACK entry points ourselves.
// The trailing size_t is gfortran's hidden CHARACTER length argument; passing it explicitly keeps
// the Fortran-compiled routines well-defined.
extern "C" {
void spotrf_(const char* uplo, const lapack_int* n, float* a, const lapack_int* lda, lapack_int* info,
             size_t uplo_len);
void strtri_(const char* uplo, const char* diag, const lapack_int* n, float* a, const lapack_int* lda,
             lapack_int* info, size_t uplo_len, size_t diag_len);
}
#define QUANT4_FORTRAN_STRLEN , 1
#define QUANT4_FORTRAN_STRLEN2 , 1, 1
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// Argument helpers. Each returns false after scheduling a JS exception; callers then return.

void ThrowError(Napi::Env env, const std::string& msg) {
  Napi::Error::New(env, msg).ThrowAsJavaScriptException();
}
void ThrowTypeError(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
}

bool CheckArgCount(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() < n) {
    ThrowTypeError(info.Env(), std::string(fn) + ": expected " + std::to_string(n) + " arguments, got " +
                                   std::to_string(info.Length()));
    return false;
  }
  return true;
}

bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, bool* out) {
  if (!info[i].IsBoolean()) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a boolean");
    return false;
  }
  *out = info[i].As<Napi::Boolean>().Value();
  return true;
}

// A non-negative integer dimension that fits a BLAS int.
bool GetDim(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t* out) {
  if (!info[i].IsNumber()) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a number");
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != static_cast<double>(static_cast<int64_t>(v)) || v > static_cast<double>(INT_MAX)) {
    ThrowError(info.Env(), std::string(fn) + ": " + name + " must be a non-negative integer <= " +
                               std::to_string(INT_MAX) + ", got " + info[i].ToString().Utf8Value());
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

bool GetScalar(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, float* out) {
  if (!info[i].IsNumber()) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a number");
    return false;
  }
  *out = static_cast<float>(info[i].As<Napi::Number>().DoubleValue());
  return true;
}

struct F32View {
  float* data = nullptr;
  size_t length = 0;
};

// A Float32Array with exactly `expected` elements (`expr` names the expected size in the message).
bool GetF32(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t expected,
            const char* expr, F32View* out) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a Float32Array");
    return false;
  }
  Napi::Float32Array arr = v.As<Napi::Float32Array>();
  size_t len = arr.ElementLength();
  if (static_cast<int64_t>(len) != expected) {
    ThrowError(info.Env(), std::string(fn) + ": " + name + " has " + std::to_string(len) + " elements, expected " +
                               expr + "=" + std::to_string(expected));
    return false;
  }
  out->data = arr.Data();
  out->length = len;
  return true;
}

bool Overlaps(const F32View& a, const F32View& b) {
  if (a.length == 0 || b.length == 0) return false;
  auto a0 = reinterpret_cast<uintptr_t>(a.data), a1 = a0 + a.length * sizeof(float);
  auto b0 = reinterpret_cast<uintptr_t>(b.data), b1 = b0 + b.length * sizeof(float);
  return a0 < b1 && b0 < a1;
}

// Copy the upper triangle onto the lower one (row-major n×n): A[j][i] = A[i][j] for j > i. In 64×64
// tiles: a row-by-row copy writes one float per cache line and page (n = 11008: 0.4 s against 0.14 s).
void MirrorUpper(float* a, int64_t n) {
  constexpr int64_t kTile = 64;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    for (int64_t j0 = i0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        const float* row = a + i * n;
        for (int64_t j = std::max(j0, i + 1); j < j1; ++j) a[j * n + i] = row[j];
      }
    }
  }
}

// Zero the strictly-lower (zeroLower=true) or strictly-upper triangle (row-major n×n).
void ZeroTriangle(float* a, int64_t n, bool zeroLower) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = a + i * n;
    if (zeroLower) std::fill(row, row + i, 0.0f);
    else std::fill(row + i + 1, row + n, 0.0f);
  }
}

#ifdef QUANT4_ACCELERATE
int g_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#endif

// ---------------------------------------------------------------------------------------------

// sgemm(transA, transB, M, N, K, alpha, A, B, beta, C)
Napi::Value Sgemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "gemm";
  if (!CheckArgCount(info, 10, fn)) return env.Undefined();
  bool transA, transB;
  int64_t M, N, K;
  float alpha, beta;
  if (!GetBool(info, 0, fn, "transA", &transA) || !GetBool(info, 1, fn, "transB", &transB) ||
      !GetDim(info, 2, fn, "M", &M) || !GetDim(info, 3, fn, "N", &N) || !GetDim(info, 4, fn, "K", &K) ||
      !GetScalar(info, 5, fn, "alpha", &alpha) || !GetScalar(info, 8, fn, "beta", &beta))
    return env.Undefined();
  F32View A, B, C;
  if (!GetF32(info, 6, fn, "A", M * K, "M*K", &A) || !GetF32(info, 7, fn, "B", K * N, "K*N", &B) ||
      !GetF32(info, 9, fn, "C", M * N, "M*N", &C))
    return env.Undefined();
  if (Overlaps(C, A) || Overlaps(C, B)) {
    ThrowError(env, "gemm: C must not share memory with A or B");
    return env.Undefined();
  }
  if (M == 0 || N == 0) return env.Undefined();
  // Natural leading dimensions; clamp to 1 so BLAS argument checks pass when K == 0 (then C = beta*C).
  const int lda = static_cast<int>(std::max<int64_t>(1, transA ? M : K));
  const int ldb = static_cast<int>(std::max<int64_t>(1, transB ? K : N));
  const int ldc = static_cast<int>(N);
  cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A.data, lda, B.data, ldb,
              beta, C.data, ldc);
  return env.Undefined();
}

// ssyrk(n, rows, alpha, X, beta, H[, upperOnly]): H = beta*H + alpha*X^T X with X rows×n; the full
// symmetric result, or with upperOnly only the upper triangle (the lower one is left as it was: callers
// accumulating many batches mirror once at the end with symmetrize).
Napi::Value Ssyrk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "syrk";
  if (!CheckArgCount(info, 6, fn)) return env.Undefined();
  int64_t n, rows;
  float alpha, beta;
  if (!GetDim(info, 0, fn, "n", &n) || !GetDim(info, 1, fn, "rows", &rows) ||
      !GetScalar(info, 2, fn, "alpha", &alpha) || !GetScalar(info, 4, fn, "beta", &beta))
    return env.Undefined();
  bool upperOnly = false;
  if (info.Length() > 6 && !info[6].IsUndefined() && !GetBool(info, 6, fn, "upperOnly", &upperOnly)) return env.Undefined();
  F32View X, H;
  if (!GetF32(info, 3, fn, "X", rows * n, "rows*n", &X) || !GetF32(info, 5, fn, "H", n * n, "n*n", &H))
    return env.Undefined();
  if (Overlaps(H, X)) {
    ThrowError(env, "syrk: H must not share memory with X");
    return env.Undefined();
  }
  if (n == 0) return env.Undefined();
  // Row-major, Trans: C(n×n) = alpha * Aᵀ A + beta * C with A rows×n, lda = n.
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<int>(n), static_cast<int>(rows), alpha, X.data,
              static_cast<int>(n), beta, H.data, static_cast<int>(n));
  if (!upperOnly) MirrorUpper(H.data, n);
  return env.Undefined();
}

// symmetrize(H, n): copy H's upper triangle onto its lower one.
Napi::Value Symmetrize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "symmetrize";
  if (!CheckArgCount(info, 2, fn)) return env.Undefined();
  int64_t n;
  if (!GetDim(info, 1, fn, "n", &n)) return env.Undefined();
  F32View H;
  if (!GetF32(info, 0, fn, "H", n * n, "n*n", &H)) return env.Undefined();
  MirrorUpper(H.data, n);
  return env.Undefined();
}

// Row-major upper triangle == column-major lower triangle of the same buffer (and vice versa),
// and for a symmetric matrix both views are the same matrix, so LAPACK's uplo is flipped.
inline char LapackUplo(bool rowMajorUpper) { return rowMajorUpper ? 'L' : 'U'; }

// spotrf(A, n, upper) -> boolean
Napi::Value Spotrf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "cholesky";
  if (!CheckArgCount(info, 3, fn)) return env.Undefined();
  int64_t n;
  bool upper;
  if (!GetDim(info, 1, fn, "n", &n) || !GetBool(info, 2, fn, "upper", &upper)) return env.Undefined();
  F32View A;
  if (!GetF32(info, 0, fn, "A", n * n, "n*n", &A)) return env.Undefined();
  if (n == 0) return Napi::Boolean::New(env, true);
  const char uplo = LapackUplo(upper);
  const lapack_int ln = static_cast<lapack_int>(n);
  lapack_int status = 0;
  spotrf_(&uplo, &ln, A.data, &ln, &status QUANT4_FORTRAN_STRLEN);
  if (status < 0) {
    ThrowError(env, "cholesky: spotrf rejected argument " + std::to_string(-status));
    return env.Undefined();
  }
  if (status > 0) return Napi::Boolean::New(env, false);
  ZeroTriangle(A.data, n, /*zeroLower=*/upper);
  return Napi::Boolean::New(env, true);
}

// inverseCholesky(A, n) -> boolean: A (SPD) becomes the upper triangular U with A⁻¹ = UᵀU, lower triangle
// zeroed. With J the order reversal, J·A·J = L·Lᵀ (potrf) gives A = Ũ·Ũᵀ with Ũ = J·L·J upper, so
// A⁻¹ = Ũ⁻ᵀ·Ũ⁻¹ and U = Ũ⁻¹ = J·L⁻¹·J (trtri): 2n³/3 flops against 4n³/3 for GPTQ's reference sequence
// (cholesky, cholesky_inverse, cholesky upper), the same factor up to fp32 rounding. Reversing rows and
// columns of a row-major matrix is reversing its flat array.
Napi::Value InverseCholesky(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "inverseCholesky";
  if (!CheckArgCount(info, 2, fn)) return env.Undefined();
  int64_t n;
  if (!GetDim(info, 1, fn, "n", &n)) return env.Undefined();
  F32View A;
  if (!GetF32(info, 0, fn, "A", n * n, "n*n", &A)) return env.Undefined();
  if (n == 0) return Napi::Boolean::New(env, true);
  std::reverse(A.data, A.data + n * n);
  const char uplo = LapackUplo(/*rowMajorUpper=*/false);
  const char diag = 'N';
  const lapack_int ln = static_cast<lapack_int>(n);
  lapack_int status = 0;
  spotrf_(&uplo, &ln, A.data, &ln, &status QUANT4_FORTRAN_STRLEN);
  if (status < 0) {
    ThrowError(env, "inverseCholesky: spotrf rejected argument " + std::to_string(-status));
    return env.Undefined();
  }
  if (status > 0) return Napi::Boolean::New(env, false);
  strtri_(&uplo, &diag, &ln, A.data, &ln, &status QUANT4_FORTRAN_STRLEN2);
  if (status < 0) {
    ThrowError(env, "inverseCholesky: strtri rejected argument " + std::to_string(-status));
    return env.Undefined();
  }
  if (status > 0) return Napi::Boolean::New(env, false);  // singular factor (zero on the diagonal)
  std::reverse(A.data, A.data + n * n);
  ZeroTriangle(A.data, n, /*zeroLower=*/true);
  return Napi::Boolean::New(env, true);
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgCount(info, 1, "setThreads")) return env.Undefined();
  int64_t n;
  if (!GetDim(info, 0, "setThreads", "n", &n)) return env.Undefined();
  if (n < 1) {
    ThrowError(env, "setThreads: n must be >= 1, got " + std::to_string(n));
    return env.Undefined();
  }
#ifdef QUANT4_ACCELERATE
  g_threads = static_cast<int>(n);  // Accelerate manages its own threads; remembered for getThreads only.
#else
  openblas_set_num_threads(static_cast<int>(n));
#endif
  q4::SetThreads(static_cast<int>(n));
  return env.Undefined();
}

Napi::Value GetThreads(const Napi::CallbackInfo& info) {
#ifdef QUANT4_ACCELERATE
  return Napi::Number::New(info.Env(), g_threads);
#else
  return Napi::Number::New(info.Env(), openblas_get_num_threads());
#endif
}

Napi::Value BlasInfo(const Napi::CallbackInfo& info) {
#ifdef QUANT4_ACCELERATE
  return Napi::String::New(info.Env(), "Accelerate");
#else
  std::string s = std::string(openblas_get_config()) + " core=" + openblas_get_corename();
  return Napi::String::New(info.Env(), s);
#endif
}

// ---------------------------------------------------------------------------------------------
// Packed runtime weights

const napi_type_tag kPackedTag = {0x7175616e74347071ULL, 0x61636b65646c696eULL};  // "quant4pq" "ackedlin"

template <typename T, napi_typedarray_type TT>
bool GetTyped(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t expected, bool optional,
              const T** out, const char* tname) {
  Napi::Value v = info[i];
  if (optional && (v.IsNull() || v.IsUndefined())) {
    *out = nullptr;
    return true;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != TT) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a " + tname);
    return false;
  }
  Napi::TypedArrayOf<T> arr = v.As<Napi::TypedArrayOf<T>>();
  if (expected >= 0 && static_cast<int64_t>(arr.ElementLength()) != expected) {
    ThrowError(info.Env(), std::string(fn) + ": " + name + " has " + std::to_string(arr.ElementLength()) + " elements, expected " +
                               std::to_string(expected));
    return false;
  }
  *out = arr.Data();
  return true;
}

Napi::Value WrapPacked(Napi::Env env, std::unique_ptr<q4::PackedLinear> L) {
  const int64_t bytes = static_cast<int64_t>(L->Bytes());
  auto ext = Napi::External<q4::PackedLinear>::New(env, L.release(), [](Napi::Env e, q4::PackedLinear* p) {
    Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(p->Bytes()));
    delete p;
  });
  napi_type_tag_object(env, ext, &kPackedTag);
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  return ext;
}

q4::PackedLinear* GetPacked(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Value v = info[i];
  bool ok = false;
  if (v.IsExternal()) napi_check_object_type_tag(info.Env(), v, &kPackedTag, &ok);
  if (!ok) {
    ThrowTypeError(info.Env(), std::string(fn) + ": handle is not a packed weight");
    return nullptr;
  }
  return v.As<Napi::External<q4::PackedLinear>>().Data();
}

// qpack(out, in, bits, groupSize, codes, scales, zeros, gIdx|null, olPtr|null, olIdx|null, olVal|null)
Napi::Value QPack(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "qpack";
  if (!CheckArgCount(info, 11, fn)) return env.Undefined();
  int64_t out, in, bits;
  if (!GetDim(info, 0, fn, "out", &out) || !GetDim(info, 1, fn, "in", &in) || !GetDim(info, 2, fn, "bits", &bits))
    return env.Undefined();
  if (!info[3].IsNumber()) {
    ThrowTypeError(env, "qpack: groupSize must be a number");
    return env.Undefined();
  }
  const int64_t groupSize = info[3].As<Napi::Number>().Int64Value();
  if (!info[5].IsTypedArray()) {
    ThrowTypeError(env, "qpack: scales must be a Float32Array");
    return env.Undefined();
  }
  const int64_t nScales = static_cast<int64_t>(info[5].As<Napi::TypedArray>().ElementLength());
  if (out < 1 || nScales % out != 0) {
    ThrowError(env, "qpack: scales has " + std::to_string(nScales) + " elements, not a multiple of out=" + std::to_string(out));
    return env.Undefined();
  }
  const int64_t nG = nScales / out;
  q4::PackInput p{};
  p.out = out;
  p.in = in;
  p.bits = static_cast<int>(bits);
  p.groupSize = static_cast<int>(std::max<int64_t>(-1, std::min<int64_t>(groupSize, INT_MAX)));
  p.nG = nG;
  if (!GetTyped<uint8_t, napi_uint8_array>(info, 4, fn, "codes", out * in, false, &p.codes, "Uint8Array") ||
      !GetTyped<float, napi_float32_array>(info, 5, fn, "scales", out * nG, false, &p.scales, "Float32Array") ||
      !GetTyped<uint8_t, napi_uint8_array>(info, 6, fn, "zeros", out * nG, false, &p.zeros, "Uint8Array") ||
      !GetTyped<int32_t, napi_int32_array>(info, 7, fn, "gIdx", in, true, &p.gIdx, "Int32Array") ||
      !GetTyped<int32_t, napi_int32_array>(info, 8, fn, "olPtr", out + 1, true, &p.olPtr, "Int32Array"))
    return env.Undefined();
  if (p.olPtr) {
    const int64_t nnz = p.olPtr[out];
    if (nnz < 0 || !GetTyped<int32_t, napi_int32_array>(info, 9, fn, "olIdx", nnz, false, &p.olIdx, "Int32Array") ||
        !GetTyped<float, napi_float32_array>(info, 10, fn, "olVal", nnz, false, &p.olVal, "Float32Array")) {
      if (nnz < 0) ThrowError(env, "qpack: olPtr ends negative");
      return env.Undefined();
    }
  }
  std::string err;
  auto L = q4::Pack(p, &err);
  if (!L) {
    ThrowError(env, "qpack: " + err);
    return env.Undefined();
  }
  return WrapPacked(env, std::move(L));
}

// f16ToF32(src: Uint16Array, dst: Float32Array) -> boolean (false: no F16C here, nothing converted)
Napi::Value F16ToF32Fn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "f16ToF32";
  if (!CheckArgCount(info, 2, fn)) return env.Undefined();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array) {
    ThrowTypeError(env, "f16ToF32: src must be a Uint16Array");
    return env.Undefined();
  }
  auto src = info[0].As<Napi::Uint16Array>();
  const int64_t n = static_cast<int64_t>(src.ElementLength());
  F32View dst;
  if (!GetF32(info, 1, fn, "dst", n, "src.length", &dst)) return env.Undefined();
  return Napi::Boolean::New(env, q4::F16ToF32(src.Data(), dst.data, n));
}

// qpackF16(out, in, Uint16Array)
Napi::Value QPackF16(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "qpackF16";
  if (!CheckArgCount(info, 3, fn)) return env.Undefined();
  int64_t out, in;
  if (!GetDim(info, 0, fn, "out", &out) || !GetDim(info, 1, fn, "in", &in)) return env.Undefined();
  const uint16_t* w;
  if (!GetTyped<uint16_t, napi_uint16_array>(info, 2, fn, "w", out * in, false, &w, "Uint16Array")) return env.Undefined();
  if (out < 1 || in < 1) {
    ThrowError(env, "qpackF16: empty weight");
    return env.Undefined();
  }
  auto L = q4::PackF16(w, out, in);
  if (!L) {
    ThrowError(env, "qpackF16: out of memory for " + std::to_string(2 * out * in) + " bytes");
    return env.Undefined();
  }
  return WrapPacked(env, std::move(L));
}

// qlinear(handle, x, rows, y, bias|null, mode)
Napi::Value QLinear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "qlinear";
  if (!CheckArgCount(info, 6, fn)) return env.Undefined();
  q4::PackedLinear* L = GetPacked(info, 0, fn);
  if (!L) return env.Undefined();
  int64_t rows, mode;
  if (!GetDim(info, 2, fn, "rows", &rows) || !GetDim(info, 5, fn, "mode", &mode)) return env.Undefined();
  F32View X, Y;
  if (!GetF32(info, 1, fn, "x", rows * L->in, "rows*in", &X) || !GetF32(info, 3, fn, "y", rows * L->out, "rows*out", &Y))
    return env.Undefined();
  const float* bias = nullptr;
  if (!GetTyped<float, napi_float32_array>(info, 4, fn, "bias", L->out, true, &bias, "Float32Array")) return env.Undefined();
  if (Overlaps(X, Y)) {
    ThrowError(env, "qlinear: y must not share memory with x");
    return env.Undefined();
  }
  q4::Linear(*L, X.data, rows, Y.data, bias, static_cast<int>(mode));
  return env.Undefined();
}

// qdequant(handle, r0, r1, dst)
Napi::Value QDequant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "qdequant";
  if (!CheckArgCount(info, 4, fn)) return env.Undefined();
  q4::PackedLinear* L = GetPacked(info, 0, fn);
  if (!L) return env.Undefined();
  int64_t r0, r1;
  if (!GetDim(info, 1, fn, "r0", &r0) || !GetDim(info, 2, fn, "r1", &r1)) return env.Undefined();
  if (r0 > r1 || r1 > L->out) {
    ThrowError(env, "qdequant: rows [" + std::to_string(r0) + ", " + std::to_string(r1) + ") outside [0, " + std::to_string(L->out) + "]");
    return env.Undefined();
  }
  F32View D;
  if (!GetF32(info, 3, fn, "dst", (r1 - r0) * L->in, "(r1-r0)*in", &D)) return env.Undefined();
  q4::DequantRows(*L, r0, r1, D.data);
  return env.Undefined();
}

Napi::Value QBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgCount(info, 1, "qbytes")) return env.Undefined();
  q4::PackedLinear* L = GetPacked(info, 0, "qbytes");
  if (!L) return env.Undefined();
  return Napi::Number::New(env, static_cast<double>(L->Bytes()));
}

const char* const kSimdLevels[] = {"scalar", "avx2", "avx512"};

Napi::Value KernelInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("simd", Napi::String::New(env, kSimdLevels[q4::SimdLevel()]));
  o.Set("simdAvailable", Napi::Boolean::New(env, q4::SimdAvailable()));
  Napi::Array levels = Napi::Array::New(env);
  for (int l = q4::MaxSimdLevel(); l >= 0; l--) levels.Set(static_cast<uint32_t>(levels.Length()), Napi::String::New(env, kSimdLevels[l]));
  o.Set("simdLevels", levels);
  o.Set("threads", Napi::Number::New(env, q4::Threads()));
  return o;
}

// trimMemory(): return the C heap's free pages to the OS (glibc malloc_trim), so RSS after a load that
// freed large temporaries measures what stays. false where there is nothing to call.
Napi::Value TrimMemory(const Napi::CallbackInfo& info) {
#if defined(__linux__) && defined(__GLIBC__)
  malloc_trim(0);
  return Napi::Boolean::New(info.Env(), true);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// setSimd(on: boolean) -> boolean (AVX2 or more in use); setSimd(level: "avx512"|"avx2"|"scalar") -> the
// level in use (capped at the CPU's).
Napi::Value SetSimd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckArgCount(info, 1, "setSimd")) return env.Undefined();
  if (info[0].IsString()) {
    const std::string s = info[0].As<Napi::String>().Utf8Value();
    for (int l = 0; l < 3; l++)
      if (s == kSimdLevels[l]) return Napi::String::New(env, kSimdLevels[q4::SetSimdLevel(l)]);
    ThrowTypeError(env, "setSimd: level must be \"avx512\", \"avx2\" or \"scalar\", got \"" + s + "\"");
    return env.Undefined();
  }
  bool on;
  if (!GetBool(info, 0, "setSimd", "on", &on)) return env.Undefined();
  return Napi::Boolean::New(env, q4::SetSimd(on));
}

// ---------------------------------------------------------------------------------------------
// Block ops (blockops.h): norms, RoPE, attention, activations, residual add

// A Float32Array of any length (its view in *out), for arguments whose size is checked by the caller.
bool GetF32Any(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, bool optional, F32View* out) {
  Napi::Value v = info[i];
  if (optional && (v.IsNull() || v.IsUndefined())) {
    *out = F32View();
    return true;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    ThrowTypeError(info.Env(), std::string(fn) + ": " + name + " must be a Float32Array");
    return false;
  }
  Napi::Float32Array arr = v.As<Napi::Float32Array>();
  out->data = arr.Data();
  out->length = arr.ElementLength();
  return true;
}

bool GetEps(const Napi::CallbackInfo& info, size_t i, const char* fn, double* out) {
  if (!info[i].IsNumber() || !(info[i].As<Napi::Number>().DoubleValue() >= 0)) {
    ThrowTypeError(info.Env(), std::string(fn) + ": eps must be a non-negative number");
    return false;
  }
  *out = info[i].As<Napi::Number>().DoubleValue();
  return true;
}

// Same memory exactly, or none: in-place ops accept out === x, nothing partial.
bool SameOrDisjoint(const F32View& a, const F32View& b) { return a.data == b.data ? a.length == b.length : !Overlaps(a, b); }

// rmsNorm(x, rows, dim, w, eps, out) / layerNorm(x, rows, dim, w, b|null, eps, out)
Napi::Value NormImpl(const Napi::CallbackInfo& info, bool layer) {
  Napi::Env env = info.Env();
  const char* fn = layer ? "layerNorm" : "rmsNorm";
  if (!CheckArgCount(info, layer ? 7 : 6, fn)) return env.Undefined();
  int64_t rows, dim;
  double eps;
  if (!GetDim(info, 1, fn, "rows", &rows) || !GetDim(info, 2, fn, "dim", &dim) || !GetEps(info, layer ? 5 : 4, fn, &eps)) return env.Undefined();
  F32View X, W, B, O;
  if (!GetF32(info, 0, fn, "x", rows * dim, "rows*dim", &X) || !GetF32(info, 3, fn, "w", dim, "dim", &W) ||
      !GetF32(info, layer ? 6 : 5, fn, "out", rows * dim, "rows*dim", &O))
    return env.Undefined();
  if (layer) {
    if (!GetF32Any(info, 4, fn, "b", true, &B)) return env.Undefined();
    if (B.data && static_cast<int64_t>(B.length) != dim) {
      ThrowError(env, std::string(fn) + ": b has " + std::to_string(B.length) + " elements, expected dim=" + std::to_string(dim));
      return env.Undefined();
    }
  }
  if (!SameOrDisjoint(O, X) || Overlaps(O, W) || Overlaps(O, B)) {
    ThrowError(env, std::string(fn) + ": out must be x itself or not share memory with the inputs");
    return env.Undefined();
  }
  if (rows == 0 || dim == 0) return env.Undefined();
  if (layer) q4::LayerNorm(X.data, rows, dim, W.data, B.data, eps, O.data);
  else q4::RmsNorm(X.data, rows, dim, W.data, eps, O.data);
  return env.Undefined();
}
Napi::Value RmsNormFn(const Napi::CallbackInfo& info) { return NormImpl(info, false); }
Napi::Value LayerNormFn(const Napi::CallbackInfo& info) { return NormImpl(info, true); }

// rope(x, rows, T, nHeads, headDim, pos0, cos, sin): in place; cos/sin [positions, headDim/2]
Napi::Value RopeFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "rope";
  if (!CheckArgCount(info, 8, fn)) return env.Undefined();
  int64_t rows, T, nH, d, pos0;
  if (!GetDim(info, 1, fn, "rows", &rows) || !GetDim(info, 2, fn, "T", &T) || !GetDim(info, 3, fn, "nHeads", &nH) ||
      !GetDim(info, 4, fn, "headDim", &d) || !GetDim(info, 5, fn, "pos0", &pos0))
    return env.Undefined();
  F32View X, C, S;
  if (!GetF32(info, 0, fn, "x", rows * nH * d, "rows*nHeads*headDim", &X) || !GetF32Any(info, 6, fn, "cos", false, &C) ||
      !GetF32Any(info, 7, fn, "sin", false, &S))
    return env.Undefined();
  if (rows == 0 || nH == 0) return env.Undefined();
  if (d % 2 != 0 || T < 1) {
    ThrowError(env, "rope: headDim must be even and T >= 1, got headDim " + std::to_string(d) + ", T " + std::to_string(T));
    return env.Undefined();
  }
  const int64_t need = (pos0 + std::min(T, rows)) * (d / 2);
  if (static_cast<int64_t>(C.length) < need || S.length != C.length) {
    ThrowError(env, "rope: the cos/sin tables (" + std::to_string(C.length) + ", " + std::to_string(S.length) + " elements) do not cover positions up to " +
                        std::to_string(pos0 + std::min(T, rows)) + " (" + std::to_string(need) + " elements each)");
    return env.Undefined();
  }
  if (Overlaps(X, C) || Overlaps(X, S)) {
    ThrowError(env, "rope: x must not share memory with the tables");
    return env.Undefined();
  }
  q4::Rope(X.data, rows, T, nH, d, pos0, C.data, S.data);
  return env.Undefined();
}

// attention(q, k, v, B, T, nHeads, nKvHeads, headDim, pos0, kCache|null, vCache|null, out)
Napi::Value AttentionFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "attention";
  if (!CheckArgCount(info, 12, fn)) return env.Undefined();
  q4::AttnShape s;
  if (!GetDim(info, 3, fn, "B", &s.B) || !GetDim(info, 4, fn, "T", &s.T) || !GetDim(info, 5, fn, "nHeads", &s.nHeads) ||
      !GetDim(info, 6, fn, "nKvHeads", &s.nKv) || !GetDim(info, 7, fn, "headDim", &s.headDim) || !GetDim(info, 8, fn, "pos0", &s.pos0))
    return env.Undefined();
  if (s.nKv < 1 || s.nHeads % s.nKv != 0 || s.headDim < 1) {
    ThrowError(env, "attention: nHeads (" + std::to_string(s.nHeads) + ") must be a multiple of nKvHeads (" + std::to_string(s.nKv) + ") >= 1, headDim >= 1");
    return env.Undefined();
  }
  const int64_t rows = s.B * s.T, qDim = s.nHeads * s.headDim, kvDim = s.nKv * s.headDim;
  F32View Q, K, V, KC, VC, O;
  if (!GetF32(info, 0, fn, "q", rows * qDim, "B*T*nHeads*headDim", &Q) || !GetF32(info, 1, fn, "k", rows * kvDim, "B*T*nKvHeads*headDim", &K) ||
      !GetF32(info, 2, fn, "v", rows * kvDim, "B*T*nKvHeads*headDim", &V) || !GetF32Any(info, 9, fn, "kCache", true, &KC) ||
      !GetF32Any(info, 10, fn, "vCache", true, &VC) || !GetF32(info, 11, fn, "out", rows * qDim, "B*T*nHeads*headDim", &O))
    return env.Undefined();
  if ((KC.data == nullptr) != (VC.data == nullptr)) {
    ThrowError(env, "attention: give both caches or neither");
    return env.Undefined();
  }
  if (KC.data) {
    if (s.B != 1) {
      ThrowError(env, "attention: a KV cache holds a single sequence, got B=" + std::to_string(s.B));
      return env.Undefined();
    }
    if (KC.length != VC.length || KC.length % std::max<int64_t>(kvDim, 1) != 0 ||
        static_cast<int64_t>(KC.length) / std::max<int64_t>(kvDim, 1) < s.pos0 + s.T) {
      ThrowError(env, "attention: KV cache capacity " + std::to_string(KC.length / std::max<int64_t>(kvDim, 1)) + " exceeded (" +
                          std::to_string(s.pos0 + s.T) + " positions; cache arrays of " + std::to_string(KC.length) + " and " + std::to_string(VC.length) + " elements)");
      return env.Undefined();
    }
  } else if (s.pos0 != 0) {
    ThrowError(env, "attention: pos0 must be 0 without a KV cache, got " + std::to_string(s.pos0));
    return env.Undefined();
  }
  if (Overlaps(O, Q) || Overlaps(O, K) || Overlaps(O, V) || Overlaps(O, KC) || Overlaps(O, VC) || Overlaps(KC, VC) ||
      Overlaps(KC, Q) || Overlaps(KC, K) || Overlaps(KC, V) || Overlaps(VC, Q) || Overlaps(VC, K) || Overlaps(VC, V)) {
    ThrowError(env, "attention: out and the caches must not share memory with each other or the inputs");
    return env.Undefined();
  }
  if (rows == 0 || qDim == 0) return env.Undefined();
  q4::Attention(Q.data, K.data, V.data, s, KC.data, VC.data, O.data);
  return env.Undefined();
}

bool GetAct(const Napi::CallbackInfo& info, size_t i, const char* fn, int* kind) {
  int64_t k;
  if (!GetDim(info, i, fn, "kind", &k)) return false;
  if (k > 3) {
    ThrowError(info.Env(), std::string(fn) + ": unknown activation " + std::to_string(k));
    return false;
  }
  *kind = static_cast<int>(k);
  return true;
}

// activate(kind, x) in place
Napi::Value ActivateFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "activate";
  if (!CheckArgCount(info, 2, fn)) return env.Undefined();
  int kind;
  F32View X;
  if (!GetAct(info, 0, fn, &kind) || !GetF32Any(info, 1, fn, "x", false, &X)) return env.Undefined();
  q4::Activate(kind, X.data, static_cast<int64_t>(X.length));
  return env.Undefined();
}

// activateMul(kind, gate, up): gate = act(gate) · up
Napi::Value ActivateMulFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "activateMul";
  if (!CheckArgCount(info, 3, fn)) return env.Undefined();
  int kind;
  F32View G, U;
  if (!GetAct(info, 0, fn, &kind) || !GetF32Any(info, 1, fn, "gate", false, &G) ||
      !GetF32(info, 2, fn, "up", static_cast<int64_t>(G.length), "gate.length", &U))
    return env.Undefined();
  if (Overlaps(G, U)) {
    ThrowError(env, "activateMul: gate must not share memory with up");
    return env.Undefined();
  }
  q4::ActivateMul(kind, G.data, U.data, static_cast<int64_t>(G.length));
  return env.Undefined();
}

// add(a, b, out): out = a + b
Napi::Value AddFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "add";
  if (!CheckArgCount(info, 3, fn)) return env.Undefined();
  F32View A, B, O;
  if (!GetF32Any(info, 0, fn, "a", false, &A) || !GetF32(info, 1, fn, "b", static_cast<int64_t>(A.length), "a.length", &B) ||
      !GetF32(info, 2, fn, "out", static_cast<int64_t>(A.length), "a.length", &O))
    return env.Undefined();
  if (!SameOrDisjoint(O, A) || !SameOrDisjoint(O, B)) {
    ThrowError(env, "add: out must be a or b itself or not share memory with them");
    return env.Undefined();
  }
  q4::Add(A.data, B.data, O.data, static_cast<int64_t>(A.length));
  return env.Undefined();
}

// rowLse(x, rows, vocab, max, sum, top): per row max (Float32Array), Σ e^(x − max) (Float64Array), argmax (Int32Array)
Napi::Value RowLseFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* fn = "rowLse";
  if (!CheckArgCount(info, 6, fn)) return env.Undefined();
  int64_t rows, V;
  if (!GetDim(info, 1, fn, "rows", &rows) || !GetDim(info, 2, fn, "vocab", &V)) return env.Undefined();
  F32View X, M;
  const double* S;
  const int32_t* T;
  if (!GetF32(info, 0, fn, "x", rows * V, "rows*vocab", &X) || !GetF32(info, 3, fn, "max", rows, "rows", &M) ||
      !GetTyped<double, napi_float64_array>(info, 4, fn, "sum", rows, false, &S, "Float64Array") ||
      !GetTyped<int32_t, napi_int32_array>(info, 5, fn, "top", rows, false, &T, "Int32Array"))
    return env.Undefined();
  auto bytes = [](const void* p, int64_t n) { return std::pair<uintptr_t, uintptr_t>(reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + n); };
  const std::pair<uintptr_t, uintptr_t> r[4] = {bytes(X.data, 4 * rows * V), bytes(M.data, 4 * rows), bytes(S, 8 * rows), bytes(T, 4 * rows)};
  for (int a = 0; a < 4; a++)
    for (int b = a + 1; b < 4; b++)
      if (rows > 0 && V > 0 && r[a].first < r[b].second && r[b].first < r[a].second) {
        ThrowError(env, "rowLse: x, max, sum and top must not share memory");
        return env.Undefined();
      }
  if (rows == 0 || V == 0) return env.Undefined();
  q4::RowLse(X.data, rows, V, M.data, const_cast<double*>(S), const_cast<int32_t*>(T));
  return env.Undefined();
}

// fastExp(x): the block ops' float64 e^x (tests)
Napi::Value FastExpFn(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) {
    ThrowTypeError(info.Env(), "fastExp: x must be a number");
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), q4::FastExp(info[0].As<Napi::Number>().DoubleValue()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sgemm", Napi::Function::New(env, Sgemm, "sgemm"));
  exports.Set("ssyrk", Napi::Function::New(env, Ssyrk, "ssyrk"));
  exports.Set("symmetrize", Napi::Function::New(env, Symmetrize, "symmetrize"));
  exports.Set("spotrf", Napi::Function::New(env, Spotrf, "spotrf"));
  exports.Set("inverseCholesky", Napi::Function::New(env, InverseCholesky, "inverseCholesky"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("getThreads", Napi::Function::New(env, GetThreads, "getThreads"));
  exports.Set("blasInfo", Napi::Function::New(env, BlasInfo, "blasInfo"));
  exports.Set("qpack", Napi::Function::New(env, QPack, "qpack"));
  exports.Set("qpackF16", Napi::Function::New(env, QPackF16, "qpackF16"));
  exports.Set("qlinear", Napi::Function::New(env, QLinear, "qlinear"));
  exports.Set("qdequant", Napi::Function::New(env, QDequant, "qdequant"));
  exports.Set("qbytes", Napi::Function::New(env, QBytes, "qbytes"));
  exports.Set("kernelInfo", Napi::Function::New(env, KernelInfo, "kernelInfo"));
  exports.Set("setSimd", Napi::Function::New(env, SetSimd, "setSimd"));
  exports.Set("trimMemory", Napi::Function::New(env, TrimMemory, "trimMemory"));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNormFn, "rmsNorm"));
  exports.Set("layerNorm", Napi::Function::New(env, LayerNormFn, "layerNorm"));
  exports.Set("rope", Napi::Function::New(env, RopeFn, "rope"));
  exports.Set("attention", Napi::Function::New(env, AttentionFn, "attention"));
  exports.Set("activate", Napi::Function::New(env, ActivateFn, "activate"));
  exports.Set("activateMul", Napi::Function::New(env, ActivateMulFn, "activateMul"));
  exports.Set("add", Napi::Function::New(env, AddFn, "add"));
  exports.Set("fastExp", Napi::Function::New(env, FastExpFn, "fastExp"));
  exports.Set("rowLse", Napi::Function::New(env, RowLseFn, "rowLse"));
  exports.Set("f16ToF32", Napi::Function::New(env, F16ToF32Fn, "f16ToF32"));
  q4gptq::Register(env, exports);  // gptqColumns (gptqloop.cc)
#ifndef QUANT4_ACCELERATE
  q4::SetThreads(openblas_get_num_threads());
#endif
  return exports;
}

}  // namespace

NODE_API_MODULE(quant4_native, Init)
