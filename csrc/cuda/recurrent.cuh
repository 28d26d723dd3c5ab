// CUDA sequence drivers: one layer, one direction, the whole sequence in one call, on a caller's
// stream. The same algorithm and saved-tensor contract as the CPU driver (cpu/recurrent.h):
// every pointer in ForwardArgs/BackwardArgs is a device pointer, `lengths` included.
//
// This header is plain C++ (no CUDA types) so that the pybind11 binding compiles with the host
// compiler: streams travel as integers (cudaStream_t values).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/kernel_args.h"

namespace fusedrnn {
namespace cuda {

// How the time loops (forward and backward) run.
enum class Algorithm {
  kAuto = 0,        // persistent when it fits (small batch), else stepwise
  kStepwise = 1,    // per step: one cuBLAS GEMM for the recurrent product + one fused kernel
  kPersistent = 2,  // one cooperative kernel for all steps, W_hh slices resident in shared memory
};

struct Options {
  int device = -1;            // make this device current first (-1: leave as it is)
  std::uintptr_t stream = 0;  // cudaStream_t on that device
  bool allow_tf32 = false;    // cuBLAS float32 GEMMs may use TF32 tensor cores
  // float32 only: every product (W_ih x, W_hh h; in the backward dgates W_hh, dgates W_ih and
  // the weight gradients) from bfloat16-rounded operands on tensor cores, fp32 accumulation
  // (fusedrnn.autocast); the gate math and the state stay fp32. Ignored for float64.
  bool bf16 = false;
  Algorithm algorithm = Algorithm::kAuto;
};

// Device scratch (elements of T) the caller provides to each call.
std::size_t forward_workspace_elems(CellKind cell, const SeqShape& shape, bool training,
                                   bool bf16 = false);
std::size_t backward_workspace_elems(CellKind cell, const SeqShape& shape, bool bf16 = false);

// Forward. `gates` [T, N, GH] is always required (it holds the input projection, then, in
// training, the saved activations); `extra` and `h_prev` only in training (extra null for RNN).
template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args, T* workspace,
                       const Options& options);

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args, T* workspace,
                        const Options& options);

// Would `recurrent_forward` run the persistent kernel for this problem under kAuto?
template <typename T>
bool persistent_forward_fits(CellKind cell, const SeqShape& shape, bool bf16 = false);

// Can the persistent backward kernel hold this problem on the current device?
template <typename T>
bool persistent_backward_fits(CellKind cell, const SeqShape& shape, bool bf16 = false);

// Device name and compute capability of the current device, for info().
std::string device_summary();

}  // namespace cuda
}  // namespace fusedrnn
