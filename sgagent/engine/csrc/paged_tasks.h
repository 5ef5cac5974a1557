// What the two paged-attention kernels (paged_attention.cpp, attention_avx512.h) share: how a call is split into
// tasks, and how prefixes that several sequences share are attended once for all of them.
//
// A kernel is a struct with a per-thread State (a SoftmaxRows and its own buffers) and three steps: begin(st, rows)
// for a task of `rows` query rows per K/V head; query(st, h, i, src, stride) loads row i of head h;
// attend(st, limits, pages) runs the rows over a page table, row i seeing its first limits[i] keys. Between
// them the driver may carry a row's state over from another task (SoftmaxRows) and at the end writes the rows out.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

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

// The online-softmax state of a task's rows: per row the running max m, the sum of exp(score - m) and the
// exp-weighted sum of values acc. save and restore carry a row's state between tasks unchanged: a shared prefix's
// state continues into each member's own pages exactly as if the member had attended to the prefix itself (the
// same operations in the same order), so grouping never changes a row's result and a row's output depends on
// its own keys alone, not on which other sequences share them in the step.
struct SoftmaxRows {
  int64_t rows = 0, D = 0;  // rows per K/V head: row (h, i) is h * rows + i
  std::vector<float> acc, m, sum;

  void reset(int64_t H, int64_t n, int64_t d) {
    rows = n, D = d;
    acc.assign(H * n * d, 0.f);
    m.assign(H * n, -std::numeric_limits<float>::infinity());
    sum.assign(H * n, 0.f);
  }

  // a row's state: acc into acc_dst (D floats), then m and sum into ms_dst[0..1]
  void save(int64_t h, int64_t i, float* acc_dst, float* ms_dst) const {
    const int64_t hr = h * rows + i;
    std::copy(acc.data() + hr * D, acc.data() + (hr + 1) * D, acc_dst);
    ms_dst[0] = m[hr];
    ms_dst[1] = sum[hr];
  }

  void restore(int64_t h, int64_t i, const float* acc_src, const float* ms_src) {
    const int64_t hr = h * rows + i;
    std::copy(acc_src, acc_src + D, acc.data() + hr * D);
    m[hr] = ms_src[0];
    sum[hr] = ms_src[1];
  }

  // the row's output acc / sum and its log-sum-exp m + log(sum); a row that saw no key gives 0 and -inf
  template <typename O>
  void finish(int64_t h, int64_t i, O* dst, float* lse) const {
    const int64_t hr = h * rows + i;
    const float inv = sum[hr] > 0.f ? 1.f / sum[hr] : 0.f;
    for (int64_t k = 0; k < D; ++k) dst[k] = static_cast<O>(acc[hr * D + k] * inv);
    *lse = sum[hr] > 0.f ? m[hr] + std::log(sum[hr]) : -std::numeric_limits<float>::infinity();
  }
};

// Shared prefixes of a call: group g's members attend to the first keys[g] keys of pages[g] before their own
// pages (of the call's page table). of[n]: sequence n's group, or -1.
struct PrefixGroups {
  int64_t G = 0, P = 0;
  const int64_t* pages = nullptr;
  const int32_t* keys = nullptr;
  const int32_t* of = nullptr;
};

// q [N, H, R, D] (type T); pages [N, P] int64; limits [N, R] int32 (keys after the group's, if any);
// out [N, H, R, D] (T), lse [N, H, R] float32.
template <typename T, class Kernel>
void run_paged(const Kernel& kern, const at::Tensor& q, const at::Tensor& pages, const at::Tensor& limits,
               const PrefixGroups& groups, at::Tensor& out, at::Tensor& lse) {
  const int64_t N = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3), P = pages.size(1);
  const int64_t qsn = q.stride(0), qsh = q.stride(1), qsr = q.stride(2), qsd = q.stride(3);
  const T* qp = q.data_ptr<T>();
  const int64_t* pg = pages.data_ptr<int64_t>();
  const int32_t* lim = limits.data_ptr<int32_t>();
  auto row = [&](int64_t n, int64_t h, int64_t r) { return qp + n * qsn + h * qsh + r * qsr; };

  // 1. each group's prefix, once for all its members' rows: each row's softmax state after it
  std::vector<float> part_acc, part_ms;
  if (groups.G > 0) {
    part_acc.resize(N * H * R * D);
    part_ms.resize(N * H * R * 2);
    std::vector<std::vector<int64_t>> members(groups.G);
    for (int64_t n = 0; n < N; ++n)
      if (groups.of[n] >= 0) members[groups.of[n]].push_back(n);
    int64_t total = 0;
    for (const auto& m : members) total += static_cast<int64_t>(m.size()) * R;
    // a task re-reads its group's pages, so blocks are only as many as keep every thread busy
    const int64_t chunk = std::max<int64_t>(1, (total + at::get_num_threads() - 1) / at::get_num_threads());
    struct Task {
      int64_t g, first, rows;  // rows first.. of the group's member-major (member, r) numbering
    };
    std::vector<Task> tasks;
    for (int64_t g = 0; g < groups.G; ++g) {
      const int64_t rows = static_cast<int64_t>(members[g].size()) * R;
      const int64_t nb = std::max<int64_t>(1, (rows + chunk - 1) / chunk), per = (rows + nb - 1) / nb;
      for (int64_t b = 0; b * per < rows; ++b) tasks.push_back({g, b * per, std::min(per, rows - b * per)});
    }
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      typename Kernel::State st;
      std::vector<int32_t> seen;
      for (int64_t t = begin; t < end; ++t) {
        const Task& task = tasks[t];
        const auto& mem = members[task.g];
        kern.begin(st, task.rows);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < task.rows; ++i) {
            const int64_t j = task.first + i;
            kern.query(st, h, i, row(mem[j / R], h, j % R), qsd);
          }
        seen.assign(task.rows, groups.keys[task.g]);
        kern.attend(st, seen.data(), groups.pages + task.g * groups.P);
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < task.rows; ++i) {
            const int64_t j = task.first + i, at = (mem[j / R] * H + h) * R + j % R;
            st.save(h, i, part_acc.data() + at * D, part_ms.data() + 2 * at);
          }
      }
    });
  }

  // 2. every sequence's own pages, its rows resumed from their group's state
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const auto [chunk, blocks] = split_rows(N, R);
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    typename Kernel::State st;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, r0 = task % blocks * chunk, r1 = std::min(R, r0 + chunk);
      const bool resumed = groups.G > 0 && groups.of[n] >= 0;
      kern.begin(st, r1 - r0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = r0; r < r1; ++r) {
          kern.query(st, h, r - r0, row(n, h, r), qsd);
          const int64_t at = (n * H + h) * R + r;
          if (resumed) st.restore(h, r - r0, part_acc.data() + at * D, part_ms.data() + 2 * at);
        }
      kern.attend(st, lim + n * R + r0, pg + n * P);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t at = (n * H + h) * R + r;
          st.finish(h, r - r0, op + at * D, lp + at);
        }
    }
  });
}

}  // namespace sgagent
