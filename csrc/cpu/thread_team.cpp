#include "cpu/thread_team.h"

#include "cpu/plan.h"

#include <cblas.h>

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUSEDRNN_PAUSE() _mm_pause()
#else
#define FUSEDRNN_PAUSE() std::this_thread::yield()
#endif

namespace fusedrnn {
namespace cpu {
namespace {

std::mutex g_team_mutex;            // held by the call that uses the team
// Created lazily, remade by set_num_threads, and never destroyed at exit: a daemon Python
// thread may still be in a call on it then (joining the workers would wait for that call, and
// freeing the team would pull it from under the call).
ThreadTeam* g_team = nullptr;
std::atomic<int> g_num_threads{0};
thread_local bool t_single_slice = false;  // inside run_side_by_side: calls run on one thread
// Between steps (microseconds apart) workers spin; past the CPU table's spin time (tens of
// microseconds, cpu/plan.h) they sleep, and a waiting caller yields, so an oversubscribed
// machine degrades gracefully. They spin on after a call too: calls made back to back (a
// training loop, a decoder's steps) then find them awake. Waking a sleeping one can cost
// milliseconds on a VM whose idle vCPU the host has descheduled (batch-1 calls measured 0.1 ms
// awake, 3 ms after a pause).
// The first spins poll without PAUSE (a step's hand-over then costs a cache-line transfer, not
// a pause); after them the clock decides, read every 64 PAUSEs (a PAUSE takes 10 to 140
// cycles depending on the core: a count of them is no measure of time).
constexpr int kTightSpins = 1 << 11;

// Spins while busy() holds, for at most the CPU table's spin time after the tight spins;
// returns whether busy() still holds (the caller then sleeps or yields).
template <typename Busy>
bool spin_while(Busy busy) {
  for (int spins = 0; spins < kTightSpins; ++spins)
    if (!busy()) return false;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds(tuning().spin_before_sleep_us);
  for (int spins = 1;; ++spins) {
    if (!busy()) return false;
    FUSEDRNN_PAUSE();
    if ((spins & 63) == 0 && std::chrono::steady_clock::now() >= deadline) return busy();
  }
}

// After spin_while: yields the core in a loop while busy() holds, for the CPU table's linger
// time; returns whether busy() still holds (the worker then sleeps).
template <typename Busy>
bool linger(Busy busy) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds(tuning().linger_us);
  while (busy()) {
    if (std::chrono::steady_clock::now() >= deadline) return true;
    std::this_thread::yield();
  }
  return false;
}

// The CPU this thread runs on now, or -1 where the OS does not say.
int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// A worker woken by a caller may be placed on the caller's CPU (Linux's wake-affine choice; on
// a VM whose other vCPU has idled for a few ms it is the usual one): the two then share one
// core until the load balancer moves one, milliseconds later, and the step runs at half speed
// (LSTM B=8 T=100 H=128 after 3 ms idle: 1.4 ms instead of 0.6; the caller's half of the
// steps took 1.15-1.3 ms while the worker's ran beside it). A worker that wakes there moves
// itself to another CPU it may run on: its affinity without that CPU for one call, then its
// own again (the scheduler does not move it back for that).
void step_off_cpu(int waker_cpu) {
#if defined(__linux__)
  if (waker_cpu < 0 || sched_getcpu() != waker_cpu) return;
  cpu_set_t own;
  if (sched_getaffinity(0, sizeof(own), &own) != 0) return;
  if (waker_cpu >= CPU_SETSIZE || !CPU_ISSET(waker_cpu, &own) || CPU_COUNT(&own) < 2) return;
  cpu_set_t others = own;
  CPU_CLR(waker_cpu, &others);
  if (sched_setaffinity(0, sizeof(others), &others) == 0) sched_setaffinity(0, sizeof(own), &own);
#else
  (void)waker_cpu;
#endif
}

// The CPUs a worker may run on, as it found them when it started; a worker the caller pulled
// onto its own CPU (ThreadTeam::pull_stalled_workers) gets them back after its slice, and
// stays where it is (moving it off that CPU again measured slower: LSTM B=8 T=256 H=512 right
// after ONNX Runtime's call, 63-65 ms -> 69-74).
#if defined(__linux__)
thread_local cpu_set_t t_own_cpus;
thread_local bool t_own_cpus_known = false;
#endif

void remember_own_cpus() {
#if defined(__linux__)
  t_own_cpus_known = sched_getaffinity(0, sizeof(t_own_cpus), &t_own_cpus) == 0;
#endif
}

// Back to the CPUs this thread had before a pull, within what the process may use now (the main
// thread's set: `taskset -a -p` or a shrunk cpuset may have narrowed it since the thread began,
// and a pulled thread would otherwise escape the narrowing).
void set_own_cpus() {
#if defined(__linux__)
  if (!t_own_cpus_known) return;
  cpu_set_t allowed, cpus;
  if (sched_getaffinity(getpid(), sizeof(allowed), &allowed) != 0) allowed = t_own_cpus;
  CPU_AND(&cpus, &t_own_cpus, &allowed);
  if (CPU_COUNT(&cpus) == 0) cpus = allowed;
  if (sched_setaffinity(0, sizeof(cpus), &cpus) != 0)
    sched_setaffinity(0, sizeof(allowed), &allowed);
#endif
}

// This thread's OS id, for another thread to move it (0 where there is none).
long os_thread_id() {
#if defined(__linux__)
  return static_cast<long>(syscall(SYS_gettid));
#else
  return 0;
#endif
}

// The CPUs this process may run on (taskset, cgroup cpusets, a container's --cpuset-cpus), as
// PyTorch's OpenMP runtime counts them; 0 where the OS does not say.
int affinity_cpus() {
#if defined(__linux__)
  // A mask of CPU_SETSIZE CPUs is refused (EINVAL) on a machine with more: grow it.
  for (int cpus = CPU_SETSIZE; cpus <= (1 << 20); cpus *= 2) {
    cpu_set_t* set = CPU_ALLOC(cpus);
    if (!set) return 0;
    const size_t size = CPU_ALLOC_SIZE(cpus);
    const bool got = sched_getaffinity(getpid(), size, set) == 0;  // the main thread's (not a
                                                                 // pinned caller's)
    const int error = errno, count = got ? CPU_COUNT_S(size, set) : 0;
    CPU_FREE(set);
    if (got) return count;
    if (error != EINVAL) return 0;
  }
#endif
  return 0;
}

// Read once: the count costs a system call (hardware_concurrency() reads /sys, 8 us: more than
// a batch-1 step), and every kernel call asks for the thread count.
int default_threads() {
  static const int threads = [] {
    const int allowed = affinity_cpus();
    if (allowed > 0) return allowed;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? static_cast<int>(hw) : 1;
  }();
  return threads;
}

// A phase's slices in home ranges, one a thread: thread t's is [home_bound(t), home_bound(t+1)),
// the first holding slice 0 (for the caller, which runs it at once), kept in one word each as
// end << 16 | begin.
unsigned home_bound(int count, int threads, int t) {
  const int64_t b = int64_t(count) * t / threads;
  return static_cast<unsigned>(t == 0 ? 0 : b > 1 ? b : 1);
}

unsigned home_range(int count, int threads, int t, bool first_taken) {
  const unsigned begin = home_bound(count, threads, t) + (t == 0 && first_taken ? 1u : 0u);
  return home_bound(count, threads, t + 1) << 16 | begin;
}

// Takes a slice from range `word`: the front one (`front`), else the back one; -1 when it is
// empty. One compare-and-swap of the whole word, so a claim never takes a slice of a phase that
// has ended (a phase ends only when every range is empty).
int take_slice(std::atomic<unsigned>& word, bool front) {
  unsigned w = word.load(std::memory_order_acquire);
  for (;;) {
    const unsigned begin = w & 0xffffu, end = w >> 16;
    if (begin >= end) return -1;
    const unsigned taken = front ? w + 1 : w - (1u << 16);
    if (word.compare_exchange_weak(w, taken, std::memory_order_acq_rel,
                                   std::memory_order_acquire))
      return static_cast<int>(front ? begin : end - 1);
  }
}

// Thread `index` runs run(s) for its home slices from the front, then for the others' from the
// back, until none is left; range(t) is thread t's word.
template <typename Run>
void take_slices(ThreadTeam::Range* ranges, int threads, int index, Run run) {
  for (int r = 0; r < threads; ++r) {
    const int t = (index + r) % threads;
    for (int s; (s = take_slice(ranges[t].word, t == index)) >= 0;) run(s);
  }
}

// A worker the caller pulled onto its CPU takes its own CPUs back (a plain load first: this
// runs after every slice).
void take_back_own_cpus(ThreadTeam::Range& own) {
  if (own.pulled.load(std::memory_order_relaxed) && own.pulled.exchange(false)) set_own_cpus();
}

// Our OpenBLAS runs single-threaded: the team splits the big GEMMs itself, so no BLAS thread
// pool spins against the team's threads (on 2 cores that cost a step tenfold).
struct SingleThreadedBlas {
  SingleThreadedBlas() { scipy_openblas_set_num_threads(1); }
} g_single_threaded_blas;

// The OpenMP runtime PyTorch loads (GNU libgomp), when the process shares it: the phases then
// run on its threads (see share_openmp_threads). Null: the team's own threads.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpThreadNum = int (*)();
std::atomic<GompParallel> g_gomp_parallel{nullptr};
std::atomic<OmpThreadNum> g_omp_thread_num{nullptr};

// fork() (a DataLoader's workers, multiprocessing): the child has only the forking thread, so
// the team's workers are gone and destroying the team would join them forever, and the OpenMP
// runtime's threads are gone too (a region there would wait for them). The child drops the team
// unjoined (its memory stays, unreachable), stops sharing OpenMP's threads, and makes a team of
// its own at its first call. The fork waits for a call in flight on the team, so that no phase
// is left half run.
void lock_team_before_fork() { g_team_mutex.lock(); }
void unlock_team_after_fork() { g_team_mutex.unlock(); }
void forget_team_in_child() {
  g_team = nullptr;
  g_gomp_parallel.store(nullptr);
  g_omp_thread_num.store(nullptr);
  g_team_mutex.unlock();
}
const bool g_fork_handlers_registered =
    pthread_atfork(lock_team_before_fork, unlock_team_after_fork, forget_team_in_child) == 0;

// One phase on the OpenMP team: every thread of the region takes slices like our workers, its
// home range first (by its OpenMP thread number: the same units on the same thread step after
// step), then the others'.
struct OpenMPPhase {
  const std::function<void(int)>* fn;
  ThreadTeam::Range* ranges;
  int threads;
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  // When the caller (OpenMP thread 0) had taken every slice, and when the last other thread
  // came into the region: a thread that comes long after the work is done was not running.
  std::atomic<int64_t> caller_done_ns{0}, last_entry_ns{0};
};

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A region's end waits for every OpenMP thread, one that another process keeps off its core
// too (a DataLoader's workers, a second job: a scheduler tick, 4 ms, a step; calls 20-70x
// slower). A thread that enters this long after the caller finished all the work marks the
// runtime's threads as held elsewhere; the phases then run on the calling thread alone for a
// while: 100 ms, doubled up to 1.6 s while the stalls come back as soon as it ends (each retry
// costs one stall). The CPU table's openmp_stall_us says how late is held elsewhere.
constexpr int64_t kFirstBackoffNs = 100'000'000, kLongestBackoffNs = 1'600'000'000;
std::atomic<int64_t> g_openmp_stalled_until_ns{0}, g_openmp_backoff_ns{kFirstBackoffNs};
// (the first regions start the runtime's threads: late by their creation, not held elsewhere)
constexpr int kRegionsBeforeStallChecks = 8;
std::atomic<int> g_openmp_regions{0};

void openmp_threads_stalled() {
  const int64_t now = steady_ns();
  const int64_t backoff = g_openmp_backoff_ns.load(std::memory_order_relaxed);
  const bool again = now - g_openmp_stalled_until_ns.load(std::memory_order_relaxed) < backoff;
  const int64_t next = again ? std::min(2 * backoff, kLongestBackoffNs) : kFirstBackoffNs;
  g_openmp_backoff_ns.store(next, std::memory_order_relaxed);
  g_openmp_stalled_until_ns.store(now + next, std::memory_order_relaxed);
}

void openmp_phase_thread(void* data) {
  auto* phase = static_cast<OpenMPPhase*>(data);
  // Denormals flushed while a slice runs, then the thread's own mode back: these are
  // PyTorch's threads.
  ScopedFlushDenormals flush;
  // A region of fewer threads than ranges leaves some unowned: the others take them.
  const OmpThreadNum thread_num = g_omp_thread_num.load(std::memory_order_relaxed);
  const int number = thread_num ? thread_num() : 0;
  const int index = number % phase->threads;
  if (number != 0) {
    const int64_t entered = steady_ns();
    int64_t last = phase->last_entry_ns.load(std::memory_order_relaxed);
    while (entered > last && !phase->last_entry_ns.compare_exchange_weak(last, entered)) {
    }
  }
  take_slices(phase->ranges, phase->threads, index, [&](int s) {
    try {
      (*phase->fn)(s);
    } catch (...) {  // nothing may leave an OpenMP region: the caller rethrows it
      if (!phase->failed.exchange(true)) phase->error = std::current_exception();
    }
  });
  if (number == 0) phase->caller_done_ns.store(steady_ns(), std::memory_order_relaxed);
}

}  // namespace

bool share_openmp_threads() {
  if (!g_gomp_parallel.load()) {
    // Only an already loaded runtime (RTLD_NOLOAD): we never bring one in ourselves.
    if (void* lib = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD)) {
      g_omp_thread_num.store(reinterpret_cast<OmpThreadNum>(dlsym(lib, "omp_get_thread_num")));
      g_gomp_parallel.store(reinterpret_cast<GompParallel>(dlsym(lib, "GOMP_parallel")));
      dlclose(lib);  // it stays loaded: its owner holds it
    }
  }
  return g_gomp_parallel.load() != nullptr;
}

