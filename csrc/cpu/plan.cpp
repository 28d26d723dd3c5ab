#include "cpu/plan.h"
#include "cpu/recurrent.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fusedrnn {
namespace cpu {
namespace {

// "1024K" / "32M" (sysfs cache sizes) in bytes; 0 if unreadable.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long n = std::strtoll(text.c_str(), &end, 10);
  if (n <= 0) return 0;
  if (*end == 'K') return n << 10;
  if (*end == 'M') return n << 20;
  return n;
}

std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// Data and unified caches of cpu0 by level, from sysfs (per core for L1/L2; L3 as shared).
void read_caches(CpuInfo& info) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
    const std::string level = read_line(dir + "/level"), type = read_line(dir + "/type");
    if (level.empty()) break;
    if (type == "Instruction") continue;
    const int64_t bytes = parse_size(read_line(dir + "/size"));
    if (level == "1") info.l1d_bytes = bytes;
    if (level == "2") info.l2_bytes = bytes;
    if (level == "3") info.l3_bytes = bytes;
  }
}

CpuInfo detect_cpu() {
  CpuInfo info{"other", "unknown", 0, 0, 0, false, false};
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[4] = {0, 0, 0, 0};
  if (__get_cpuid(0, &r[0], &r[1], &r[2], &r[3])) {
    char vendor[13];
    std::memcpy(vendor, &r[1], 4);
    std::memcpy(vendor + 4, &r[3], 4);
    std::memcpy(vendor + 8, &r[2], 4);
    vendor[12] = 0;
    if (std::strcmp(vendor, "GenuineIntel") == 0) info.vendor = "intel";
    if (std::strcmp(vendor, "AuthenticAMD") == 0) info.vendor = "amd";
  }
  unsigned brand[12] = {};
  if (__get_cpuid(0x80000000, &r[0], &r[1], &r[2], &r[3]) && r[0] >= 0x80000004) {
    for (unsigned leaf = 0; leaf < 3; ++leaf)
      __get_cpuid(0x80000002 + leaf, &brand[4 * leaf], &brand[4 * leaf + 1],
                  &brand[4 * leaf + 2], &brand[4 * leaf + 3]);
    std::string model(reinterpret_cast<const char*>(brand), sizeof(brand));
    model = model.c_str();  // up to the first NUL
    const size_t first = model.find_first_not_of(' '), last = model.find_last_not_of(' ');
    if (first != std::string::npos) info.model = model.substr(first, last - first + 1);
  }
  if (__get_cpuid_count(7, 0, &r[0], &r[1], &r[2], &r[3]))
    info.amx = ((r[3] >> 24) & 1) && ((r[3] >> 22) & 1);  // AMX-TILE and AMX-BF16
  if (__get_cpuid_count(7, 1, &r[0], &r[1], &r[2], &r[3])) info.avx512_bf16 = (r[0] >> 5) & 1;
#endif
  read_caches(info);
  return info;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect_cpu();
  return info;
}

namespace {
// Integers past 2^53 are not exact in a double, and no threshold needs more (also: "never").
constexpr int64_t kMaxCount = int64_t(1) << 53;
}  // namespace

