// Run-time choice of the instruction set for the CPU drivers (one wheel runs everywhere).
#include "cpu/recurrent.h"
#include "cpu/plan.h"
#include "cpu/thread_team.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DECLARE_ISA(isa)                                         \
  namespace isa {                                                         \
  template <typename T>                                                   \
  void forward(CellKind, const ForwardArgs<T>&, T*);                      \
  template <typename T>                                                   \
  void backward(CellKind, const BackwardArgs<T>&, T*);                    \
  int64_t packed_row_bytes();                                             \
  }
FUSEDRNN_DECLARE_ISA(avx512)
FUSEDRNN_DECLARE_ISA(avx2)
FUSEDRNN_DECLARE_ISA(generic)

// The best instruction set this CPU runs, or a lower one named by the environment variable
// FUSEDRNN_ISA (avx2, generic; avx512, the best: any case): the tests run every build on one
// machine that way. One this CPU cannot run, or an unknown name, is said on stderr.
Isa best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa detect_isa() {
  const Isa best = best_isa();
  const char* forced = std::getenv("FUSEDRNN_ISA");
  if (!forced || !*forced) return best;
  std::string name(forced);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (name == "generic") return Isa::kGeneric;
  if (name == "avx2" || name == "avx2+fma") {  // (fusedrnn info's name for it)
    if (best != Isa::kGeneric) return Isa::kAvx2;
    std::fprintf(stderr, "fusedrnn: FUSEDRNN_ISA=%s: this CPU lacks AVX2 and FMA; using the "
                 "generic kernels\n", forced);
    return best;
  }
  if (name == "avx512") {
    if (best != Isa::kAvx512)
      std::fprintf(stderr, "fusedrnn: FUSEDRNN_ISA=%s: this CPU lacks AVX-512 (F, VL, DQ); "
                   "using %s\n", forced, isa_name(best));
    return best;
  }
  std::fprintf(stderr, "fusedrnn: FUSEDRNN_ISA: expected generic, avx2 or avx512 (any case), "
               "got '%s'; using %s, the best this CPU runs\n", forced, isa_name(best));
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

// A switch variable (FUSEDRNN_NO_BF16_DOT=1): on when set to anything but "" or "0", so that an
// empty or zero setting means unset, as every other FUSEDRNN_ variable reads it.
static bool env_switch(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

bool bf16_dot_allowed() {
  static const bool allowed = cpu_info().avx512_bf16 && !env_switch("FUSEDRNN_NO_BF16_DOT");
  return allowed;
}

int64_t packed_row_bytes() {
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::packed_row_bytes();
    case Isa::kAvx2: return avx2::packed_row_bytes();
    default: return generic::packed_row_bytes();
  }
}

bool bf16_dot_kernels() { return active_isa() == Isa::kAvx512 && bf16_dot_allowed(); }

bool amx_allowed() {
  static const bool allowed = [] {
    if (!cpu_info().amx || active_isa() != Isa::kAvx512 || env_switch("FUSEDRNN_NO_AMX"))
      return false;
#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
    // Linux hands out the 8 KiB tile state only to a process that asks (kernel 5.16+).
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return allowed;
}

int64_t bf16_row_pairs(int64_t K) {
  const int64_t pairs = (K + 1) / 2;
  return amx_allowed() ? (pairs + 15) / 16 * 16 : pairs;
}

const char* bf16_path() {
  if (active_isa() != Isa::kAvx512) return "bfloat16 pairs widened to float32 FMAs";
  if (amx_allowed())
    return bf16_dot_allowed() ? "AMX tiles (AMX-BF16) for batches, vdpbf16ps (AVX512-BF16) below"
                              : "AMX tiles (AMX-BF16) for batches, widened pairs below";
  return bf16_dot_allowed() ? "vdpbf16ps (AVX512-BF16)" : "bfloat16 pairs widened to float32 FMAs";
}

template <typename T>
std::vector<T>* thread_buffers() {
  thread_local std::vector<T> buffers[kWorkspaceSlots];
  return buffers;
}

template <typename T>
T* thread_workspace(WorkspaceSlot slot, int64_t elements) {
  std::vector<T>& buffer = thread_buffers<T>()[slot];
  if (static_cast<int64_t>(buffer.size()) < elements) {
    buffer = std::vector<T>();  // release first: never hold two
    buffer.resize(elements);
  }
  return buffer.data();
}

int64_t thread_workspace_bytes() {
  int64_t bytes = 0;
  for (int s = 0; s < kWorkspaceSlots; ++s)
    bytes += int64_t(thread_buffers<float>()[s].capacity() * sizeof(float) +
                     thread_buffers<double>()[s].capacity() * sizeof(double));
  return bytes;
}

void release_thread_workspaces() {
  for (int s = 0; s < kWorkspaceSlots; ++s) {
    thread_buffers<float>()[s] = std::vector<float>();
    thread_buffers<double>()[s] = std::vector<double>();
  }
}

// On leaving a call, however it leaves: every step is done (loops that publish step by step
// have said so already), so a layer waiting on this one never waits forever.
struct PublishAllSteps {
  int64_t* done;
  int64_t steps;
  ~PublishAllSteps() {
    if (done) __atomic_store_n(done, steps, __ATOMIC_RELEASE);
  }
};

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args) {
  PublishAllSteps publish{args.outputs_done, args.shape.T};
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
                                backward_workspace(args.shape, cell == CellKind::kGru ||
                                                                cell == CellKind::kLayerNormLstm));  // dgh apart
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::backward<T>(cell, args, work);
    case Isa::kAvx2: return avx2::backward<T>(cell, args, work);
    default: return generic::backward<T>(cell, args, work);
  }
}

