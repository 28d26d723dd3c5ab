// CUDA sequence drivers (one layer, one direction), the GPU twin of cpu/recurrent.cpp.
//
// Forward: the input projection of all T steps as one cuBLAS GEMM, then the time loop, run one
// of two ways:
//   stepwise    per step, a cuBLAS GEMM for the recurrent product h W_hh^T and one fused
//               pointwise kernel (biases, the cell's gate math, lengths masking, saving);
//   persistent  for small batches, one cooperative kernel for all T steps: each block keeps its
//               slice of W_hh (the G gate rows of its hidden units) in shared memory, computes
//               its units' recurrent products and gate math, publishes its part of h, and waits
//               at one grid-wide barrier per step. Cell state never leaves the block.
//               Each thread prefetches its own units' input part of the next step with cp.async
//               while the exchange is in flight. FUSEDRNN_CUDA_EXCHANGE=flagged (float32) swaps
//               the barrier for flagged words: each value travels in one 8-byte word with its
//               step number and readers poll the words they need (NCCL's LL protocol). It gives
//               bit-identical results but ran slower on an H200 (LSTM B=8 H=512 T=256: 5.6 vs
//               2.2 ms; B=16 H=128 T=1000: 13.0 vs 6.7 ms; every block's threads polling L2),
//               so the grid barrier is the default.
// Backward: the reverse time loop, stepwise (per step: one fused pointwise kernel producing the
// gate gradients, then a cuBLAS GEMM dh += dgh W_hh) or persistent (each block keeps its units'
// columns of W_hh, publishes its dgh, one grid barrier per step), then dx, dw_ih, dw_hh as single
// GEMMs over all T*N rows and the biases as column sums (GEMVs against ones; no atomics).
//
// Row-major throughout, as on the CPU. cuBLAS is column-major: a row-major C = op(A) op(B) is
// the column-major C^T = op(B)^T op(A)^T, so every GEMM swaps its operands (see `gemm`).
// float32 GEMMs run in full fp32 unless the caller allows TF32.
//
// bfloat16 autocast (Options::bf16, float32 only): the same loops with the products' operands
// rounded to bfloat16 (round to nearest even, as the CPU kernels and the reference round them)
// and fp32 accumulation on tensor cores: cuBLAS GemmEx for the input projection, the stepwise
// recurrent products, dx and the weight gradients; in the persistent kernels W_hh and the
// exchanged state (forward h, backward dgh) sit in shared memory as bfloat16 (half the bytes:
// larger H stays persistent) and go through 16x16x16 warp MMAs (block_mma). The gate math, the
// state and every sum stay fp32.
#include "cuda/recurrent.cuh"

#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <mma.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <initializer_list>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cells/gru_cell.h"
#include "cells/layernorm_lstm_cell.h"
#include "cells/lstm_cell.h"
#include "cells/rnn_cell.h"

namespace cg = cooperative_groups;
namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

namespace fusedrnn {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------ error checks
void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("fusedrnn CUDA error in ") + what + ": " +
                             cudaGetErrorString(status));
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("fusedrnn cuBLAS error in ") + what + ": " +
                             cublasGetStatusString(status));
}

#define FUSEDRNN_CUDA_CHECK(expr) check_cuda((expr), #expr)
#define FUSEDRNN_CUBLAS_CHECK(expr) check_cublas((expr), #expr)
#define FUSEDRNN_LAUNCH_CHECK(name) check_cuda(cudaGetLastError(), name)

constexpr int kThreads = 256;            // pointwise kernels
constexpr int kPersistentThreads = 256;  // persistent kernel: 8 warps
constexpr int64_t kPersistentMaxBatch = 16;  // kAuto uses the persistent kernels up to this N
// ... and the persistent backward only while one block's share of a step's recurrent product,
// U * G*H * round_up(N, 4) multiply-adds, stays small. Measured on an H200 (LSTM, T=256, H=512):
// at N=1 (32K) persistent backward beat stepwise (training 2.4 vs 3.1 ms); at N=8 (64K) it lost
// (7.0 vs 5.5 ms); at N=16, H=128, T=1000 (8K) it won by 3.5x.
constexpr int64_t kPersistentBackwardMaxWork = 32 * 1024;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}

int checked_int(int64_t v, const char* what) {
  if (v > INT_MAX) throw std::runtime_error(std::string("fusedrnn CUDA: ") + what + " too large for cuBLAS");
  return static_cast<int>(v);
}

// ------------------------------------------------------------------------------ cuBLAS
// One handle per (host thread, device): cuBLAS handles must not be shared between threads that
// use different streams concurrently. Handles live until the process ends. Switching a handle's
// stream keeps cuBLAS's own default workspace (cublasSetStream resets any set one to it), as
// PyTorch's CUDA handles run by default (torch.cuda.current_blas_handle's documentation; only
// its ROCm build needs a workspace per stream).
cublasHandle_t blas_handle(cudaStream_t stream, bool allow_tf32) {
  thread_local std::vector<cublasHandle_t> handles;
  int device = 0;
  FUSEDRNN_CUDA_CHECK(cudaGetDevice(&device));
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (!handles[device]) FUSEDRNN_CUBLAS_CHECK(cublasCreate(&handles[device]));
  cublasHandle_t h = handles[device];
  FUSEDRNN_CUBLAS_CHECK(cublasSetStream(h, stream));
  FUSEDRNN_CUBLAS_CHECK(
      cublasSetMathMode(h, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  return h;
}

cublasStatus_t gemm_col_major(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                              int n, int k, const float* alpha, const float* A, int lda,
                              const float* B, int ldb, const float* beta, float* C, int ldc) {
  return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t gemm_col_major(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                              int n, int k, const double* alpha, const double* A, int lda,
                              const double* B, int ldb, const double* beta, double* C, int ldc) {
  return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t gemv_col_major(cublasHandle_t h, int m, int n, const float* alpha, const float* A,
                              int lda, const float* x, const float* beta, float* y) {
  return cublasSgemv(h, CUBLAS_OP_N, m, n, alpha, A, lda, x, 1, beta, y, 1);
}

cublasStatus_t gemv_col_major(cublasHandle_t h, int m, int n, const double* alpha,
                              const double* A, int lda, const double* x, const double* beta,
                              double* y) {
  return cublasDgemv(h, CUBLAS_OP_N, m, n, alpha, A, lda, x, 1, beta, y, 1);
}

// Row-major C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C (the CPU gemm's signature).
template <typename T>
void gemm(cublasHandle_t h, cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N,
          int64_t K, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // nothing to multiply: C = beta * C (beta is 0 or 1 here)
    if (beta == T(0))
      FUSEDRNN_CUDA_CHECK(cudaMemset2DAsync(C, ldc * sizeof(T), 0, N * sizeof(T), M, stream));
    return;
  }
  FUSEDRNN_CUBLAS_CHECK(gemm_col_major(
      h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      checked_int(N, "N"), checked_int(M, "M"), checked_int(K, "K"), &alpha, B,
      checked_int(ldb, "ldb"), A, checked_int(lda, "lda"), &beta, C, checked_int(ldc, "ldc")));
}

// ------------------------------------------------------------------------------ bfloat16
// Row-major C[M, N] = op(A) op(B) + beta * C from bfloat16 A and B, fp32 C, fp32 accumulation
// (tensor cores), the operand order of `gemm`.
void gemm_bf16(cublasHandle_t h, cudaStream_t stream, bool trans_a, bool trans_b, int64_t M,
               int64_t N, int64_t K, const bf16* A, int64_t lda, const bf16* B, int64_t ldb,
               float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f)
      FUSEDRNN_CUDA_CHECK(cudaMemset2DAsync(C, ldc * sizeof(float), 0, N * sizeof(float), M, stream));
    return;
  }
  const float alpha = 1.0f;
  FUSEDRNN_CUBLAS_CHECK(cublasGemmEx(
      h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      checked_int(N, "N"), checked_int(M, "M"), checked_int(K, "K"), &alpha, B, CUDA_R_16BF,
      checked_int(ldb, "ldb"), A, CUDA_R_16BF, checked_int(lda, "lda"), &beta, C, CUDA_R_32F,
      checked_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template <typename T>
__global__ void to_bf16_kernel(const T* in, bf16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(static_cast<float>(in[i]));
}

template <typename T>
void to_bf16(cudaStream_t stream, const T* in, bf16* out, int64_t n) {
  if (n <= 0) return;
  to_bf16_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(in, out, n);
  FUSEDRNN_LAUNCH_CHECK("to_bf16_kernel");
}

// Carves bfloat16 buffers out of a workspace, each 16-byte aligned (cuBLAS and vector loads).
struct Bf16Area {
  bf16* next;
  bf16* take(int64_t n) {
    bf16* p = next;
    next += (n + 7) / 8 * 8;
    return p;
  }
  // Elements of T that `counts` buffers take, alignment of the first included.
  template <typename T>
  static int64_t elems(std::initializer_list<int64_t> counts) {
    int64_t total = 8;
    for (int64_t n : counts) total += (n + 7) / 8 * 8;
    return (total * int64_t(sizeof(bf16)) + int64_t(sizeof(T)) - 1) / int64_t(sizeof(T)) + 16 / int64_t(sizeof(T));
  }
};

template <typename T>
Bf16Area bf16_area(T* workspace, int64_t elems) {
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(workspace + elems);
  return Bf16Area{reinterpret_cast<bf16*>((a + 15) / 16 * 16)};
}

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = value;
}

// out[cols] = column sums of the row-major a[rows, cols]; `ones` holds at least `rows` ones.
template <typename T>
void column_sums(cublasHandle_t h, cudaStream_t stream, const T* a, int64_t rows, int64_t cols,
                 const T* ones, T* out) {
  if (cols == 0) return;
  if (rows == 0) {
    FUSEDRNN_CUDA_CHECK(cudaMemsetAsync(out, 0, cols * sizeof(T), stream));
    return;
  }
  const T one = 1, zero = 0;
  FUSEDRNN_CUBLAS_CHECK(gemv_col_major(h, checked_int(cols, "columns"), checked_int(rows, "rows"),
                                       &one, a, checked_int(cols, "columns"), ones, &zero, out));
}

// ------------------------------------------------------------------------------ stepwise kernels
template <typename T>
struct StepForward {
  int64_t N, H;
  const T* gh;      // [N, GH] h W_hh^T of this step (no bias)
  const T* b_ih;    // [GH]
  const T* b_hh;    // [GH]
  const int64_t* lengths;  // [N] or null
  T* gates;         // [T, N, GH] in: x W_ih^T (no bias); out (training): activated gates
  T* h;             // [N, H] running state (h_n), updated in place
  T* c;             // [N, H] running cell state (c_n) or null
  T* y;             // [T, N, H], or null (a projection's step: h is m, projected after)
  T* extra;         // [T, N, H] (training, LSTM/GRU) or null
  T* h_prev;        // [T, N, H] (training) or null (as y)
  bf16* h_bf16;     // [N, H] h rounded for the next step's product (bfloat16 products) or null
  const T* w_ph;    // [3H] LSTM peepholes or null
};

// A forward call's step arguments (gh: the step's products; h_bf16 null).
template <typename T>
StepForward<T> step_forward_args(const ForwardArgs<T>& a, const T* gh) {
  StepForward<T> p{};
  p.N = a.shape.N;
  p.H = a.shape.H;
  p.gh = gh;
  p.b_ih = a.b_ih;
  p.b_hh = a.b_hh;
  p.lengths = a.lengths;
  p.gates = a.gates;
  p.h = a.h_n;
  p.c = a.c_n;
  p.y = a.y;
  p.extra = a.extra;
  p.h_prev = a.h_prev;
  p.w_ph = a.w_ph;
  return p;
}

// Unit j's peepholes (i, f, o) as the cell reads them with H = 1 (null: none).
template <typename T>
__device__ __forceinline__ const T* unit_peepholes(const T* w_ph, int64_t H, int64_t j, T* own) {
  if (!w_ph) return nullptr;
  own[0] = w_ph[j];
  own[1] = w_ph[H + j];
  own[2] = w_ph[2 * H + j];
  return own;
}

// One thread per (n, j): biases, the cell's gate math for step t, masking and saving.
// The cell headers index gates as [k*H + j]; giving them per-unit register arrays with H = 1 and
// j = 0 keeps the math in one place and the values in registers.
template <typename T, typename Cell, bool kTraining>
__global__ void forward_step_kernel(StepForward<T> p, int64_t t) {
  constexpr int G = Cell::kGates;
  const int64_t N = p.N, H = p.H, GH = G * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * H;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / H, j = idx - n * H;
    const int64_t row = t * N + n;
    T h = p.h[idx];
    if (kTraining && p.h_prev) p.h_prev[row * H + j] = h;
    if (p.lengths && t >= p.lengths[n]) {  // past its length: state passes through, y = 0
      if (p.y) p.y[row * H + j] = T(0);
      continue;
    }
    T gx[G], gh[G], act[G], extra = T(0);
    T c = Cell::kHasCellState ? p.c[idx] : T(0);
#pragma unroll
    for (int k = 0; k < G; ++k) {
      gx[k] = p.gates[row * GH + k * H + j] + p.b_ih[k * H + j];
      gh[k] = p.gh[n * GH + k * H + j] + p.b_hh[k * H + j];
    }
    T ph[3];
    Cell::forward(gx, gh, int64_t(1), int64_t(1), int64_t(0), h, c, act, &extra,
                  unit_peepholes(p.w_ph, H, j, ph));
    p.h[idx] = h;
    if (p.h_bf16) p.h_bf16[idx] = __float2bfloat16_rn(static_cast<float>(h));
    if (Cell::kHasCellState) p.c[idx] = c;
    if (p.y) p.y[row * H + j] = h;
    if (kTraining) {
#pragma unroll
      for (int k = 0; k < G; ++k) p.gates[row * GH + k * H + j] = act[k];
      if (Cell::kUsesExtra && !Cell::kResetBefore) p.extra[row * H + j] = extra;
    }
  }
}

// The reset-before GRU's first phase (cells/gru_cell.h), one thread per (n, j): r * h from the
// step's r rows, into rh [N, H] (0 past a sample's length).
template <typename T>
__global__ void reset_input_kernel(int64_t N, int64_t H, const T* gates, const T* gh,
                                   const T* b_ih, const T* b_hh, const int64_t* lengths,
                                   const T* h, int64_t t, T* rh) {
  const int64_t GH = 3 * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * H;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / H, j = idx - n * H;
    rh[idx] = lengths && t >= lengths[n]
                  ? T(0)
                  : GruResetBeforeCell::reset_input(gates[(t * N + n) * GH + j] + b_ih[j],
                                                    gh[n * GH + j] + b_hh[j], h[idx]);
  }
}

// ... and its backward's second phase: d_rh [N, H] = da_n W_hn gives da_r (into dgx) and the
// part of dh_prev through r * h (added to dh_next); nothing for a sample past its length.
template <typename T>
__global__ void reset_grad_kernel(int64_t N, int64_t H, const T* gates, const T* h_prev,
                                  const int64_t* lengths, const T* d_rh, int64_t t, T* dgx,
                                  T* dh_next) {
  const int64_t GH = 3 * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * H;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / H, j = idx - n * H, row = t * N + n;
    if (lengths && t >= lengths[n]) continue;
    T dh = dh_next[idx];
    GruResetBeforeCell::backward_reset(gates + row * GH, h_prev[row * H + j], d_rh[idx], j,
                                       dgx + row * GH, dh);
    dh_next[idx] = dh;
  }
}

