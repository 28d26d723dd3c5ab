// C = op(A) op(B) on the kernels' threads, for fusedrnn's own dense layers (fr.nn.Linear, the
// attention and seq2seq projections): the single-threaded OpenBLAS calls the recurrent kernels
// use, split over the same team. NumPy's `@` runs on NumPy's own OpenBLAS pool, whose threads
// spin on the cores after each call, where the team's next phase needs them (an LSTM B=32
// T=100 H=256 call right after a NumPy product of its outputs: 35 ms instead of 21).
#pragma once
#include <cstdint>

namespace fusedrnn {
namespace cpu {

// Row-major: op(A) [M, K] (A [K, M] when trans_a), op(B) [K, N] (B [N, K] when trans_b),
// C [M, N]; C is written, never read. Denormals are flushed to zero, as in every kernel.
template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
            int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc);

}  // namespace cpu
}  // namespace fusedrnn
