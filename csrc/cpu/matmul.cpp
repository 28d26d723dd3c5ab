#include "cpu/matmul.h"

#include <algorithm>

#include "common/blas.h"
#include "cpu/plan.h"
#include "cpu/thread_team.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
            int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // an empty sum (OpenBLAS would scale C by beta = 0, and 0 * NaN is NaN)
    for (int64_t r = 0; r < M; ++r) std::fill(C + r * ldc, C + r * ldc + N, T(0));
    return;
  }
  PhaseRunner runner;
  const GemmSplit split = plan_gemm(M, N, K, runner.slices());
  // Blocks of C's rows (the longer side) or columns; each block one OpenBLAS call.
  const bool by_rows = M >= N;
  const int64_t total = by_rows ? M : N;
  auto block = [&](int b) {
    const int64_t lo = total * b / split.blocks, hi = total * (b + 1) / split.blocks;
    if (hi <= lo) return;
    if (by_rows)
      gemm(trans_a, trans_b, hi - lo, N, K, T(1), trans_a ? A + lo : A + lo * lda, lda, B, ldb,
           T(0), C + lo * ldc, ldc);
    else
      gemm(trans_a, trans_b, M, hi - lo, K, T(1), A, lda, trans_b ? B + lo * ldb : B + lo, ldb,
           T(0), C + lo, ldc);
  };
  if (split.slices == 1) {
    for (int b = 0; b < split.blocks; ++b) block(b);
    return;
  }
  runner.run(split.slices, [&](int slice) {
    for (int b = slice; b < split.blocks; b += split.slices) block(b);
  });
}

template void matmul<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t,
                            const float*, int64_t, float*, int64_t);
template void matmul<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                             const double*, int64_t, double*, int64_t);

}  // namespace cpu
}  // namespace fusedrnn
