// Shapes and layout rules for every kernel. Rightmost dimension is contiguous.
//   T time, N batch, I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4); GH = G*H.
//   x [T, N, I]; h0, c0, h_n, c_n [N, H]; w_ih [GH, I]; w_hh [GH, H]; b_ih, b_hh [GH];
//   y [T, N, H]; lengths [N] (int64, each in [0, T]) or null for "all T".
// Saved for backward, all in time order: gates [T, N, GH] (activated gates), extra [T, N, H]
// (LSTM c_prev, GRU the recurrent n-part W_hn h + b_hn, RNN unused), h_prev [T, N, H].
#pragma once
#include <cstdint>

namespace fusedrnn {

// P: an LSTM's projection size (torch's proj_size; 0: none): h = W_hr (o * tanh(c)) [N, P],
// w_hr [P, H], and h0, h_n, y, h_prev, dh_n, dh0 are P wide, w_hh [GH, P]; c stays H wide.
struct SeqShape {
  int64_t T, N, I, H, G;
  int64_t P = 0;
  int64_t GH() const { return G * H; }
  int64_t state() const { return P > 0 ? P : H; }  // the width of h
};

// Does sample n take part in the step at time t? (PyTorch packed-sequence semantics.)
inline bool is_active(const int64_t* lengths, int64_t n, int64_t t) {
  return lengths == nullptr || t < lengths[n];
}

}  // namespace fusedrnn
