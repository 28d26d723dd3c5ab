// Attention: the math of one decoder step for one sample, forward and backward, shared by the
// CPU driver (cpu/attention.cpp) and any future GPU one. Shapes for one sample:
//   query [A] (additive: W_q q already projected; dot/general: q), keys_proj [S, A]
//   (additive: W_k k + b_k; dot: k; general: W k), values [S, K], mask [S] (1 = real position),
//   v [A] (additive only).
// additive: hidden[s] = tanh(keys_proj[s] + query), score[s] = v . hidden[s]
// dot/general: score[s] = keys_proj[s] . query
// weights = softmax of the scores over the real positions (exactly 0 at masked ones; all 0 when
// no position is real), context = sum_s weights[s] values[s].
#pragma once
#include "common/activations.h"

namespace fusedrnn {

struct AttentionStep {
  // scores: [S] scratch. hidden: [S, A] (additive; saved for backward), else unused.
  template <typename T>
  FUSEDRNN_HD static void forward(bool additive, int64_t S, int64_t A, int64_t K, const T* query,
                                  const T* keys_proj, const T* values, const uint8_t* mask,
                                  const T* v, T* hidden, T* scores, T* weights, T* context) {
    bool any = false;
    T peak = T(0);
    for (int64_t s = 0; s < S; ++s) {
      if (!mask[s]) continue;
      const T* kp = keys_proj + s * A;
      T score = T(0);
      if (additive) {
        T* hs = hidden + s * A;
        for (int64_t a = 0; a < A; ++a) {
          hs[a] = tanh_(kp[a] + query[a]);
          score += hs[a] * v[a];
        }
      } else {
        for (int64_t a = 0; a < A; ++a) score += kp[a] * query[a];
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
  template <typename T>
  FUSEDRNN_HD static void backward(bool additive, int64_t S, int64_t A, int64_t K, const T* query,
                                   const T* keys_proj, const T* values, const uint8_t* mask,
                                   const T* v, const T* hidden, const T* weights,
                                   const T* dcontext, const T* dweights, T* dscores, T* dquery,
                                   T* dkeys_proj, T* dvalues, T* dv) {
    T weighted = T(0);
    for (int64_t s = 0; s < S; ++s) {
      const T* vs = values + s * K;
      T* dvs = dvalues + s * K;
      T dw = dweights ? dweights[s] : T(0);
      for (int64_t k = 0; k < K; ++k) {
        dw += dcontext[k] * vs[k];
        dvs[k] = weights[s] * dcontext[k];
      }
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