Tuning tuning_for(const std::string& vendor, int64_t l2_bytes, bool avx512_kernels) {
  // Where each number was measured (2 threads): the AMD row on an AMD EPYC Zen 4 (1 MiB L2 per
  // core, W_hh streamed from a 32 MiB L3); the Intel row on a Xeon with AMX (2 MiB L2), where
  // the drivers were first tuned. A W_hh filling the Xeon's whole L2 lost (the loop's other
  // data evicts it; half of it measured best), the EPYC's victim L3 keeps up with a full one.
  // Sizes scale with the core's L2 from there; an unknown vendor takes the Intel proportions.
  Tuning t{};
  const bool amd = vendor == "amd";
  t.row = amd ? "amd" : vendor == "intel" ? "intel" : "other";
  const int64_t l2 = l2_bytes > 0 ? l2_bytes : (2 << 20);
  int64_t cache = amd ? l2 : l2 / 2;
  if (cache < (256 << 10)) cache = 256 << 10;
  if (cache > (4 << 20)) cache = 4 << 20;
  t.core_cache_bytes = cache;
  t.projection_chunk_bytes = cache / 2;
  t.step_inputs_chunk_bytes = cache;
  t.min_samples_per_slice = 4;
  // With AVX2 tiles, slices of 12 samples and more stream a W_hh of up to 4 cores' caches from
  // L3 faster than a by-units loop meets at a barrier each step (Zen 3, 2 threads, both plans
  // in one process alternating, medians: inference LSTM B=32 T=100 I=H=256 23.3 -> 22.0 ms,
  // I=H=192 B=48 19.9 -> 18.9, GRU H=256 B=32 16.6 -> 15.3, B=64 32.7 -> 30.9, RNN H=512 B=32
  // 21.1 -> 19.6; training GRU B=32 H=256 58.5 -> 51.6, LSTM 66.5 -> 65.1; right after an ONNX
  // Runtime call, whose threads still spin: LSTM B=32 52 -> 42, GRU 36 -> 28); level at 8
  // samples a slice (LSTM H=256 B=16); from 2.25 to 3 MiB between 6% faster and 5% slower by
  // shape and run (LSTM I=H=384 B=32, GRU H=512 B=32 and B=64 T=50); slower for a 4 MiB W_hh
  // (LSTM H=512 B=64 T=50: 3-5% alone, 11% after ONNX Runtime). With AVX-512 tiles on AMD
  // (Zen 4, 2 threads, each plan in its own process, alternating rounds, medians) slices of 4
  // samples and more stream a W_hh of up to 4 cores' caches faster too, float32 and bfloat16,
  // inference and training: LSTM inference B=32 T=50 H=257 13.4 -> 10.6 ms (the by-units loop
  // took 1.4x torch's time there), B=64 H=257 31.0 -> 21.8, B=32 T=100 H=384 39.2 -> 35.1,
  // B=8 T=256 H=512 40.2 -> 38.8, B=64 T=50 H=512 67.7 -> 65.5; training B=32 H=257 40.1 ->
  // 33.3, B=64 H=512 225 -> 204; GRU inference H=384 B=16 16.9 -> 13.3, training H=512 B=64
  // 177 -> 155; RNN H=1024 B=32 36.2 -> 32.1; bfloat16 LSTM B=8 H=512 24.6 -> 21.6, B=64 45.1
  // -> 33.3, training 94.4 -> 77.1. Level at LSTM H=768 (9 MiB) and B=32 H=256 (in cache
  // already); 20% slower at H=1024 (16 MiB), so not past 4 caches. Not measured on Intel with
  // AVX-512 tiles, which keeps its plans.
  t.stream_min_samples = !avx512_kernels ? 12 : amd ? 4 : 0;
  t.stream_max_weight_bytes = avx512_kernels && !amd ? 0 : 4 * cache;
  t.min_step_macs_to_split = 96 * 1024;
  // A short call split over the threads hands each sample's x and h to the other core every
  // call; on these VMs that costs 1-2 us where the two vCPUs share a cache and 10-15 us where
  // they do not (the host moves them: some processes, some minutes). Zen 4, 2 threads against
  // 1, T=1 inference, us, shared cache / apart / 1 thread: RNN B=16 H=128 11.5 / 23-29 / 12.5,
  // B=64 H=128 38 / 84 / 45; LSTM B=4 H=128 10 / 17.5 / 13; GRU B=8 H=128 12.2 / 21-22 / 17.8;
  // LSTM B=1 H=512 64 / 71 / 119. The RNN's step of H rows loses on average; 4H and 3H gain.
  t.short_call_min_gate_rows = 256;
  t.min_gemm_macs_to_split = 1 << 20;
  // A short call's (or a decoder step's) products: OpenBLAS packs all of W on every call, so
  // below blas_batch rows the row kernels run them. With AVX-512 row kernels (their 4 x 4 dot
  // products folded in 15 adds) that holds to 256 samples and more (Zen 4, 2 threads, T=1 and
  // T=3, alternating processes, BLAS -> rows: RNN B=16 H=128 T=1 20.3 -> 15.6 us, B=32 35 ->
  // 24; GRU B=16 46 -> 31, B=32 59 -> 43; LSTM B=32 T=3 211 -> 160, B=64 T=1 142 -> 106, B=128
  // 270 -> 220, B=256 535 -> 425, B=16 H=512 700-950 -> 445-495; GRU B=64 H=512 1.4-1.7 ->
  // 1.1 ms; sequences' projections and backward dx of fewer rows level: LSTM B=1 T=100 H=128,
  // B=4 T=50 H=256, RNN B=8 T=20 H=512). Not measured on Intel's AVX-512 cores.
  t.blas_batch = avx512_kernels ? 128 : 16;
  t.packed_min_steps = 4;
  t.inference_pack_rows = 12.0;  // fitted on the AMD EPYC (T 4..15, N 1..8, H 128..512)
  t.pipelined_rows = 16;
  // The inputs in the steps' products pay where our packed tiles are wider than OpenBLAS's
  // sgemm (AVX-512 tiles; measured on a Zen 4 whose OpenBLAS ran its AVX2 kernels: LSTM B=8
  // T=256 H=512 inference 67.8 -> 50.6 ms, B=64 T=50 91.6 -> 63.8, training -6%). With AVX2
  // tiles OpenBLAS's projection up front wins for the GRU, the RNN and an LSTM's big W_ih (2
  // threads, Zen 3, alternating processes, medians: LSTM B=8 T=256 H=512 inference 83.1 ->
  // 76.3 ms, B=64 T=50 118 -> 115, GRU B=8 47.5 -> 43.6, B=64 87.5 -> 82.1, LSTM B=8
  // training step 217 -> 192; one thread, LSTM B=8 118 -> 111; later, both in one process,
  // alternating: RNN B=32 H=512 22.4 -> 25.0 in steps, GRU B=32 H=256 19.0 -> 19.4), but an
  // LSTM's W_ih up to 6 cores' caches (3 MiB: I = H = 384) wins in steps (the up-front GEMM's
  // gates buffer, T x N x 4H, is written and read back from beyond the caches): inference,
  // B=32 T=100 I=H=256 25.7 -> 22.4 ms, B=8 5.89 -> 5.60, B=64 46.1 -> 42.5, I=H=192 14.6 ->
  // 12.9, I=H=384 49.8 -> 47.0, I=64 H=512 52.9 -> 48.1; one thread, I=H=256 44.0 -> 42.5;
  // training level (68.1 -> 68.0); I=H=512 level (B=8..64: 0.99-1.03).
  t.step_inputs_min_batch = 8;
  t.step_inputs_min_gates = avx512_kernels ? 1 : 4;
  t.step_inputs_max_weight_bytes = avx512_kernels ? 0 : 6 * cache;
  t.amx_min_batch = 8;
  // A bfloat16 backward packs W_hh's and W_ih's columns into pairs on every call and sums the
  // weight gradients over whole tiles of 32 rows, zero-padded: a decoder step's backward (T=1)
  // pays it all for one or a few rows. Zen 4, 2 threads, float32 / bfloat16 backward time over
  // two runs: T=1, B=1..16: 0.10-0.78 (GRU H=512 B=1 170 us against 1743, LSTM H=128 B=1 24
  // against 102); T=1 B=32 0.75-1.29; T=4 B=1 0.40-0.56, B=8 0.87-1.61; 128 rows and more
  // 1.2-1.7. The steps decide the products (a sample's gradients keep their bits alone or in a
  // batch), the rows the weight gradients'.
  // With AVX2 kernels (no bfloat16 instructions: the pairs are widened to float32 FMAs) the
  // weight gradients never take bfloat16 operands: a widened product is a float32 FMA plus
  // the conversions, and OpenBLAS's float32 GEMM runs those sums faster. Measured on a Zen 4
  // running the AVX2 kernels and OpenBLAS's Haswell ones (FUSEDRNN_ISA=avx2,
  // OPENBLAS_CORETYPE=Haswell: a Zen 3's code paths), 2 threads, backward alone, two runs each,
  // medians: LSTM B=1 T=256 H=512 14.8-15.5 -> 13.8-14.5 ms, B=8 99-102 -> 93, B=32 T=100
  // H=256 42.5-46.8 -> 40.0-42.5, B=64 T=50 H=512 150-152 -> 143-148, GRU B=64 124 -> 116-117,
  // GRU B=8 87-92 -> 74-86; LSTM B=16 T=1000 H=128 level (60.6-61.8 -> 60.8-66.0). Not
  // measured on a real Zen 3. The AVX-512 widening tiles (FUSEDRNN_NO_BF16_DOT=1) are level
  // with OpenBLAS there (LSTM B=16 T=1000 H=128 52 against 56-57, GRU B=64 104-111 against
  // 101-102) and keep the rows' rule.
  t.bf16_backward_min_steps = 4;
  t.bf16_weight_grads_min_rows = avx512_kernels ? 32 : kMaxCount;
  t.wavefront_rows = 8;
  t.spin_before_sleep_us = 60;
  // An idle worker then yields its core for a few ms before it sleeps, about as long as an
  // OpenMP runtime's default spin (PyTorch's threads: ~10 ms here; ONNX Runtime's pool spins
  // 50 ms and more): a call that comes within that finds it awake, on a core still running.
  // After 3 ms idle, 2 threads, AMD EPYC: LSTM T=100 H=128 B=8 1.42-1.46 ms asleep -> 0.78-0.81
  // (back to back 0.63-0.68), B=1 0.57-0.59 -> 0.33-0.38. It yields rather than spins, so a
  // thread of any other library that needs the core gets it at once.
  t.linger_us = 5000;  // FUSEDRNN_LINGER_US overrides it (tuning())
  // A thread woken from sleep comes in within some 100 us; one another process keeps off its
  // core waits for a scheduler tick (4 ms): LSTM B=1 T=100 H=128 in a torch program beside a
  // busy 2-thread process, 2 threads, AMD EPYC Zen 4: 16-32 ms a call -> 0.33-0.46.
  t.openmp_stall_us = 1000;
  // A training step's outputs at the anchor shapes take 10-60 MB (cpu/block_cache.h).
  t.output_cache_mb = 256;  // FUSEDRNN_OUTPUT_CACHE_MB overrides it (tuning())
  // Two slices a thread in a by-units loop of big steps: a worker whose core another library's
  // spinning pool takes holds back half a step's share, not all of it (ONNX Runtime's pool
  // spins for tens of ms after each call; 2 threads, AMD EPYC Zen 4, our call right after
  // ORT's in one process, with the pull of ThreadTeam::run_phase: LSTM B=8 T=256 H=512 72-76 ->
  // 63-65 ms, GRU B=8 57-59 -> 53-55; back to back level: each thread keeps its own units,
  // and the same bits). Small steps keep one: GRU B=1 H=512 (0.8 M a step) back to back
  // 6.6 -> 6.9 ms with two.
  t.unit_slices_per_thread = 2;
  t.min_unit_slice_macs = 1 << 20;
  // Several slices a thread in a by-samples loop too (AMD): a worker whose core a spinning pool
  // takes holds back one of its slices, which the caller then runs, not half the batch (Zen 4,
  // 2 threads, our call right after ONNX Runtime's in one process, medians of 3 processes
  // each: LSTM B=64 T=50 H=512 96.6 -> 91.3 ms with two, GRU 69.6 -> 67.0; alone level or
  // faster, the same bits: LSTM inference 64.2 -> 61.9, training 207 -> 200, B=32 H=256 16.0
  // -> 15.8, GRU B=64 47.1 -> 45.8). Four (float32): LSTM B=64 after ONNX Runtime's call
  // 93.5 -> 84.1, B=32 H=256 26.5 -> 23.2; alone level (LSTM B=64 inference 64.3-67.8 ->
  // 62.9-64.3, training 205-217 -> 203-210, GRU B=64 45.8-47.5 -> 46.4-48.9, B=16 T=1000
  // H=128 22.1-22.4 -> 22.2-22.9). bfloat16 keeps two (four: 2-3% slower alone, LSTM B=64
  // 31.6 -> 32.3 ms, B=32 H=256 8.6 -> 8.8). Not measured on Intel nor with AVX2 tiles (whose
  // streamed slices want 12 samples: more slices a thread would read W_hh more often), which
  // keep one.
  t.sample_slices_per_thread = amd && avx512_kernels ? 4 : 1;
  t.bf16_sample_slices_per_thread = amd && avx512_kernels ? 2 : 1;
  // Zen 4, AVX-512 (64-float tiles), 2 threads, inference T=20 B=256 I=513: RNN H=4 (4 rows of
  // 64) 3.0 -> 0.85 ms, LSTM H=1 3.0 -> 0.9, GRU H=4 3.0 -> 1.8 (torch.nn 0.6, 2.2, 1.6-2.3); the
  // loop's own projections stay ahead where x is narrow (LSTM I=32 H=4 B=1024, 1536 a step).
  t.padded_projection_min_macs = 8192;
  return t;
}

