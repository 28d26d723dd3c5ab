// LSTM: the pointwise math of one hidden unit for one step, forward and backward.
// Gate order i, f, g, o (PyTorch). For unit j the pre-activations are
//   a_k = gx[k*H + j] + gh[k*S + j]      (gx = W_ih x + b_ih, gh = W_hh h + b_hh; S = gh_stride)
//   i = sigma(a_i + p_i c)  f = sigma(a_f + p_f c)  g = tanh(a_g)
//   c' = f * c + i * g        o = sigma(a_o + p_o c')        h' = o * tanh(c')
// with the peepholes p = peep[k*H + j], k = 0, 1, 2 for i, f, o (ONNX's LSTM with P; null: none,
// PyTorch's LSTM). Saved: gates (i, f, g, o) and extra = c (the cell state entering the step).
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr bool kSplitRecurrentGrad = false;  // d(gx) == d(gh)
  static constexpr bool kHasCellState = true;
  static constexpr bool kUsesExtra = true;
  static constexpr bool kResetBefore = false;
  static constexpr bool kLayerNorm = false;

  // Gate k of unit j: gx[k*H + j], gates[k*H + j], gh[k*S + j] (the CPU's packed products have
  // their own stride). `gates` may alias `gx` (each unit reads its own entries before writing).
  // kSave = false (inference) skips storing what only backward needs.
  template <typename T, bool kSave = true>
  FUSEDRNN_HD static void forward(const T* gx, const T* gh, int64_t H, int64_t S, int64_t j,
                                  T& h, T& c, T* gates, T* extra, const T* peep = nullptr) {
    T a_i = gx[j] + gh[j], a_f = gx[H + j] + gh[S + j];
    const T a_o = gx[3 * H + j] + gh[3 * S + j];
    if (peep) {
      a_i = a_i + peep[j] * c;
      a_f = a_f + peep[H + j] * c;
    }
    const T i = sigmoid(a_i);
    const T f = sigmoid(a_f);
    const T g = tanh_(gx[2 * H + j] + gh[2 * S + j]);
    if (kSave) extra[j] = c;
    c = f * c + i * g;
    const T o = sigmoid(peep ? a_o + peep[2 * H + j] * c : a_o);
    h = o * tanh_(c);
    if (kSave) {
      gates[j] = i;
      gates[H + j] = f;
      gates[2 * H + j] = g;
      gates[3 * H + j] = o;
    }
  }

  // dh: total gradient reaching h' (from y and from the next step). dc: in, gradient reaching
  // c'; out, gradient reaching c. Writes the pre-activation gradients; dh_direct (the part of
  // dh/dh_prev that bypasses W_hh) is 0 for an LSTM. The peepholes' own gradients are sums over
  // steps and samples (dgx_i c, dgx_f c, dgx_o c'), formed by the drivers after the loop.
  template <typename T>
  FUSEDRNN_HD static void backward(const T* gates, const T* extra, T /*h_prev*/, int64_t H,
                                   int64_t j, T dh, T& dc, T* dgx, T* /*dgh*/, T& dh_direct,
                                   const T* peep = nullptr) {
    const T i = gates[j], f = gates[H + j], g = gates[2 * H + j], o = gates[3 * H + j];
    const T c_prev = extra[j];
    const T tanh_c = tanh_(f * c_prev + i * g);
    const T da_o = dh * tanh_c * d_sigmoid(o);
    T dc_total = dc + dh * o * d_tanh(tanh_c);
    if (peep) dc_total = dc_total + da_o * peep[2 * H + j];
    const T da_i = dc_total * g * d_sigmoid(i), da_f = dc_total * c_prev * d_sigmoid(f);
    dgx[j] = da_i;
    dgx[H + j] = da_f;
    dgx[2 * H + j] = dc_total * i * d_tanh(g);
    dgx[3 * H + j] = da_o;
    dc = dc_total * f;
    if (peep) dc = dc + da_i * peep[j] + da_f * peep[H + j];
    dh_direct = T(0);
  }
};

}  // namespace fusedrnn