bool shares_openmp_threads() { return g_gomp_parallel.load() != nullptr; }

unsigned enable_flush_denormals() {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040);  // FTZ | DAZ
  return saved;
#else
  return 0;
#endif
}

void restore_flush_denormals(unsigned saved) {
#if defined(__SSE__) || defined(__x86_64__)
  _mm_setcsr(saved);
#else
  (void)saved;
#endif
}

ThreadTeam::ThreadTeam(int size)
    : size_(size), ranges_(new Range[size]), openmp_ranges_(new Range[size]) {
  try {
    threads_.reserve(size_ - 1);
    for (int s = 1; s < size_; ++s) threads_.emplace_back(&ThreadTeam::worker, this, s);
  } catch (const std::exception& e) {  // (a process or memory limit): not std::terminate,
    stop_workers();                    // which joinable threads left behind would call
    throw std::runtime_error("fusedrnn: could not start " + std::to_string(size_ - 1) +
                             " worker threads (" + e.what() +
                             "); use fewer: fusedrnn.set_num_threads(n)");
  }
}

ThreadTeam::~ThreadTeam() { stop_workers(); }

void ThreadTeam::stop_workers() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> g(sleep_mutex_);
    epoch_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadTeam::claim_slices(int index) {
  // The acquire in take_slice pairs with run_phase's release stores: task_ and remaining_ of
  // the phase whose slice it takes are visible.
  Range& own = ranges_[index];
  take_slices(ranges_.get(), size_, index, [&](int s) {
    own.in_slice.store(true, std::memory_order_seq_cst);
    (*task_)(s);
    own.in_slice.store(false, std::memory_order_seq_cst);
    take_back_own_cpus(own);
    // The last slice done wakes a caller that blocked waiting for it (seq_cst with the
    // caller's flag: one of the two sees the other's write).
    if (remaining_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_blocked_.load(std::memory_order_seq_cst)) {
      { std::lock_guard<std::mutex> g(done_mutex_); }
      done_.notify_one();
    }
  });
}