namespace {
// A minute: spin and linger times (microseconds) stay far from overflowing the clock's ns.
constexpr int64_t kMaxMicroseconds = 60000000;
}  // namespace

const TuningEntry kTuningEntries[] = {
    {"core_cache_bytes", &Tuning::core_cache_bytes, nullptr, 0, kMaxCount},
    {"min_samples_per_slice", &Tuning::min_samples_per_slice, nullptr, 1, kMaxCount},
    {"stream_min_samples", &Tuning::stream_min_samples, nullptr, 0, kMaxCount},
    {"stream_max_weight_bytes", &Tuning::stream_max_weight_bytes, nullptr, 0, kMaxCount},
    {"min_step_macs_to_split", &Tuning::min_step_macs_to_split, nullptr, 0, kMaxCount},
    {"short_call_min_gate_rows", &Tuning::short_call_min_gate_rows, nullptr, 0, kMaxCount},
    {"min_gemm_macs_to_split", &Tuning::min_gemm_macs_to_split, nullptr, 0, kMaxCount},
    {"blas_batch", &Tuning::blas_batch, nullptr, 0, kMaxCount},
    {"packed_min_steps", &Tuning::packed_min_steps, nullptr, 0, kMaxCount},
    {"inference_pack_rows", nullptr, &Tuning::inference_pack_rows, 0, kMaxCount},
    // A chunk of no steps would never end (ChunkPipeline divides by it).
    {"pipelined_rows", &Tuning::pipelined_rows, nullptr, 1, kMaxCount},
    {"step_inputs_min_batch", &Tuning::step_inputs_min_batch, nullptr, 0, kMaxCount},
    {"step_inputs_min_gates", &Tuning::step_inputs_min_gates, nullptr, 0, kMaxCount},
    {"step_inputs_max_weight_bytes", &Tuning::step_inputs_max_weight_bytes, nullptr, 0, kMaxCount},
    {"amx_min_batch", &Tuning::amx_min_batch, nullptr, 0, kMaxCount},
    {"bf16_backward_min_steps", &Tuning::bf16_backward_min_steps, nullptr, 0, kMaxCount},
    {"bf16_weight_grads_min_rows", &Tuning::bf16_weight_grads_min_rows, nullptr, 0, kMaxCount},
    // Its chunk's product buffers grow with it, whatever the call's steps.
    {"wavefront_rows", &Tuning::wavefront_rows, nullptr, 1, 65536},
    {"projection_chunk_bytes", &Tuning::projection_chunk_bytes, nullptr, 0, kMaxCount},
    {"step_inputs_chunk_bytes", &Tuning::step_inputs_chunk_bytes, nullptr, 0, kMaxCount},
    {"spin_before_sleep_us", &Tuning::spin_before_sleep_us, nullptr, 0, kMaxMicroseconds},
    {"sample_slices_per_thread", &Tuning::sample_slices_per_thread, nullptr, 1, 64},
    {"bf16_sample_slices_per_thread", &Tuning::bf16_sample_slices_per_thread, nullptr, 1, 64},
    {"linger_us", &Tuning::linger_us, nullptr, 0, kMaxMicroseconds},
    {"openmp_stall_us", &Tuning::openmp_stall_us, nullptr, 0, kMaxMicroseconds},
    {"output_cache_mb", &Tuning::output_cache_mb, nullptr, 0, int64_t(1) << 40},
    {"unit_slices_per_thread", &Tuning::unit_slices_per_thread, nullptr, 0, 64},
    {"min_unit_slice_macs", &Tuning::min_unit_slice_macs, nullptr, 0, kMaxCount},
    {"padded_projection_min_macs", &Tuning::padded_projection_min_macs, nullptr, 0, kMaxCount},
};
const int kTuningEntryCount = sizeof(kTuningEntries) / sizeof(kTuningEntries[0]);

