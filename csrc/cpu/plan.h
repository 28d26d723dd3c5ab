// What a CPU call will do, decided once per call before any work: the machine's tuning table
// (chosen at run time from the CPU: vendor, caches, instruction set) and, from it, the shape
// and the thread count, a plan for the forward and the backward drivers. The drivers
// (recurrent_impl.inc) carry out a plan and decide nothing themselves; `fusedrnn bench
// --explain` prints the plans, `fusedrnn info` the CPU and its table.
#pragma once
#include <cstdint>
#include <string>

#include "common/kernel_args.h"

namespace fusedrnn {
namespace cpu {

// The CPU as the OS and CPUID describe it.
struct CpuInfo {
  std::string vendor;  // "intel", "amd" or "other"
  std::string model;   // the brand string, e.g. "AMD EPYC 9454 48-Core Processor"
  int64_t l1d_bytes, l2_bytes, l3_bytes;  // per core for L1/L2, all of it for L3; 0: unknown
  bool avx512_bf16, amx;
};
const CpuInfo& cpu_info();

// Every size and threshold the drivers choose by. One row per vendor; the cache-sized entries
// scale with the core's L2, so a CPU of the same vendor with other caches gets sizes in the
// same proportion. FUSEDRNN_CPU_TABLE=intel|amd|other forces a row (to compare them on one
// machine); FUSEDRNN_TUNING="name=value,..." then sets any entry (tuning experiments).
struct Tuning {
  const char* row;  // which row: "intel", "amd" or "other"
  // Cache a thread's hot data may take: a time loop keeps its W_hh (or its share) there.
  int64_t core_cache_bytes;
  // The loop splits by samples only where each slice gets this many samples and all of W_hh
  // fits core_cache_bytes, or (each slice then streams it from L3 every step) where each slice
  // gets stream_min_samples (0: never) and W_hh has at most stream_max_weight_bytes.
  int64_t min_samples_per_slice, stream_min_samples, stream_max_weight_bytes;
  // Multiply-adds per step below which the time loop runs on one thread (a barrier costs ~1 us).
  int64_t min_step_macs_to_split;
  // Gate rows (G*H) a step needs before a short call (its products unpacked: row kernels or a
  // GEMM a step) splits it over the threads: every thread reads each sample's x and h anew in
  // every call, and a step of fewer rows does too little with them.
  int64_t short_call_min_gate_rows;
  // Multiply-adds below which a big GEMM phase runs in the calling thread alone.
  int64_t min_gemm_macs_to_split;
  // Rows (steps x samples) from which a short call's products are BLAS GEMMs, not row kernels.
  int64_t blas_batch;
  // Steps from which W_hh is packed once per call (training; inference also asks
  // inference_pack_rows).
  int64_t packed_min_steps;
  // Inference packs W_hh when steps x samples >= inference_pack_rows * (W_hh bytes/256KiB)^0.75.
  double inference_pack_rows;
  // Rows (steps x samples) per chunk of a pipelined input projection (batch-1 loops).
  int64_t pipelined_rows;
  // From this batch on, a by-units loop takes x W_ih^T into the steps' products (0: never),
  // for cells of at least step_inputs_min_gates gates (an LSTM has 4, a GRU 3, an RNN 1) whose
  // W_ih (all of it, whatever the threads) has at most step_inputs_max_weight_bytes (0: any):
  // where the kernels are narrower than AVX-512 only the LSTM's smaller W_ih pay (tuning_for).
  int64_t step_inputs_min_batch, step_inputs_min_gates, step_inputs_max_weight_bytes;
  // From this batch on, bfloat16 products run on AMX tiles where the CPU has them.
  int64_t amx_min_batch;
  // Steps from which a backward under autocast takes bfloat16 products (fewer: float32 ones,
  // as a decoder step's backward), and rows (steps x samples) from which its weight
  // gradients do too (a sum over the samples: the samples' own gradients keep their bits
  // whatever the batch; never where the kernels are AVX2, whose pairs widen: tuning_for).
  int64_t bf16_backward_min_steps, bf16_weight_grads_min_rows;
  // Rows per chunk of a stacked layer's inputs behind the layer below (a wavefront).
  int64_t wavefront_rows;
  // Bytes of a slice's own projection chunk (stays in cache until the loop reads it) and of a
  // by-units step-inputs chunk (W_ih streams from L3 there; longer chunks amortise it).
  int64_t projection_chunk_bytes, step_inputs_chunk_bytes;
  // Microseconds an idle team worker spins before it sleeps (a step is microseconds apart;
  // time, not a count of PAUSEs: PAUSE takes 10 to 140 cycles depending on the core).
  int64_t spin_before_sleep_us;
  // Microseconds it then yields its core in a loop (awake, but giving way to any other thread
  // that wants the core) before it sleeps. FUSEDRNN_LINGER_US overrides it (0: sleep at once).
  int64_t linger_us;
  // Microseconds after the caller finished a phase's work on PyTorch's OpenMP threads that a
  // thread of the region may still come in before the threads count as held by another
  // process: the phases then run on the calling thread alone for a while (thread_team.cpp).
  int64_t openmp_stall_us;
  // MiB of dead large outputs' blocks the process keeps for the next calls' outputs
  // (cpu/block_cache.h). FUSEDRNN_OUTPUT_CACHE_MB overrides it (0: keep none).
  int64_t output_cache_mb;
  // Slices a by-units loop gives each thread where each still gets min_unit_slice_macs
  // multiply-adds a step: with more than one, a thread whose core another library's spinning
  // threads take holds back at most one small slice of a step.
  int64_t unit_slices_per_thread, min_unit_slice_macs;
  // Multiply-adds a sample's step that the padding of packed rows (to a tile's width) would add
  // to a loop's own input projection, I * (padded - G*H), from which a call whose padding is at
  // least half its rows projects its inputs up front instead (one BLAS product of G*H columns).
  int64_t padded_projection_min_macs;
  // Slices a by-samples loop gives each thread where each still gets min_samples_per_slice
  // samples: with more than one, a thread whose core another library's spinning threads take
  // holds back one of its slices, which the others take over, not all its samples.
  int64_t sample_slices_per_thread;
  // The same for bfloat16 products, whose streamed slices read W_hh's pairs once a slice a step.
  int64_t bf16_sample_slices_per_thread;
};
const Tuning& tuning();
// The table's numeric entries by name (what fusedrnn info prints, what FUSEDRNN_TUNING sets):
// one member pointer each, `integer` or `real`, and the values FUSEDRNN_TUNING may set, from
// min to max (past them a driver would divide by zero, overflow or allocate without bound).
struct TuningEntry {
  const char* name;
  int64_t Tuning::*integer;
  double Tuning::*real;
  int64_t min, max;
};
extern const TuningEntry kTuningEntries[];
extern const int kTuningEntryCount;
// The row for `vendor` on a core with `l2_bytes` of L2 (0: unknown), as tuning() builds it.
Tuning tuning_for(const std::string& vendor, int64_t l2_bytes, bool avx512_kernels);

// How a driver's time loop splits over the team.
enum class Loop {
  kBySamples,  // each slice owns samples and runs every step of them alone, no barrier
  kPipelined,  // one thread runs the loop; the others project the inputs chunks ahead
  kByUnits,    // each slice owns hidden units; one barrier per step
};
// How a step's recurrent product is computed.
enum class StepProduct {
  kPacked,  // from W_hh packed once per call (sequences)
  kBlas,    // a BLAS GEMM per step (few steps, large batch)
  kRows,    // row kernels on W_hh as it is (few steps, small batch: decoders)
};
// Where a forward call's input projection x W_ih^T happens.
enum class Projection {
  kUpFront,    // one GEMM (or row kernel) over all steps before the loop
  kChunks,     // chunks of steps, claimed by whichever thread comes first (pipelined loop)
  kPerSlice,   // each slice projects its own samples a chunk of steps at a time (by samples)
  kInSteps,    // packed W_ih joins the steps' products, a chunk of steps at a time (by units)
  kWavefront,  // as kInSteps, as the layer below writes the steps (a stacked layer)
};
// Where a backward call computes dx = dgx W_ih.
enum class InputGrad {
  kNone,     // no inputs (I = 0), or no dx wanted
  kInLoop,   // W_ih's columns join the steps' products (by samples, [W_hh | W_ih] in cache)
  kChunks,   // per slice, a chunk of steps at a time while dgx is in cache (by samples)
  kAfter,    // after the loop, by row blocks (GEMMs; row kernels below blas_batch rows)
};

struct ForwardPlan {
  Loop loop;
  StepProduct product;
  Projection projection;
  int slices;          // threads of the call
  int loop_slices;     // slices of the loop: of the units, or of the samples (1: one thread)
  int gemm_slices;     // slices of the up-front projection
  int gemm_blocks;     // its column blocks, spread over the slices (>= gemm_slices)
  bool bias_in_packed;  // b_ih joins b_hh in the packed bias (LSTM, RNN when packed)
  bool waits_for_inputs;  // a stacked layer that waits for all of x before it starts
  bool bf16;  // the step products from bfloat16 W_hh and h (by units, packed, projection up front)
  bool amx;   // ... on AMX tiles (float32, a batch of amx_min_batch or more, amx_allowed())
  bool amx_projection;  // its input projection on AMX tiles (steps x batch >= amx_min_batch)
};

struct BackwardPlan {
  Loop loop;  // kBySamples or kByUnits
  StepProduct product;
  InputGrad dx;
  int slices, loop_slices;
  int gemm_slices;  // slices of the weight-gradient GEMMs after the loop
  int gemm_blocks;  // their row blocks, spread over the slices (>= gemm_slices)
  bool bf16;        // dgates W_hh and dx from bfloat16 values (by units, packed, dx after)
  bool amx, amx_dx;  // ... on AMX tiles: the steps (a batch of amx_min_batch or more), dx
  bool bf16_weights;  // the weight gradients from bfloat16 operands (bf16 and enough rows)
  bool amx_weights;  // ... on AMX tiles (T*N >= amx_min_batch)
};

// Deterministic plans: results independent of the thread count, not only reproducible for a
// given one (see plan.cpp).
void set_deterministic(bool on);
bool deterministic();

// A GEMM phase: how many slices it runs on and in how many blocks (each one OpenBLAS call,
// blocks spread over the slices in turn). A big one (min_gemm_macs_to_split) on every slice, in
// kDeterministicGemmBlocks blocks when deterministic; a small one in the calling thread alone.
struct GemmSplit {
  int slices, blocks;
};
GemmSplit gemm_split(bool big, int slices);
// cpu::matmul's split of C [M, N] = op(A) [M, K] op(B).
GemmSplit plan_gemm(int64_t M, int64_t N, int64_t K, int slices);

// `slices`: the call's threads; `element_bytes`: 4 or 8; `training`: forward saves activations;
// `inputs_ready`: a stacked layer fed step by step by the layer below.
// `bf16`: float32 inference with bfloat16 products (ForwardArgs::bf16).
// `reused`: the caller means to call again with these weights (it passed a WeightCache, kept or
// not: a layer in eval mode), so packing them pays over its calls even for a short one.
ForwardPlan plan_forward(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                         bool training, bool inputs_ready, bool reverse, bool bf16 = false,
                         bool reused = false);
// `input_grad`: false where the caller wants no dx (the plan then makes none).
BackwardPlan plan_backward(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                           bool bf16 = false, bool input_grad = true);

// Whether calls of this shape (the directions of a bidirectional layer, the layers of a stack)
// run faster side by side, one thread each, than one after another on the whole team;
// `behind`: a stacked layer a few steps behind the layer below (a wavefront).
bool side_by_side_pays(CellKind cell, const SeqShape& s, int slices, int64_t element_bytes,
                       bool behind);

const char* name_of(Loop v);
const char* name_of(StepProduct v);
const char* name_of(Projection v);
const char* name_of(InputGrad v);

}  // namespace cpu
}  // namespace fusedrnn
