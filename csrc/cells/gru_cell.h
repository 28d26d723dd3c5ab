// GRU: the pointwise math of one hidden unit for one step, forward and backward.
// Gate order r, z, n (PyTorch). With gx = W_ih x + b_ih and gh = W_hh h + b_hh:
//   r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   n = tanh(gx_n + r * gh_n)
//   h' = (1 - z) * n + z * h
// Saved: gates (r, z, n) and extra = gh_n (the recurrent n-part, needed for dr).
// GruResetBeforeCell below: the reset gate before the product (Keras' reset_after=False).
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr bool kSplitRecurrentGrad = true;  // d(gh_n) = d(gx_n) * r
  static constexpr bool kHasCellState = false;
  static constexpr bool kUsesExtra = true;
  static constexpr bool kResetBefore = false;
  static constexpr bool kLayerNorm = false;

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

// The reset-before GRU (Keras' reset_after=False, ONNX's linear_before_reset=0): n's recurrent
// product reads r * h,
//   n = tanh(gx_n + gh_n),   gh_n = W_hn (r * h) + b_hn,
// so a step runs in two phases (the drivers' reset_before_loop): gh_r and gh_z from h, then
// r * h for every unit (reset_input; saved as extra: backward's dW_hn = da_n^T (r * h)), then
// gh_n and forward. Backward likewise: phase one (backward) the z and n gradients, phase two,
// once d(r * h) = da_n W_hn is known for every unit, backward_reset. dgh = dgx: W_hh's rows see
// the same pre-activation gradients as W_ih's.
struct GruResetBeforeCell {
  static constexpr int kGates = 3;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr bool kHasCellState = false;
  static constexpr bool kUsesExtra = true;
  static constexpr bool kResetBefore = true;
  static constexpr bool kLayerNorm = false;

  // r * h, what n's product reads.
  template <typename T>
  FUSEDRNN_HD static T reset_input(T gx_r, T gh_r, T h) {
    return sigmoid(gx_r + gh_r) * h;
  }

  // gh holds all three recurrent parts, gh_n already the product of r * h. Saves the gates only
  // (extra, r * h, was written by the first phase).
  template <typename T, bool kSave = true>
  FUSEDRNN_HD static void forward(const T* gx, const T* gh, int64_t H, int64_t S, int64_t j,
                                  T& h, T& /*c*/, T* gates, T* /*extra*/,
                                  const T* /*peep*/ = nullptr) {
    const T r = sigmoid(gx[j] + gh[j]);
    const T z = sigmoid(gx[H + j] + gh[S + j]);
    const T n = tanh_(gx[2 * H + j] + gh[2 * S + j]);
    h = (T(1) - z) * n + z * h;
    if (kSave) {
      gates[j] = r;
      gates[H + j] = z;
      gates[2 * H + j] = n;
    }
  }

  // Phase one: da_z, da_n and the direct part dh * z of dh_prev (da_r: backward_reset).
  template <typename T>
  FUSEDRNN_HD static void backward(const T* gates, const T* /*extra*/, T h_prev, int64_t H,
                                   int64_t j, T dh, T& /*dc*/, T* dgx, T* /*dgh*/, T& dh_direct,
                                   const T* /*peep*/ = nullptr) {
    const T z = gates[H + j], n = gates[2 * H + j];
    dgx[j] = T(0);  // (backward_reset's)
    dgx[H + j] = dh * (h_prev - n) * d_sigmoid(z);
    dgx[2 * H + j] = dh * (T(1) - z) * d_tanh(n);
    dh_direct = dh * z;
  }

  // Phase two: d_rh = (da_n W_hn)[j], the gradient reaching (r * h)[j]: da_r, and the part of
  // dh_prev through r * h.
  template <typename T>
  FUSEDRNN_HD static void backward_reset(const T* gates, T h_prev, T d_rh, int64_t j, T* dgx,
                                         T& dh_prev) {
    const T r = gates[j];
    dgx[j] = d_rh * h_prev * d_sigmoid(r);
    dh_prev = dh_prev + d_rh * r;
  }
};

}  // namespace fusedrnn
