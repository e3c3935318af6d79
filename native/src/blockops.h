// quant4 block ops: the element-wise, row-wise and attention work of a decoder block between its Linears
// (norms, RoPE, causal attention over a KV cache, activations, residual add), on host fp32 arrays.
// Pure C++ (no N-API); quant4_native.cc wraps it, src/compute/cpu.ts exposes it as Backend methods.
//
// Every op runs on the kernel pool of qkernels.cc (the same thread count as the GEMV and BLAS, set with
// setThreads), split by rows (norms, RoPE, activations) or by (sequence, head, query chunk) (attention);
// small calls stay on the calling thread. AVX2/FMA versions are compiled per function and chosen at run time
// with the packed kernels' SIMD switch (QUANT4_NO_SIMD=1 or setSimd(false): the portable scalar versions);
// at the avx512 level attention, SiLU and the row log-sum-exp run AVX-512 versions with the AVX2 ones' bits.
//
// Arithmetic follows the TypeScript reference it replaced (test/blockops.test.ts compares them): norms
// accumulate in float64 and scale in float64 before rounding to fp32; RoPE rotates in float64 (exact
// products) and rounds once; exp is the reference's float64 e^x (a correctly rounded 2^(j/64) table and a
// degree-5 polynomial, 4 lanes at a time under AVX2); attention scores and the weighted sum of V are fp32
// dot products (their summation order differs from the sgemm calls they replace: fp32 rounding), the
// softmax keeps e^(s − max) in fp32 (AVX2: an 8-lane fp32 e^x within 2 ulp; scalar: the reference's
// float64 one) and its 1/Σ (float64) scales the output row.

#pragma once

#include <cstdint>

namespace q4 {

/** out[r] = x[r] / rms(x[r]) · w (HF LlamaRMSNorm). out may alias x. */
void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, double eps, float* out);
/** torch.nn.LayerNorm over the last dim (biased variance); b may be null. out may alias x. */
void LayerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, double eps, float* out);
/**
 * Rotary embedding in place (rotate_half layout: element i pairs with i + headDim/2) of every head of
 * x [rows, nHeads·headDim]; row r has position pos0 + (r mod T); cos/sin: [positions, headDim/2].
 */
void Rope(float* x, int64_t rows, int64_t T, int64_t nHeads, int64_t headDim, int64_t pos0, const float* cos, const float* sin);

struct AttnShape {
  int64_t B, T, nHeads, nKv, headDim, pos0;
};
/**
 * Causal self-attention for B sequences of T rows: q [B·T, nHeads·d], k/v [B·T, nKv·d] (RoPE applied);
 * query head h uses K/V head h / (nHeads/nKv). With a cache (kc/vc [cap, nKv·d], B = 1) the rows of k/v
 * are stored at pos0 and row t attends to positions [0, pos0 + t]. out [B·T, nHeads·d] (no aliasing).
 */
void Attention(const float* q, const float* k, const float* v, const AttnShape& s, float* kc, float* vc, float* out);

/** Activations (architectures.ts): 0 silu, 1 relu, 2 gelu_new (tanh), 3 gelu (erf). */
enum ActKind { kSilu = 0, kRelu = 1, kGeluNew = 2, kGelu = 3 };
/** x = act(x) in place. */
void Activate(int kind, float* x, int64_t n);
/** gate = act(gate) · up (the gated MLP). */
void ActivateMul(int kind, float* gate, const float* up, int64_t n);
/** out = a + b (out may alias a or b). */
void Add(const float* a, const float* b, float* out, int64_t n);

/**
 * IEEE half → float32 for n values (exact: every half is a float32; NaN payloads kept, quieted) with
 * F16C on the kernel pool. Returns false, converting nothing, when SIMD is off or unavailable.
 */
bool F16ToF32(const uint16_t* src, float* dst, int64_t n);

/**
 * Per row of x [rows, V]: mx = the max (NaN skipped), top = its first index (−1 when the row holds a NaN
 * or ±Inf), sum = Σ_j e^(x_j − mx) in float64 added left to right (the perplexity's log-sum-exp; the
 * caller takes mx + log(sum)).
 */
void RowLse(const float* x, int64_t rows, int64_t V, float* mx, double* sum, int32_t* top);

/** The float64 e^x of the TypeScript reference (src/model/ops.ts fastExp), for tests. */
double FastExp(double x);

}  // namespace q4
