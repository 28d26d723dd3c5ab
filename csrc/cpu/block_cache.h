// Blocks of freed memory kept for the next requests, so that a call's buffers and outputs do not
// fault their pages in afresh every call.
//
// glibc maps large blocks anew for every call, or hands the top of its heap back to the OS once
// more than twice its largest freed block lies free there; a fresh page then faults on first
// touch (1-2 us each on these VMs). Two users, one policy:
// - the drivers' scratch Buffers (recurrent_impl.inc), in a cache per thread, no lock: a
//   bfloat16 LSTM B=1 T=100 H=128 training step's score of 0.1-0.5 MiB buffers, Zen 4: 0.81 ms
//   fresh, 0.57 kept; B=8 T=100 H=256 10.2 -> 7.4;
// - the bindings' large outputs (y, the saved gates, the gradients: tens of MB a training step
//   at batch 64), in one cache for the process, locked: a dead output's block serves the next
//   call's output (csrc/bindings/module.cpp, output_array). LSTM B=32 T=100 H=256 training,
//   Zen 4, alternating: 4,616 page faults a step, 59.9-64.2 ms; kept, none, 52.3-52.6 ms.
// Compiled once, with no instruction set's flags (the drivers' files call it across them).
#pragma once

#include <cstddef>
#include <mutex>

namespace fusedrnn {
namespace cpu {

// At most max_blocks blocks of max_bytes in all, the oldest going first. A request takes the
// smallest kept block that holds it and is at most twice its size; blocks are 64-byte aligned.
class BlockCache {
 public:
  static constexpr int kMostBlocks = 64;
  BlockCache(int max_blocks, size_t max_bytes);
  ~BlockCache();
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  // A block of at least `bytes`; `bytes` becomes its real size (a kept block may be larger),
  // which `give` takes back with it: the limit and kept_bytes count what is really held.
  void* take(size_t& bytes);
  void give(void* block, size_t bytes);
  // Every kept block back to the allocator.
  void release();
  size_t kept_bytes() const { return total_; }
  size_t max_bytes() const { return max_bytes_; }

 private:
  struct Kept {
    void* block;
    size_t bytes;
  };
  void drop_oldest();
  Kept kept_[kMostBlocks] = {};
  int count_ = 0;
  int max_blocks_;
  size_t max_bytes_;
  size_t total_ = 0;
};

// This thread's cache for the drivers' Buffers (32 blocks, 32 MiB).
BlockCache& thread_block_cache();

// The process's cache for the bindings' outputs (the CPU table's output_cache_mb: 256, or
// FUSEDRNN_OUTPUT_CACHE_MB; 0 keeps none), with its lock: every use holds it. Never destroyed
// (arrays may die after the module).
struct OutputBlocks {
  std::mutex mutex;
  BlockCache cache;
};
OutputBlocks& output_blocks();

}  // namespace cpu
}  // namespace fusedrnn
