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

  // The mean and the sum of squared deviations M2 of `segments` runs of v, run k at
  // v[k * stride + j] for j in [j0, j1): two passes (no cancellation). A whole row: one run.
  template <typename T>
  FUSEDRNN_HD static void partial_stats(const T* v, int64_t stride, int segments, int64_t j0,
                                        int64_t j1, T& mean, T& m2) {
    T sum = T(0);
    for (int k = 0; k < segments; ++k) {
      const T* run = v + k * stride;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = j0; j < j1; ++j) sum += run[j];
    }
    mean = sum / T(segments * (j1 - j0));
    T dev = T(0);
    for (int k = 0; k < segments; ++k) {
      const T* run = v + k * stride;
#pragma omp simd reduction(+ : dev)
      for (int64_t j = j0; j < j1; ++j) dev += (run[j] - mean) * (run[j] - mean);
    }
    m2 = dev;
  }

  // 1 / sqrt(var + eps) from the whole row's M2 over n values.
  template <typename T>
  FUSEDRNN_HD static T rstd_of(T m2, int64_t n, T eps) {
    return T(1) / std::sqrt(m2 / T(n) + eps);
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

  // Units [j0, j1) of one sample's step given its rows' statistics (mean mx, my; rstd rx, rh):
  // unit j of gate k at ax[k * sx + j] (W_ih x) and ah[k * sh + j] (W_hh h, no biases); writes
  // x_hat, h_hat [4H] (the normalized rows), c [H] (c' from c) and gates [4H] (i, f, g, o; may
  // alias ax). V, L: the unit loops' type and width (T and 1, or the CPU's SIMD vectors of
  // floats where j0, j1 and the strides are multiples of L).
  template <typename T, typename V, int64_t L>
  FUSEDRNN_HD static void gate_units(const T* ax, int64_t sx, const T* ah, int64_t sh, T mx, T rx,
                                     T mh, T rh, const T* ln, const T* b_ih, const T* b_hh,
                                     int64_t H, int64_t j0, int64_t j1, T* c, T* gates, T* x_hat,
                                     T* h_hat) {
    const int64_t G = 4 * H;
    for (int64_t j = j0 / L; j < j1 / L; ++j) {
      V a[4];
      for (int k = 0; k < 4; ++k) {
        const V xh = (reinterpret_cast<const V*>(ax + k * sx)[j] - mx) * rx;
        const V hh = (reinterpret_cast<const V*>(ah + k * sh)[j] - mh) * rh;
        reinterpret_cast<V*>(x_hat + k * H)[j] = xh;
        reinterpret_cast<V*>(h_hat + k * H)[j] = hh;
        a[k] = reinterpret_cast<const V*>(ln + k * H)[j] * xh +
               reinterpret_cast<const V*>(b_ih + k * H)[j] +
               reinterpret_cast<const V*>(ln + G + k * H)[j] * hh +
               reinterpret_cast<const V*>(b_hh + k * H)[j];
      }
      const V i = sigmoid(a[0]), f = sigmoid(a[1]), g = tanh_(a[2]), o = sigmoid(a[3]);
      V* cv = reinterpret_cast<V*>(c) + j;
      *cv = f * *cv + i * g;
      reinterpret_cast<V*>(gates)[j] = i;
      reinterpret_cast<V*>(gates + H)[j] = f;
      reinterpret_cast<V*>(gates + 2 * H)[j] = g;
      reinterpret_cast<V*>(gates + 3 * H)[j] = o;
    }
  }

  // Units [j0, j1) of the step's output given c's statistics: c_hat = LN(c'), h = o * tanh(g_c
  // c_hat + b_c).
  template <typename T, typename V, int64_t L>
  FUSEDRNN_HD static void output_units(const T* c, T mc, T rc, const T* ln, const T* gates,
                                       int64_t H, int64_t j0, int64_t j1, T* c_hat, T* h) {
    const T* g_c = ln + 8 * H;
    for (int64_t j = j0 / L; j < j1 / L; ++j) {
      const V ch = (reinterpret_cast<const V*>(c)[j] - mc) * rc;
      reinterpret_cast<V*>(c_hat)[j] = ch;
      reinterpret_cast<V*>(h)[j] = reinterpret_cast<const V*>(gates + 3 * H)[j] *
                                   tanh_(reinterpret_cast<const V*>(g_c)[j] * ch +
                                         reinterpret_cast<const V*>(g_c + H)[j]);
    }
  }

  // One sample's step: ax = W_ih x, ah = W_hh h (no biases) [4H]; c [H] in/out; h [H] out;
  // gates [4H] out (may alias ax); ext [extra_width(H)] (c_prev written with kSave).
  template <typename T, typename V, int64_t L, bool kSave>
  FUSEDRNN_HD static void forward(const T* ax, const T* ah, const T* ln, const T* b_ih,
                                  const T* b_hh, int64_t H, T eps, T* c, T* h, T* gates, T* ext) {
    const int64_t G = 4 * H;
    T* rstd = ext + 10 * H;
    T mx, mh, mc, m2;
    partial_stats(ax, H, 4, 0, H, mx, m2);
    rstd[0] = rstd_of(m2, G, eps);
    partial_stats(ah, H, 4, 0, H, mh, m2);
    rstd[1] = rstd_of(m2, G, eps);
    if (kSave)
      for (int64_t j = 0; j < H; ++j) ext[j] = c[j];
    gate_units<T, V, L>(ax, H, ah, H, mx, rstd[0], mh, rstd[1], ln, b_ih, b_hh, H, 0, H, c,
                        gates, ext + H, ext + 5 * H);
    partial_stats(c, H, 1, 0, H, mc, m2);
    rstd[2] = rstd_of(m2, H, eps);
    output_units<T, V, L>(c, mc, rstd[2], ln, gates, H, 0, H, ext + 9 * H, h);
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
