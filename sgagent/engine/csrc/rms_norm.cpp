// RMSNorm of a decode step's rows in one pass.
//
// In torch a bf16 RMSNorm is four ops (widen to float32, normalise, round back, scale by the weight), each a
// dispatch and a pass over memory; at decode sizes that came to 12% of a 64-row step and 15% of a one-row step
// for the 61 norms of the default model. The rounding order is transformers': normalise in float32, round to
// the input dtype, multiply by the weight in that dtype. Built with paged_attention.cpp (sgagent/engine/cpu_ops.py).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
void rms_norm_impl(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& out) {
  const int64_t T_ = x.size(0), H = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  T* op = out.data_ptr<T>();
  // rows are independent; below a few rows the thread team costs more than it saves
  at::parallel_for(0, T_, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> v(H);
    for (int64_t t = begin; t < end; ++t) {
      const T* row = xp + t * s0;
      float ss = 0.f;
      for (int64_t i = 0; i < H; ++i) {
        v[i] = static_cast<float>(row[i * s1]);
        ss += v[i] * v[i];
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(eps));
      T* dst = op + t * H;
      if constexpr (std::is_same_v<T, float>) {
        for (int64_t i = 0; i < H; ++i) dst[i] = v[i] * inv * wp[i];
      } else {
        for (int64_t i = 0; i < H; ++i) {
          const T normed = static_cast<T>(v[i] * inv);  // rounded to the input dtype before the weight
          dst[i] = static_cast<T>(static_cast<float>(wp[i]) * static_cast<float>(normed));
        }
      }
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rms_norm: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1), "rms_norm: x [T, H], weight [H]");
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == x.scalar_type(), "rms_norm: weight must be contiguous, x's dtype");
  auto out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm",
                                  [&] { rms_norm_impl<scalar_t>(x, weight, eps, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.impl("rms_norm", c10::DispatchKey::CPU, TORCH_FN(rms_norm));
}
