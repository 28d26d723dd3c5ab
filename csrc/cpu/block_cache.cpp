#include "cpu/block_cache.h"

#include <cstdio>
#include <cstdlib>
#include <new>

namespace fusedrnn {
namespace cpu {

namespace {
constexpr std::align_val_t kAlign{64};
}

BlockCache::BlockCache(int max_blocks, size_t max_bytes)
    : max_blocks_(max_blocks < 0 ? 0 : max_blocks > kMostBlocks ? kMostBlocks : max_blocks),
      max_bytes_(max_bytes) {}

BlockCache::~BlockCache() { release(); }

void* BlockCache::take(size_t bytes) {
  if (bytes == 0) return nullptr;
  int best = -1;
  for (int i = 0; i < count_; ++i)
    if (kept_[i].bytes >= bytes && kept_[i].bytes <= 2 * bytes &&
        (best < 0 || kept_[i].bytes < kept_[best].bytes))
      best = i;
  if (best < 0) return ::operator new(bytes, kAlign);
  void* block = kept_[best].block;
  total_ -= kept_[best].bytes;
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

namespace {
size_t output_cache_bytes() {
  constexpr size_t kDefault = size_t(256) << 20;
  const char* env = std::getenv("FUSEDRNN_OUTPUT_CACHE_MB");
  if (!env) return kDefault;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  if (end == env || *end != '\0' || mb < 0 || mb >= (1LL << 40)) {
    std::fprintf(stderr, "fusedrnn: FUSEDRNN_OUTPUT_CACHE_MB: ignored '%s': expected a whole "
                 "number of MiB (0 keeps none); 256 serves\n", env);
    return kDefault;
  }
  return size_t(mb) << 20;
}
}  // namespace

OutputBlocks& output_blocks() {
  static OutputBlocks* blocks = new OutputBlocks{{}, BlockCache(BlockCache::kMostBlocks,
                                                                output_cache_bytes())};
  return *blocks;
}

}  // namespace cpu
}  // namespace fusedrnn