template <typename T>
struct StepBackward {
  int64_t N, H;
  const int64_t* lengths;
  const T* gates;   // [T, N, GH]
  const T* extra;   // [T, N, H] or null
  const T* h_prev;  // [T, N, H]
  const T* dy;      // [T, N, H], or null (zero: a projection's step gets its dh whole)
  const T* dh;      // [N, H] gradient reaching the state leaving step t
  T* dc;            // [N, H] (LSTM): in, reaching c_t; out, reaching c_{t-1}
  T* dh_next;       // [N, H] out: the part of dh_{t-1} that bypasses W_hh
  T* dgx;           // [T, N, GH] pre-activation gradients (input side)
  T* dgh;           // [T, N, GH] recurrent side (GRU only; else null and dgx is used)
  bf16* dgh_bf16;   // [T, N, GH] the recurrent side rounded (bfloat16 products) or null
  const T* w_ph;    // [3H] LSTM peepholes or null
};

// A backward call's step arguments (dh, dh_next set per step; dgh, dgh_bf16 null).
template <typename T>
StepBackward<T> step_backward_args(const BackwardArgs<T>& a, T* dgx) {
  StepBackward<T> p{};
  p.N = a.shape.N;
  p.H = a.shape.H;
  p.lengths = a.lengths;
  p.gates = a.gates;
  p.extra = a.extra;
  p.h_prev = a.h_prev;
  p.dy = a.dy;
  p.dc = a.dc0;
  p.dgx = dgx;
  p.w_ph = a.w_ph;
  return p;
}

template <typename T, typename Cell>
__global__ void backward_step_kernel(StepBackward<T> p, int64_t t) {
  constexpr int G = Cell::kGates;
  const int64_t N = p.N, H = p.H, GH = G * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * H;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / H, j = idx - n * H;
    const int64_t row = t * N + n;
    const T dh = p.dh[idx];
    if (p.lengths && t >= p.lengths[n]) {  // untouched state: gradient passes, gates get none
      p.dh_next[idx] = dh;
#pragma unroll
      for (int k = 0; k < G; ++k) {
        p.dgx[row * GH + k * H + j] = T(0);
        if (Cell::kSplitRecurrentGrad) p.dgh[row * GH + k * H + j] = T(0);
        if (p.dgh_bf16) p.dgh_bf16[row * GH + k * H + j] = __float2bfloat16_rn(0.0f);
      }
      continue;
    }
    T act[G], dgx[G], dgh[G];
#pragma unroll
    for (int k = 0; k < G; ++k) act[k] = p.gates[row * GH + k * H + j];
    T extra = Cell::kUsesExtra ? p.extra[row * H + j] : T(0);
    T dc = Cell::kHasCellState ? p.dc[idx] : T(0);
    T dh_direct = T(0), ph[3];
    Cell::backward(act, &extra, p.h_prev ? p.h_prev[row * H + j] : T(0), int64_t(1),
                   int64_t(0), p.dy ? dh + p.dy[row * H + j] : dh, dc, dgx, dgh, dh_direct,
                   unit_peepholes(p.w_ph, H, j, ph));
#pragma unroll
    for (int k = 0; k < G; ++k) {
      p.dgx[row * GH + k * H + j] = dgx[k];
      if (Cell::kSplitRecurrentGrad) p.dgh[row * GH + k * H + j] = dgh[k];
      if (p.dgh_bf16)
        p.dgh_bf16[row * GH + k * H + j] =
            __float2bfloat16_rn(static_cast<float>(Cell::kSplitRecurrentGrad ? dgh[k] : dgx[k]));
    }
    if (Cell::kHasCellState) p.dc[idx] = dc;
    p.dh_next[idx] = dh_direct;
  }
}

// The LSTM's peephole gradients, one thread per unit j: dp_i = sum dgx_i c, dp_f = sum dgx_f c,
// dp_o = sum dgx_o c' over the active steps and samples, in row order (deterministic), c the
// saved state entering a step and c' = f c + i g the one leaving it.
template <typename T>
__global__ void peephole_grads_kernel(int64_t T_, int64_t N, int64_t H, const int64_t* lengths,
                                      const T* gates, const T* extra, const T* dgx, T* dw_ph) {
  const int64_t GH = 4 * H;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < H;
       j += int64_t(gridDim.x) * blockDim.x) {
    T di = T(0), df = T(0), d_o = T(0);
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t n = 0; n < N; ++n) {
        if (lengths && t >= lengths[n]) continue;
        const int64_t row = t * N + n;
        const T* act = gates + row * GH;
        const T c = extra[row * H + j];
        const T c_new = act[H + j] * c + act[j] * act[2 * H + j];
        di += dgx[row * GH + j] * c;
        df += dgx[row * GH + H + j] * c;
        d_o += dgx[row * GH + 3 * H + j] * c_new;
      }
    dw_ph[j] = di;
    dw_ph[H + j] = df;
    dw_ph[2 * H + j] = d_o;
  }
}

// The LSTM with projections (shapes.h's P), one thread per (n, p): the state entering step t
// (kept as h_prev when training), then h = h_new (W_hr m) and y, or the state kept and y = 0
// past a sample's length.
template <typename T>
__global__ void projection_step_kernel(int64_t N, int64_t P, const int64_t* lengths, int64_t t,
                                       const T* h_new, T* h, T* y, T* h_prev) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * P;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / P;
    if (h_prev) h_prev[idx] = h[idx];
    if (lengths && t >= lengths[n]) {
      y[idx] = T(0);
    } else {
      h[idx] = h_new[idx];
      y[idx] = h_new[idx];
    }
  }
}

// ... its backward's first part, one thread per (n, p): the gradient reaching h_t (dh + dy),
// kept for dW_hr and for dm = dh W_hr; dh_next = 0 (h reaches h_prev through W_hh only), or the
// gradient passed on past a sample's length (and nothing kept).
template <typename T>
__global__ void projection_grad_kernel(int64_t N, int64_t P, const int64_t* lengths, int64_t t,
                                       const T* dh, const T* dy, T* dh_total, T* dh_next) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < N * P;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx / P;
    const bool active = !lengths || t < lengths[n];
    dh_total[idx] = active ? dh[idx] + dy[idx] : T(0);
    dh_next[idx] = active ? T(0) : dh[idx];
  }
}

// m = o * tanh(f c + i g) of every step's rows from the saved gates and c (0 past a sample's
// length), one thread per (row, j): dW_hr's right operand.
template <typename T>
__global__ void projection_input_kernel(int64_t T_, int64_t N, int64_t H, const int64_t* lengths,
                                        const T* gates, const T* c_prev, T* m) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < T_ * N * H;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / H, j = idx - row * H, n = row % N, t = row / N;
    const T* g = gates + row * 4 * H;
    m[idx] = lengths && t >= lengths[n]
                 ? T(0)
                 : g[3 * H + j] * tanh_(g[H + j] * c_prev[idx] + g[j] * g[2 * H + j]);
  }
}

// ------------------------------------------------------------------------------ persistent kernels
// Both directions share one shape of work: block b owns hidden units [b*U, b*U + U) ∩ [0, H),
// keeps its slice of W_hh in shared memory for the whole sequence, and per step (1) does the
// gate math of its units (state in shared memory, never leaving the block), (2) publishes what
// the other blocks need, (3) waits at one grid-wide barrier, (4) reads everyone's contribution
// and multiplies it by its slice. Forward publishes h (the slice is its units' G gate rows of
// W_hh); backward publishes dgh (the slice is its units' columns of W_hh).
constexpr int kPersistentWarps = kPersistentThreads / 32;

// How many warps share one pair of rows in block_gemv (split along the long dimension).
__host__ __device__ inline int gemv_ksplit(int64_t rows) {
  const int64_t pairs = (rows + 1) / 2;
  return static_cast<int>(pairs >= kPersistentWarps ? 1 : kPersistentWarps / pairs);
}

// Four elements as one vector load (float4; double4 compiles but is never used: see vec4).
template <typename T>
struct Vec4;
template <>
struct Vec4<float> {
  using type = float4;
};
struct alignas(32) Double4 {
  double x, y, z, w;
};
template <>
struct Vec4<double> {
  using type = Double4;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- the LayerNorm-LSTM (cells/layernorm_lstm_cell.h's math; its rows are one sample's, so a
// block per sample: the norms' sums are block reductions, in a fixed order)
constexpr int kNormThreads = 256;

// The sum of v over the block's threads (every thread gets it); `room` [kNormThreads / 32].
template <typename T>
__device__ T block_sum(T v, T* room) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // (room reused by the previous call)
  if (lane == 0) room[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < kNormThreads / 32; ++w) total += room[w];
  return total;
}

// (v - mean) * rstd's mean and rstd over n values of row v: two passes, as the CPU's.
template <typename T>
__device__ void row_stats(const T* v, int64_t n, T eps, T* room, T& mean, T& rstd) {
  T part = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) part += v[k];
  mean = block_sum(part, room) / T(n);
  part = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) part += (v[k] - mean) * (v[k] - mean);
  rstd = T(1) / sqrt(block_sum(part, room) / T(n) + eps);
}