namespace {

// `text` as a value of `entry`, into `out`: a finite number in [min, max], whole for an
// integer entry ("1e3" is 1000). Else false, with what was expected in `expected`.
bool parse_entry_value(const TuningEntry& entry, const char* text, double& out,
                       std::string& expected) {
  expected = std::string(entry.integer ? "an integer" : "a number") + " from " +
             std::to_string(entry.min) + " to " + std::to_string(entry.max);
  if (std::isspace(static_cast<unsigned char>(*text))) return false;  // (strtoll would skip
  char* rest = nullptr;                                                // leading spaces only)
  errno = 0;
  const long long whole = std::strtoll(text, &rest, 10);
  if (rest != text && *rest == '\0' && errno == 0) {
    // Exact, where a double would round a long integer.
    if (whole < entry.min || whole > entry.max) return false;
    out = static_cast<double>(whole);
    return true;
  }
  // from_chars: the C locale's decimal point whatever locale the process set (strtod's varies)
  double number = 0.0;
  const char* end = text + std::strlen(text);
  const auto parsed = std::from_chars(text, end, number);
  if (parsed.ec != std::errc() || parsed.ptr != end || !std::isfinite(number)) return false;
  if (number < static_cast<double>(entry.min) || number > static_cast<double>(entry.max))
    return false;
  if (entry.integer && number != std::trunc(number)) return false;
  out = number;
  return true;
}

void set_entry(Tuning& t, const TuningEntry& entry, double value) {
  if (entry.integer) t.*(entry.integer) = static_cast<int64_t>(value);
  else t.*(entry.real) = value;
}

const TuningEntry* find_entry(const std::string& name) {
  for (int i = 0; i < kTuningEntryCount; ++i)
    if (name == kTuningEntries[i].name) return &kTuningEntries[i];
  return nullptr;
}

// FUSEDRNN_TUNING="name=value,...": any entry of the table (tuning experiments without a
// rebuild). An unknown name or a bad value (not finite, past the entry's min or max, a fraction
// for an integer entry) is ignored with a message on stderr.
void apply_overrides(Tuning& t, const char* text) {
  std::string all(text);
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find(',', start);
    if (end == std::string::npos) end = all.size();
    const std::string item = all.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string name = item.substr(0, eq);
    const TuningEntry* entry = find_entry(name);
    if (name == "row") {
      // The row decides the cache-sized entries before any override: it has its own variable.
      std::fprintf(stderr, "fusedrnn: FUSEDRNN_TUNING: ignored '%s': the row is chosen by "
                   "FUSEDRNN_CPU_TABLE=intel|amd|other, not here\n", item.c_str());
      continue;
    }
    if (!entry) {
      std::string names;
      for (int i = 0; i < kTuningEntryCount; ++i)
        names += std::string(i ? ", " : "") + kTuningEntries[i].name;
      std::fprintf(stderr, "fusedrnn: FUSEDRNN_TUNING: ignored '%s': expected name=value with "
                   "a name of the CPU table (%s), got the name '%s'\n", item.c_str(),
                   names.c_str(), name.c_str());
      continue;
    }
    if (eq == std::string::npos) {
      std::fprintf(stderr, "fusedrnn: FUSEDRNN_TUNING: ignored '%s': expected name=value, got "
                   "no '='\n", item.c_str());
      continue;
    }
    const std::string value = item.substr(eq + 1);
    double number = 0;
    std::string expected;
    if (!parse_entry_value(*entry, value.c_str(), number, expected)) {
      std::fprintf(stderr, "fusedrnn: FUSEDRNN_TUNING: ignored '%s': %s expects %s, got '%s'\n",
                   item.c_str(), entry->name, expected.c_str(), value.c_str());
      continue;
    }
    set_entry(t, *entry, number);
  }
}

// FUSEDRNN_CPU_TABLE, any case: the row it names; unset or empty: the CPU's vendor; another
// value: reported, and the row of an unknown vendor ("other"), as tuning_for gives it.
std::string forced_row() {
  const char* forced = std::getenv("FUSEDRNN_CPU_TABLE");
  if (!forced || !*forced) return cpu_info().vendor;
  std::string row(forced);
  for (char& c : row) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (row != "intel" && row != "amd" && row != "other")
    std::fprintf(stderr, "fusedrnn: FUSEDRNN_CPU_TABLE: expected intel, amd or other (any "
                 "case), got '%s'; using the row other\n", forced);
  return row;
}

}  // namespace

