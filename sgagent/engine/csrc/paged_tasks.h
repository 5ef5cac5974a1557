// What the two paged-attention kernels (paged_attention.cpp, attention_avx512.h) share: how a call is split
// into tasks, and how a task's online-softmax state becomes its output rows.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sgagent {

// Tasks are (sequence, block of rows). A decode step has many sequences of a few rows: one block each. A
// shared prefix is one "sequence" whose rows are every member's queries: split so all threads get a share.
struct RowBlocks {
  int64_t chunk, blocks;  // rows per task, tasks per sequence
};

inline RowBlocks split_rows(int64_t N, int64_t R) {
  const int64_t want = 8 * at::get_num_threads();
  const int64_t chunk = N >= want ? R : std::max<int64_t>(1, (R * N + want - 1) / want);
  return {chunk, (R + chunk - 1) / chunk};
}

// out rows (n, h, r0..r1) = acc / sum, and their log-sum-exp m + log(sum); rows that saw no key give 0, -inf.
// acc [H * R, D], m and sum [H * R] are the task's state; out [N, H, R, D], lse [N, H, R].
template <typename T>
inline void finish_rows(const float* acc, const float* m, const float* sum, int64_t n, int64_t H, int64_t R,
                        int64_t r0, int64_t r1, int64_t D, T* out, float* lse) {
  for (int64_t h = 0; h < H; ++h)
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t hr = h * R + r;
      const float inv = sum[hr] > 0.f ? 1.f / sum[hr] : 0.f;
      T* dst = out + ((n * H + h) * R + r) * D;
      for (int64_t i = 0; i < D; ++i) dst[i] = static_cast<T>(acc[hr * D + i] * inv);
      lse[(n * H + h) * R + r] = sum[hr] > 0.f ? m[hr] + std::log(sum[hr]) : -std::numeric_limits<float>::infinity();
    }
}

}  // namespace sgagent