// The gradient reaching v from d_hat (in place), hat = LN(v) of n values.
template <typename T>
__device__ void row_normalize_backward(T* d, const T* hat, int64_t n, T rstd, T* room) {
  T p1 = T(0), p2 = T(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    p1 += d[k];
    p2 += d[k] * hat[k];
  }
  const T m1 = block_sum(p1, room) / T(n), m2 = block_sum(p2, room) / T(n);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) d[k] = rstd * (d[k] - m1 - hat[k] * m2);
  __syncthreads();
}

// Step t, block n: ax = gates row (W_ih x), ah = gh row (W_hh h); gates, c, h (h_n), y and
// (training) h_prev and ext [10H + 3] (cells/layernorm_lstm_cell.h's layout).
template <typename T, bool kTraining>
__global__ void __launch_bounds__(kNormThreads)
layernorm_forward_kernel(int64_t N, int64_t H, const T* gh, const T* b_ih, const T* b_hh,
                         const T* ln, T eps, const int64_t* lengths, int64_t t, T* gates, T* c,
                         T* h, T* y, T* h_prev, T* extra) {
  __shared__ T room[kNormThreads / 32];
  const int64_t n = blockIdx.x, G = 4 * H, row = t * N + n;
  T* hn = h + n * H;
  if (kTraining)
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) h_prev[row * H + j] = hn[j];
  if (lengths && t >= lengths[n]) {
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) y[row * H + j] = T(0);
    return;
  }
  T* ax = gates + row * G;
  const T* ah = gh + n * G;
  T* cn = c + n * H;
  T* ext = kTraining ? extra + row * LayerNormLstmCell::extra_width(H) : nullptr;
  T mx, rx, mh, rh;
  row_stats(ax, G, eps, room, mx, rx);
  row_stats(ah, G, eps, room, mh, rh);
  __syncthreads();  // every thread has read ax before any writes its gates
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    T a[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t r = k * H + j;
      const T xh = (ax[r] - mx) * rx, hh = (ah[r] - mh) * rh;
      if (kTraining) {
        ext[H + r] = xh;
        ext[5 * H + r] = hh;
      }
      a[k] = ln[r] * xh + b_ih[r] + ln[G + r] * hh + b_hh[r];
    }
    const T i = sigmoid(a[0]), f = sigmoid(a[1]), g = tanh_(a[2]), o = sigmoid(a[3]);
    if (kTraining) ext[j] = cn[j];
    cn[j] = f * cn[j] + i * g;
    ax[j] = i;
    ax[H + j] = f;
    ax[2 * H + j] = g;
    ax[3 * H + j] = o;
  }
  __syncthreads();
  T mc, rc;
  row_stats(cn, H, eps, room, mc, rc);
  const T* g_c = ln + 2 * G;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const T ch = (cn[j] - mc) * rc;
    if (kTraining) ext[9 * H + j] = ch;
    const T hv = ax[3 * H + j] * tanh_(g_c[j] * ch + g_c[H + j]);
    hn[j] = hv;
    y[row * H + j] = hv;
  }
  if (kTraining && threadIdx.x == 0) {
    ext[10 * H] = rx;
    ext[10 * H + 1] = rh;
    ext[10 * H + 2] = rc;
  }
}

// Step t back, block n: dh [N, H] (reaching h_t from later steps), dy; dc in/out; writes dgx,
// dgh rows (the products' gradients), da [T, N, 4H] and d_cn [T, N, H] rows (the norms'
// parameters, summed after the loop), dh_next (0, or dh passed on past the sample's length).
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
layernorm_backward_kernel(int64_t N, int64_t H, const T* gates, const T* extra, const T* ln,
                          const int64_t* lengths, int64_t t, const T* dh, const T* dy, T* dc,
                          T* dgx, T* dgh, T* da, T* d_cn, T* dh_next) {
  __shared__ T room[kNormThreads / 32];
  const int64_t n = blockIdx.x, G = 4 * H, row = t * N + n;
  T* dgx_row = dgx + row * G;
  T* dgh_row = dgh + row * G;
  T* da_row = da + row * G;
  T* dcn = d_cn + row * H;
  if (lengths && t >= lengths[n]) {  // the state passes through; the gates get nothing
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
      dh_next[n * H + j] = dh[n * H + j];
      dcn[j] = T(0);
    }
    for (int64_t r = threadIdx.x; r < G; r += blockDim.x)
      dgx_row[r] = dgh_row[r] = da_row[r] = T(0);
    return;
  }
  const T* act = gates + row * G;
  const T* ext = extra + row * LayerNormLstmCell::extra_width(H);
  const T* c_hat = ext + 9 * H;
  const T* rstd = ext + 10 * H;
  const T* g_c = ln + 2 * G;
  T* scratch = dgx_row;  // [H] of it, before dgx is formed
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const T dhj = dh[n * H + j] + dy[row * H + j], o = act[3 * H + j];
    const T tanh_cn = tanh_(g_c[j] * c_hat[j] + g_c[H + j]);
    dcn[j] = dhj * o * d_tanh(tanh_cn);
    scratch[j] = dcn[j] * g_c[j];
    da_row[3 * H + j] = dhj * tanh_cn * d_sigmoid(o);
    dh_next[n * H + j] = T(0);  // h reaches h_prev only through W_hh
  }
  __syncthreads();
  row_normalize_backward(scratch, c_hat, H, rstd[2], room);  // the h path's part of dc'
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const T i = act[j], f = act[H + j], g = act[2 * H + j];
    const T dct = dc[n * H + j] + scratch[j];
    da_row[j] = dct * g * d_sigmoid(i);
    da_row[H + j] = dct * ext[j] * d_sigmoid(f);
    da_row[2 * H + j] = dct * i * d_tanh(g);
    dc[n * H + j] = dct * f;
  }
  __syncthreads();
  for (int64_t r = threadIdx.x; r < G; r += blockDim.x) {
    dgx_row[r] = da_row[r] * ln[r];
    dgh_row[r] = da_row[r] * ln[G + r];
  }
  __syncthreads();
  row_normalize_backward(dgx_row, ext + H, G, rstd[0], room);
  row_normalize_backward(dgh_row, ext + 5 * H, G, rstd[1], room);
}

// The LayerNorm-LSTM's biases and norms' parameters, one thread per column, the rows in order:
// db_ih = db_hh = sum da; dln = [sum da LN(W_ih x), sum da LN(W_hh h), sum d_cn LN(c'),
// sum d_cn]. Rows past a sample's length are skipped (the forward wrote no extra there: 0 times
// what the memory held could be NaN), as the CPU's loop skips them.
template <typename T>
__global__ void layernorm_param_grads_kernel(int64_t TN, int64_t N, int64_t H,
                                             const int64_t* lengths, const T* da, const T* d_cn,
                                             const T* extra, T* db_ih, T* db_hh, T* dln) {
  const int64_t G = 4 * H, E = LayerNormLstmCell::extra_width(H);
  for (int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; col < G + H;
       col += int64_t(gridDim.x) * blockDim.x) {
    T s0 = T(0), s1 = T(0), s2 = T(0);
    for (int64_t r = 0; r < TN; ++r) {
      if (lengths && r / N >= lengths[r % N]) continue;
      const T* ext = extra + r * E;
      if (col < G) {
        const T d = da[r * G + col];
        s0 += d;
        s1 += d * ext[H + col];
        s2 += d * ext[5 * H + col];
      } else {
        const T d = d_cn[r * H + col - G];
        s0 += d * ext[9 * H + col - G];
        s1 += d;
      }
    }
    if (col < G) {
      db_ih[col] = db_hh[col] = s0;
      dln[col] = s1;
      dln[G + col] = s2;
    } else {
      dln[2 * G + col - G] = s0;
      dln[2 * G + H + col - G] = s1;
    }
  }
}

// out[n * out_stride + r] = A[r, :] . X[n, :] for r < rows, n < N; A [rows, len], X [N4, len]
// (rows past N zero), all in shared memory. A warp takes two rows, four samples at a time and a
// segment of len (ksplit segments, partial sums in `part` [ksplit, N, rows], added in a fixed
// order: deterministic). Ends with the block synchronized.
template <typename T>
__device__ void block_gemv(const T* A, int rows, int len, const T* X, int N, int ksplit, T* part,
                           T* out, int out_stride) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int pairs = (rows + 1) / 2;
  const int seg_len = ((len + ksplit - 1) / ksplit + 31) / 32 * 32;
  // float32 with rows of a multiple of 4 on 16-byte boundaries: 16-byte shared-memory loads
  // (a quarter of the load instructions; segments start at multiples of 32 elements).
  const bool vec4 = sizeof(T) == 4 && (len & 3) == 0 &&
                    ((reinterpret_cast<std::uintptr_t>(A) | reinterpret_cast<std::uintptr_t>(X)) &
                     15) == 0;
  for (int w = warp; w < pairs * ksplit; w += warps) {
    const int pair = w / ksplit, seg = w - (w / ksplit) * ksplit;
    const int r0 = 2 * pair;
    const bool two = r0 + 1 < rows;
    const T* a0 = A + int64_t(r0) * len;
    const T* a1 = two ? a0 + len : a0;
    const int k_begin = seg * seg_len;
    const int k_end = min(len, k_begin + seg_len);
    for (int n0 = 0; n0 < N; n0 += 4) {
      T acc0[4] = {T(0), T(0), T(0), T(0)}, acc1[4] = {T(0), T(0), T(0), T(0)};
      const T* xb = X + int64_t(n0) * len;
      if (vec4) {
        using V = typename Vec4<T>::type;
        const V* a0v = reinterpret_cast<const V*>(a0);
        const V* a1v = reinterpret_cast<const V*>(a1);
        const V* xv4 = reinterpret_cast<const V*>(xb);
        const int len4 = len >> 2;
        for (int k = (k_begin >> 2) + lane; k < (k_end >> 2); k += 32) {
          const V a = a0v[k], b = a1v[k];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const V xv = xv4[i * len4 + k];
            acc0[i] = fma(a.x, xv.x, fma(a.y, xv.y, fma(a.z, xv.z, fma(a.w, xv.w, acc0[i]))));
            acc1[i] = fma(b.x, xv.x, fma(b.y, xv.y, fma(b.z, xv.z, fma(b.w, xv.w, acc1[i]))));
          }
        }
      } else {
        for (int k = k_begin + lane; k < k_end; k += 32) {
          const T a = a0[k], b = a1[k];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const T xv = xb[i * len + k];
            acc0[i] = fma(a, xv, acc0[i]);
            acc1[i] = fma(b, xv, acc1[i]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc0[i] = warp_sum(acc0[i]);
        acc1[i] = warp_sum(acc1[i]);
      }
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int n = n0 + i;
          if (n >= N) continue;
          if (ksplit == 1) {
            out[n * out_stride + r0] = acc0[i];
            if (two) out[n * out_stride + r0 + 1] = acc1[i];
          } else {
            part[(seg * N + n) * rows + r0] = acc0[i];
            if (two) part[(seg * N + n) * rows + r0 + 1] = acc1[i];
          }
        }
      }
    }
  }
  __syncthreads();
  if (ksplit > 1) {
    for (int i = threadIdx.x; i < N * rows; i += blockDim.x) {
      const int n = i / rows, r = i - (i / rows) * rows;
      T sum = T(0);
      for (int seg = 0; seg < ksplit; ++seg) sum += part[(seg * N + n) * rows + r];
      out[n * out_stride + r] = sum;
    }
    __syncthreads();
  }
}

// ---- the bfloat16 form: tensor-core tiles of 16 x 16 x 16 (wmma; sm_80 and later)
__host__ __device__ inline int round16(int64_t v) { return static_cast<int>((v + 15) / 16 * 16); }

