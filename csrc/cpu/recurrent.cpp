// Run-time choice of the instruction set for the CPU drivers (one wheel runs everywhere).
#include "cpu/recurrent.h"

#include <cstdlib>
#include <cstring>
#include <vector>

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DECLARE_ISA(isa)                                         \
  namespace isa {                                                         \
  template <typename T>                                                   \
  void forward(CellKind, const ForwardArgs<T>&, T*);                      \
  template <typename T>                                                   \
  void backward(CellKind, const BackwardArgs<T>&, T*);                    \
  }
FUSEDRNN_DECLARE_ISA(avx512)
FUSEDRNN_DECLARE_ISA(avx2)
FUSEDRNN_DECLARE_ISA(generic)

// The best instruction set this CPU runs, or a lower one named by the environment variable
// FUSEDRNN_ISA (avx2, generic): the tests run every build on one machine that way.
Isa detect_isa() {
  Isa best = Isa::kGeneric;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    best = Isa::kAvx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    best = Isa::kAvx2;
#endif
  const char* forced = std::getenv("FUSEDRNN_ISA");
  if (forced && std::strcmp(forced, "generic") == 0) return Isa::kGeneric;
  if (forced && std::strcmp(forced, "avx2") == 0 && best != Isa::kGeneric) return Isa::kAvx2;
  return best;
}

Isa active_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2+fma";
    default: return "generic";
  }
}

template <typename T>
T* thread_workspace(WorkspaceSlot slot, int64_t elements) {
  thread_local std::vector<T> buffers[3];
  std::vector<T>& buffer = buffers[slot];
  if (static_cast<int64_t>(buffer.size()) < elements) {
    buffer = std::vector<T>();  // release first: never hold two
    buffer.resize(elements);
  }
  return buffer.data();
}

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args) {
  T* work = thread_workspace<T>(kForwardWork, forward_workspace(args.shape));
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::forward<T>(cell, args, work);
    case Isa::kAvx2: return avx2::forward<T>(cell, args, work);
    default: return generic::forward<T>(cell, args, work);
  }
}

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args) {
  // Not cleared: the loop writes every entry of the gate gradients, zeros for skipped steps.
  T* work = thread_workspace<T>(kBackwardWork,
                                backward_workspace(args.shape, cell == CellKind::kGru));
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::backward<T>(cell, args, work);
    case Isa::kAvx2: return avx2::backward<T>(cell, args, work);
    default: return generic::backward<T>(cell, args, work);
  }
}

template float* thread_workspace<float>(WorkspaceSlot, int64_t);
template double* thread_workspace<double>(WorkspaceSlot, int64_t);

template void recurrent_forward<float>(CellKind, const ForwardArgs<float>&);
template void recurrent_forward<double>(CellKind, const ForwardArgs<double>&);
template void recurrent_backward<float>(CellKind, const BackwardArgs<float>&);
template void recurrent_backward<double>(CellKind, const BackwardArgs<double>&);

}  // namespace cpu
}  // namespace fusedrnn
