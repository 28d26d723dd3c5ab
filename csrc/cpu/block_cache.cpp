#include "cpu/block_cache.h"

#include <new>

#include "cpu/plan.h"

namespace fusedrnn {
namespace cpu {

namespace {
constexpr std::align_val_t kAlign{64};
}

BlockCache::BlockCache(int max_blocks, size_t max_bytes)
    : max_blocks_(max_blocks < 0 ? 0 : max_blocks > kMostBlocks ? kMostBlocks : max_blocks),
      max_bytes_(max_bytes) {}

BlockCache::~BlockCache() { release(); }

void* BlockCache::take(size_t& bytes) {
  if (bytes == 0) return nullptr;
  int best = -1;
  for (int i = 0; i < count_; ++i)
    if (kept_[i].bytes >= bytes && kept_[i].bytes <= 2 * bytes &&
        (best < 0 || kept_[i].bytes < kept_[best].bytes))
      best = i;
  if (best < 0) return ::operator new(bytes, kAlign);
  void* block = kept_[best].block;
  bytes = kept_[best].bytes;
  total_ -= bytes;
  for (int i = best + 1; i < count_; ++i) kept_[i - 1] = kept_[i];  // (keeps the age order)
  --count_;
  return block;
}

void BlockCache::give(void* block, size_t bytes) {
  if (!block) return;
  if (bytes > max_bytes_ || max_blocks_ == 0) return ::operator delete(block, kAlign);
  while (count_ == max_blocks_ || total_ + bytes > max_bytes_) drop_oldest();  // make room
  kept_[count_++] = {block, bytes};
  total_ += bytes;
}

void BlockCache::drop_oldest() {
  ::operator delete(kept_[0].block, kAlign);
  total_ -= kept_[0].bytes;
  for (int i = 1; i < count_; ++i) kept_[i - 1] = kept_[i];
  --count_;
}

void BlockCache::release() {
  while (count_ > 0) drop_oldest();
}

BlockCache& thread_block_cache() {
  thread_local BlockCache cache(32, size_t(32) << 20);
  return cache;
}

OutputBlocks& output_blocks() {
  static OutputBlocks* blocks = new OutputBlocks{
      {}, BlockCache(BlockCache::kMostBlocks, size_t(tuning().output_cache_mb) << 20)};
  return *blocks;
}

}  // namespace cpu
}  // namespace fusedrnn