// Warps sharing one output tile's k steps (split along k when there are fewer tiles than warps).
__host__ __device__ inline int mma_ksplit(int tiles, int ksteps) {
  const int k = tiles >= kPersistentWarps ? 1 : kPersistentWarps / tiles;
  return k < ksteps ? k : (ksteps > 0 ? ksteps : 1);
}

// How a persistent kernel keeps the operands of its block product A [rows, len] X [N, len]^T in
// shared memory: elements of P (T, or bf16 for tensor cores), `ld` per row; the tensor-core form
// pads rows, N and len to multiples of 16 with zeros. `part` elements of T of scratch follow.
template <typename T, typename P>
struct ProductLayout {
  static constexpr bool kMma = !std::is_same<T, P>::value;
  int rows_p, n_p, ld;
  int64_t part;
  __host__ __device__ ProductLayout(int64_t rows, int64_t N, int64_t len) {
    if (kMma) {
      rows_p = round16(rows);
      n_p = round16(N);
      ld = round16(len);
      const int tiles = rows_p / 16 * (n_p / 16);
      part = int64_t(tiles) * mma_ksplit(tiles, ld / 16) * 256;
    } else {
      rows_p = static_cast<int>(rows);
      n_p = static_cast<int>((N + 3) / 4 * 4);
      ld = static_cast<int>(len);
      part = int64_t(gemv_ksplit(rows)) * N * rows;
    }
  }
  // Bytes of A and X together: a multiple of 16 (of 512 in the tensor-core form).
  __host__ __device__ int64_t operand_bytes() const {
    return ((int64_t(rows_p) + n_p) * ld * int64_t(sizeof(P)) + 15) / 16 * 16;
  }
};

__device__ __forceinline__ float to_operand(float v, float) { return v; }
__device__ __forceinline__ double to_operand(double v, double) { return v; }
__device__ __forceinline__ bf16 to_operand(float v, bf16) { return __float2bfloat16_rn(v); }

// block_gemv's contract on tensor cores: out[n * out_stride + r] = A[r, :] . X[n, :] for
// r < rows, n < N, with A [round16(rows), ld] and X [round16(N), ld] bfloat16 in shared memory
// (zeros past rows, N and the length; ld a multiple of 16, both 32-byte aligned). Each warp
// takes one 16 x 16 output tile and every ksplit-th k step of it; the partial tiles go to
// `scratch` (ProductLayout::part floats, 32-byte aligned) and are added in a fixed order
// (deterministic). Ends with the block synchronized.
__device__ void block_mma(const bf16* A, int rows, int ld, const bf16* X, int N, float* scratch,
                          float* out, int out_stride) {
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int n_tiles = round16(N) / 16, tiles = round16(rows) / 16 * n_tiles;
  const int ksteps = ld / 16, ksplit = mma_ksplit(tiles, ksteps);
  for (int w = warp; w < tiles * ksplit; w += warps) {
    const int tile = w / ksplit, seg = w - tile * ksplit;
    const int rt = tile / n_tiles, nt = tile - rt * n_tiles;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;  // X^T: k runs along X's rows
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int ks = seg; ks < ksteps; ks += ksplit) {
      wmma::load_matrix_sync(a, A + int64_t(rt) * 16 * ld + ks * 16, ld);
      wmma::load_matrix_sync(b, X + int64_t(nt) * 16 * ld + ks * 16, ld);
      wmma::mma_sync(acc, a, b, acc);
    }
    wmma::store_matrix_sync(scratch + int64_t(w) * 256, acc, 16, wmma::mem_row_major);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < N * rows; i += blockDim.x) {
    const int n = i / rows, r = i - (i / rows) * rows;
    const float* part = scratch + int64_t((r / 16) * n_tiles + n / 16) * ksplit * 256 +
                        (r % 16) * 16 + n % 16;
    float sum = 0.0f;
    for (int seg = 0; seg < ksplit; ++seg) sum += part[seg * 256];
    out[n * out_stride + r] = sum;
  }
  __syncthreads();
}

// The block product of a persistent kernel in its form (see ProductLayout).
template <typename T, typename P>
__device__ __forceinline__ void block_product(const P* A, int rows, int len,
                                              const ProductLayout<T, P>& L, const P* X, int N,
                                              int ksplit, T* part, T* out, int out_stride) {
  if constexpr (ProductLayout<T, P>::kMma)
    block_mma(A, rows, L.ld, X, N, part, out, out_stride);
  else
    block_gemv(A, rows, len, X, N, ksplit, part, out, out_stride);
}

// X[n * ld + k] = src[n * len + k] (n < N, k < len), read from L2 (written by other blocks)
// and rounded to P. Does not synchronize the block.
template <typename T, typename P>
__device__ __forceinline__ void load_operand_rows(const T* src, int N, int len, int ld, P* X) {
  if (ld == len) {
    for (int64_t i = threadIdx.x; i < int64_t(N) * len; i += blockDim.x)
      X[i] = to_operand(__ldcg(src + i), P());
  } else {
    for (int64_t i = threadIdx.x; i < int64_t(N) * len; i += blockDim.x) {
      const int64_t n = i / len;
      X[n * ld + (i - n * len)] = to_operand(__ldcg(src + i), P());
    }
  }
}

// ---- flagged exchange (float32): one 8-byte word = (value bits, step flag), relaxed at gpu
// scope (coherent in L2; L1 is bypassed). Naturally aligned 8-byte accesses are single-copy
// atomic, so a reader that sees the flag sees the value written with it.
using Word = unsigned long long;

