// The lm_head's output for the sampler: as contiguous float32 rows, or (all-greedy steps) just each row's argmax.
//
// On a decode step the logits come back as a transposed [T, vocab] view (W @ x^T, see model/llama.py:project);
// torch's .float().contiguous() of it took longer than the matmul itself (5 ms vs 3 ms at 64 rows), and the
// greedy max over the float32 copy another 1-3 ms. rows_to_float converts a block of vocabulary columns per
// task, reading each column's T values where they lie and writing whole cache lines of each output row;
// argmax_rows reads the view once and writes nothing but the T indices.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "cpu_common.h"

namespace {

template <typename T>
void to_float_impl(const at::Tensor& y, at::Tensor& out) {
  const int64_t rows = y.size(0), V = y.size(1);
  constexpr int64_t kCols = 16;  // one 64-byte line of float32 per output row
  const T* x = y.data_ptr<T>();
  const int64_t s0 = y.stride(0), s1 = y.stride(1);
  float* op = out.data_ptr<float>();
  if (s1 == 1) {  // already row-major (one row, or a prefill's x @ W^T): a plain conversion
    at::parallel_for(0, rows, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const T* row = x + t * s0;
        #pragma omp simd
        for (int64_t c = 0; c < V; ++c) op[t * V + c] = sgagent::widen(row[c]);
      }
    });
    return;
  }
  at::parallel_for(0, (V + kCols - 1) / kCols, 64, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(kCols * rows);  // [column, row]
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kCols, nc = std::min(kCols, V - c0);
      for (int64_t c = 0; c < nc; ++c) {
        const T* col = x + (c0 + c) * s1;
        for (int64_t t = 0; t < rows; ++t) tile[c * rows + t] = sgagent::widen(col[t * s0]);
      }
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t c = 0; c < nc; ++c) op[t * V + c0 + c] = tile[c * rows + t];
    }
  });
}

at::Tensor rows_to_float(const at::Tensor& y) {
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 2, "rows_to_float: y must be a CPU [T, V] tensor");
  const int64_t T = y.size(0), V = y.size(1);
  auto out = at::empty({T, V}, y.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "rows_to_float",
                                  [&] { to_float_impl<scalar_t>(y, out); });
  return out;
}

// ties and NaN as torch.max: the first maximum wins, and a NaN beats every number (torch propagates it)
inline bool beats(float v, float best) { return v > best || (v != v && best == best); }

template <typename T>
void argmax_impl(const at::Tensor& y, at::Tensor& out) {
  const int64_t rows = y.size(0), V = y.size(1), s0 = y.stride(0), s1 = y.stride(1);
  const T* x = y.data_ptr<T>();
  int64_t* op = out.data_ptr<int64_t>();
  if (s0 != 1 || rows == 1) {  // row-major: each row on its own, its max first (vectorised), then where it is
    const at::Tensor c = y.contiguous();
    const T* xc = c.data_ptr<T>();
    at::parallel_for(0, rows, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const T* row = xc + t * V;
        float best = -std::numeric_limits<float>::infinity();
        int nan = 0;  // int, not bool: GCC vectorises neither a bool reduction nor ||
#pragma omp simd reduction(max : best) reduction(| : nan)
        for (int64_t i = 0; i < V; ++i) {
          const float v = sgagent::widen(row[i]);
          best = v > best ? v : best;
          nan |= v != v;
        }
        // the first position holding it: whole blocks tested at once, then the one that has it walked
        auto hit = [&](int64_t i) { const float v = sgagent::widen(row[i]); return nan ? v != v : v == best; };
        int64_t b = 0;
        constexpr int64_t kBlock = 64;
        for (; b + kBlock <= V; b += kBlock) {
          int any = 0;
#pragma omp simd reduction(| : any)
          for (int64_t i = b; i < b + kBlock; ++i) any |= hit(i);
          if (any) break;
        }
        while (b + 1 < V && !hit(b)) ++b;
        op[t] = b;
      }
    });
    return;
  }
  // transposed: a column's rows are contiguous. Each chunk of the vocabulary keeps every row's best so far,
  // walking its columns in order; the chunks are then merged in order, so the first maximum still wins.
  const int64_t chunks = std::min<int64_t>(V, 4 * at::get_num_threads());
  std::vector<float> best(chunks * rows, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> arg(chunks * rows, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      float* b = best.data() + k * rows;
      int64_t* a = arg.data() + k * rows;
      for (int64_t c = k * V / chunks, end = (k + 1) * V / chunks; c < end; ++c) {
        const T* col = x + c * s1;
#pragma omp simd
        for (int64_t t = 0; t < rows; ++t) {
          const float v = sgagent::widen(col[t]);
          const bool take = beats(v, b[t]);
          b[t] = take ? v : b[t];
          a[t] = take ? c : a[t];
        }
      }
    }
  });
  for (int64_t t = 0; t < rows; ++t) {
    float b = best[t];
    int64_t a = arg[t];
    for (int64_t k = 1; k < chunks; ++k)
      if (beats(best[k * rows + t], b)) b = best[k * rows + t], a = arg[k * rows + t];
    op[t] = a;
  }
}

at::Tensor argmax_rows(const at::Tensor& y) {
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 2 && y.size(1) > 0, "argmax_rows: y must be a CPU [T, V] tensor");
  auto out = at::empty({y.size(0)}, y.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "argmax_rows",
                                  [&] { argmax_impl<scalar_t>(y, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("rows_to_float(Tensor y) -> Tensor");
  m.impl("rows_to_float", c10::DispatchKey::CPU, TORCH_FN(rows_to_float));
  m.def("argmax_rows(Tensor y) -> Tensor");
  m.impl("argmax_rows", c10::DispatchKey::CPU, TORCH_FN(argmax_rows));
}
