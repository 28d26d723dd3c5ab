// The fused attention step over a batch: samples split over the thread team (each sample's math
// is independent, so results do not depend on the thread count), dv summed in sample order.
#include "cpu/attention.h"

#include <vector>

#include "cells/attention.h"
#include "cpu/thread_team.h"

namespace fusedrnn {
namespace cpu {

namespace {
// Samples [begin, end) of slice s.
inline void sample_range(int64_t N, int slices, int s, int64_t& begin, int64_t& end) {
  const int64_t per = (N + slices - 1) / slices;
  begin = s * per < N ? s * per : N;
  end = begin + per < N ? begin + per : N;
}
}  // namespace

template <typename T>
void attention_forward(const AttentionArgs<T>& a) {
  PhaseRunner runner;
  const int slices = a.N >= 2 * runner.slices() ? runner.slices() : 1;
  std::vector<T> scores(a.N * a.S);
  auto work = [&](int slice) {
    int64_t b, e;
    sample_range(a.N, slices, slice, b, e);
    for (int64_t n = b; n < e; ++n)
      AttentionStep::forward(a.additive, a.S, a.A, a.K, a.query + n * a.A,
                             a.keys_proj + n * a.S * a.A, a.values + n * a.S * a.K,
                             a.mask + n * a.S, a.v, a.hidden ? a.hidden + n * a.S * a.A : nullptr,
                             scores.data() + n * a.S, a.weights + n * a.S, a.context + n * a.K);
  };
  if (slices == 1) work(0); else runner.run(work);
}

template <typename T>
void attention_backward(const AttentionArgs<T>& a) {
  PhaseRunner runner;
  const int slices = a.N >= 2 * runner.slices() ? runner.slices() : 1;
  std::vector<T> dscores(a.N * a.S);
  std::vector<T> dv_rows(a.additive ? a.N * a.A : 0);
  auto work = [&](int slice) {
    int64_t b, e;
    sample_range(a.N, slices, slice, b, e);
    for (int64_t n = b; n < e; ++n)
      AttentionStep::backward(a.additive, a.S, a.A, a.K, a.query + n * a.A,
                              a.keys_proj + n * a.S * a.A, a.values + n * a.S * a.K,
                              a.mask + n * a.S, a.v,
                              a.hidden ? a.hidden + n * a.S * a.A : nullptr, a.weights + n * a.S,
                              a.dcontext + n * a.K, a.dweights ? a.dweights + n * a.S : nullptr,
                              dscores.data() + n * a.S, a.dquery + n * a.A,
                              a.dkeys_proj + n * a.S * a.A, a.dvalues + n * a.S * a.K,
                              a.additive ? dv_rows.data() + n * a.A : nullptr);
  };
  if (slices == 1) work(0); else runner.run(work);
  if (a.additive) {
    for (int64_t i = 0; i < a.A; ++i) a.dv[i] = T(0);
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t i = 0; i < a.A; ++i) a.dv[i] += dv_rows[n * a.A + i];
  }
}

template void attention_forward<float>(const AttentionArgs<float>&);
template void attention_forward<double>(const AttentionArgs<double>&);
template void attention_backward<float>(const AttentionArgs<float>&);
template void attention_backward<double>(const AttentionArgs<double>&);

}  // namespace cpu
}  // namespace fusedrnn