__device__ __forceinline__ Word ld_relaxed(const Word* p) {
  Word v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_relaxed(Word* p, Word v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

template <typename T>
__device__ __forceinline__ Word pack_word(T value, unsigned flag) {
  return (Word(flag) << 32) | __float_as_uint(static_cast<float>(value));
}

// A poll that outlives this many reads (seconds) means a lost writer: trap, never hang.
constexpr int kMaxPolls = 1 << 23;

// dst[i] = value of src[i] once its flag reads `flag`, i < count; each thread keeps kBatch reads
// in flight. Does not synchronize the block.
template <typename T>
__device__ void gather_flagged(const Word* src, int count, unsigned flag, T* dst) {
  constexpr int kBatch = 16;
  const int stride = blockDim.x;
  for (int base = threadIdx.x; base < count; base += kBatch * stride) {
    Word v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * stride;
      if (i < count) v[b] = ld_relaxed(src + i);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = base + b * stride;
      if (i < count) {
        int polls = 0;
        while (static_cast<unsigned>(v[b] >> 32) != flag) {
          if (++polls > kMaxPolls) __trap();
          v[b] = ld_relaxed(src + i);
        }
        dst[i] = static_cast<T>(__uint_as_float(static_cast<unsigned>(v[b])));
      }
    }
  }
}

// The element-wise async copy (cp.async) of one value; completes at __pipeline_wait_prior.
template <typename T>
__device__ __forceinline__ void copy_async(T* dst_shared, const T* src_global) {
  __pipeline_memcpy_async(dst_shared, src_global, sizeof(T));
}

template <typename T>
struct PersistentForward {
  int T_, N, H, U, ksplit;  // U: hidden units per block
  bool reverse;
  const T* w_hh;    // [GH, H]
  const T* b_ih;    // [GH]
  const T* b_hh;    // [GH]
  const T* h0;      // [N, H]
  const T* c0;      // [N, H] or null
  const int64_t* lengths;
  T* gates;         // [T, N, GH] in: x W_ih^T; out (training): activated gates
  T* y;             // [T, N, H]
  T* h_n;           // [N, H]
  T* c_n;           // [N, H] or null
  T* extra;         // training only
  T* h_prev;        // training only
  T* h_exchange;    // [2, N, H] the state published each step (double-buffered)
  Word* h_flagged;  // [2, N, H] the same as flagged words (float32), or null: grid barrier
  const T* w_ph;    // [3H] LSTM peepholes or null
};

// Shared memory of one forward block in bytes: the product's operands W_s (the block's G*U
// rows of W_hh) and h_s (the whole previous state), then in T: part_s (the product's scratch),
// gh_s (the block's recurrent products), gx_s (this step's input part, prefetched), bih_s and
// bhh_s, own_h and own_c (the block's units' state).
template <typename T, typename P>
int64_t persistent_forward_smem_bytes(int G, int64_t N, int64_t H, int64_t U) {
  const ProductLayout<T, P> L(G * U, N, H);
  return L.operand_bytes() + (L.part + 2 * N * G * U + 2 * G * U + 2 * N * U) * int64_t(sizeof(T));
}

template <typename T, typename P, typename Cell, bool kTraining>
__global__ void __launch_bounds__(kPersistentThreads)
persistent_forward_kernel(PersistentForward<T> p) {
  constexpr int G = Cell::kGates;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int N = p.N, H = p.H, U = p.U, GU = G * U, GH = G * H;
  const ProductLayout<T, P> L(GU, N, H);
  const int ld = L.ld;
  P* W_s = reinterpret_cast<P*>(smem_raw);
  P* h_s = W_s + int64_t(L.rows_p) * ld;
  T* part_s = reinterpret_cast<T*>(smem_raw + L.operand_bytes());
  T* gh_s = part_s + L.part;
  T* gx_s = gh_s + N * GU;
  T* bih_s = gx_s + N * GU;
  T* bhh_s = bih_s + GU;
  T* own_h = bhh_s + GU;
  T* own_c = own_h + N * U;
  const int j0 = blockIdx.x * U;
  const int tid = threadIdx.x;

  // Local row r = k*U + u holds W_hh row k*H + j0 + u (zeros past H and in the padding).
  for (int64_t i = tid; i < int64_t(L.rows_p) * ld; i += blockDim.x) {
    const int r = static_cast<int>(i / ld), col = static_cast<int>(i - int64_t(r) * ld);
    const int k = r / U, j = j0 + r % U;
    const bool inside = r < GU && j < H && col < H;
    W_s[i] = to_operand(inside ? p.w_hh[(int64_t(k) * H + j) * H + col] : T(0), P());
  }
  for (int64_t i = tid; i < int64_t(L.n_p) * ld; i += blockDim.x) h_s[i] = to_operand(T(0), P());
  __syncthreads();  // the padding is zero before the rows are written
  for (int i = tid; i < GU; i += blockDim.x) {
    const int k = i / U, j = j0 + i % U;
    bih_s[i] = j < H ? p.b_ih[k * H + j] : T(0);
    bhh_s[i] = j < H ? p.b_hh[k * H + j] : T(0);
  }
  for (int i = tid; i < N * U; i += blockDim.x) {
    const int n = i / U, j = j0 + i % U;
    own_h[i] = j < H ? p.h0[n * H + j] : T(0);
    own_c[i] = (Cell::kHasCellState && j < H) ? p.c0[n * H + j] : T(0);
  }
  cg::grid_group grid = cg::this_grid();
  // Each thread prefetches the input part x W_ih^T of the units (n, u) whose gate math it does,
  // G values each, for the next step: the copies fly while the state is exchanged, and the
  // thread that waits for them is the one that reads them (no block barrier needed).
  auto prefetch_input = [&](int step) {
    const int t = p.reverse ? p.T_ - 1 - step : step;
    for (int i = tid; i < N * U; i += blockDim.x) {
      const int n = i / U, u = i - (i / U) * U, j = j0 + u;
      if (j >= H) continue;
      const T* src = p.gates + (int64_t(t) * N + n) * GH + j;
#pragma unroll
      for (int k = 0; k < G; ++k) copy_async(gx_s + n * GU + k * U + u, src + int64_t(k) * H);
    }
    __pipeline_commit();
  };
  prefetch_input(0);

  for (int s = 0; s < p.T_; ++s) {
    const int t = p.reverse ? p.T_ - 1 - s : s;
    // The state every block published last step (L2 only: L1 is not coherent across blocks).
    if (s == 0) {
      load_operand_rows(p.h0, N, H, ld, h_s);
    } else if (p.h_flagged) {  // (T == P only: ld == H)
      gather_flagged(p.h_flagged + ((s - 1) & 1) * N * H, N * H, static_cast<unsigned>(s),
                     reinterpret_cast<T*>(h_s));
    } else {
      load_operand_rows(p.h_exchange + ((s - 1) & 1) * N * H, N, H, ld, h_s);
    }
    __syncthreads();

    block_product(W_s, GU, H, L, h_s, N, p.ksplit, part_s, gh_s, GU);

    // The gate math of the block's units, then publish h.
    T* h_dst = p.h_exchange + (s & 1) * N * H;
    Word* h_dst_flagged = p.h_flagged ? p.h_flagged + (s & 1) * N * H : nullptr;
    __pipeline_wait_prior(0);  // this thread's prefetched input part of step t
    for (int i = tid; i < N * U; i += blockDim.x) {
      const int n = i / U, u = i - (i / U) * U, j = j0 + u;
      if (j >= H) continue;
      const int64_t row = int64_t(t) * N + n;
      T h = own_h[i], c = own_c[i];
      if (kTraining) p.h_prev[row * H + j] = h;
      if (p.lengths && t >= __ldg(p.lengths + n)) {
        p.y[row * H + j] = T(0);
      } else {
        T gx[G], gh[G], act[G], extra = T(0);
#pragma unroll
        for (int k = 0; k < G; ++k) {
          gx[k] = gx_s[n * GU + k * U + u] + bih_s[k * U + u];
          gh[k] = gh_s[n * GU + k * U + u] + bhh_s[k * U + u];
        }
        T ph[3];
        Cell::forward(gx, gh, int64_t(1), int64_t(1), int64_t(0), h, c, act, &extra,
                      unit_peepholes(p.w_ph, H, j, ph));
        p.y[row * H + j] = h;
        if (kTraining) {
#pragma unroll
          for (int k = 0; k < G; ++k) p.gates[row * GH + k * H + j] = act[k];
          if (Cell::kUsesExtra) p.extra[row * H + j] = extra;
        }
        own_h[i] = h;
        own_c[i] = c;
      }
      if (h_dst_flagged)
        st_relaxed(h_dst_flagged + n * H + j, pack_word(h, static_cast<unsigned>(s + 1)));
      else
        __stcg(h_dst + n * H + j, h);
    }
    if (s + 1 < p.T_) prefetch_input(s + 1);
    // Barrier mode: every block's h is published and every block is done reading h_src.
    // Flagged mode: no barrier. A block writes slot s&1 again at step s+2 only after reading
    // every block's step s+1, which each block publishes only after it has read step s.
    if (!p.h_flagged) grid.sync();
  }

  for (int i = tid; i < N * U; i += blockDim.x) {
    const int n = i / U, j = j0 + i % U;
    if (j >= H) continue;
    p.h_n[n * H + j] = own_h[i];
    if (Cell::kHasCellState) p.c_n[n * H + j] = own_c[i];
  }
}

template <typename T>
struct PersistentBackward {
  int T_, N, H, U, ksplit;
  bool reverse;
  const T* w_hh;    // [GH, H]
  const int64_t* lengths;
  const T* gates;   // [T, N, GH]
  const T* extra;   // [T, N, H] or null
  const T* h_prev;  // [T, N, H]
  const T* dy;      // [T, N, H]
  const T* dh_n;    // [N, H]
  const T* dc_n;    // [N, H] or null
  T* dgx;           // [T, N, GH]
  T* dgh;           // [T, N, GH] (== dgx unless the cell splits them)
  T* dh0;           // [N, H]
  T* dc0;           // [N, H] or null
  Word* flagged;    // [2, N, GH] dgh as flagged words (float32), or null: grid barrier
  const T* w_ph;    // [3H] LSTM peepholes or null
};

// Bytes: the operands Wc_s (the block's U columns of W_hh, as rows of length GH) and X_s (dgh
// of this step for the whole batch), then in T: part_s, r_s (dgh W_hh for the block's units),
// own_dh and own_dc, pre_s (the next step's gates, extra, h_prev, dy, prefetched).
template <typename T, typename P>
int64_t persistent_backward_smem_bytes(int G, int64_t N, int64_t H, int64_t U) {
  const ProductLayout<T, P> L(U, N, G * H);
  return L.operand_bytes() + (L.part + N * U + 2 * N * U + (G + 3) * N * U) * int64_t(sizeof(T));
}

template <typename T, typename P, typename Cell>
__global__ void __launch_bounds__(kPersistentThreads)
persistent_backward_kernel(PersistentBackward<T> p) {
  constexpr int G = Cell::kGates;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int N = p.N, H = p.H, U = p.U, GH = G * H;
  const ProductLayout<T, P> L(U, N, GH);
  const int ld = L.ld;
  P* Wc_s = reinterpret_cast<P*>(smem_raw);
  P* X_s = Wc_s + int64_t(L.rows_p) * ld;
  T* part_s = reinterpret_cast<T*>(smem_raw + L.operand_bytes());
  T* r_s = part_s + L.part;
  T* own_dh = r_s + N * U;
  T* own_dc = own_dh + N * U;
  T* pre_s = own_dc + N * U;  // [N*U, G+3] per unit: act[G], extra, h_prev, dy
  const int j0 = blockIdx.x * U;
  const int tid = threadIdx.x;

  for (int64_t i = tid; i < int64_t(L.rows_p) * ld; i += blockDim.x) {
    const int u = static_cast<int>(i / ld), r = static_cast<int>(i - int64_t(u) * ld);
    const int j = j0 + u;
    const bool inside = u < U && j < H && r < GH;
    Wc_s[i] = to_operand(inside ? p.w_hh[int64_t(r) * H + j] : T(0), P());
  }
  for (int64_t i = tid; i < int64_t(L.n_p) * ld; i += blockDim.x) X_s[i] = to_operand(T(0), P());
  for (int i = tid; i < N * U; i += blockDim.x) {
    const int n = i / U, j = j0 + i % U;
    own_dh[i] = j < H ? p.dh_n[n * H + j] : T(0);
    own_dc[i] = (Cell::kHasCellState && j < H) ? p.dc_n[n * H + j] : T(0);
  }
  cg::grid_group grid = cg::this_grid();
  // Each thread prefetches what its own units' gate math reads at the next step (the saved
  // gates, extra, h_prev and dy: none depends on the exchange) while the exchange is in flight.
  auto prefetch_step = [&](int step) {
    const int t = p.reverse ? p.T_ - 1 - step : step;
    for (int i = tid; i < N * U; i += blockDim.x) {
      const int n = i / U, j = j0 + i % U;
      if (j >= H) continue;
      const int64_t row = int64_t(t) * N + n;
      T* dst = pre_s + i * (G + 3);
#pragma unroll
      for (int k = 0; k < G; ++k) copy_async(dst + k, p.gates + row * GH + k * H + j);
      if (Cell::kUsesExtra) copy_async(dst + G, p.extra + row * H + j);
      copy_async(dst + G + 1, p.h_prev + row * H + j);
      copy_async(dst + G + 2, p.dy + row * H + j);
    }
    __pipeline_commit();
  };
  prefetch_step(p.T_ - 1);

  for (int step = p.T_ - 1; step >= 0; --step) {
    const int t = p.reverse ? p.T_ - 1 - step : step;
    const int s = p.T_ - 1 - step;  // iteration number: the exchange slot and flag
    Word* flagged = p.flagged ? p.flagged + (s & 1) * int64_t(N) * GH : nullptr;
    const unsigned flag = static_cast<unsigned>(s + 1);
    __pipeline_wait_prior(0);  // this thread's prefetched inputs of step t
    // The gate gradients of the block's units at step t.
    for (int i = tid; i < N * U; i += blockDim.x) {
      const int n = i / U, j = j0 + i % U;
      if (j >= H) continue;
      const int64_t row = int64_t(t) * N + n;
      if (p.lengths && t >= __ldg(p.lengths + n)) {  // untouched state: gradient passes, gates get none
#pragma unroll
        for (int k = 0; k < G; ++k) {
          p.dgx[row * GH + k * H + j] = T(0);
          if (Cell::kSplitRecurrentGrad) p.dgh[row * GH + k * H + j] = T(0);
          if (flagged) st_relaxed(flagged + n * GH + k * H + j, pack_word(T(0), flag));
        }
        continue;
      }
      const T* pre = pre_s + i * (G + 3);
      T act[G], dgx[G], dgh[G];
#pragma unroll
      for (int k = 0; k < G; ++k) act[k] = pre[k];
      T extra = Cell::kUsesExtra ? pre[G] : T(0);
      T dc = own_dc[i], dh_direct = T(0), ph[3];
      Cell::backward(act, &extra, pre[G + 1], int64_t(1), int64_t(0), own_dh[i] + pre[G + 2],
                     dc, dgx, dgh, dh_direct, unit_peepholes(p.w_ph, H, j, ph));
#pragma unroll
      for (int k = 0; k < G; ++k) {
        p.dgx[row * GH + k * H + j] = dgx[k];
        if (Cell::kSplitRecurrentGrad) p.dgh[row * GH + k * H + j] = dgh[k];
        if (flagged)
          st_relaxed(flagged + n * GH + k * H + j,
                     pack_word(Cell::kSplitRecurrentGrad ? dgh[k] : dgx[k], flag));
      }
      own_dc[i] = dc;
      own_dh[i] = dh_direct;
    }
    if (step > 0) prefetch_step(step - 1);
    if (flagged) {  // (T == P only: ld == GH)
      // No barrier: a block writes slot s&1 again at iteration s+2 only after reading every
      // block's iteration s+1, which each block publishes only after it has read iteration s.
      gather_flagged(flagged, N * GH, flag, reinterpret_cast<T*>(X_s));
    } else {
      grid.sync();  // dgh of step t complete for every unit
      load_operand_rows(p.dgh + int64_t(t) * N * GH, N, GH, ld, X_s);
    }
    __syncthreads();
    block_product(Wc_s, U, GH, L, X_s, N, p.ksplit, part_s, r_s, U);
    for (int i = tid; i < N * U; i += blockDim.x) own_dh[i] += r_s[i];
    // The next step's gate math reads own_dh[i] in the thread that wrote it; X_s is rewritten
    // only after the next step's gate math, which every thread of this block reaches after the
    // __syncthreads that ends block_gemv (its last read of X_s).
  }

  for (int i = tid; i < N * U; i += blockDim.x) {
    const int n = i / U, j = j0 + i % U;
    if (j >= H) continue;
    p.dh0[n * H + j] = own_dh[i];
    if (Cell::kHasCellState) p.dc0[n * H + j] = own_dc[i];
  }
}

// The flagged exchange only for float32 with FUSEDRNN_CUDA_EXCHANGE=flagged (any case; read per
// call); the grid barrier otherwise (faster on an H200, see the top of this file), which
// "barrier" or an empty value names; another value is reported once, as the CPU settings are.
template <typename T>
bool use_flagged_exchange() {
  if (!std::is_same<T, float>::value) return false;
  const char* env = std::getenv("FUSEDRNN_CUDA_EXCHANGE");
  if (!env || !*env || strcasecmp(env, "barrier") == 0) return false;
  if (strcasecmp(env, "flagged") == 0) return true;
  static std::atomic<bool> reported{false};
  if (!reported.exchange(true))
    std::fprintf(stderr, "fusedrnn: FUSEDRNN_CUDA_EXCHANGE: ignored '%s' (expected flagged or "
                 "barrier); the grid barrier is used\n", env);
  return false;
}

// The flagged words live in the workspace after `elems` elements of T, 16-byte aligned.
template <typename T>
Word* flagged_words(T* workspace, int64_t elems) {
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(workspace + elems);
  return reinterpret_cast<Word*>((a + 15) / 16 * 16);
}

// Launch geometry of a persistent kernel, or fits = false.
struct PersistentPlan {
  bool fits = false;
  int blocks = 0, units = 0, ksplit = 1;
  size_t smem_bytes = 0;
};

template <typename T, typename P>
PersistentPlan plan_persistent(const SeqShape& s, const void* kernel, bool backward) {
  PersistentPlan plan;
  if (s.N <= 0 || s.H <= 0 || s.T <= 0 || s.H > INT_MAX / 8 || s.N > 4096 || s.T > INT_MAX)
    return plan;
  int device = 0;
  FUSEDRNN_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0, coop = 0, smem_optin = 0;
  FUSEDRNN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  FUSEDRNN_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  FUSEDRNN_CUDA_CHECK(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (!coop || sms <= 0) return plan;
  const int G = static_cast<int>(s.G);
  const int64_t units = (s.H + sms - 1) / sms;
  const int64_t blocks = (s.H + units - 1) / units;
  const size_t bytes = static_cast<size_t>(
      backward ? persistent_backward_smem_bytes<T, P>(G, s.N, s.H, units)
               : persistent_forward_smem_bytes<T, P>(G, s.N, s.H, units));
  // The device's limit (less the kernel's static shared memory), not this call's bytes: every
  // call sets the same value, so a call of another host thread can never lower it between this
  // plan and its launch.
  cudaFuncAttributes attributes{};
  FUSEDRNN_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const int dynamic_limit = smem_optin - static_cast<int>(attributes.sharedSizeBytes);
  if (bytes > static_cast<size_t>(std::max(dynamic_limit, 0))) return plan;
  FUSEDRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           dynamic_limit));
  int per_sm = 0;
  FUSEDRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel,
                                                                    kPersistentThreads, bytes));
  if (per_sm < 1 || blocks > int64_t(per_sm) * sms) return plan;
  plan.fits = true;
  plan.blocks = static_cast<int>(blocks);
  plan.units = static_cast<int>(units);
  plan.ksplit = gemv_ksplit(backward ? units : G * units);
  plan.smem_bytes = bytes;
  return plan;
}

