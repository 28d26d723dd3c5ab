#include "cpu/weight_cache.h"

#include <algorithm>
#include <new>

namespace fusedrnn {
namespace cpu {

WeightCache::Block WeightCache::claim(const Key& key, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = entries_.find(key);
  if (found != entries_.end())
    return found->second.ready ? Block{found->second.data, false} : Block{nullptr, false};
  Entry e;
  e.data = ::operator new(static_cast<size_t>(bytes), std::align_val_t(64));
  entries_.emplace(key, e);
  bytes_ += bytes;
  return Block{e.data, true};
}

void WeightCache::publish(const Key& key) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = entries_.find(key);
  if (found != entries_.end()) found->second.ready = true;
}

bool WeightCache::serves(const void* w_ih, const void* w_hh, const void* b_ih, const void* b_hh,
                         int64_t element_bytes, int cell, int64_t I, int64_t GH, int64_t S) {
  std::lock_guard<std::mutex> lock(mutex_);
  const void* arrays[4] = {w_ih, w_hh, b_ih, b_hh};
  const int64_t layout[5] = {element_bytes, cell, I, GH, S};
  if (!bound_) {
    std::copy(arrays, arrays + 4, arrays_);
    std::copy(layout, layout + 5, layout_);
    bound_ = true;
    return true;
  }
  return std::equal(arrays, arrays + 4, arrays_) && std::equal(layout, layout + 5, layout_);
}

int64_t WeightCache::bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_;
}

int64_t WeightCache::forms() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t n = 0;
  for (const auto& e : entries_) n += e.second.ready;
  return n;
}

WeightCache::~WeightCache() {
  for (auto& e : entries_) ::operator delete(e.second.data, std::align_val_t(64));
}

}  // namespace cpu
}  // namespace fusedrnn
