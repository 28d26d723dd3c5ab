// Pointwise functions shared by every cell, on the CPU and (under nvcc) on the GPU.
// Derivatives are written in terms of the function's output, as backward has the output saved.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the CPU drivers are compiled once per instruction set, and an out-of-line
// copy shared between them could run AVX-512 code on a CPU without it.
#define FUSEDRNN_HD inline __attribute__((always_inline))
#else
#define FUSEDRNN_HD inline
#endif

namespace fusedrnn {

// The float polynomials of the CPU's activations, written once for float and for the CPU's SIMD
// vectors of floats (csrc/cpu/simd_math.inc): V is either.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;  // ln 2 = hi + lo

// e^r for |r| <= ln2/2: Cephes' expf polynomial, about 1 ulp.
template <typename V>
FUSEDRNN_HD V exp_reduced(V r) {
  V p = V(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

// tanh(x) for |x| <= kTanhClamp as x P(x^2) / Q(x^2), P and Q of degree 4 (a rational minimax
// fit of relative error 2e-8; in float, with the rounding of each step, at most 5 ulp, 3.3e-7,
// against every positive float): one division where 1 - 2 / (e^{2x} + 1) costs an exp and a
// division, and no second form near 0 (x P / Q keeps tanh's relative accuracy there). All
// coefficients are positive, so no step cancels. Past kTanhClamp tanh is 1 in float; the
// callers clamp the result to [-1, 1] too (it passes 1 by an ulp near the clamp), so that
// saturated gates are exactly +-1, as the reference's, and 1 - tanh^2 never negative. (The gate
// math of an LSTM step on AVX2: 10 -> 6.8 cycles a unit.)
constexpr float kTanhClamp = 9.1f;
template <typename V>
FUSEDRNN_HD V tanh_clamped(V x) {
  const V t = x * x;
  V p = V(1.3177633306e-08f) * t + 2.0481270744e-05f;
  p = p * t + 3.4878163175e-03f;
  p = p * t + 1.3374479676e-01f;
  p = p * t + 9.9999997721e-01f;
  V q = V(7.7040927117e-07f) * t + 3.2729286925e-04f;
  q = q * t + 2.5847408782e-02f;
  q = q * t + 4.6707793459e-01f;
  q = q * t + 1.0f;
  return x * p / q;
}

#if !defined(__CUDA_ARCH__)
// e^x for float on the CPU, written so that loops over it vectorize (std::exp does not):
// e^x = 2^n e^r with |r| <= ln2/2. NaN propagates (the clamps are comparisons that NaN fails).
// Below float's least normal (x < -87.34) it is 0, as the denormals there are once flushed:
// the clamp alone gave the least normal for any smaller x, e^-inf included, and a softmax
// weight of 1.2e-38 times an infinite value is infinite where the weight 0 gives NaN.
FUSEDRNN_HD float exp_vectorizable(float x) {
  float c = x > 88.0f ? 88.0f : x;
  c = c < -87.33654f ? -87.33654f : c;
  // n = round(c / ln2) by the 1.5 * 2^23 trick: plain arithmetic, so the loop vectorizes
  // (std::floor becomes a library call unless traps are ignored).
  const float n = (c * kLog2e + 12582912.0f) - 12582912.0f;
  const float r = (c - n * kLn2Hi) - n * kLn2Lo;
  const uint32_t bits = (static_cast<uint32_t>(static_cast<int32_t>(n)) + 127u) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  const float e = exp_reduced(r) * scale;
  return x < -87.33654f ? 0.0f : e;
}

// tanh for float on the CPU, vectorizable (tanh_clamped; NaN propagates: the clamps are
// comparisons that NaN fails).
FUSEDRNN_HD float tanh_vectorizable(float x) {
  float c = x > kTanhClamp ? kTanhClamp : x;
  c = c < -kTanhClamp ? -kTanhClamp : c;
  const float t = tanh_clamped(c);
  return t > 1.0f ? 1.0f : t < -1.0f ? -1.0f : t;
}
#endif

template <typename T>
FUSEDRNN_HD T exp_(T v) { return exp(v); }

template <>
FUSEDRNN_HD float exp_<float>(float v) {
#if defined(__CUDA_ARCH__)
  return expf(v);
#else
  return exp_vectorizable(v);
#endif
}

template <typename T>
FUSEDRNN_HD T sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

template <typename T>
FUSEDRNN_HD T tanh_(T v) { return tanh(v); }

template <>
FUSEDRNN_HD float sigmoid<float>(float v) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + expf(-v));
#else
  return 1.0f / (1.0f + exp_vectorizable(-v));
#endif
}

template <>
FUSEDRNN_HD float tanh_<float>(float v) {
#if defined(__CUDA_ARCH__)
  return tanhf(v);
#else
  return tanh_vectorizable(v);
#endif
}

template <typename T>
FUSEDRNN_HD T relu(T v) { return (v > T(0) || v != v) ? v : T(0); }  // NaN propagates

template <typename T>
FUSEDRNN_HD T d_sigmoid(T sigmoid_output) { return sigmoid_output * (T(1) - sigmoid_output); }

template <typename T>
FUSEDRNN_HD T d_tanh(T tanh_output) { return T(1) - tanh_output * tanh_output; }

// relu's backward: dh where its output is > 0 (NaN too, as torch), else exactly 0. A select,
// as torch's threshold_backward, not dh * {0, 1}: an inf or NaN dh at an inactive unit gives
// 0 there, where a product would give NaN and spread it through W_hh to every gradient.
template <typename T>
FUSEDRNN_HD T relu_grad(T relu_output, T dh) { return relu_output <= T(0) ? T(0) : dh; }

}  // namespace fusedrnn