template <typename T, typename P, typename Cell, bool kTraining>
PersistentPlan plan_persistent_forward(const SeqShape& s) {
  return plan_persistent<T, P>(
      s, reinterpret_cast<const void*>(persistent_forward_kernel<T, P, Cell, kTraining>), false);
}

template <typename T, typename P, typename Cell>
PersistentPlan plan_persistent_backward(const SeqShape& s) {
  return plan_persistent<T, P>(
      s, reinterpret_cast<const void*>(persistent_backward_kernel<T, P, Cell>), true);
}

// The products' operand type: bf16 for a float32 call with bfloat16 products, else T.
template <typename T>
bool bf16_products(const Options& o) {
  return o.bf16 && std::is_same<T, float>::value;
}

// ------------------------------------------------------------------------------ drivers
// The float32 part of the forward workspace (elements of T): gh [N, GH], h_exchange [2, N, H],
// the flagged words (2 exchange slots of 8 bytes per value: 4 float32 elements per value, with
// 4 more for the 16-byte alignment), one spare.
int64_t forward_float_elems(const SeqShape& s) { return s.N * s.GH() + 6 * s.N * s.H + 5; }

template <typename T, typename P, typename Cell, bool kTraining>
void forward_impl(const ForwardArgs<T>& a, T* workspace, const Options& o) {
  constexpr bool kBf16 = !std::is_same<T, P>::value;
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(o.stream);
  if (N * H > 0) {  // (h is P wide with a projection)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.h_n, a.h0, N * s.state() * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
    if (Cell::kHasCellState)
      FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.c_n, a.c0, N * H * sizeof(T), cudaMemcpyDeviceToDevice, stream));
  }
  if (TN == 0 || H == 0) return;
  cublasHandle_t blas = blas_handle(stream, o.allow_tf32);
  T* gh = workspace;                // [N, GH]
  T* h_exchange = workspace + N * GH;  // [2, N, H]
  // bfloat16 operands after the float32 workspace (see forward_workspace_elems)
  Bf16Area area = bf16_area(workspace, forward_float_elems(s));
  bf16* w_hh_b = nullptr;  // stepwise only
  bf16* h_b = nullptr;
  // gates <- x W_ih^T for every step at once (biases are added in the fused kernels).
  if constexpr (kBf16) {
    bf16* x_b = area.take(TN * s.I);
    bf16* w_ih_b = area.take(GH * s.I);
    w_hh_b = area.take(GH * H);
    h_b = area.take(N * H);
    to_bf16(stream, a.x, x_b, TN * s.I);
    to_bf16(stream, a.w_ih, w_ih_b, GH * s.I);
    gemm_bf16(blas, stream, false, true, TN, GH, s.I, x_b, s.I, w_ih_b, s.I, 0.0f, a.gates, GH);
  } else {
    gemm(blas, stream, false, true, TN, GH, s.I, T(1), a.x, s.I, a.w_ih, s.I, T(0), a.gates, GH);
  }

  if ((Cell::kResetBefore || s.P > 0) && o.algorithm == Algorithm::kPersistent)
    throw std::runtime_error("fusedrnn CUDA: the reset-before GRU and the LSTM projection have "
                             "no persistent kernel; use the stepwise algorithm");
  if (Cell::kHasCellState && s.P > 0) {
    // The projection (stepwise): per step gh = h W_hh^T (h P wide), the cell's kernel writes
    // m = o * tanh(c) (H wide) into the exchange room, h_new = m W_hr^T, then the state, y and
    // h_prev (projection_step_kernel).
    const int64_t PS = s.P;  // (P names the products' operand type here)
    T* m = workspace + N * GH;  // [N, H] (h_exchange's room: 2 N H)
    T* h_new = m + N * H;       // [N, PS], PS < H
    StepForward<T> p = step_forward_args(a, gh);
    p.h = m;  // (y and h_prev: projection_step_kernel's)
    p.y = p.h_prev = nullptr;
    for (int64_t step = 0; step < s.T; ++step) {
      const int64_t t = a.reverse ? s.T - 1 - step : step;
      gemm(blas, stream, false, true, N, GH, PS, T(1), a.h_n, PS, a.w_hh, PS, T(0), gh, GH);
      forward_step_kernel<T, Cell, kTraining><<<blocks_for(N * H), kThreads, 0, stream>>>(p, t);
      FUSEDRNN_LAUNCH_CHECK("forward_step_kernel");
      gemm(blas, stream, false, true, N, PS, H, T(1), m, H, a.w_hr, H, T(0), h_new, PS);
      projection_step_kernel<T><<<blocks_for(N * PS), kThreads, 0, stream>>>(
          N, PS, a.lengths, t, h_new, a.h_n, a.y + t * N * PS,
          kTraining ? a.h_prev + t * N * PS : nullptr);
      FUSEDRNN_LAUNCH_CHECK("projection_step_kernel");
    }
    return;
  }
  PersistentPlan plan;
  if constexpr (!Cell::kResetBefore) {  // (its two-phase step runs stepwise)
  if (o.algorithm == Algorithm::kPersistent ||
      (o.algorithm == Algorithm::kAuto && N <= kPersistentMaxBatch))
    plan = plan_persistent_forward<T, P, Cell, kTraining>(s);
  if (o.algorithm == Algorithm::kPersistent && !plan.fits)
    throw std::runtime_error("fusedrnn CUDA: the persistent kernel does not fit this problem "
                             "(shared memory or co-residency); use the stepwise algorithm");
  if (plan.fits) {
    PersistentForward<T> p{};
    p.T_ = static_cast<int>(s.T);
    p.N = static_cast<int>(N);
    p.H = static_cast<int>(H);
    p.U = plan.units;
    p.ksplit = plan.ksplit;
    p.reverse = a.reverse;
    p.w_hh = a.w_hh;
    p.b_ih = a.b_ih;
    p.b_hh = a.b_hh;
    p.h0 = a.h0;
    p.c0 = a.c0;
    p.lengths = a.lengths;
    p.gates = a.gates;
    p.y = a.y;
    p.h_n = a.h_n;
    p.c_n = a.c_n;
    p.extra = a.extra;
    p.h_prev = a.h_prev;
    p.h_exchange = h_exchange;
    p.h_flagged = nullptr;
    p.w_ph = a.w_ph;
    if (!kBf16 && use_flagged_exchange<T>()) {  // zeroed: no flag of an earlier call can match
      p.h_flagged = flagged_words(workspace, N * GH + 2 * N * H);
      FUSEDRNN_CUDA_CHECK(cudaMemsetAsync(p.h_flagged, 0, 2 * N * H * sizeof(Word), stream));
    }
    void* params[] = {&p};
    FUSEDRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(persistent_forward_kernel<T, P, Cell, kTraining>),
        dim3(plan.blocks), dim3(kPersistentThreads), params, plan.smem_bytes, stream));
    FUSEDRNN_LAUNCH_CHECK("persistent_forward_kernel");
    return;
  }
  }

  StepForward<T> p = step_forward_args(a, gh);
  p.h_bf16 = h_b;
  if constexpr (kBf16) {
    to_bf16(stream, a.w_hh, w_hh_b, GH * H);
    to_bf16(stream, a.h0, h_b, N * H);
  }
  const int blocks = blocks_for(N * H);
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    if constexpr (Cell::kResetBefore) {
      // r, z rows from h; r * h (the saved extra, or scratch); n rows from r * h
      T* rh = kTraining ? a.extra + t * N * H : h_exchange;
      gemm(blas, stream, false, true, N, 2 * H, H, T(1), a.h_n, H, a.w_hh, H, T(0), gh, GH);
      reset_input_kernel<T><<<blocks, kThreads, 0, stream>>>(N, H, a.gates, gh, a.b_ih, a.b_hh,
                                                             a.lengths, a.h_n, t, rh);
      FUSEDRNN_LAUNCH_CHECK("reset_input_kernel");
      gemm(blas, stream, false, true, N, H, H, T(1), rh, H, a.w_hh + 2 * H * H, H, T(0),
           gh + 2 * H, GH);
    } else if constexpr (kBf16) {
      gemm_bf16(blas, stream, false, true, N, GH, H, h_b, H, w_hh_b, H, 0.0f, gh, GH);
    } else {
      gemm(blas, stream, false, true, N, GH, H, T(1), a.h_n, H, a.w_hh, H, T(0), gh, GH);
    }
    forward_step_kernel<T, Cell, kTraining><<<blocks, kThreads, 0, stream>>>(p, t);
    FUSEDRNN_LAUNCH_CHECK("forward_step_kernel");
  }
}

// Elements of the backward workspace before its flagged words (see backward_impl's layout).
inline int64_t backward_flag_offset(bool split, const SeqShape& s) {
  const int64_t TN = s.T * s.N;
  return (split ? 2 : 1) * TN * s.GH() + s.N * s.H + (TN > 0 ? TN : 1);
}

// The projection's backward room after the flagged words: dh_total [T, N, P], m [T, N, H],
// dm and the cell's direct part [N, H] each.
inline int64_t projection_elems(const SeqShape& s) {
  return s.P > 0 ? s.T * s.N * (s.P + s.H) + 2 * s.N * s.H : 0;
}

// The LayerNorm-LSTM's backward room after the flagged words: da [T, N, 4H], d_cn [T, N, H].
inline int64_t layernorm_elems(bool layer_norm, const SeqShape& s) {
  return layer_norm ? s.T * s.N * 5 * s.H : 0;
}

// ... and its whole float32 part: the flagged words (4 float32 elements per value, 4 more for
// the alignment) and the projection's room included.
inline int64_t backward_float_elems(bool split, const SeqShape& s, bool layer_norm = false) {
  return backward_flag_offset(split, s) + 4 * s.N * s.GH() + 4 + projection_elems(s) +
         layernorm_elems(layer_norm, s);
}