const Tuning& tuning() {
  static const Tuning table = [] {
    Tuning t = tuning_for(forced_row(), cpu_info().l2_bytes, active_isa() == Isa::kAvx512);
    // The variables that set one entry each. Unset or empty: the table's own; a bad value is
    // reported and ignored, as in FUSEDRNN_TUNING (which, naming the entry, wins over them).
    const struct {
      const char *variable, *entry, *unit;
    } variables[] = {{"FUSEDRNN_LINGER_US", "linger_us", "microseconds"},
                     {"FUSEDRNN_OUTPUT_CACHE_MB", "output_cache_mb", "MiB"}};
    for (const auto& v : variables) {
      const char* text = std::getenv(v.variable);
      const TuningEntry* entry = find_entry(v.entry);
      if (!text || !*text || !entry) continue;
      double number = 0;
      std::string expected;
      if (parse_entry_value(*entry, text, number, expected))
        set_entry(t, *entry, number);
      else
        std::fprintf(stderr,  // (FUSEDRNN_TUNING, read next, may still set the entry)
                     "fusedrnn: %s: expected %s (%s), got '%s'; ignored (the table's %s: %lld)\n",
                     v.variable, expected.c_str(), v.unit, text, v.entry,
                     static_cast<long long>(t.*(entry->integer)));
    }
    if (const char* overrides = std::getenv("FUSEDRNN_TUNING")) apply_overrides(t, overrides);
    return t;
  }();
  return table;
}

namespace {

std::atomic<bool> g_deterministic{false};
// Deterministic: the big GEMMs in this many blocks on any thread count (OpenBLAS's float32
// results depend on how a GEMM is split, not on which thread runs a block).
constexpr int kDeterministicGemmBlocks = 4;

// The bytes a step's products read: W_hh, and an LSTM's projection W_hr.
int64_t recurrent_weight_bytes(const SeqShape& s, int64_t element_bytes) {
  return (s.GH() * s.state() + s.P * s.H) * element_bytes;
}

// The LayerNorm-LSTM's loops split by samples (see plan_forward) where each slice gets enough.
bool layernorm_by_samples(const Tuning& t, const SeqShape& s, int slices) {
  return !deterministic() && slices > 1 && s.N / slices >= t.min_samples_per_slice &&
         s.T * s.N * s.GH() * s.H >= t.min_gemm_macs_to_split;
}

// The loop may split by samples: every slice gets enough samples, and W_hh fits a core's
// cache or every slice gets enough samples to stream it (Tuning::stream_min_samples).
bool split_by_samples(const Tuning& t, int64_t N, int slices, int64_t weight_bytes) {
  const int64_t each = slices > 1 ? N / slices : 0;
  const bool streams = t.stream_min_samples > 0 && each >= t.stream_min_samples &&
                       weight_bytes <= t.stream_max_weight_bytes;
  return each >= t.min_samples_per_slice && (weight_bytes <= t.core_cache_bytes || streams);
}

// The slices a thread may take at most in a phase of `threads`: a phase takes fewer than 65536
// (ThreadTeam::run_phase packs a thread's range in 16 bits).
int64_t most_slices_per_thread(int threads) {
  return threads > 0 && 65535 / threads > 1 ? 65535 / threads : 1;
}

// A by-samples loop's slices: up to `wanted` a thread (the table's sample_slices_per_thread,
// or bf16_sample_slices_per_thread), as many as still get min_samples_per_slice samples each
// (at least one a thread).
int sample_slices(const Tuning& t, int64_t N, int slices, int64_t wanted) {
  int64_t per_thread = wanted > 1 ? wanted : 1;
  if (per_thread > most_slices_per_thread(slices)) per_thread = most_slices_per_thread(slices);
  const int64_t fit = N / (slices * std::max<int64_t>(t.min_samples_per_slice, 1));
  if (per_thread > fit) per_thread = fit > 1 ? fit : 1;
  return static_cast<int>(slices * per_thread);
}

// Inference packs W_hh only where the call's rows (steps x samples) amortise it: about 12 rows
// for 256 KiB of W_hh, growing as its bytes^0.75. Measured (LSTM, AMD EPYC, 2 threads,
// T 4..15, N 1..8, H 128..512), unpacked over packed: B=1 T=8 H=512 387 vs 718 us, T=4 H=256
// 82 vs 129; packed over unpacked: B=8 T=15 H=128 138 vs 270, B=4 T=4 H=128 55 vs 61.
bool inference_packing_pays(const Tuning& t, int64_t rows, int64_t weight_bytes) {
  const double scale = static_cast<double>(weight_bytes) / (256 << 10);
  return static_cast<double>(rows) >= t.inference_pack_rows * std::pow(scale, 0.75);
}

// A step's recurrent product: packed W_hh for sequences, else BLAS for a large batch, row
// kernels for a small one, and in deterministic plans (OpenBLAS rounds a slice's GEMM by its
// shape, which the thread count sets; a row kernel's sums do not depend on the slices).
StepProduct step_product(const Tuning& t, bool packed, int64_t N) {
  if (packed) return StepProduct::kPacked;
  return N >= t.blas_batch && !deterministic() ? StepProduct::kBlas : StepProduct::kRows;
}

}  // namespace

// Deterministic: only the plans whose arithmetic is the same for any thread count. A by-units
// loop is (a slice's units change which thread computes a row, not how), with or without the
// inputs in its steps' products; a by-samples loop adds the input projection apart from the
// recurrent product, and the pipelined loop projects in chunks of steps: those are left out.
// OpenBLAS's float32 GEMMs round differently when split: the big ones run in a fixed number
// of blocks, whatever the threads.
void set_deterministic(bool on) { g_deterministic.store(on); }
bool deterministic() { return g_deterministic.load(std::memory_order_relaxed); }

GemmSplit gemm_split(bool big, int slices) {
  const int on = big ? slices : 1;
  return {on, deterministic() ? (big ? kDeterministicGemmBlocks : 1) : on};
}

GemmSplit plan_gemm(int64_t M, int64_t N, int64_t K, int slices) {
  return gemm_split(M * N * K >= tuning().min_gemm_macs_to_split, slices);
}

namespace {

// A split by-units loop's slices: unit_slices_per_thread a thread where there are several and
// each slice's step keeps min_unit_slice_macs, else one.
int unit_slices(const Tuning& t, int64_t step_macs, int threads) {
  int64_t per_thread = t.unit_slices_per_thread > 1 ? t.unit_slices_per_thread : 1;
  if (per_thread > most_slices_per_thread(threads)) per_thread = most_slices_per_thread(threads);
  // Divided, not multiplied: the table's entries may be up to 2^53.
  return threads > 1 && step_macs / threads / per_thread >= t.min_unit_slice_macs
             ? threads * static_cast<int>(per_thread)
             : threads;
}

}  // namespace

