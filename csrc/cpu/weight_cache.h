// Packed weights kept between calls.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

namespace fusedrnn {
namespace cpu {

// The packed forms of one layer direction's weights, kept between calls so that a repeated
// call packs nothing (ONNX Runtime packs once per session; we packed on every call: 8-18% of
// a T=100 call). Whoever owns the cache makes a new one whenever a weight may have changed
// (fusedrnn.nn.Parameter versions), and a cache serves only the arrays it first served: a
// kept form never outlives the values it was packed from.
class WeightCache {
 public:
  // A form: which weight, the loop's slices (0: one block for the whole matrix), whether b_ih
  // is folded into the bias, and its size.
  enum Weight {
    kHiddenWeights,
    kInputWeights,
    kBias,
    kInputBias,
    kHiddenWeightsBf16,
    kInputWeightsBf16,
    kNewGateWeightsBf16  // the reset-before GRU's W_hn, a block of its own
  };
  struct Key {
    int weight, slices;
    bool bias_in_packed;
    int64_t elements;
    bool operator<(const Key& o) const {
      return std::tie(weight, slices, bias_in_packed, elements) <
             std::tie(o.weight, o.slices, o.bias_in_packed, o.elements);
    }
  };
  // The block of `key`: fill true: the caller packs it and then publishes it; data null:
  // another call is packing it right now (the caller packs into a buffer of its own).
  struct Block {
    void* data;
    bool fill;
  };
  Block claim(const Key& key, int64_t bytes);
  void publish(const Key& key);
  // True when these are the arrays the cache serves, at the same addresses with the same
  // element size and shapes (I, G*H, the state's width) and the same cell; the first call binds
  // them. (An array freed and another made at its address is the owner's to tell: it keeps
  // the arrays alive, or makes a new cache.)
  bool serves(const void* w_ih, const void* w_hh, const void* b_ih, const void* b_hh,
              int64_t element_bytes, int cell, int64_t I, int64_t GH, int64_t S);
  int64_t bytes() const;
  int64_t forms() const;
  ~WeightCache();

 private:
  struct Entry {
    void* data = nullptr;
    bool ready = false;
  };
  mutable std::mutex mutex_;
  std::map<Key, Entry> entries_;
  int64_t bytes_ = 0;
  bool bound_ = false;
  const void* arrays_[4] = {};
  int64_t layout_[5] = {};  // element size, cell, I, G*H, the state's width
};

}  // namespace cpu
}  // namespace fusedrnn