// The LayerNorm-LSTM, stepwise, a block per sample. Forward: x W_ih^T for all steps (no bias:
// the biases come after the norms), then per step gh = h W_hh^T and layernorm_forward_kernel.
template <typename T, bool kTraining>
void layernorm_forward(const ForwardArgs<T>& a, T* workspace, const Options& o) {
  if (o.algorithm == Algorithm::kPersistent)
    throw std::runtime_error("fusedrnn CUDA: the LayerNorm-LSTM has no persistent kernel; use "
                             "the stepwise algorithm");
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(o.stream);
  if (N * H > 0) {
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.h_n, a.h0, N * H * sizeof(T), cudaMemcpyDeviceToDevice,
                                        stream));
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.c_n, a.c0, N * H * sizeof(T), cudaMemcpyDeviceToDevice,
                                        stream));
  }
  if (TN == 0 || H == 0) return;
  cublasHandle_t blas = blas_handle(stream, o.allow_tf32);
  T* gh = workspace;  // [N, GH]
  gemm(blas, stream, false, true, TN, GH, s.I, T(1), a.x, s.I, a.w_ih, s.I, T(0), a.gates, GH);
  for (int64_t step = 0; step < s.T; ++step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    gemm(blas, stream, false, true, N, GH, H, T(1), a.h_n, H, a.w_hh, H, T(0), gh, GH);
    layernorm_forward_kernel<T, kTraining><<<static_cast<int>(N), kNormThreads, 0, stream>>>(
        N, H, gh, a.b_ih, a.b_hh, a.ln, a.ln_eps, a.lengths, t, a.gates, a.c_n, a.h_n, a.y,
        a.h_prev, a.extra);
    FUSEDRNN_LAUNCH_CHECK("layernorm_forward_kernel");
  }
}

// Backward: per step (reverse) the cell's step back (layernorm_backward_kernel), then
// dh_{t-1} = dgh_t W_hh; then dx, dW_ih (dgx), dW_hh (dgh) and the biases' and norms' sums
// (layernorm_param_grads_kernel). Workspace: dgx, dgh [T, N, GH], dh [N, H], ..., da, d_cn.
template <typename T>
void layernorm_backward(const BackwardArgs<T>& a, T* workspace, const Options& o) {
  if (o.algorithm == Algorithm::kPersistent)
    throw std::runtime_error("fusedrnn CUDA: the LayerNorm-LSTM has no persistent kernel; use "
                             "the stepwise algorithm");
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N, I = s.I;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(o.stream);
  cublasHandle_t blas = blas_handle(stream, o.allow_tf32);
  T* dgx = workspace;
  T* dgh = dgx + TN * GH;
  T* dh_next = dgh + TN * GH;  // [N, H]
  T* da = workspace + backward_flag_offset(true, s) + 4 * N * GH + 4 + projection_elems(s);
  T* d_cn = da + TN * GH;
  if (N * H > 0) {
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dh0, a.dh_n, N * H * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dc0, a.dc_n, N * H * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
  }
  T* dh = a.dh0;
  for (int64_t step = s.T - 1; step >= 0 && N * H > 0; --step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    layernorm_backward_kernel<T><<<static_cast<int>(N), kNormThreads, 0, stream>>>(
        N, H, a.gates, a.extra, a.ln, a.lengths, t, dh, a.dy, a.dc0, dgx, dgh, da, d_cn,
        dh_next);
    FUSEDRNN_LAUNCH_CHECK("layernorm_backward_kernel");
    gemm(blas, stream, false, false, N, H, GH, T(1), dgh + t * N * GH, GH, a.w_hh, H, T(1),
         dh_next, H);
    std::swap(dh, dh_next);
  }
  if (dh != a.dh0 && N * H > 0)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dh0, dh, N * H * sizeof(T), cudaMemcpyDeviceToDevice,
                                        stream));
  gemm(blas, stream, false, false, TN, I, GH, T(1), dgx, GH, a.w_ih, I, T(0), a.dx, I);
  gemm(blas, stream, true, false, GH, I, TN, T(1), dgx, GH, a.x, I, T(0), a.dw_ih, I);
  gemm(blas, stream, true, false, GH, H, TN, T(1), dgh, GH, a.h_prev, H, T(0), a.dw_hh, H);
  layernorm_param_grads_kernel<T><<<blocks_for(GH + H), kThreads, 0, stream>>>(
      TN, N, H, a.lengths, da, d_cn, a.extra, a.db_ih, a.db_hh, a.dln);
  FUSEDRNN_LAUNCH_CHECK("layernorm_param_grads_kernel");
}

// The LSTM with projections, stepwise: per step (reverse) the gradient reaching h_t
// (projection_grad_kernel), dm = dh W_hr, the cell's step back on dm, dh_{t-1} += dgates W_hh;
// after the loop dx, dW_ih, dW_hh (K = P), dW_hr = dh^T m (m recomputed from the saved gates
// and c) and the bias sums.
template <typename T, typename Cell>
void projected_backward(const BackwardArgs<T>& a, T* workspace, cudaStream_t stream,
                        cublasHandle_t blas, T* dgx, T* dh_other, T* ones) {
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N, I = s.I, P = s.P;
  T* dh_steps = workspace + backward_flag_offset(false, s) + 4 * N * GH + 4;  // [T, N, P]
  T* m = dh_steps + TN * P;  // [T, N, H]
  T* dm = m + TN * H;        // [N, H]
  T* direct = dm + N * H;    // [N, H]
  T* dh = a.dh0;
  T* dh_next = dh_other;     // [N, P] in [N, H]'s room
  StepBackward<T> p = step_backward_args(a, dgx);
  p.h_prev = nullptr;  // (an LSTM's step reads neither, and dy is in dh_steps)
  p.dy = nullptr;
  p.dh = dm;
  p.dh_next = direct;
  for (int64_t step = s.T - 1; step >= 0; --step) {
    const int64_t t = a.reverse ? s.T - 1 - step : step;
    projection_grad_kernel<T><<<blocks_for(N * P), kThreads, 0, stream>>>(
        N, P, a.lengths, t, dh, a.dy + t * N * P, dh_steps + t * N * P, dh_next);
    FUSEDRNN_LAUNCH_CHECK("projection_grad_kernel");
    gemm(blas, stream, false, false, N, H, P, T(1), dh_steps + t * N * P, P, a.w_hr, H, T(0),
         dm, H);
    backward_step_kernel<T, Cell><<<blocks_for(N * H), kThreads, 0, stream>>>(p, t);
    FUSEDRNN_LAUNCH_CHECK("backward_step_kernel");
    gemm(blas, stream, false, false, N, P, GH, T(1), dgx + t * N * GH, GH, a.w_hh, P, T(1),
         dh_next, P);
    std::swap(dh, dh_next);
  }
  if (dh != a.dh0)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dh0, dh, N * P * sizeof(T), cudaMemcpyDeviceToDevice,
                                        stream));
  gemm(blas, stream, false, false, TN, I, GH, T(1), dgx, GH, a.w_ih, I, T(0), a.dx, I);
  gemm(blas, stream, true, false, GH, I, TN, T(1), dgx, GH, a.x, I, T(0), a.dw_ih, I);
  gemm(blas, stream, true, false, GH, P, TN, T(1), dgx, GH, a.h_prev, P, T(0), a.dw_hh, P);
  if (TN > 0) {
    projection_input_kernel<T><<<blocks_for(TN * H), kThreads, 0, stream>>>(
        s.T, N, H, a.lengths, a.gates, a.extra, m);
    FUSEDRNN_LAUNCH_CHECK("projection_input_kernel");
    fill_kernel<T><<<blocks_for(TN), kThreads, 0, stream>>>(ones, TN, T(1));
    FUSEDRNN_LAUNCH_CHECK("fill_kernel");
  }
  gemm(blas, stream, true, false, P, H, TN, T(1), dh_steps, P, m, H, T(0), a.dw_hr, H);
  column_sums(blas, stream, dgx, TN, GH, ones, a.db_ih);
  column_sums(blas, stream, dgx, TN, GH, ones, a.db_hh);
  if (a.dw_ph) {
    peephole_grads_kernel<T><<<blocks_for(H), kThreads, 0, stream>>>(
        s.T, N, H, a.lengths, a.gates, a.extra, dgx, a.dw_ph);
    FUSEDRNN_LAUNCH_CHECK("peephole_grads_kernel");
  }
}

