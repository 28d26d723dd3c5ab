// A persistent team of worker threads for the recurrent time loop.
//
// A loop step is a "phase": every slice s in [0, count) runs fn(s), then all wait for all (one
// barrier). Each thread has a home range of the slices (the caller the first, with slice 0 in
// it) and runs it from the front; a thread out of home slices takes unclaimed ones from the
// back of the others' ranges. So a thread keeps the same slices, and the weights they read in
// its core's cache, phase after phase, while a phase never waits long for a worker that is not
// running (asleep, or its core taken by another library's spinning threads, as PyTorch's
// OpenMP pool spins for milliseconds after each of its ops, ONNX Runtime's for tens): with
// several slices a thread, such a worker holds back at most the one it is in, and the caller,
// done with the rest, moves it onto its own core, which it leaves to it. A slice may
// wait for a lower one only where each thread has one slice (side by side: the caller then
// takes the lowest unclaimed first). Workers spin briefly between phases (a step is
// microseconds) and sleep when idle. The team serves one call at a time; a call that finds it
// busy (another Python thread) runs the same slices one after another in its own thread. The
// results are the same bit for bit either way: they depend on the slice count, never on who
// runs a slice.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedrnn {
namespace cpu {

class ThreadTeam {
 public:
  explicit ThreadTeam(int size);
  ~ThreadTeam();
  int size() const { return size_; }
  // Run fn(0..count-1), count < 65536 (the caller runs slice 0 and any slice still unclaimed
  // after it); returns when all are done.
  void run_phase(const std::function<void(int)>& fn, int count);

  // Thread t's home range of a phase's slices (end << 16 | begin: its owner takes them from
  // the front, others from the back), and what the caller needs to move worker t onto its own
  // core (pull_stalled_workers).
  struct alignas(64) Range {
    std::atomic<unsigned> word{0};
    std::atomic<long> tid{0};                // the worker's OS thread id (0: unknown)
    std::atomic<bool> in_slice{false};       // it is running a slice
    std::atomic<bool> pulled{false};         // the caller moved it: its own CPUs back
  };

 private:
  void worker(int index);
  // Stops and joins the workers started (the destructor; a constructor that could not start
  // them all).
  void stop_workers();
  // Runs thread `index`'s home slices, then the others' unclaimed ones, until none is left.
  void claim_slices(int index);
  // The caller, about to sleep until the workers' slices are done: moves each worker still in
  // a slice onto the caller's CPU (see run_phase).
  void pull_stalled_workers();
  int size_;
  std::vector<std::thread> threads_;
  // The two words every step touches live on cache lines of their own: the caller writes
  // epoch_ (workers read it), workers write remaining_ (the caller reads it).
  alignas(64) std::atomic<unsigned> epoch_{0};
  alignas(64) std::atomic<int> remaining_{0};
  std::unique_ptr<Range[]> ranges_;
  // The ranges of a phase on the OpenMP runtime's threads (share_openmp_threads): their own,
  // so that none of ours, late from a phase of its own, can meet them.
  std::unique_ptr<Range[]> openmp_ranges_;
  alignas(64) const std::function<void(int)>* task_ = nullptr;
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};  // workers asleep on wake_: only then does a phase notify
  std::atomic<int> waker_cpu_{-1};  // the CPU of the caller that last woke a sleeping worker
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> caller_blocked_{false};  // the caller sleeps on done_ for a held slice
  std::mutex done_mutex_;
  std::condition_variable done_;
};

// Set FTZ/DAZ in this thread; returns the previous control word (x86), else 0.
unsigned enable_flush_denormals();
void restore_flush_denormals(unsigned saved);

// Flush denormals to zero in this thread for the lifetime of the object.
class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() : saved_(enable_flush_denormals()) {}
  ~ScopedFlushDenormals() { restore_flush_denormals(saved_); }
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  unsigned saved_;
};

// Run the team's phases on the threads of the OpenMP runtime already loaded in the process
// (GNU libgomp, as PyTorch loads it) instead of the team's own: in a program that also runs
// PyTorch's operators, its threads spin for milliseconds after each of them, on the cores our
// threads would need; running our slices on them turns that spinning into our work. The phases
// still claim their slices in order, so the results are the same bit for bit. Returns whether
// such a runtime was found (nothing changes if not).
bool share_openmp_threads();
bool shares_openmp_threads();

// The kernels' thread count (the team's size; OpenBLAS itself stays single-threaded).
void set_num_threads(int n);
// Ends the team's threads, and so frees their workspaces (fusedrnn.empty_cache), once no call
// is on it; the next call starts them again.
void release_team();
int get_num_threads();

// Runs fn(0..count-1), independent kernel calls (the two directions of a bidirectional layer),
// each call on one thread alone (its PhaseRunner has one slice): side by side on the team when
// it is free and has exactly `count` threads, else one after another in the calling thread. The
// results are the same either way, bit for bit.
void run_side_by_side(int count, const std::function<void(int)>& fn);

// Runs the phases of one kernel call: on the shared team when it is free, else serially in the
// calling thread with the same slicing (one slice inside run_side_by_side). Sets
// flush-to-zero/denormals-are-zero in every thread that runs a slice (denormals can slow a
// recurrence twentyfold), restoring the caller's.
class PhaseRunner {
 public:
  PhaseRunner();
  int slices() const { return slices_; }
  // fn(0..count-1) on the team's threads (count may exceed slices()).
  void run(int count, const std::function<void(int)>& fn);

 private:
  int slices_;
  ThreadTeam* team_ = nullptr;
  std::unique_lock<std::mutex> lock_;
  ScopedFlushDenormals flush_;
};

}  // namespace cpu
}  // namespace fusedrnn
