// The argument blocks of a recurrent kernel (one layer, one direction), shared by the CPU and
// CUDA drivers. Shapes as in shapes.h; pointers are device pointers for the CUDA driver.
#pragma once
#include "common/shapes.h"

namespace fusedrnn {
namespace cpu {
class WeightCache;
}

// kGruResetBefore: the GRU with its reset gate before the product (cells/gru_cell.h);
// kLayerNormLstm: cells/layernorm_lstm_cell.h.
enum class CellKind { kRnnTanh, kRnnRelu, kLstm, kGru, kGruResetBefore, kLayerNormLstm };

inline bool is_gru(CellKind c) { return c == CellKind::kGru || c == CellKind::kGruResetBefore; }

// G, the number of gates: RNN 1, GRU 3, LSTM 4.
inline int64_t gate_count(CellKind c) {
  return c == CellKind::kLstm || c == CellKind::kLayerNormLstm ? 4 : is_gru(c) ? 3 : 1;
}

template <typename T>
struct ForwardArgs {
  SeqShape shape;
  const T* x;        // [T, N, I]
  const T* h0;       // [N, H]
  const T* c0;       // [N, H] (LSTM) or null
  const T* w_ih;     // [GH, I]
  const T* w_hh;     // [GH, H]
  const T* b_ih;     // [GH]
  const T* b_hh;     // [GH]
  const int64_t* lengths;  // [N] or null
  bool reverse;
  T* y;              // [T, N, H]
  T* h_n;            // [N, H]
  T* c_n;            // [N, H] (LSTM) or null
  T* gates;          // [T, N, GH]: the saved activations when training, else a workspace
                     // (CPU: null, the driver takes its own where it needs one)
  T* extra;          // [T, N, H] when training and the cell uses it, else null
  T* h_prev;         // [T, N, H] when training, else null
  // CPU, a stacked layer run a few steps behind the layer below it (one thread each): only x's
  // steps [0, *inputs_ready) are written so far; the call publishes its own finished steps in
  // *outputs_done. Null: x is complete, and nobody waits for y.
  const int64_t* inputs_ready;
  int64_t* outputs_done;
  // CPU: the packed weights kept between calls (cpu/weight_cache.h), or null: pack per call.
  cpu::WeightCache* cache;
  // CPU, float32 (fusedrnn.autocast): the products W_ih x and W_hh h from bfloat16 values,
  // accumulated in float32; the biases, gates, c and h stay float32.
  bool bf16;
  const T* w_ph;     // [3H] LSTM peepholes (i, f, o; cells/lstm_cell.h) or null
  const T* w_hr;     // [P, H] LSTM projection (shape.P > 0) or null
  const T* ln;       // [10H] LayerNorm-LSTM gains and the cell norm's bias, or null ...
  T ln_eps;          // ... and its epsilon (extra then holds 10H + 3 values a step)
};

template <typename T>
struct BackwardArgs {
  SeqShape shape;
  const T* x;        // [T, N, I]
  const T* w_ih;     // [GH, I]
  const T* w_hh;     // [GH, H]
  const int64_t* lengths;  // [N] or null
  bool reverse;
  const T* gates;    // [T, N, GH] saved by forward
  const T* extra;    // [T, N, H] saved by forward (or null)
  const T* h_prev;   // [T, N, H] saved by forward
  const T* dy;       // [T, N, H]
  const T* dh_n;     // [N, H]
  const T* dc_n;     // [N, H] (LSTM) or null
  T* dx;             // [T, N, I] (CPU: null where no dx is wanted)
  T* dh0;            // [N, H]
  T* dc0;            // [N, H] (LSTM) or null
  // CPU: these four null (and dw_ph, dw_hr, dln below) where no parameter gradient is wanted
  T* dw_ih;          // [GH, I]
  T* dw_hh;          // [GH, H]
  T* db_ih;          // [GH]
  T* db_hh;          // [GH]
  // CPU, float32 (fusedrnn.autocast): every product (dgates W_hh each step, dgates W_ih, the
  // weight gradients) from bfloat16 values, accumulated in float32.
  bool bf16;
  const T* w_ph;     // [3H] LSTM peepholes or null ...
  T* dw_ph;          // [3H] ... and their gradient (with w_ph)
  const T* w_hr;     // [P, H] LSTM projection (shape.P > 0) or null ...
  T* dw_hr;          // [P, H] ... and its gradient
  const T* ln;       // [10H] LayerNorm-LSTM parameters or null ...
  T* dln;            // [10H] ... and their gradient
};

}  // namespace fusedrnn