template <typename T, typename P, typename Cell>
void backward_impl(const BackwardArgs<T>& a, T* workspace, const Options& o) {
  constexpr bool kBf16 = !std::is_same<T, P>::value;
  const SeqShape s = a.shape;
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N, I = s.I;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(o.stream);
  cublasHandle_t blas = blas_handle(stream, o.allow_tf32);

  T* dgx = workspace;                                             // [T, N, GH]
  T* dgh = Cell::kSplitRecurrentGrad ? dgx + TN * GH : dgx;       // [T, N, GH]
  T* dh_other = (Cell::kSplitRecurrentGrad ? dgh + TN * GH : dgx + TN * GH);  // [N, H]
  T* ones = dh_other + N * H;                                     // [max(TN, 1)]
  // bfloat16 operands after the float32 workspace (see backward_workspace_elems): the gate
  // gradients (per step the recurrent side, after the loop the input side) and the weights
  Bf16Area area =
      bf16_area(workspace, backward_float_elems(Cell::kSplitRecurrentGrad, s, Cell::kLayerNorm));
  bf16* d_b = nullptr;
  bf16* w_ih_b = nullptr;
  bf16* w_hh_b = nullptr;
  bf16* x_b = nullptr;
  bf16* h_prev_b = nullptr;
  if constexpr (kBf16) {
    d_b = area.take(TN * GH);
    w_ih_b = area.take(GH * I);
    w_hh_b = area.take(GH * H);
    x_b = area.take(TN * I);
    h_prev_b = area.take(TN * H);
  }

  if (N * H > 0) {  // (h is P wide with a projection)
    FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dh0, a.dh_n, N * s.state() * sizeof(T),
                                        cudaMemcpyDeviceToDevice, stream));
    if (Cell::kHasCellState)
      FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dc0, a.dc_n, N * H * sizeof(T), cudaMemcpyDeviceToDevice, stream));
  }

  if ((Cell::kResetBefore || s.P > 0) && o.algorithm == Algorithm::kPersistent)
    throw std::runtime_error("fusedrnn CUDA: the reset-before GRU and the LSTM projection have "
                             "no persistent kernel; use the stepwise algorithm");
  if (Cell::kHasCellState && s.P > 0) {
    projected_backward<T, Cell>(a, workspace, stream, blas, dgx, dh_other, ones);
    return;
  }

  PersistentPlan plan;
  if constexpr (!Cell::kResetBefore) {  // (its two-phase step runs stepwise)
  if (N * H > 0 && (o.algorithm == Algorithm::kPersistent ||
                    (o.algorithm == Algorithm::kAuto && N <= kPersistentMaxBatch)))
    plan = plan_persistent_backward<T, P, Cell>(s);
  if (o.algorithm == Algorithm::kAuto && plan.fits &&
      int64_t(plan.units) * GH * ((N + 3) / 4 * 4) > kPersistentBackwardMaxWork)
    plan.fits = false;
  if (o.algorithm == Algorithm::kPersistent && N * H > 0 && s.T > 0 && !plan.fits)
    throw std::runtime_error("fusedrnn CUDA: the persistent backward kernel does not fit this "
                             "problem (shared memory or co-residency); use the stepwise algorithm");
  if (plan.fits) {
    PersistentBackward<T> q{};
    q.T_ = static_cast<int>(s.T);
    q.N = static_cast<int>(N);
    q.H = static_cast<int>(H);
    q.U = plan.units;
    q.ksplit = plan.ksplit;
    q.reverse = a.reverse;
    q.w_hh = a.w_hh;
    q.lengths = a.lengths;
    q.gates = a.gates;
    q.extra = a.extra;
    q.h_prev = a.h_prev;
    q.dy = a.dy;
    q.dh_n = a.dh_n;
    q.dc_n = a.dc_n;
    q.dgx = dgx;
    q.dgh = dgh;
    q.dh0 = a.dh0;
    q.dc0 = a.dc0;
    q.flagged = nullptr;
    q.w_ph = a.w_ph;
    if (!kBf16 && use_flagged_exchange<T>()) {
      q.flagged = flagged_words(workspace, backward_flag_offset(Cell::kSplitRecurrentGrad, s));
      FUSEDRNN_CUDA_CHECK(cudaMemsetAsync(q.flagged, 0, 2 * N * GH * sizeof(Word), stream));
    }
    void* params[] = {&q};
    FUSEDRNN_CUDA_CHECK(cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(persistent_backward_kernel<T, P, Cell>), dim3(plan.blocks),
        dim3(kPersistentThreads), params, plan.smem_bytes, stream));
    FUSEDRNN_LAUNCH_CHECK("persistent_backward_kernel");
  }
  }

  // dh ping-pongs between dh0 and the workspace; it ends in dh0.
  T* dh = a.dh0;
  T* dh_next = dh_other;
  StepBackward<T> p = step_backward_args(a, dgx);
  p.dgh = Cell::kSplitRecurrentGrad ? dgh : nullptr;
  p.dgh_bf16 = d_b;
  const int blocks = blocks_for(N * H);
  if (N * H > 0 && !plan.fits) {
    if constexpr (kBf16) to_bf16(stream, a.w_hh, w_hh_b, GH * H);
    for (int64_t step = s.T - 1; step >= 0; --step) {
      const int64_t t = a.reverse ? s.T - 1 - step : step;
      p.dh = dh;
      p.dh_next = dh_next;
      backward_step_kernel<T, Cell><<<blocks, kThreads, 0, stream>>>(p, t);
      FUSEDRNN_LAUNCH_CHECK("backward_step_kernel");
      // dh_{t-1} = dh_direct + dgh_t W_hh (rows of inactive samples of dgh_t are zero).
      if constexpr (Cell::kResetBefore) {
        // d(r * h) = da_n W_hn (into the flagged words' room, unused stepwise), then da_r and
        // the r * d(r * h) part of dh_{t-1}; then [da_r, da_z] W_h{r,z}
        T* d_rh = workspace + backward_flag_offset(false, s);
        gemm(blas, stream, false, false, N, H, H, T(1), dgx + t * N * GH + 2 * H, GH,
             a.w_hh + 2 * H * H, H, T(0), d_rh, H);
        reset_grad_kernel<T><<<blocks, kThreads, 0, stream>>>(N, H, a.gates, a.h_prev,
                                                              a.lengths, d_rh, t, dgx, dh_next);
        FUSEDRNN_LAUNCH_CHECK("reset_grad_kernel");
        gemm(blas, stream, false, false, N, H, 2 * H, T(1), dgx + t * N * GH, GH, a.w_hh, H,
             T(1), dh_next, H);
      } else if constexpr (kBf16)
        gemm_bf16(blas, stream, false, false, N, H, GH, d_b + t * N * GH, GH, w_hh_b, H, 1.0f,
                  dh_next, H);
      else
        gemm(blas, stream, false, false, N, H, GH, T(1), dgh + t * N * GH, GH, a.w_hh, H, T(1),
             dh_next, H);
      std::swap(dh, dh_next);
    }
    if (dh != a.dh0)
      FUSEDRNN_CUDA_CHECK(cudaMemcpyAsync(a.dh0, dh, N * H * sizeof(T), cudaMemcpyDeviceToDevice, stream));
  }

  // The three big GEMMs over all T*N rows (from bfloat16 operands under bfloat16 products,
  // fp32 sums, as the CPU's), then the bias gradients.
  if constexpr (kBf16) {
    to_bf16(stream, dgx, d_b, TN * GH);
    to_bf16(stream, a.w_ih, w_ih_b, GH * I);
    to_bf16(stream, a.x, x_b, TN * I);
    to_bf16(stream, a.h_prev, h_prev_b, TN * H);
    gemm_bf16(blas, stream, false, false, TN, I, GH, d_b, GH, w_ih_b, I, 0.0f, a.dx, I);
    gemm_bf16(blas, stream, true, false, GH, I, TN, d_b, GH, x_b, I, 0.0f, a.dw_ih, I);
    if (Cell::kSplitRecurrentGrad) to_bf16(stream, dgh, d_b, TN * GH);  // (after dw_ih: one stream)
    gemm_bf16(blas, stream, true, false, GH, H, TN, d_b, GH, h_prev_b, H, 0.0f, a.dw_hh, H);
  } else {
    gemm(blas, stream, false, false, TN, I, GH, T(1), dgx, GH, a.w_ih, I, T(0), a.dx, I);
    gemm(blas, stream, true, false, GH, I, TN, T(1), dgx, GH, a.x, I, T(0), a.dw_ih, I);
    if (Cell::kResetBefore) {  // W_hn's rows saw r * h (the saved extra), not h
      gemm(blas, stream, true, false, 2 * H, H, TN, T(1), dgh, GH, a.h_prev, H, T(0), a.dw_hh,
           H);
      gemm(blas, stream, true, false, H, H, TN, T(1), dgh + 2 * H, GH, a.extra, H, T(0),
           a.dw_hh + 2 * H * H, H);
    } else {
      gemm(blas, stream, true, false, GH, H, TN, T(1), dgh, GH, a.h_prev, H, T(0), a.dw_hh, H);
    }
  }
  if (TN > 0) {
    fill_kernel<T><<<blocks_for(TN), kThreads, 0, stream>>>(ones, TN, T(1));
    FUSEDRNN_LAUNCH_CHECK("fill_kernel");
  }
  column_sums(blas, stream, dgx, TN, GH, ones, a.db_ih);
  column_sums(blas, stream, dgh, TN, GH, ones, a.db_hh);
  if (a.dw_ph) {
    peephole_grads_kernel<T><<<blocks_for(H), kThreads, 0, stream>>>(
        s.T, N, H, a.lengths, a.gates, a.extra, dgx, a.dw_ph);
    FUSEDRNN_LAUNCH_CHECK("peephole_grads_kernel");
  }
}

// Calls f(Cell*, P*) (null pointers as type tags) with the cell's type and the products'
// operand type: bf16 for a float32 call with bfloat16 products (Options::bf16), else T.
template <typename T, typename F>
auto with_cell_and_operand(CellKind cell, bool bf16_operands, F&& f) {
  auto with_operand = [&](auto* cell_tag) {
    if constexpr (std::is_same<T, float>::value) {
      if (bf16_operands) return f(cell_tag, static_cast<bf16*>(nullptr));
    }
    return f(cell_tag, static_cast<T*>(nullptr));
  };
  switch (cell) {
    case CellKind::kLstm: return with_operand(static_cast<LstmCell*>(nullptr));
    case CellKind::kGru: return with_operand(static_cast<GruCell*>(nullptr));
    case CellKind::kRnnTanh: return with_operand(static_cast<RnnCell<false>*>(nullptr));
    case CellKind::kGruResetBefore:  // float32 products only (no bfloat16 two-phase step)
      return f(static_cast<GruResetBeforeCell*>(nullptr), static_cast<T*>(nullptr));
    case CellKind::kLayerNormLstm:  // float32 products only
      return f(static_cast<LayerNormLstmCell*>(nullptr), static_cast<T*>(nullptr));
    case CellKind::kRnnRelu: break;
  }
  return with_operand(static_cast<RnnCell<true>*>(nullptr));
}

// The bfloat16 buffers each driver takes after its float32 part (Bf16Area::take order).
template <typename T>
int64_t forward_bf16_elems(const SeqShape& s) {
  return Bf16Area::elems<T>({s.T * s.N * s.I, s.GH() * s.I, s.GH() * s.H, s.N * s.H});
}

template <typename T>
int64_t backward_bf16_elems(const SeqShape& s) {
  return Bf16Area::elems<T>(
      {s.T * s.N * s.GH(), s.GH() * s.I, s.GH() * s.H, s.T * s.N * s.I, s.T * s.N * s.H});
}

}  // namespace

// Sizes in elements of the dtype (float32 when bf16: the bfloat16 products are float32 only).
std::size_t forward_workspace_elems(CellKind /*cell*/, const SeqShape& s, bool /*training*/,
                                   bool bf16) {
  return static_cast<std::size_t>(forward_float_elems(s) + (bf16 ? forward_bf16_elems<float>(s) : 0));
}

std::size_t backward_workspace_elems(CellKind cell, const SeqShape& s, bool bf16) {
  const bool layer_norm = cell == CellKind::kLayerNormLstm;
  return static_cast<std::size_t>(
      backward_float_elems(cell == CellKind::kGru || layer_norm, s, layer_norm) +
      (bf16 ? backward_bf16_elems<float>(s) : 0));
}

// The call's device (its arrays' or tensors') for the call's length, the thread's current
// device restored after it (as torch's device guards do: torch.cuda.current_device() and
// CuPy's stay what the caller set).
class DeviceGuard {
 public:
  explicit DeviceGuard(const Options& o) {
    if (o.device < 0) return;
    int current = 0;
    FUSEDRNN_CUDA_CHECK(cudaGetDevice(&current));
    if (current == o.device) return;
    FUSEDRNN_CUDA_CHECK(cudaSetDevice(o.device));
    previous_ = current;
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);  // (no throw from a destructor)
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args, T* workspace,
                       const Options& options) {
  const DeviceGuard device_guard(options);
  with_cell_and_operand<T>(cell, options.bf16, [&](auto* cell_tag, auto* operand_tag) {
    using Cell = std::remove_pointer_t<decltype(cell_tag)>;
    using P = std::remove_pointer_t<decltype(operand_tag)>;
    if constexpr (Cell::kLayerNorm) {  // (its own stepwise driver)
      if (args.h_prev)
        layernorm_forward<T, true>(args, workspace, options);
      else
        layernorm_forward<T, false>(args, workspace, options);
    } else if (args.h_prev) {
      forward_impl<T, P, Cell, true>(args, workspace, options);
    } else {
      forward_impl<T, P, Cell, false>(args, workspace, options);
    }
  });
}

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args, T* workspace,
                        const Options& options) {
  const DeviceGuard device_guard(options);
  with_cell_and_operand<T>(cell, options.bf16, [&](auto* cell_tag, auto* operand_tag) {
    using Cell = std::remove_pointer_t<decltype(cell_tag)>;
    using P = std::remove_pointer_t<decltype(operand_tag)>;
    if constexpr (Cell::kLayerNorm)
      layernorm_backward<T>(args, workspace, options);
    else
      backward_impl<T, P, Cell>(args, workspace, options);
  });
}

template <typename T>
bool persistent_forward_fits(CellKind cell, const SeqShape& shape, bool bf16) {
  return with_cell_and_operand<T>(cell, bf16, [&](auto* cell_tag, auto* operand_tag) {
    using Cell = std::remove_pointer_t<decltype(cell_tag)>;
    using P = std::remove_pointer_t<decltype(operand_tag)>;
    if constexpr (Cell::kResetBefore || Cell::kLayerNorm) return false;  // stepwise only
    else return plan_persistent_forward<T, P, Cell, false>(shape).fits;
  });
}

template <typename T>
bool persistent_backward_fits(CellKind cell, const SeqShape& shape, bool bf16) {
  return with_cell_and_operand<T>(cell, bf16, [&](auto* cell_tag, auto* operand_tag) {
    using Cell = std::remove_pointer_t<decltype(cell_tag)>;
    using P = std::remove_pointer_t<decltype(operand_tag)>;
    if constexpr (Cell::kResetBefore || Cell::kLayerNorm) return false;  // stepwise only
    else return plan_persistent_backward<T, P, Cell>(shape).fits;
  });
}

std::string device_summary() {
  int device = 0;
  FUSEDRNN_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  FUSEDRNN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  FUSEDRNN_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  FUSEDRNN_CUDA_CHECK(cudaDriverGetVersion(&driver));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
         " SMs; runtime " + std::to_string(runtime) + ", driver " + std::to_string(driver) + ")";
}

template void recurrent_forward<float>(CellKind, const ForwardArgs<float>&, float*, const Options&);
template void recurrent_forward<double>(CellKind, const ForwardArgs<double>&, double*, const Options&);
template void recurrent_backward<float>(CellKind, const BackwardArgs<float>&, float*, const Options&);
template void recurrent_backward<double>(CellKind, const BackwardArgs<double>&, double*, const Options&);
template bool persistent_forward_fits<float>(CellKind, const SeqShape&, bool);
template bool persistent_forward_fits<double>(CellKind, const SeqShape&, bool);
template bool persistent_backward_fits<float>(CellKind, const SeqShape&, bool);
template bool persistent_backward_fits<double>(CellKind, const SeqShape&, bool);

}  // namespace cuda
}  // namespace fusedrnn
