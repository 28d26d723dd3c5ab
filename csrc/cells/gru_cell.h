// GRU: the pointwise math of one hidden unit for one step, forward and backward.
// Gate order r, z, n (PyTorch). With gx = W_ih x + b_ih and gh = W_hh h + b_hh:
//   r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   n = tanh(gx_n + r * gh_n)
//   h' = (1 - z) * n + z * h
// Saved: gates (r, z, n) and extra = gh_n (the recurrent n-part, needed for dr).
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr bool kSplitRecurrentGrad = true;  // d(gh_n) = d(gx_n) * r
  static constexpr bool kHasCellState = false;
  static constexpr bool kUsesExtra = true;

  // kSave = false (inference) skips storing what only backward needs. Strides as in LstmCell.
  template <typename T, bool kSave = true>
  FUSEDRNN_HD static void forward(const T* gx, const T* gh, int64_t H, int64_t S, int64_t j,
                                  T& h, T& /*c*/, T* gates, T* extra,
                                  const T* /*peep*/ = nullptr) {
    const T r = sigmoid(gx[j] + gh[j]);
    const T z = sigmoid(gx[H + j] + gh[S + j]);
    const T gh_n = gh[2 * S + j];
    const T n = tanh_(gx[2 * H + j] + r * gh_n);
    h = (T(1) - z) * n + z * h;
    if (kSave) {
      gates[j] = r;
      gates[H + j] = z;
      gates[2 * H + j] = n;
      extra[j] = gh_n;
    }
  }

  template <typename T>
  FUSEDRNN_HD static void backward(const T* gates, const T* extra, T h_prev, int64_t H, int64_t j,
                                   T dh, T& /*dc*/, T* dgx, T* dgh, T& dh_direct,
                                   const T* /*peep*/ = nullptr) {
    const T r = gates[j], z = gates[H + j], n = gates[2 * H + j];
    const T dn = dh * (T(1) - z) * d_tanh(n);
    const T dr = dn * extra[j] * d_sigmoid(r);
    const T dz = dh * (h_prev - n) * d_sigmoid(z);
    dgx[j] = dr;
    dgx[H + j] = dz;
    dgx[2 * H + j] = dn;
    dgh[j] = dr;
    dgh[H + j] = dz;
    dgh[2 * H + j] = dn * r;
    dh_direct = dh * z;
  }
};

}  // namespace fusedrnn
