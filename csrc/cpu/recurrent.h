// CPU sequence drivers: one layer, one direction, the whole sequence in one call.
// The implementation is recurrent_impl.inc, compiled once per instruction set.
#pragma once
#include "common/kernel_args.h"

namespace fusedrnn {
namespace cpu {

enum class Isa { kGeneric, kAvx2, kAvx512 };
// The best kernels this CPU runs (AVX-512 needs F, VL and DQ), and those in use: the best, or
// a lower set FUSEDRNN_ISA names.
Isa best_isa();
Isa active_isa();
const char* isa_name(Isa isa);
// The active kernels' packed products pad each block's G*U rows to a multiple of this many
// bytes (recurrent_impl.inc's chunk_rows: a tile's width).
int64_t packed_row_bytes();

// bfloat16 products (fusedrnn.autocast): whether the CPU has vdpbf16ps for the AVX-512 kernels
// to use (FUSEDRNN_NO_BF16_DOT=1: not, to compare), and the path the active kernels take.
bool bf16_dot_allowed();
// ... and the active kernels are the AVX-512 ones, which take it (bf16_dot_tile).
bool bf16_dot_kernels();
// Whether the AVX-512 kernels may run bfloat16 products on AMX tiles: the CPU has AMX-BF16, the
// OS grants this process the tile state (Linux: arch_prctl, asked once) and FUSEDRNN_NO_AMX is
// unset. Where it is, a packed bfloat16 row holds a whole number of tiles' 16 pairs of k.
bool amx_allowed();
int64_t bf16_row_pairs(int64_t K);
const char* bf16_path();

// Workspace (elements) of the forward driver: h double buffer 2NH, gh N*GH, extra scratch NH,
// a dummy row H.
inline int64_t forward_workspace(const SeqShape& s) { return 3 * s.N * s.H + s.N * s.GH() + s.H; }
// Workspace (elements) of the backward driver: dh double buffer 2NH, a dummy row H, then the
// gate gradients dgx [T, N, GH] and, for cells whose recurrent gradient differs (GRU), dgh.
inline int64_t backward_workspace(const SeqShape& s, bool split_recurrent_grad) {
  return 2 * s.N * s.H + s.H + (split_recurrent_grad ? 2 : 1) * s.T * s.N * s.GH();
}

// This thread's workspace number `slot` (inference gates, forward, backward, ...), at
// least `elements` long, grown as needed and kept, like a caching allocator: fresh pages cost a
// fault each, which took up to a tenth of a training step.
enum WorkspaceSlot {
  kInferenceGates = 0,
  kForwardWork = 1,
  kBackwardWork = 2,
  kPackedProjection = 3,  // a bfloat16 forward's projection, in its slices' packed row order
  kWidenedStates = 4,     // bfloat16 states widened to float32 for the widening products
  kWorkspaceSlots = 5
};
template <typename T>
T* thread_workspace(WorkspaceSlot slot, int64_t elements);
// The calling thread's workspaces: their bytes, and giving them back (fusedrnn.empty_cache).
int64_t thread_workspace_bytes();
void release_thread_workspaces();

template <typename T>
void recurrent_forward(CellKind cell, const ForwardArgs<T>& args);

template <typename T>
void recurrent_backward(CellKind cell, const BackwardArgs<T>& args);

// Independent calls (the two directions of a bidirectional layer): side by side, one thread
// each, where that beats running them one after another on the whole team; else in turn.
// runs_side_by_side says which, from the cell, the shapes and the thread count alone (so results
// stay reproducible: each call then runs on one thread, wherever it runs); `stack`: the calls
// are the layers of a stack (recurrent_forward_stack).
template <typename T>
bool runs_side_by_side(CellKind cell, const SeqShape* shapes, int count, bool stack);
template <typename T>
void recurrent_forward_many(CellKind cell, const ForwardArgs<T>* args, int count);
template <typename T>
void recurrent_backward_many(CellKind cell, const BackwardArgs<T>* args, int count);

// The layers of a unidirectional stack (layer i's x is layer i-1's y): where the layers pay side
// by side, each runs on one thread a few steps behind the layer below (a wavefront); else in turn.
template <typename T>
void recurrent_forward_stack(CellKind cell, ForwardArgs<T>* layers, int count);

}  // namespace cpu
}  // namespace fusedrnn
