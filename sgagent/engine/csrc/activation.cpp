// The gated MLP's activation, silu(gate) * up, in one pass over the fused gate_up projection's output.
//
// torch runs it as a chunk, a silu and a mul, each a pass over memory. Element-wise, so the output keeps the
// input's layout: a decode step's transposed projection output ([2I, T] in memory, see cpu_common.h) gives a
// transposed [T, I] view, which the next projection reads as the contiguous x^T it wants. Rounding as torch's
// two ops: silu in float32 rounded to the dtype, then the product rounded.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "cpu_common.h"
#include "ops.h"

namespace {

template <typename T>
SGAGENT_WIDE_VECTORS void silu_mul_run(const T* g, const T* u, int64_t n, T* dst) {
  int64_t i = 0;
#ifdef SGAGENT_AVX512_BF16
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    namespace v16 = sgagent::v16;
    const __m512 one = _mm512_set1_ps(1.f), zero = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
      const __m512 x = v16::load(g + i);
      const __m512 act = v16::round(_mm512_div_ps(x, _mm512_add_ps(one, v16::exp(_mm512_sub_ps(zero, x)))));
      v16::store(dst + i, _mm512_mul_ps(act, v16::load(u + i)));
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) {
    const float x = sgagent::widen(g[j]);
    const float act = sgagent::round_to<T>(x / (1.f + sgagent::fast_exp(-x)));
    dst[j] = sgagent::narrow<T>(act * sgagent::widen(u[j]));
  }
}

// gate_up [T, 2I] (gate then up) -> [T, I], either row-major or transposed like its input
}  // namespace

namespace sgagent::ops {

at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.device().is_cpu() && gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
              "silu_mul: gate_up must be a CPU [T, 2I] tensor");
  const int64_t T = gate_up.size(0), I = gate_up.size(1) / 2;
  // transposed: [2I, T] in memory, gate the first I rows; otherwise row-major (copied to it if strided otherwise)
  const bool transposed = T > 1 && gate_up.stride(0) == 1 && gate_up.stride(1) == T;
  const at::Tensor x = transposed ? gate_up : gate_up.contiguous();
  auto out = transposed ? at::empty_strided({T, I}, {1, T}, x.options()) : at::empty({T, I}, x.options());
  // a run is one contiguous stretch of gate (and of up, I columns or I*T elements further on)
  const int64_t runs = transposed ? I : T, len = transposed ? T : I, up = transposed ? I * T : I,
                in_stride = transposed ? T : 2 * I;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "silu_mul", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, runs, std::max<int64_t>(1, 4096 / len), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) silu_mul_run(xp + r * in_stride, xp + r * in_stride + up, len, op + r * len);
    });
  });
  return out;
}

}  // namespace sgagent::ops

TORCH_LIBRARY_FRAGMENT(sgagent_cpu, m) {
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.impl("silu_mul", c10::DispatchKey::CPU, TORCH_FN(sgagent::ops::silu_mul));
}
