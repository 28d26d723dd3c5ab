// CPU driver of the fused attention step (cells/attention.h) over a batch.
#pragma once
#include <cstdint>

namespace fusedrnn {
namespace cpu {

template <typename T>
struct AttentionArgs {
  bool additive;
  int64_t N, S, A, K;
  const T* query;      // [N, A]
  const T* keys_proj;  // [N, S, A]
  const T* values;     // [N, S, K]
  const uint8_t* mask; // [N, S]
  const T* v;          // [A] (additive) or null
  T* hidden;           // [N, S, A] (additive) or null
  T* weights;          // [N, S]
  T* context;          // [N, K]
  // backward
  const T* dcontext;   // [N, K]
  const T* dweights;   // [N, S] or null
  T* dquery;           // [N, A]
  T* dkeys_proj;       // [N, S, A]
  T* dvalues;          // [N, S, K]
  T* dv;               // [A] (additive) or null
};

template <typename T>
void attention_forward(const AttentionArgs<T>& a);
template <typename T>
void attention_backward(const AttentionArgs<T>& a);

}  // namespace cpu
}  // namespace fusedrnn