ForwardPlan plan_forward(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                         bool training, bool inputs_ready, bool reverse, bool bf16,
                         bool reused) {
  const Tuning& t = tuning();
  const int64_t GH = s.GH(), H = s.H, N = s.N;
  // A GRU keeps W_in x apart from W_hn h (its n gate): its inputs cannot join the products.
  const bool split_grad = cell == CellKind::kGru;
  const int64_t weight_bytes = recurrent_weight_bytes(s, element_bytes);
  // Inference packs where this call's steps amortise the packing, or where the weights serve
  // more calls (a layer in eval mode keeps them packed): a short call then streams packed W_hh
  // too (Zen 3, 2 threads, both plans alternating, packs kept: LSTM B=1 T=10 H=256 0.261 ->
  // 0.200 ms, B=8 T=4 0.457 -> 0.263, GRU B=2 T=6 H=512 0.567 -> 0.483).
  const bool packed = s.T >= t.packed_min_steps &&
                      (training || reused || inference_packing_pays(t, s.T * N, weight_bytes));
  // Packed rows are padded to a tile's width (an RNN with H=4 multiplies 64 rows for 4): where
  // that is half the rows or more and x is wide (the table's padded_projection_min_macs), the
  // inputs go through one BLAS product of exactly G*H columns up front, not the loop's own
  // projections of the padded rows.
  const int64_t row_multiple = packed_row_bytes() / element_bytes;
  const int64_t padded = (GH + row_multiple - 1) / row_multiple * row_multiple;
  const bool padded_rows =
      padded >= 2 * GH && s.I * (padded - GH) >= t.padded_projection_min_macs;
  ForwardPlan p{};
  p.slices = slices;
  const bool fixed = deterministic();
  const bool big_projection = s.T * N * GH * s.I >= t.min_gemm_macs_to_split;
  const GemmSplit projection = gemm_split(big_projection, slices);
  p.gemm_slices = projection.slices;
  p.gemm_blocks = projection.blocks;
  // A step smaller than this is not worth a barrier: one thread runs the loop, by units.
  p.loop_slices =
      N * GH * H >= t.min_step_macs_to_split && (packed || GH >= t.short_call_min_gate_rows)
          ? slices
          : 1;
  const bool by_samples = !fixed && packed && s.T * N * GH * H >= t.min_gemm_macs_to_split &&
                          split_by_samples(t, N, slices, weight_bytes);
  // One thread for the loop: the team's other threads project the inputs meanwhile, a chunk of
  // steps ahead, rather than all of them before the loop.
  const bool pipelined = !fixed && packed && !by_samples && p.loop_slices == 1 && slices > 1 &&
                         p.gemm_slices > 1 && !padded_rows;
  const bool by_units_packed = packed && !by_samples && !pipelined;
  const bool wavefront = !fixed && inputs_ready && !reverse && by_units_packed &&
                         p.loop_slices == 1 && !split_grad && s.I > 0 && !padded_rows;
  // The loop projects its own units' inputs, a chunk of steps at a time: from the table's
  // batch, for the cells and W_ih sizes it names (see tuning_for), with the loop split, on one
  // thread, and in deterministic plans whatever the slices (its arithmetic does not depend on
  // them, nor does the choice). LSTM, RNN: into the steps' products; a GRU (its n gate keeps
  // W_in x apart): into its gates rows.
  const int64_t max_bytes = t.step_inputs_max_weight_bytes;
  const bool loop_projects = by_units_packed && s.I > 0 && !padded_rows &&
                             t.step_inputs_min_batch > 0 && N >= t.step_inputs_min_batch &&
                             s.G >= t.step_inputs_min_gates &&
                             (max_bytes == 0 || GH * s.I * element_bytes <= max_bytes) &&
                             (p.loop_slices > 1 || slices == 1 || fixed);
  const bool step_inputs = (loop_projects && !split_grad) || wavefront;
  const bool own_inputs = loop_projects && split_grad;
  p.waits_for_inputs = inputs_ready && !wavefront;
  p.loop = by_samples ? Loop::kBySamples : pipelined ? Loop::kPipelined : Loop::kByUnits;
  p.product = step_product(t, packed, N);
  p.projection = pipelined                               ? Projection::kChunks
                 : by_samples && s.I > 0 && !padded_rows ? Projection::kPerSlice
                 : wavefront                             ? Projection::kWavefront
                 : step_inputs                           ? Projection::kInSteps
                 : own_inputs                            ? Projection::kPerSlice
                                                         : Projection::kUpFront;
  if (by_samples) p.loop_slices = sample_slices(t, N, slices, t.sample_slices_per_thread);
  else if (by_units_packed && p.loop_slices > 1)
    p.loop_slices = unit_slices(t, N * GH * H, slices);
  // A short call on row kernels split by units (a decoder's step): each slice projects its own
  // units' inputs in the step, as the calling thread would have up front (row kernels, too few
  // rows for BLAS), so that both products split (ForwardCall::by_units_unpacked). Zen 4, on
  // torch's 2 OpenMP threads, T=1 inference, H=128: RNN B=16 13.0-14.3 -> 11.2-12.1 us, GRU B=8
  // 15.8-16.3 -> 12.2-12.4, LSTM B=4 12.1-13.0 -> 9.5-10.1; RNN B=8 H=256 20.5 -> 15.7 (the
  // variants' loops below still project up front).
  if (!packed && p.product == StepProduct::kRows && p.loop == Loop::kByUnits &&
      p.loop_slices > 1 && p.projection == Projection::kUpFront && p.gemm_slices == 1 &&
      s.I > 0 && s.T * N < t.blas_batch)
    p.projection = Projection::kPerSlice;
  // b_ih joins b_hh in the packed bias, except where a projection up front of fewer rows than
  // blas_batch runs on row kernels, which add b_ih themselves (ForwardCall::project: an
  // OpenBLAS call would pack all of W_ih for them; LSTM B=1 T=5 H=1024, packs kept: 2.94 ms
  // that way, 1.47 this way).
  p.bias_in_packed = packed && !split_grad && s.I > 0 &&
                     !(p.projection == Projection::kUpFront && s.T * N < t.blas_batch);
  if (bf16) {
    // bfloat16 products (ForwardCall::bf16_loop): W_hh and W_ih packed at any length
    // (converted once per weight version where the layer keeps them), every step's inputs
    // projected before the loop; by samples where all of W_hh (2 bytes a value) fits a core's
    // cache, else by units.
    p.bf16 = true;
    const bool samples = !fixed && split_by_samples(t, N, slices, weight_bytes * 2 / element_bytes);
    p.loop = samples ? Loop::kBySamples : Loop::kByUnits;
    p.product = StepProduct::kPacked;
    p.projection = Projection::kPerSlice;
    p.bias_in_packed = false;
    p.loop_slices = samples ? sample_slices(t, N, slices, t.bf16_sample_slices_per_thread)
                    : N * GH * H >= t.min_step_macs_to_split ? slices
                                                              : 1;
    p.waits_for_inputs = inputs_ready;
    const bool amx = element_bytes == 4 && amx_allowed();
    p.amx = amx && N >= t.amx_min_batch;
    p.amx_projection = amx && s.T * N >= t.amx_min_batch;
    // With vdpbf16ps tiles (not AMX), a step projects its own rows in its W_hh product's pass
    // (a GRU's just before it: W_in x stays apart) (ForwardCall::bf16_loop) where a step
    // multiplies a whole tile of 4 samples or more (each weight pair then serves as many
    // samples as up front). Zen 4, inference, both in one process: LSTM B=16 T=1000 H=128
    // 18.5 -> 16.0 ms, B=32 T=100 H=256 10.1 -> 9.4, B=8 T=256 H=512 22.4 -> 20.8, B=64 T=50
    // H=512 35.3 -> 33.7, RNN B=16 T=1000 H=128 4.6 -> 3.9; but B=1 H=512 4.3 -> 6.4 (W_ih
    // streamed every step), and the widening products gain only by samples (LSTM B=64 H=512
    // 68 -> 71 ms by units).
    const int64_t step_samples = samples ? N / p.loop_slices : N;
    if (element_bytes == 4 && bf16_dot_kernels() && !p.amx && s.I > 0 && step_samples >= 4)
      p.projection = Projection::kInSteps;
    // A step too small to split: one thread runs the loop while the team's others project the
    // inputs a chunk of steps ahead (a chunk is no whole number of AMX sample tiles: vector
    // tiles). Inference T=256 H=128, 2 threads, Zen 3, all up front -> pipelined: LSTM B=1
    // 1.50 -> 1.15 ms, GRU B=1 1.49 -> 0.92, RNN B=4 1.39 -> 1.10 (same bits).
    if (p.loop_slices == 1 && slices > 1 && p.gemm_slices > 1 && s.I > 0) {
      p.loop = Loop::kPipelined;
      p.projection = Projection::kChunks;
      p.amx_projection = false;
    }
  }
  if (cell == CellKind::kLayerNormLstm) {
    // ForwardCall::layernorm_loop: a step's norms need every unit of a sample's rows, so by
    // samples (no barrier) wherever each slice gets enough samples, W_hh in a core's cache or
    // not (each slice streams it; by units the team meets three times a step), the inputs
    // projected by each slice (sequences) or up front; float32 products.
    // Too few samples for that, a step big enough to split goes by units (ForwardCall::
    // layernorm_by_units: the norms' statistics combined across the slices, three meetings a
    // step), its inputs projected up front.
    const bool samples = layernorm_by_samples(t, s, slices);
    p.loop = samples ? Loop::kBySamples : Loop::kByUnits;
    p.product = step_product(t, packed, N);
    // (deterministic: one thread, the statistics' parts would follow the thread count)
    p.loop_slices = samples || (!fixed && N * GH * H >= t.min_step_macs_to_split) ? slices : 1;
    p.projection = packed && (samples || p.loop_slices == 1) ? Projection::kPerSlice
                                                             : Projection::kUpFront;
    p.bias_in_packed = false;
    p.waits_for_inputs = inputs_ready;
    // bfloat16 products for inference under autocast: W_hh packed into pairs at any length,
    // the inputs projected up front from pairs. Its training keeps float32 products: the
    // norms amplify a bfloat16 forward's rounding into the gradients (about 1e-1 where the
    // two-phase variants' stay near 3e-3; tests/test_variants.py).
    p.bf16 = bf16 && !training && element_bytes == 4;
    if (p.bf16) {
      p.product = StepProduct::kPacked;
      p.projection = Projection::kUpFront;
    }
    const bool amx = p.bf16 && amx_allowed();
    p.amx = amx && (samples ? N / slices : N) >= t.amx_min_batch;
    p.amx_projection = amx && s.T * N >= t.amx_min_batch;
  }
  if (cell == CellKind::kGruResetBefore || s.P > 0) {
    // Two phases a step (ForwardCall::reset_before_loop, projected_loop): by samples where the
    // plain cell's would be (no barrier), else by units; W_hh packed for sequences as any
    // loop's (else BLAS or row kernels), the inputs projected up front; float32 products, but
    // under autocast: bfloat16 products (W_ih x up front, both phases' products in the steps:
    // W_hh h and W_hr m, or W_h{r,z} h and W_hn (r * h)), the blocks packed into pairs at any
    // length, by samples where the plain cell's bfloat16 plan is; a training forward saves
    // what the float32 one saves (the backward keeps float32 products: plan_backward).
    const bool two_phase_bf16 = bf16 && element_bytes == 4;
    const bool samples =
        two_phase_bf16 ? !fixed && split_by_samples(t, N, slices, weight_bytes * 2 / element_bytes)
                        : by_samples;
    p.loop = samples ? Loop::kBySamples : Loop::kByUnits;
    p.product = two_phase_bf16 ? StepProduct::kPacked : step_product(t, packed, N);
    p.projection = Projection::kUpFront;
    p.loop_slices = samples || N * GH * H >= t.min_step_macs_to_split ? slices : 1;
    p.bias_in_packed = false;
    p.waits_for_inputs = inputs_ready;
    p.bf16 = two_phase_bf16;
    const bool amx = two_phase_bf16 && amx_allowed();
    p.amx = amx && N >= t.amx_min_batch;
    p.amx_projection = amx && s.T * N >= t.amx_min_batch;
  }
  return p;
}

