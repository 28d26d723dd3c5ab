// Read rate of a buffer that stays in a core's cache, on 1 core and on 2 at once: the floor of
// a batch-1 step that streams its share of W_hh (README, bfloat16 autocast). AVX-512.
//   g++ -O2 -mavx512f -pthread -o l2_read_rate bench/l2_read_rate.cpp && ./l2_read_rate
#include <immintrin.h>
#include <cstdio>
#include <chrono>
#include <vector>
#include <thread>
// read rate of a buffer of `bytes` that stays in cache: sum of zmm loads, 8 accumulators
double rate(size_t bytes, int reps) {
  std::vector<float> a(bytes / 4, 1.0f);
  __m512 acc[8]; for (auto& x : acc) x = _mm512_setzero_ps();
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < a.size(); i += 128)
      for (int k = 0; k < 8; ++k) acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(&a[i + 16 * k]));
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0; for (auto& x : acc) sink += _mm512_reduce_add_ps(x);
  if (sink == 42) printf(" ");
  return bytes * double(reps) / s / 1e9;
}
int main() {
  for (size_t kb : {32, 512, 1024, 1536, 4096, 16384, 65536}) {
    double one = rate(kb << 10, int((1 << 30) / (kb << 10)));
    double both[2];
    std::thread t([&] { both[1] = rate(kb << 10, int((1 << 30) / (kb << 10))); });
    both[0] = rate(kb << 10, int((1 << 30) / (kb << 10)));
    t.join();
    printf("%6zu KiB: 1 core %.1f GB/s, 2 cores %.1f + %.1f GB/s\n", kb, one, both[0], both[1]);
  }
}