void ThreadTeam::worker(int index) {
  enable_flush_denormals();
  remember_own_cpus();
  ranges_[index].tid.store(os_thread_id());
  unsigned seen = 0;
  for (;;) {
    const auto idle = [&] { return epoch_.load(std::memory_order_acquire) == seen; };
    if (spin_while(idle) && linger(idle)) {
      std::unique_lock<std::mutex> g(sleep_mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(g, [&] { return epoch_.load() != seen; });
      sleepers_.fetch_sub(1);
      g.unlock();
      step_off_cpu(waker_cpu_.load(std::memory_order_relaxed));
    }
    seen = epoch_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    take_back_own_cpus(ranges_[index]);  // pulled as its last slice ended
    claim_slices(index);
  }
}

void ThreadTeam::run_phase(const std::function<void(int)>& fn, int count) {
  if (size_ == 1 || count == 1) {
    for (int s = 0; s < count; ++s) fn(s);
    return;
  }
  if (GompParallel gomp_parallel = g_gomp_parallel.load(std::memory_order_relaxed)) {
    const int64_t stalled_until = g_openmp_stalled_until_ns.load(std::memory_order_relaxed);
    if (stalled_until != 0 && steady_ns() < stalled_until) {  // (no clock read until a stall)
      ScopedFlushDenormals flush;  // (as a region's threads run them)
      for (int s = 0; s < count; ++s) fn(s);  // the same slices: the same bits
      return;
    }
    for (int t = 0; t < size_; ++t)
      openmp_ranges_[t].word.store(home_range(count, size_, t, false), std::memory_order_relaxed);
    OpenMPPhase phase{&fn, openmp_ranges_.get(), size_};  // GOMP_parallel publishes it
    gomp_parallel(openmp_phase_thread, &phase, static_cast<unsigned>(size_), 0);
    const int64_t done = phase.caller_done_ns.load(std::memory_order_relaxed);
    const bool started =
        g_openmp_regions.load(std::memory_order_relaxed) >= kRegionsBeforeStallChecks;
    if (!started) g_openmp_regions.fetch_add(1, std::memory_order_relaxed);
    if (started && done && phase.last_entry_ns.load(std::memory_order_relaxed) - done >
                               tuning().openmp_stall_us * 1000)
      openmp_threads_stalled();
    if (phase.error) std::rethrow_exception(phase.error);
    return;
  }
  task_ = &fn;
  remaining_.store(count - 1, std::memory_order_relaxed);
  // The caller's range last: it runs slice 0 at once.
  for (int t = size_ - 1; t >= 0; --t)
    ranges_[t].word.store(home_range(count, size_, t, true), std::memory_order_release);
  epoch_.fetch_add(1);
  if (sleepers_.load() > 0) {  // a worker went to sleep (or is about to): wake it
    waker_cpu_.store(current_cpu(), std::memory_order_relaxed);
    { std::lock_guard<std::mutex> g(sleep_mutex_); }
    wake_.notify_all();
  }
  fn(0);
  claim_slices(0);  // what no worker has taken yet (it may not be running): no waiting for it
  const auto unfinished = [&] { return remaining_.load(std::memory_order_seq_cst) != 0; };
  if (spin_while(unfinished)) {
    // A worker holds a slice but is not running (another library's spinning threads hold the
    // cores): move it here and block, so that it runs on this core at once. Yielding instead
    // kept the core busy: the worker waited for its own core's time slice to end, milliseconds
    // a step; blocking alone left it there too (the scheduler keeps a thread that ran within
    // the last half millisecond where it is).
    pull_stalled_workers();
    std::unique_lock<std::mutex> g(done_mutex_);
    caller_blocked_.store(true, std::memory_order_seq_cst);
    done_.wait(g, [&] { return !unfinished(); });
    caller_blocked_.store(false, std::memory_order_relaxed);
  }
}

void ThreadTeam::pull_stalled_workers() {
#if defined(__linux__)
  const int cpu = current_cpu();
  if (cpu < 0 || cpu >= CPU_SETSIZE) return;
  cpu_set_t here;
  CPU_ZERO(&here);
  CPU_SET(cpu, &here);
  for (int t = 1; t < size_; ++t) {
    Range& r = ranges_[t];
    const long tid = r.tid.load();
    // Flagged first: the worker, its slice done, takes its own CPUs back (a pull that lands
    // after that check is undone as its next phase begins).
    if (tid == 0 || !r.in_slice.load(std::memory_order_seq_cst)) continue;
    r.pulled.store(true, std::memory_order_seq_cst);
    sched_setaffinity(static_cast<pid_t>(tid), sizeof(here), &here);
  }
#endif
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> g(g_team_mutex);
  g_num_threads.store(n);
  if (g_team && g_team->size() != n) {
    delete g_team;  // (no call is on it: we hold the mutex)
    g_team = nullptr;
  }
}

void release_team() {
  std::lock_guard<std::mutex> g(g_team_mutex);
  delete g_team;  // (no call is on it: we hold the mutex)
  g_team = nullptr;
}

int get_num_threads() {
  int n = g_num_threads.load();
  return n > 0 ? n : default_threads();
}

// The shared team, made or resized to `size` threads; the caller holds g_team_mutex.
static ThreadTeam* team_of_size(int size) {
  if (!g_team || g_team->size() != size) {
    delete g_team;
    g_team = nullptr;  // (until the new one stands: its constructor may throw)
    g_team = new ThreadTeam(size);
  }
  return g_team;
}

void run_side_by_side(int count, const std::function<void(int)>& fn) {
  // An exception (out of memory) must not escape a worker thread: the caller rethrows it.
  std::vector<std::exception_ptr> errors(count);
  auto alone = [&](int i) {
    const bool outer = t_single_slice;
    t_single_slice = true;
    try {
      fn(i);
    } catch (...) {
      errors[i] = std::current_exception();
    }
    t_single_slice = outer;
  };
  std::unique_lock<std::mutex> lock(g_team_mutex, std::defer_lock);
  if (count > 1 && count == get_num_threads() && !t_single_slice && lock.try_lock()) {
    ScopedFlushDenormals flush;
    team_of_size(count)->run_phase(alone, count);
    lock.unlock();
  } else {
    for (int i = 0; i < count; ++i) alone(i);
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

PhaseRunner::PhaseRunner()
    : slices_(t_single_slice ? 1 : get_num_threads()),
      lock_(g_team_mutex, std::defer_lock) {
  if (slices_ > 1 && lock_.try_lock()) {
    team_ = team_of_size(slices_);
  }
}

void PhaseRunner::run(int count, const std::function<void(int)>& fn) {
  if (team_) {
    team_->run_phase(fn, count);
  } else {
    for (int s = 0; s < count; ++s) fn(s);
  }
}

}  // namespace cpu
}  // namespace fusedrnn
