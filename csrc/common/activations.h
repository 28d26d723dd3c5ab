// Pointwise functions shared by every cell, on the CPU and (under nvcc) on the GPU.
// Derivatives are written in terms of the function's output, as backward has the output saved.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDRNN_HD __host__ __device__ __forceinline__
#else
#define FUSEDRNN_HD inline
#endif

namespace fusedrnn {

template <typename T>
FUSEDRNN_HD T sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

template <typename T>
FUSEDRNN_HD T tanh_(T v) { return tanh(v); }

template <typename T>
FUSEDRNN_HD T relu(T v) { return (v > T(0) || v != v) ? v : T(0); }  // NaN propagates

template <typename T>
FUSEDRNN_HD T d_sigmoid(T sigmoid_output) { return sigmoid_output * (T(1) - sigmoid_output); }

template <typename T>
FUSEDRNN_HD T d_tanh(T tanh_output) { return T(1) - tanh_output * tanh_output; }

template <typename T>
FUSEDRNN_HD T d_relu(T relu_output) { return relu_output > T(0) ? T(1) : T(0); }

}  // namespace fusedrnn
