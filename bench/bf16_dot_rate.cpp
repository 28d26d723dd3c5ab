// Multiply-add rate of vdpbf16ps (AVX512-BF16: 32 bfloat16 products summed into 16 float32 a
// zmm) and of a float32 zmm FMA, every operand in registers, on 1 core and on 2 at once: the
// compute floor of a batch's bfloat16 products (README, bfloat16 autocast). Needs AVX512-BF16.
//   g++ -O3 -mavx512f -mavx512bf16 -pthread -o bf16_dot_rate bench/bf16_dot_rate.cpp && ./bf16_dot_rate
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <thread>
#include <utility>

// 12 independent sums (more than latency x issue rate), `iters` rounds; GMAC/s
double dot_rate(long iters) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512bh w = (__m512bh)_mm512_set1_epi32(0x3f803f80), x = w;
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < iters; ++k) {
    for (auto& a : acc) a = _mm512_dpbf16_ps(a, w, x);
    __asm__ volatile("" : "+v"(w));  // keeps the loop from being folded
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (auto& a : acc) sink += _mm512_reduce_add_ps(a);
  if (sink == 42) printf(" ");
  return iters * 12.0 * 32 / s / 1e9;
}

double fma_rate(long iters) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512 w = _mm512_set1_ps(1e-9f), x = _mm512_set1_ps(1.f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < iters; ++k) {
    for (auto& a : acc) a = _mm512_fmadd_ps(w, x, a);
    __asm__ volatile("" : "+v"(w));
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (auto& a : acc) sink += _mm512_reduce_add_ps(a);
  if (sink == 42) printf(" ");
  return iters * 12.0 * 16 / s / 1e9;
}

int main() {
  constexpr long kIters = 100000000;
  for (int round = 0; round < 3; ++round) {
    for (auto [name, f] : {std::pair{"vdpbf16ps", dot_rate}, std::pair{"float32 FMA", fma_rate}}) {
      const double one = f(kIters);
      double both[2];
      std::thread t([&, f = f] { both[1] = f(kIters); });
      both[0] = f(kIters);
      t.join();
      printf("%-12s 1 core %.1f GMAC/s, 2 cores %.1f + %.1f GMAC/s\n", name, one, both[0],
             both[1]);
    }
  }
}