BackwardPlan plan_backward(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                           bool bf16, bool input_grad) {
  const Tuning& t = tuning();
  const int64_t GH = s.GH(), H = s.H, N = s.N, TN = s.T * s.N;
  const bool packed = s.T >= t.packed_min_steps;
  BackwardPlan p{};
  p.slices = slices;
  const bool big_gemms = TN * GH * (s.I + H) >= t.min_gemm_macs_to_split;
  const GemmSplit weight_gemms = gemm_split(big_gemms, slices);
  p.gemm_slices = weight_gemms.slices;
  p.gemm_blocks = weight_gemms.blocks;
  p.product = step_product(t, packed, N);
  p.dx = s.I > 0 ? InputGrad::kAfter : InputGrad::kNone;
  if (!deterministic() && packed && TN * GH * H >= t.min_gemm_macs_to_split &&
      split_by_samples(t, N, slices, recurrent_weight_bytes(s, element_bytes))) {
    p.loop = Loop::kBySamples;
    p.loop_slices = sample_slices(t, N, slices, t.sample_slices_per_thread);
    // Where dgh = dgx (LSTM, RNN) and [W_hh | W_ih] stays in cache, W_ih's columns join the
    // steps' products; else dx a chunk of steps at a time while dgx is in cache.
    if (s.I > 0)
      p.dx = cell != CellKind::kGru && GH * (H + s.I) * element_bytes <= t.core_cache_bytes
                 ? InputGrad::kInLoop
                 : InputGrad::kChunks;
  } else {
    p.loop = Loop::kByUnits;
    p.loop_slices = N * GH * H < t.min_step_macs_to_split ? 1
                    : packed                              ? unit_slices(t, N * GH * H, slices)
                    : GH >= t.short_call_min_gate_rows    ? slices
                                                          : 1;
  }
  if (bf16 && s.T >= t.bf16_backward_min_steps) {
    // bfloat16 products (BackwardCall::bf16_loop): W_hh's columns and W_ih's packed into
    // bfloat16 pairs at any length; by samples where all of W_hh (2 bytes a value) fits a
    // core's cache, else by units; dx after the loop from the steps' bfloat16 gate gradients,
    // the weight gradients from bfloat16 operands too (BackwardCall::bf16_weight_grads) where
    // the call has the rows for it
    p.bf16 = true;
    p.bf16_weights = TN >= t.bf16_weight_grads_min_rows;
    const bool samples = !deterministic() && split_by_samples(t, N, slices, GH * H * 2);
    p.loop = samples ? Loop::kBySamples : Loop::kByUnits;
    p.product = StepProduct::kPacked;
    p.dx = s.I > 0 ? InputGrad::kAfter : InputGrad::kNone;
    p.loop_slices = samples ? sample_slices(t, N, slices, t.bf16_sample_slices_per_thread)
                    : N * GH * H >= t.min_step_macs_to_split ? slices
                                                              : 1;
    const bool amx = element_bytes == 4 && amx_allowed();
    p.amx = amx && N >= t.amx_min_batch;
    p.amx_dx = amx && TN >= t.amx_min_batch;
    p.amx_weights = p.amx_dx && p.bf16_weights;
  }
  if (cell == CellKind::kLayerNormLstm) {  // BackwardCall::layernorm_loop
    const bool samples = layernorm_by_samples(t, s, slices);
    p.loop = samples ? Loop::kBySamples : Loop::kByUnits;
    p.loop_slices = samples ? slices : 1;
    p.product = step_product(t, packed, N);
    p.dx = s.I > 0 ? InputGrad::kAfter : InputGrad::kNone;
    p.bf16 = p.bf16_weights = p.amx = p.amx_dx = p.amx_weights = false;
  }
  if (cell == CellKind::kGruResetBefore || s.P > 0) {  // reset_before_loop, projected_loop
    p.product = step_product(t, packed, N);
    p.dx = s.I > 0 ? InputGrad::kAfter : InputGrad::kNone;
    p.bf16 = p.bf16_weights = p.amx = p.amx_dx = p.amx_weights = false;
  }
  if (!input_grad) p.dx = InputGrad::kNone;
  return p;
}

