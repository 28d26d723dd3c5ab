// LayerNorm-LSTM (haste's LayerNormLSTM, in PyTorch's gate order i, f, g, o): the math of one
// sample's step, forward and backward, on rows (a layer norm needs every unit of its row).
//   a   = g_ih * LN(W_ih x) + b_ih + g_hh * LN(W_hh h) + b_hh         [4H]
//   c'  = f * c + i * g        h' = o * tanh(g_c * LN(c') + b_c)
// LN(v) = (v - mean v) * rstd, rstd = 1 / sqrt(var v + eps), over the row (4H, or H for c').
// The biases come after the normalization (before it they would cancel); c carries c'.
// ln [10H]: g_ih [4H], g_hh [4H], g_c [H], b_c [H].
// Saved per step and sample (extra, kExtraWidth(H) values): c_prev [H], LN(W_ih x) [4H],
// LN(W_hh h) [4H], LN(c') [H], then the three rstd. Backward: the pre-activation gradient da
// [4H] (kept for the gains' and biases' gradients), and the products' own gradients
// dgx = LN'(da * g_ih) (for dx, dW_ih) and dgh = LN'(da * g_hh) (for dh_prev, dW_hh).
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct LayerNormLstmCell {
  static constexpr int kGates = 4;
  static constexpr bool kSplitRecurrentGrad = true;  // dgh = LN'(da g_hh) != dgx
  static constexpr bool kHasCellState = true;
  static constexpr bool kUsesExtra = true;
  static constexpr bool kResetBefore = false;
  static constexpr bool kLayerNorm = true;

  FUSEDRNN_HD static constexpr int64_t extra_width(int64_t H) { return 10 * H + 3; }

  // hat = (v - mean) * rstd over n values; returns rstd. Two passes (the variance of the
  // centred values: no cancellation).
  template <typename T>
  FUSEDRNN_HD static T normalize(const T* v, int64_t n, T eps, T* hat) {
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < n; ++k) sum += v[k];
    const T mean = sum / T(n);
    T var = T(0);
#pragma omp simd reduction(+ : var)
    for (int64_t k = 0; k < n; ++k) var += (v[k] - mean) * (v[k] - mean);
    const T rstd = T(1) / std::sqrt(var / T(n) + eps);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) hat[k] = (v[k] - mean) * rstd;
    return rstd;
  }

  // out = the gradient reaching v from d_hat, the one reaching hat = LN(v); out may be d_hat.
  template <typename T>
  FUSEDRNN_HD static void normalize_backward(const T* d_hat, const T* hat, int64_t n, T rstd,
                                             T* out) {
    T m1 = T(0), m2 = T(0);
#pragma omp simd reduction(+ : m1, m2)
    for (int64_t k = 0; k < n; ++k) {
      m1 += d_hat[k];
      m2 += d_hat[k] * hat[k];
    }
    m1 /= T(n);
    m2 /= T(n);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) out[k] = rstd * (d_hat[k] - m1 - hat[k] * m2);
  }

  // One sample's step: ax = W_ih x, ah = W_hh h (no biases) [4H]; c [H] in/out; h [H] out;
  // gates [4H] out (i, f, g, o; may alias ax); ext [extra_width(H)] (c_prev written with kSave).
  // V: the type the unit loops run on, L units at a time (T and 1; the CPU's SIMD vectors of
  // floats where H is a multiple of their width): the same math, the activations' overloads.
  template <typename T, typename V, int64_t L, bool kSave>
  FUSEDRNN_HD static void forward(const T* ax, const T* ah, const T* ln, const T* b_ih,
                                  const T* b_hh, int64_t H, T eps, T* c, T* h, T* gates, T* ext) {
    const int64_t G = 4 * H, HL = H / L;
    T* x_hat = ext + H;
    T* h_hat = ext + 5 * H;
    T* c_hat = ext + 9 * H;
    T* rstd = ext + 10 * H;
    rstd[0] = normalize(ax, G, eps, x_hat);
    rstd[1] = normalize(ah, G, eps, h_hat);
    if (kSave)
      for (int64_t j = 0; j < H; ++j) ext[j] = c[j];
    auto* xv = reinterpret_cast<const V*>(x_hat);
    auto* hv = reinterpret_cast<const V*>(h_hat);
    auto* g_ih = reinterpret_cast<const V*>(ln);
    auto* g_hh = reinterpret_cast<const V*>(ln + G);
    auto* bi = reinterpret_cast<const V*>(b_ih);
    auto* bh = reinterpret_cast<const V*>(b_hh);
    auto* cv = reinterpret_cast<V*>(c);
    auto* gv = reinterpret_cast<V*>(gates);
    for (int64_t j = 0; j < HL; ++j) {
      V a[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t r = k * HL + j;
        a[k] = g_ih[r] * xv[r] + bi[r] + g_hh[r] * hv[r] + bh[r];
      }
      const V i = sigmoid(a[0]), f = sigmoid(a[1]), g = tanh_(a[2]), o = sigmoid(a[3]);
      cv[j] = f * cv[j] + i * g;
      gv[j] = i;
      gv[HL + j] = f;
      gv[2 * HL + j] = g;
      gv[3 * HL + j] = o;
    }
    rstd[2] = normalize(c, H, eps, c_hat);
    auto* chv = reinterpret_cast<const V*>(c_hat);
    auto* g_c = reinterpret_cast<const V*>(ln + 2 * G);
    auto* b_c = g_c + HL;
    auto* out = reinterpret_cast<V*>(h);
    for (int64_t j = 0; j < HL; ++j) out[j] = gv[3 * HL + j] * tanh_(g_c[j] * chv[j] + b_c[j]);
  }

  // One sample's step back: dh [H] the gradient reaching h' (dy included); dc [H] in, reaching
  // c'; out, reaching c. Writes da [4H], d_cn [H] (reaching g_c LN(c') + b_c), dgx, dgh [4H];
  // scratch [H]. V, L as forward's.
  template <typename T, typename V, int64_t L>
  FUSEDRNN_HD static void backward(const T* gates, const T* ext, const T* ln, int64_t H,
                                   const T* dh, T* dc, T* da, T* d_cn, T* dgx, T* dgh,
                                   T* scratch) {
    const int64_t G = 4 * H, HL = H / L;
    const T* c_hat = ext + 9 * H;
    const T* rstd = ext + 10 * H;
    auto* gv = reinterpret_cast<const V*>(gates);
    auto* c_prev = reinterpret_cast<const V*>(ext);
    auto* chv = reinterpret_cast<const V*>(c_hat);
    auto* g_c = reinterpret_cast<const V*>(ln + 2 * G);
    auto* b_c = g_c + HL;
    auto* dhv = reinterpret_cast<const V*>(dh);
    auto* dcv = reinterpret_cast<V*>(dc);
    auto* dav = reinterpret_cast<V*>(da);
    auto* dcnv = reinterpret_cast<V*>(d_cn);
    auto* sv = reinterpret_cast<V*>(scratch);
    for (int64_t j = 0; j < HL; ++j) {
      const V o = gv[3 * HL + j];
      const V tanh_cn = tanh_(g_c[j] * chv[j] + b_c[j]);
      dcnv[j] = dhv[j] * o * d_tanh(tanh_cn);
      sv[j] = dcnv[j] * g_c[j];
      dav[3 * HL + j] = dhv[j] * tanh_cn * d_sigmoid(o);
    }
    normalize_backward(scratch, c_hat, H, rstd[2], scratch);  // the h path's part of dc'
    for (int64_t j = 0; j < HL; ++j) {
      const V i = gv[j], f = gv[HL + j], g = gv[2 * HL + j];
      const V dct = dcv[j] + sv[j];
      dav[j] = dct * g * d_sigmoid(i);
      dav[HL + j] = dct * c_prev[j] * d_sigmoid(f);
      dav[2 * HL + j] = dct * i * d_tanh(g);
      dcv[j] = dct * f;
    }
#pragma omp simd
    for (int64_t r = 0; r < G; ++r) {
      dgx[r] = da[r] * ln[r];
      dgh[r] = da[r] * ln[G + r];
    }
    normalize_backward(dgx, ext + H, G, rstd[0], dgx);
    normalize_backward(dgh, ext + 5 * H, G, rstd[1], dgh);
  }
};

}  // namespace fusedrnn
