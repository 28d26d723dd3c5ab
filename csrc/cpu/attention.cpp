// The fused attention step over a batch: the scratch, and the driver of the instruction set
// chosen at run time (attention_impl.inc, compiled with each recurrent_<isa>.cpp).
#include "cpu/attention.h"

#include <vector>

#include "cpu/recurrent.h"

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DECLARE_ATTENTION(isa)                           \
  namespace isa {                                                 \
  template <typename T>                                           \
  void attention_forward(const AttentionArgs<T>&, T*);            \
  template <typename T>                                           \
  void attention_backward(const AttentionArgs<T>&, T*, T*);       \
  }
FUSEDRNN_DECLARE_ATTENTION(avx512)
FUSEDRNN_DECLARE_ATTENTION(avx2)
FUSEDRNN_DECLARE_ATTENTION(generic)

template <typename T>
void attention_forward(const AttentionArgs<T>& a) {
  std::vector<T> scores(a.N * a.S);
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::attention_forward<T>(a, scores.data());
    case Isa::kAvx2: return avx2::attention_forward<T>(a, scores.data());
    default: return generic::attention_forward<T>(a, scores.data());
  }
}

template <typename T>
void attention_backward(const AttentionArgs<T>& a) {
  std::vector<T> dscores(a.N * a.S), dv_rows(a.additive ? a.N * a.A : 0);
  switch (active_isa()) {
    case Isa::kAvx512: return avx512::attention_backward<T>(a, dscores.data(), dv_rows.data());
    case Isa::kAvx2: return avx2::attention_backward<T>(a, dscores.data(), dv_rows.data());
    default: return generic::attention_backward<T>(a, dscores.data(), dv_rows.data());
  }
}

template void attention_forward<float>(const AttentionArgs<float>&);
template void attention_forward<double>(const AttentionArgs<double>&);
template void attention_backward<float>(const AttentionArgs<float>&);
template void attention_backward<double>(const AttentionArgs<double>&);

}  // namespace cpu
}  // namespace fusedrnn