// Where W_hh fits one core's cache (a thread alone keeps all of it) and the batch is too small
// to split by samples (the team would meet at a barrier every step), in calls big enough to be
// worth a thread. LSTM, both directions, 2 threads: B=1 H=128 T=100 training 2.1 -> 1.4 ms,
// B=4 H=256 inference 4.3 -> 3.5 ms; B=16 H=128 (by samples) lost 6%.
// `behind`: a stacked layer a few steps behind the layer below (a wavefront), whose loop takes
// x into its steps and so streams W_ih too: both must fit (LSTM B=2 H=128: 1.0 -> 0.8 ms;
// H=256, 2 MiB of weights: 4.2 -> 6.5 ms). A GRU's loop cannot take x into its steps (its n
// gate keeps W_in x apart): behind another it would wait for all of it.
bool side_by_side_pays(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                       bool behind) {
  const Tuning& t = tuning();
  const int64_t weight_bytes = s.GH() * s.H * element_bytes;
  const int64_t input_bytes = behind ? s.GH() * s.I * element_bytes : 0;
  const bool apart = is_gru(cell) || cell == CellKind::kLayerNormLstm;  // inputs kept apart
  return slices > 1 && s.T >= t.packed_min_steps && !(behind && apart) &&
         weight_bytes + input_bytes <= t.core_cache_bytes &&
         !split_by_samples(t, s.N, slices, weight_bytes) &&
         s.T * s.N * s.GH() * (s.H + s.I) >= t.min_gemm_macs_to_split;
}

const char* name_of(Loop v) {
  switch (v) {
    case Loop::kBySamples: return "by samples";
    case Loop::kPipelined: return "pipelined";
    case Loop::kByUnits: return "by units";
  }
  return "?";
}

const char* name_of(StepProduct v) {
  switch (v) {
    case StepProduct::kPacked: return "packed W_hh";
    case StepProduct::kBlas: return "BLAS GEMM per step";
    case StepProduct::kRows: return "row kernels";
  }
  return "?";
}

const char* name_of(Projection v) {
  switch (v) {
    case Projection::kUpFront: return "up front";
    case Projection::kChunks: return "chunks claimed ahead of the loop";
    case Projection::kPerSlice: return "per slice, chunks of steps";
    case Projection::kInSteps: return "in the steps' products";
    case Projection::kWavefront: return "in the steps' products, behind the layer below";
  }
  return "?";
}

const char* name_of(InputGrad v) {
  switch (v) {
    case InputGrad::kNone: return "none";
    case InputGrad::kInLoop: return "in the loop's products";
    case InputGrad::kChunks: return "per slice, chunks of steps";
    case InputGrad::kAfter: return "after the loop";
  }
  return "?";
}

}  // namespace cpu
}  // namespace fusedrnn
