// Elman RNN: h' = act(gx + gh), act tanh or relu (a template flag, chosen at one switch).
// Saved: gates = h' itself (the derivative is written in terms of the output). No extra.
#pragma once
#include "common/activations.h"

namespace fusedrnn {

template <bool kRelu>
struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr bool kHasCellState = false;
  static constexpr bool kUsesExtra = false;
  static constexpr bool kResetBefore = false;
  static constexpr bool kLayerNorm = false;

  // kSave = false (inference) skips storing what only backward needs. Strides as in LstmCell.
  template <typename T, bool kSave = true>
  FUSEDRNN_HD static void forward(const T* gx, const T* gh, int64_t /*H*/, int64_t /*S*/,
                                  int64_t j, T& h, T& /*c*/, T* gates, T* /*extra*/,
                                  const T* /*peep*/ = nullptr) {
    const T a = gx[j] + gh[j];
    h = kRelu ? relu(a) : tanh_(a);
    if (kSave) gates[j] = h;
  }

  template <typename T>
  FUSEDRNN_HD static void backward(const T* gates, const T* /*extra*/, T /*h_prev*/, int64_t /*H*/,
                                   int64_t j, T dh, T& /*dc*/, T* dgx, T* /*dgh*/, T& dh_direct,
                                   const T* /*peep*/ = nullptr) {
    dgx[j] = kRelu ? relu_grad(gates[j], dh) : dh * d_tanh(gates[j]);
    dh_direct = T(0);
  }
};

}  // namespace fusedrnn
