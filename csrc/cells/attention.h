// Attention: the math of one decoder step for one sample, forward and backward, shared by the
// CPU driver (cpu/attention.cpp) and any future GPU one. Shapes for one sample:
//   query [A] (additive: W_q q already projected; dot/general: q), keys_proj [S, A]
//   (additive: W_k k + b_k; dot: k; general: W k), values [S, K], mask [S] (1 = real position),
//   v [A] (additive only).
// additive: hidden[s] = tanh(keys_proj[s] + query), score[s] = v . hidden[s]
// dot/general: score[s] = keys_proj[s] . query
// weights = softmax of the scores over the real positions (exactly 0 at masked ones; all 0 when
// no position is real), context = sum_s weights[s] values[s].
// V, L: the loops over A and K run L values at a time as V (T and 1, or the CPU's SIMD vectors
// of floats: csrc/cpu/simd_math.inc); the dot products then sum lane-wise, then the lanes.
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct AttentionStep {
  // sum_i x[i] y[i], i < n.
  template <typename T, typename V, int64_t L>
  FUSEDRNN_HD static T dot(const T* x, const T* y, int64_t n) {
    T sum = T(0);
    int64_t i = 0;
    if constexpr (L > 1) {
      V lanes = V(T(0));
      for (; i < n / L * L; i += L)
        lanes = lanes + *reinterpret_cast<const V*>(x + i) * *reinterpret_cast<const V*>(y + i);
      sum = sum_lanes(lanes);
    }
    for (; i < n; ++i) sum += x[i] * y[i];
    return sum;
  }

  // scores: [S] scratch. hidden: [S, A] (additive; saved for backward), else unused.
  template <typename T, typename V = T, int64_t L = 1>
  FUSEDRNN_HD static void forward(bool additive, int64_t S, int64_t A, int64_t K, const T* query,
                                  const T* keys_proj, const T* values, const uint8_t* mask,
                                  const T* v, T* hidden, T* scores, T* weights, T* context) {
    bool any = false;
    T peak = T(0);
    for (int64_t s = 0; s < S; ++s) {
      if (!mask[s]) continue;
      const T* kp = keys_proj + s * A;
      T score;
      if (additive) {
        T* hs = hidden + s * A;
        for (int64_t i = 0; i < A / L; ++i)
          reinterpret_cast<V*>(hs)[i] = tanh_(reinterpret_cast<const V*>(kp)[i] +
                                              reinterpret_cast<const V*>(query)[i]);
        for (int64_t a = A / L * L; a < A; ++a) hs[a] = tanh_(kp[a] + query[a]);
        score = dot<T, V, L>(hs, v, A);
      } else {
        score = dot<T, V, L>(kp, query, A);
      }
      scores[s] = score;
      if (!any || score > peak || score != score) peak = score;  // a NaN score stays the peak
      any = true;
    }
    T total = T(0);
    for (int64_t s = 0; s < S; ++s) {
      weights[s] = mask[s] ? exp_(scores[s] - peak) : T(0);
      total += weights[s];
    }
    // As softmax in IEEE arithmetic (the reference, torch.softmax): a NaN score makes every
    // weight NaN, and a real position's weight of 0 still multiplies its values (0 * inf is
    // NaN); only masked positions are left out (their values are padding, never read).
    const T scale = total > T(0) || total != total ? T(1) / total : T(0);
    for (int64_t k = 0; k < K; ++k) context[k] = T(0);
    for (int64_t s = 0; s < S; ++s) {
      if (!mask[s]) continue;  // weight exactly 0
      weights[s] *= scale;
      const T* vs = values + s * K;
      for (int64_t k = 0; k < K; ++k) context[k] += weights[s] * vs[k];
    }
  }

  // dweights may be null. dscores: [S] scratch. Writes dquery [A], dkeys_proj [S, A],
  // dvalues [S, K] and (additive) dv [A] for this sample; all exactly 0 at masked positions.
  template <typename T, typename V = T, int64_t L = 1>
  FUSEDRNN_HD static void backward(bool additive, int64_t S, int64_t A, int64_t K, const T* query,
                                   const T* keys_proj, const T* values, const uint8_t* mask,
                                   const T* v, const T* hidden, const T* weights,
                                   const T* dcontext, const T* dweights, T* dscores, T* dquery,
                                   T* dkeys_proj, T* dvalues, T* dv) {
    T weighted = T(0);
    for (int64_t s = 0; s < S; ++s) {
      const T* vs = values + s * K;
      T* dvs = dvalues + s * K;
      if (!mask[s]) {  // padding, never read (as in the forward): NaN there must not leak in
        for (int64_t k = 0; k < K; ++k) dvs[k] = T(0);
        dscores[s] = T(0);
        continue;
      }
      const T dw = (dweights ? dweights[s] : T(0)) + dot<T, V, L>(dcontext, vs, K);
      for (int64_t k = 0; k < K; ++k) dvs[k] = weights[s] * dcontext[k];
      dscores[s] = dw;
      weighted += weights[s] * dw;
    }
    for (int64_t a = 0; a < A; ++a) dquery[a] = T(0);
    if (additive)
      for (int64_t a = 0; a < A; ++a) dv[a] = T(0);
    for (int64_t s = 0; s < S; ++s) {
      const T ds = weights[s] * (dscores[s] - weighted);  // softmax backward (0 where masked)
      T* dkp = dkeys_proj + s * A;
      if (!mask[s]) {
        for (int64_t a = 0; a < A; ++a) dkp[a] = T(0);
        continue;
      }
      if (additive) {
        const T* hs = hidden + s * A;
        for (int64_t a = 0; a < A; ++a) {
          const T pre = ds * v[a] * d_tanh(hs[a]);
          dkp[a] = pre;
          dquery[a] += pre;
          dv[a] += ds * hs[a];
        }
      } else {
        const T* kp = keys_proj + s * A;
        for (int64_t a = 0; a < A; ++a) {
          dkp[a] = ds * query[a];
          dquery[a] += ds * kp[a];
        }
      }
    }
  }
};

}  // namespace fusedrnn
