// RMSNorm in one pass over each row, alone or fused with the residual add before it.
//
// In torch a bf16 RMSNorm is four ops (widen to float32, normalise, round back, scale by the weight), each a
// dispatch and a pass over memory; at decode sizes that came to 12% of a 64-row step and 15% of a one-row step
// for the 61 norms of the default model. The rounding order is transformers': normalise in float32, round to
// the input dtype, multiply by the weight in that dtype. Built with the other ops by sgagent/engine/cpu_ops.py.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "ops.h"

namespace {

using sgagent::kTileRows;

// rows of tile [nt, H] (float32) normalised into out's rows t0..; the sum of squares in float32, as torch does
template <typename T>
SGAGENT_WIDE_VECTORS void norm_tile(const float* tile, int64_t nt, int64_t H, const T* w, float eps, T* out) {
  for (int64_t r = 0; r < nt; ++r) {
    const float* v = tile + r * H;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < H; ++i) ss += v[i] * v[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + eps);
    T* dst = out + r * H;
    int64_t i = 0;
#ifdef SGAGENT_AVX512_BF16
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      namespace v16 = sgagent::v16;
      for (; i + 16 <= H; i += 16) {
        const __m512 normed = v16::round(_mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_set1_ps(inv)));
        v16::store(dst + i, _mm512_mul_ps(v16::load(w + i), normed));
      }
    }
#endif
#pragma omp simd
    for (int64_t j = i; j < H; ++j)  // normalised value rounded to T before the weight (identity for float)
      dst[j] = sgagent::narrow<T>(sgagent::widen(w[j]) * sgagent::round_to<T>(v[j] * inv));
  }
}

// a = round(a + d), also written to sum: torch's bf16 add rounds the same way
template <typename T>
SGAGENT_WIDE_VECTORS void add_rows(float* a, const float* d, int64_t n, T* sum) {
  int64_t i = 0;
#ifdef SGAGENT_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    namespace v16 = sgagent::v16;
    for (; i + 16 <= n; i += 16) {
      const __m256i h = v16::to_bf16(_mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(d + i)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sum + i), h);
      _mm512_storeu_ps(a + i, v16::load(sum + i));
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) {
    a[j] = sgagent::round_to<T>(a[j] + d[j]);
    sum[j] = sgagent::narrow<T>(a[j]);
  }
}

void check(const at::Tensor& x, const at::Tensor& w, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && w.size(0) == x.size(1), op, ": x [T, H], weight [H]");
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == x.scalar_type(), op, ": weight must be contiguous, x's dtype");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check(x, weight, "rms_norm");
  auto out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
    const int64_t T = x.size(0), H = x.size(1);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, (T + kTileRows - 1) / kTileRows, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> tile(kTileRows * H);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * kTileRows, nt = std::min(kTileRows, T - t0);
        sgagent::load_rows(xp, x.stride(0), x.stride(1), t0, nt, 0, H, tile.data());
        norm_tile(tile.data(), nt, H, weight.data_ptr<scalar_t>(), static_cast<float>(eps),
                  out.data_ptr<scalar_t>() + t0 * H);
      }
    });
  });
  return out;
}

}  // namespace

namespace sgagent::ops {

// (x + delta, rms_norm(x + delta)): the residual stream's update and the next norm in one pass. The sum is
// rounded to x's dtype first, as torch's add would, and the norm reads that rounded sum.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                                                double eps) {
  check(x, weight, "add_rms_norm");
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == x.scalar_type(),
              "add_rms_norm: delta must be like x");
  auto sum = at::empty({x.size(0), x.size(1)}, x.options());
  auto out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "add_rms_norm", [&] {
    const int64_t T = x.size(0), H = x.size(1);
    at::parallel_for(0, (T + kTileRows - 1) / kTileRows, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> a(kTileRows * H), d(kTileRows * H);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * kTileRows, nt = std::min(kTileRows, T - t0);
        sgagent::load_rows(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), t0, nt, 0, H, a.data());
        sgagent::load_rows(delta.data_ptr<scalar_t>(), delta.stride(0), delta.stride(1), t0, nt, 0, H, d.data());
        add_rows(a.data(), d.data(), nt * H, sum.data_ptr<scalar_t>() + t0 * H);
        norm_tile(a.data(), nt, H, weight.data_ptr<scalar_t>(), static_cast<float>(eps),
                  out.data_ptr<scalar_t>() + t0 * H);
      }
    });
  });
  return {sum, out};
}

}  // namespace sgagent::ops

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.impl("rms_norm", c10::DispatchKey::CPU, TORCH_FN(rms_norm));
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.impl("add_rms_norm", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::add_rms_norm));
}