template <typename T>
bool runs_side_by_side(CellKind cell, const SeqShape* shapes, int count, bool stack) {
  bool side = count > 1 && count == get_num_threads();
  for (int i = 0; side && i < count; ++i)
    side = side_by_side_pays(cell, shapes[i], count, int64_t(sizeof(T)), stack && i > 0);
  return side;
}

template <typename Args>
std::vector<SeqShape> shapes_of(const Args* args, int count) {
  std::vector<SeqShape> shapes;
  for (int i = 0; i < count; ++i) shapes.push_back(args[i].shape);
  return shapes;
}

// call(cell, args[i]) for every i: side by side where every call pays, else in turn.
template <typename T, typename Args>
void run_independent(CellKind cell, const Args* args, int count,
                     void (*call)(CellKind, const Args&)) {
  if (runs_side_by_side<T>(cell, shapes_of(args, count).data(), count, false))
    run_side_by_side(count, [&](int i) { call(cell, args[i]); });
  else
    for (int i = 0; i < count; ++i) call(cell, args[i]);
}

template <typename T>
void recurrent_forward_many(CellKind cell, const ForwardArgs<T>* args, int count) {
  run_independent<T>(cell, args, count, &recurrent_forward<T>);
}

template <typename T>
void recurrent_forward_stack(CellKind cell, ForwardArgs<T>* layers, int count) {
  if (!runs_side_by_side<T>(cell, shapes_of(layers, count).data(), count, true)) {
    for (int i = 0; i < count; ++i) recurrent_forward<T>(cell, layers[i]);
    return;
  }
  std::vector<int64_t> done(count, 0);  // steps finished per layer (atomic: release / acquire)
  for (int i = 0; i < count; ++i) {
    layers[i].outputs_done = &done[i];
    layers[i].inputs_ready = i > 0 ? &done[i - 1] : nullptr;
  }
  // In turn when the team is busy: a layer then finds its inputs complete.
  run_side_by_side(count, [&](int i) { recurrent_forward<T>(cell, layers[i]); });
}

template <typename T>
void recurrent_backward_many(CellKind cell, const BackwardArgs<T>* args, int count) {
  run_independent<T>(cell, args, count, &recurrent_backward<T>);
}

template bool runs_side_by_side<float>(CellKind, const SeqShape*, int, bool);
template bool runs_side_by_side<double>(CellKind, const SeqShape*, int, bool);
template float* thread_workspace<float>(WorkspaceSlot, int64_t);
template double* thread_workspace<double>(WorkspaceSlot, int64_t);

template void recurrent_forward<float>(CellKind, const ForwardArgs<float>&);
template void recurrent_forward<double>(CellKind, const ForwardArgs<double>&);
template void recurrent_backward<float>(CellKind, const BackwardArgs<float>&);
template void recurrent_backward<double>(CellKind, const BackwardArgs<double>&);
template void recurrent_forward_many<float>(CellKind, const ForwardArgs<float>*, int);
template void recurrent_forward_many<double>(CellKind, const ForwardArgs<double>*, int);
template void recurrent_forward_stack<float>(CellKind, ForwardArgs<float>*, int);
template void recurrent_forward_stack<double>(CellKind, ForwardArgs<double>*, int);
template void recurrent_backward_many<float>(CellKind, const BackwardArgs<float>*, int);
template void recurrent_backward_many<double>(CellKind, const BackwardArgs<double>*, int);

}  // namespace cpu
}  // namespace fusedrnn
